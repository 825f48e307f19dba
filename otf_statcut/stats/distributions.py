"""Fit Maxwell, Gamma and generalized-Gamma distributions (``loc`` fixed at 0) and test them.

A fit is a small immutable value, :class:`DistributionFit`, that holds the family name, the
fitted parameters, the Kolmogorov–Smirnov (KS) evidence and the frozen :mod:`scipy.stats`
object; it answers ``pdf``/``cdf``/``sf``/``ppf``/``isf``/``mean`` and the statistical cutoff
``cutoff(n)`` = ``isf(1/n)``, the value where the CDF reaches ``1 - 1/n`` (the paper's
confidence bound for a sampling set of ``n`` values). Tails are computed with ``isf``, never as
``ppf(1 - q)``, so large ``n`` keeps full precision.

Decisions (each default is defined once, below):

* **Parameters.** ``params`` follows scipy's order *without* ``loc``, which is always 0:
  ``maxwell`` → ``(scale,)``, ``gamma`` → ``(a, scale)``, ``gengamma`` → ``(a, c, scale)``.
* **Maxwell** uses its closed-form maximum-likelihood estimate, ``scale**2 = sum(x**2) / (3 n)``;
  exact zeros are ordinary values for it.
* **Exact and numerical zeros.** Force errors of atoms on symmetric sites are 0, exactly (both
  forces vanish by symmetry) or up to round-off (1e-16 eV/Å in float64, about 1e-6 eV/Å from a
  float32 model). The Gamma and generalized-Gamma likelihoods need ``log x``: a true zero breaks
  them and a round-off residue dominates them (one value at 1e-15 of the median shifts
  ``mean(log x)`` as much as ~35 typical values). Those two families are therefore fitted to the
  values above ``ZERO_RTOL`` times the median only. For a Maxwell-like shape the chance of a genuine
  value that small is ~1e-12, for a Gamma of shape 1 it is 1e-4, so little real information is
  lost. The KS test still uses all values (``cdf(0) = 0``), so a pile of zeros shows up as a poor
  p-value rather than a crash. The Maxwell estimate uses ``x**2`` and needs no such rule.
* **Gamma** solves the ``floc=0`` likelihood equation ``log a - digamma(a) = log mean(x) -
  mean(log x)`` with Minka's Newton iteration (the same estimate as ``scipy.stats.gamma.fit(x,
  floc=0)``, at a fraction of the cost).
* **Generalized Gamma** is fitted by profile likelihood: for a fixed ``c``, ``x**c`` is Gamma
  distributed, so ``a`` and ``scale`` follow from the Gamma estimate and only ``c`` is searched, by
  a bounded 1-D search over ``|c|`` in ``GENGAMMA_C_BOUNDS`` for each sign of ``c``. This needs no
  starting values and cannot wander off like a 3-D simplex search. Above ``FIT_SAMPLE_SIZE``
  positive values the search runs on a seeded random subsample of that size.
* **KS test on a fixed-size subsample.** With 10⁵–10⁶ real values the KS test rejects every model
  (its power grows with the sample size until it detects deviations far below any practical
  importance), so the p-value no longer ranks anything. The test therefore uses at most
  ``KS_SAMPLE_SIZE`` values, a seeded random subsample of the fitted values, the *same* subsample
  for every candidate of one call. The p-value then has the same meaning for any data-set size.
  The parameters are estimated from the same data, which makes the p-value conservative
  (Lilliefors): a fit that passes really passes.
* **Robust fit** (``robust=True``): fit, drop the values above ``cutoff(len(values))``, refit on the
  values kept, and repeat until the relative parameter change is below ``ROBUST_RTOL``, nothing
  more is dropped, or ``ROBUST_MAX_ITER`` rounds have run. Off by default: it is not the paper's
  method; on clean data it still drops about one legitimate value per round, which shrinks the
  cutoff a little; and when the family does not fit (a mixture of temperatures), trimming cascades
  into the genuine tail (a Maxwell fit of the SNAP Li AIMD errors drops 117 of 10 368 values). Turn
  it on when validation sets contain a few rare-event outliers, and check ``n_trimmed``.

Credibility (:func:`check_credibility`; in :func:`fit_best` only credible candidates may win):

* **(a) Bound.** A generalized-Gamma ``|c|`` within ``BOUND_RTOL`` (relative) of either end of
  ``GENGAMMA_C_BOUNDS`` is not an estimate: the likelihood still rises beyond the bound (the
  bounded search stops ~1e-6 from it). A shape ``a`` outside ``SHAPE_BOUNDS`` has diverged. Data
  with a hard floor and a heavy upper tail (σ = exp(μ + v/2) across atoms, σ0 + distance) drive
  ``c`` to -20, where the fit is a power law of tail index ``a|c|`` whose cutoff grows like a power
  of n: the reported cutoffs of 5.5 and 72 949 eV/Å for a largest σ of 0.585. On real SNAP
  force errors 1.2 % of the generalized-Gamma fits sat on the bound.
* **(b) Extrapolation** (when ``n`` is known). For ``m`` values with maximum ``x_max``, an
  exponential-type tail puts the largest value near the ``1 - 1/m`` quantile and the cutoff at
  ``1 - 1/n``; their ratio is about ``ln n / ln m`` (exact for an exponential from 0). A candidate
  with ``cutoff(n) > EXTRAPOLATION_FACTOR · x_max · max(1, ln n / ln m)``
  (:func:`extrapolation_limit`) extrapolates far beyond its data and is rejected. Measured
  (``benchmarks/bench_fit_credibility.py``): the largest ratio of ``cutoff(n) / (x_max · max(1,
  ln n / ln m))`` for honest fits (data drawn from the fitted family, n = 1e3..1e7, m = 30..1e5,
  2000 draws per cell for m <= 300) is 1.1 for Maxwell, 1.85 for Gamma a = 1, 2.25 for Gamma a = 0.5
  (m = 30..50); with the factor 2 those a = 0.5 fits were rejected in 0.2-0.5 % of draws, so the
  default is 2.5 (J-shaped Gamma a = 0.3 from m <= 100 values still exceeds it in <= 0.8 % of
  draws, and not at all from m >= 300). Runaway fits exceed it by 10-10⁵. On real samples (SNAP
  force errors, DFT |F| per file and element, m = 50..5000, n = 1e4..1e6) it rejected 0-0.6 % of
  the generalized-Gamma fits and no Maxwell or Gamma fit.
* **(c) KS threshold.** A p-value below ``ks_threshold`` (default ``KS_THRESHOLD`` = 1e-3) is
  not credible. Real validation sets of 10²-10³ values often fail KS at 0.05 and are still
  usable (the paper takes the best p-value whatever it is), so the threshold only removes fits
  the data flatly contradict. Measured on the real samples above: the share of fits with no
  credible candidate is 0 % for m <= 200 at every threshold up to 0.01; at 1e-3 it is 0 % (SNAP
  errors), 4.8 % (|F| per file) and 12 % (|F| pooled over all files, a multi-state mixture), all
  of it at m >= 1000 where the KS test sees 1000-2000 values; at 0.05 it would be 5.5 %, 11 % and
  28 %. The reported fit with p = 5.7e-7 is rejected.

Fallback (``name = "tail"``, :func:`fit_tail`, :class:`TailDistribution`): when no candidate
is credible, a peaks-over-threshold estimate replaces the family: the empirical distribution
up to ``u``, the ``1 - TAIL_FRACTION`` quantile, and above it an exponential tail with
``β`` = median excess / ln 2, so ``cutoff(n) = u + β ln(n p_u)``. Why this one: Maxwell, Gamma
and generalized Gamma with c > 0 all lie in the Gumbel domain of attraction, where excesses over
a high threshold become exponential, so it is the family-free limit of what the candidates
model; it grows like ln n, never like a power of n; the median excess ignores a few outliers
among the top values (the mean excess of 500 Gamma values with five outliers up to 1467 gives a
cutoff of 297, the median 1.04); and with ``n`` known β is lowered, if needed, to keep
``cutoff(n)`` within the extrapolation limit. For tails heavier than exponential it errs low,
i.e. towards more labels, never towards unflagged errors. Measured on the real samples, the
fallback cutoffs were 1.1-2.2 × the sample maximum and 1.1-2.2 × the maximum of the whole pool
the sample came from (n = 1e4..1e6). Its KS p-value is reported but says little: the body is the data's
own quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import optimize, special, stats

from ..errors import FitError, UserError
from ._validate import as_nonnegative

#: Families this module fits, in the default order of :func:`fit_best`.
DISTRIBUTIONS = ("maxwell", "gamma", "gengamma")
#: Default candidates for :func:`fit_best` (the paper's three).
DEFAULT_CANDIDATES = DISTRIBUTIONS
#: Names of the entries of ``DistributionFit.params`` (scipy order, ``loc`` excluded).
PARAM_NAMES = {
    "maxwell": ("scale",),
    "gamma": ("a", "scale"),
    "gengamma": ("a", "c", "scale"),
}
_FAMILIES = {"maxwell": stats.maxwell, "gamma": stats.gamma, "gengamma": stats.gengamma}

#: Fewest values a fit accepts (after removing zeros for Gamma / generalized Gamma).
MIN_VALUES = 10
#: Gamma / generalized-Gamma fits ignore values <= ZERO_RTOL * median (exact and round-off zeros).
ZERO_RTOL = 1e-4
#: Largest sample the KS test uses; more values are subsampled (seeded) to this size.
KS_SAMPLE_SIZE = 2000
#: Largest sample the generalized-Gamma search uses; more values are subsampled (seeded).
FIT_SAMPLE_SIZE = 20_000
#: Seed of the subsamples; fits are deterministic for a given seed.
SEED = 0
#: KS significance level: a fit passes when its p-value is at least this.
PASS_LEVEL = 0.05
#: Search range of ``|c|`` for the generalized Gamma (Gamma is c = 1, Maxwell is c = 2).
GENGAMMA_C_BOUNDS = (0.05, 20.0)
#: Robust fit: stop when no parameter changes by more than this fraction between rounds...
ROBUST_RTOL = 1e-3
#: ...or after this many trimming rounds.
ROBUST_MAX_ITER = 20

# -- credibility (see the module notes) --------------------------------------------------------
#: Default KS threshold of :func:`fit_best`: a candidate with a smaller p-value is not credible.
KS_THRESHOLD = 1e-3
#: Extrapolation rule: a candidate whose ``cutoff(n)`` exceeds this factor times the largest
#: fitted value times ``max(1, ln n / ln m)`` is not credible.
EXTRAPOLATION_FACTOR = 2.5
#: A generalized-Gamma ``|c|`` within this relative distance of either end of
#: ``GENGAMMA_C_BOUNDS`` sits on the search bound (the search converges to ~1e-6 of it).
BOUND_RTOL = 1e-3
#: Range of credible shape estimates ``a`` (Gamma and generalized Gamma); outside it the
#: estimate has diverged (a = 1e5 is a coefficient of variation of 0.3 %).
SHAPE_BOUNDS = (1e-3, 1e5)

# -- the fallback: empirical body + exponential (peaks-over-threshold) tail ----------------
#: Name of the fallback distribution (never a candidate of :func:`fit_best`).
FALLBACK = "tail"
#: Share of the values above the threshold ``u`` of the fallback's exponential tail...
TAIL_FRACTION = 0.1
#: ...but at least this many values (the threshold moves down for small samples).
TAIL_MIN_EXCESS = 5
#: Number of linear pieces of the fallback's body CDF (equal probability, below ``u``).
TAIL_BODY_PIECES = 10
#: Smallest tail slope β, relative to ``u`` (values with no spread above ``u``).
TAIL_MIN_BETA_RTOL = 1e-6
# the fallback's parameters: threshold, tail slope, tail share, body quantiles q0 (the minimum) ...
PARAM_NAMES[FALLBACK] = ("u", "beta", "p_u", *(f"q{j}" for j in range(TAIL_BODY_PIECES)))

#: The credibility rules, as recorded in :class:`Rejection`.
RULES = ("bound", "extrapolation", "ks")


def _check_name(name: str, *, fallback: bool = False) -> str:
    if name in _FAMILIES or (fallback and name == FALLBACK):
        return name
    raise UserError(f"unknown distribution {name!r}; expected one of {', '.join(DISTRIBUTIONS)}")


class TailDistribution:
    """The fallback distribution: a piecewise-linear empirical body and an exponential tail.

    Below the threshold ``u`` the CDF interpolates linearly between ``TAIL_BODY_PIECES + 1``
    empirical quantiles ``q_0 = min, ..., q_B = u`` at equally spaced probabilities
    ``0, ..., 1 - p_u`` (equal knots are a point mass, e.g. a pile of exact zeros); above it the
    survival function is ``p_u exp(-(x - u) / β)``. Same interface as a frozen
    :mod:`scipy.stats` object (``pdf``, ``logpdf``, ``cdf``, ``sf``, ``ppf``, ``isf``, ``mean``,
    ``std``); ``pdf`` is the density of the continuous part.
    """

    def __init__(self, u: float, beta: float, p_u: float, knots: Sequence[float]) -> None:
        self.u, self.beta, self.p_u = float(u), float(beta), float(p_u)
        self.q = np.append(np.asarray(knots, dtype=np.float64), self.u)
        pieces = self.q.size - 1
        self.P = (1.0 - self.p_u) * np.arange(pieces + 1) / pieces

    @staticmethod
    def _out(x: np.ndarray, values: np.ndarray):
        return values.reshape(x.shape)[()]

    def _piece(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.q, x, side="right") - 1  # last knot <= x; -1 below q_0

    def cdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        flat = x.ravel()
        j = self._piece(flat)
        out = np.zeros(flat.size)
        body = (j >= 0) & (j < self.q.size - 1)
        jb = j[body]
        width = self.q[jb + 1] - self.q[jb]
        out[body] = self.P[jb] + (flat[body] - self.q[jb]) / width * (self.P[jb + 1] - self.P[jb])
        tail = j == self.q.size - 1
        out[tail] = 1.0 - self.p_u * np.exp(-(flat[tail] - self.u) / self.beta)
        return self._out(x, out)

    def sf(self, x):
        x = np.asarray(x, dtype=np.float64)
        flat = x.ravel()
        out = 1.0 - np.asarray(self.cdf(flat), dtype=np.float64).ravel()
        tail = flat >= self.u
        out[tail] = self.p_u * np.exp(-(flat[tail] - self.u) / self.beta)
        return self._out(x, out)

    def pdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        flat = x.ravel()
        j = self._piece(flat)
        out = np.zeros(flat.size)
        body = (j >= 0) & (j < self.q.size - 1)
        jb = j[body]
        out[body] = (self.P[jb + 1] - self.P[jb]) / (self.q[jb + 1] - self.q[jb])
        tail = j == self.q.size - 1
        out[tail] = self.p_u / self.beta * np.exp(-(flat[tail] - self.u) / self.beta)
        return self._out(x, out)

    def logpdf(self, x):
        with np.errstate(divide="ignore"):
            return np.log(self.pdf(x))

    def ppf(self, p):
        p = np.asarray(p, dtype=np.float64)
        flat = p.ravel()
        out = np.full(flat.size, np.nan)
        top = 1.0 - self.p_u
        body = (flat >= 0) & (flat <= top)
        j = np.clip(np.searchsorted(self.P, flat[body], side="right") - 1, 0, self.q.size - 2)
        frac = (flat[body] - self.P[j]) / (self.P[j + 1] - self.P[j])
        out[body] = self.q[j] + frac * (self.q[j + 1] - self.q[j])
        tail = (flat > top) & (flat <= 1)
        with np.errstate(divide="ignore"):
            out[tail] = self.u + self.beta * np.log(self.p_u / (1.0 - flat[tail]))
        return self._out(p, out)

    def isf(self, s):
        s = np.asarray(s, dtype=np.float64)
        flat = s.ravel()
        out = np.asarray(self.ppf(1.0 - flat), dtype=np.float64).ravel()
        tail = (flat >= 0) & (flat < self.p_u)
        with np.errstate(divide="ignore"):
            out[tail] = self.u + self.beta * np.log(self.p_u / flat[tail])
        return self._out(s, out)

    def _moments(self) -> tuple[float, float]:
        a, b, w = self.q[:-1], self.q[1:], np.diff(self.P)
        u, beta, p = self.u, self.beta, self.p_u
        m1 = float(np.sum(w * (a + b) / 2.0) + p * (u + beta))
        m2 = float(np.sum(w * (a * a + a * b + b * b) / 3.0) + p * (u * u + 2 * u * beta + 2 * beta * beta))
        return m1, m2

    def mean(self) -> float:
        return self._moments()[0]

    def std(self) -> float:
        m1, m2 = self._moments()
        return float(np.sqrt(max(m2 - m1 * m1, 0.0)))


def _tail_frozen(*params: float) -> TailDistribution:
    u, beta, p_u, *knots = params
    return TailDistribution(u, beta, p_u, knots)


def _check_tail_params(params: tuple[float, ...]) -> None:
    u, beta, p_u, *knots = params
    q = np.append(knots, u)
    if not (beta > 0 and 0 < p_u < 1 and q[0] >= 0 and np.all(np.diff(q) >= 0)):
        raise ValueError(
            f"tail parameters {params}: expected beta > 0, 0 < p_u < 1 and 0 <= q0 <= ... <= q9 <= u"
        )


@dataclass(frozen=True)
class DistributionFit:
    """A fitted distribution with ``loc`` fixed at 0: a value, never changed after creation.

    Parameters
    ----------
    name : {"maxwell", "gamma", "gengamma", "tail"}
        Family, as in :mod:`scipy.stats`, or ``"tail"``, the fallback of :func:`fit_best` when no
        candidate is credible (:class:`TailDistribution`, fitted by :func:`fit_tail`).
    params : tuple of float
        Shape parameters then scale, in scipy's order, without ``loc`` (see ``PARAM_NAMES``).
    ks_statistic, ks_pvalue : float
        KS statistic and p-value of the fitted values against this distribution (NaN if not tested).
    n : int
        Number of values given to the fit.
    ks_sample_size : int
        Number of values the KS test used (at most ``KS_SAMPLE_SIZE``).
    n_trimmed : int
        Values dropped by the robust fit (0 for a plain fit).

    Attributes
    ----------
    frozen : scipy.stats.rv_continuous_frozen or TailDistribution
        ``scipy.stats.<name>(*shapes, loc=0, scale=scale)`` (a :class:`TailDistribution` for
        ``"tail"``); the methods below forward to it.

    Examples
    --------
    >>> fit = DistributionFit("maxwell", (0.1,))
    >>> round(fit.cutoff(1000), 4) == round(float(stats.maxwell.isf(1e-3, scale=0.1)), 4)
    True
    """

    name: str
    params: tuple[float, ...]
    ks_statistic: float = float("nan")
    ks_pvalue: float = float("nan")
    n: int = 0
    ks_sample_size: int = 0
    n_trimmed: int = 0
    frozen: object = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name, fallback=True)
        params = tuple(float(p) for p in self.params)
        expected = PARAM_NAMES[self.name]
        if len(params) != len(expected):
            raise ValueError(f"{self.name} takes parameters {expected}, got {len(params)} values")
        if self.name == FALLBACK:
            if not all(np.isfinite(params)):
                raise ValueError(f"tail parameters {params}: must be finite")
            _check_tail_params(params)
            object.__setattr__(self, "params", params)
            object.__setattr__(self, "frozen", _tail_frozen(*params))
            return
        if not all(np.isfinite(params)) or params[-1] <= 0:
            raise ValueError(f"{self.name} parameters {params}: scale must be finite and > 0")
        if self.name in ("gamma", "gengamma") and params[0] <= 0:
            raise ValueError(f"{self.name} parameters {params}: shape a must be > 0")
        if self.name == "gengamma" and params[1] == 0:
            raise ValueError(f"gengamma parameters {params}: shape c must be non-zero")
        object.__setattr__(self, "params", params)
        frozen = _FAMILIES[self.name](*params[:-1], loc=0.0, scale=params[-1])
        object.__setattr__(self, "frozen", frozen)

    @property
    def is_fallback(self) -> bool:
        """True for the fallback distribution (``name == "tail"``), see :func:`fit_tail`."""
        return self.name == FALLBACK

    # -- scipy.stats interface, forwarded to the frozen object ------------------------------
    def pdf(self, x):
        """Probability density at ``x``."""
        return self.frozen.pdf(x)

    def logpdf(self, x):
        """Log of the probability density at ``x``."""
        return self.frozen.logpdf(x)

    def cdf(self, x):
        """Cumulative distribution function at ``x``."""
        return self.frozen.cdf(x)

    def sf(self, x):
        """Survival function ``1 - cdf(x)``, computed directly."""
        return self.frozen.sf(x)

    def ppf(self, q):
        """Quantile: the ``x`` with ``cdf(x) = q``."""
        return self.frozen.ppf(q)

    def isf(self, q):
        """Inverse survival function: the ``x`` with ``sf(x) = q`` (accurate for tiny ``q``)."""
        return self.frozen.isf(q)

    def mean(self) -> float:
        """Mean of the distribution."""
        return float(self.frozen.mean())

    def std(self) -> float:
        """Standard deviation of the distribution."""
        return float(self.frozen.std())

    # -- the method ---------------------------------------------------------------------------
    def cutoff(self, n: float) -> float:
        """Statistical cutoff for a sampling set of ``n`` values: ``isf(1/n)``, i.e. CDF = 1 - 1/n.

        Raises
        ------
        UserError
            If ``n`` is not a number greater than 1.
        """
        n = float(n)
        if not n > 1:
            raise UserError(f"n = {n:g}: the cutoff needs a sampling-set size n > 1")
        return float(self.frozen.isf(1.0 / n))

    def passed(self, alpha: float = PASS_LEVEL) -> bool:
        """Whether the KS test did not reject this fit at level ``alpha`` (False if untested)."""
        return bool(self.ks_pvalue >= alpha)

    @property
    def param_dict(self) -> dict[str, float]:
        """Parameters by name, e.g. ``{"a": 1.4, "scale": 0.05}``."""
        return dict(zip(PARAM_NAMES[self.name], self.params))

    def to_dict(self) -> dict:
        """Plain, JSON-ready summary (name, params, param_names, KS evidence, counts)."""
        return {
            "name": self.name,
            "params": list(self.params),
            "param_names": list(PARAM_NAMES[self.name]),
            "ks_statistic": float(self.ks_statistic),
            "ks_pvalue": float(self.ks_pvalue),
            "n": int(self.n),
            "ks_sample_size": int(self.ks_sample_size),
            "n_trimmed": int(self.n_trimmed),
        }

    @classmethod
    def from_dict(cls, description: dict) -> "DistributionFit":
        """Rebuild a fit from :meth:`to_dict` output (missing KS fields become NaN / 0)."""
        return cls(
            description["name"],
            tuple(description["params"]),
            ks_statistic=float(description.get("ks_statistic", float("nan"))),
            ks_pvalue=float(description.get("ks_pvalue", float("nan"))),
            n=int(description.get("n", 0)),
            ks_sample_size=int(description.get("ks_sample_size", 0)),
            n_trimmed=int(description.get("n_trimmed", 0)),
        )


@dataclass(frozen=True)
class Rejection:
    """Why a fitted candidate is not credible (see the module notes, "Credibility").

    Attributes
    ----------
    name : str
        The candidate family.
    rule : {"bound", "extrapolation", "ks"}
        The rule it fails: a parameter on its search bound or diverged, a cutoff far beyond the
        data, or a KS p-value below the threshold.
    reason : str
        One line with the numbers.
    """

    name: str
    rule: str
    reason: str

    def to_dict(self) -> dict:
        """``{"name", "rule", "reason"}``."""
        return {"name": self.name, "rule": self.rule, "reason": self.reason}


@dataclass(frozen=True)
class BestFit:
    """Result of :func:`fit_best`: the winner and the evidence for every candidate.

    Attributes
    ----------
    best : DistributionFit
        The credible candidate with the highest KS p-value (ties: smaller KS statistic, then
        candidate order); when no candidate is credible, the ``"tail"`` fallback of
        :func:`fit_tail` (then :attr:`fallback` says why).
    candidates : tuple of DistributionFit
        Every candidate that could be fitted, in the order asked for, credible or not.
    alpha : float
        KS level used for :attr:`passed`.
    failures : tuple of (str, str)
        ``(name, reason)`` for candidates whose fit failed.
    rejections : tuple of Rejection
        One entry per credibility rule a fitted candidate fails (a candidate may fail several).
    fallback : str
        Why the fallback was used; empty when a candidate was credible.
    ks_threshold : float
        KS threshold of the credibility check.
    n : float or None
        Sampling-set size of the extrapolation rule (None: the rule was not applied).
    """

    best: DistributionFit
    candidates: tuple[DistributionFit, ...]
    alpha: float = PASS_LEVEL
    failures: tuple[tuple[str, str], ...] = ()
    rejections: tuple[Rejection, ...] = ()
    fallback: str = ""
    ks_threshold: float = KS_THRESHOLD
    n: float | None = None

    @property
    def passed(self) -> bool:
        """True when a credible candidate won and its KS p-value is at least :attr:`alpha`
        (always False for the fallback)."""
        return not self.fallback and self.best.passed(self.alpha)

    @property
    def credible(self) -> tuple[DistributionFit, ...]:
        """The candidates that pass every credibility rule."""
        rejected = {r.name for r in self.rejections}
        return tuple(fit for fit in self.candidates if fit.name not in rejected)

    def rejected(self, name: str) -> tuple[str, ...]:
        """Reasons why candidate ``name`` is not credible (empty if it is, or was not fitted)."""
        return tuple(f"{r.rule}: {r.reason}" for r in self.rejections if r.name == name)

    def cutoff(self, n: float) -> float:
        """Statistical cutoff of the best fit, ``best.isf(1/n)``."""
        return self.best.cutoff(n)

    def candidate(self, name: str) -> DistributionFit:
        """The fit of one candidate family, by name."""
        for fit in self.candidates:
            if fit.name == name:
                return fit
        raise KeyError(name)

    def to_dict(self) -> dict:
        """Plain, JSON-ready summary: ``best``, ``fallback``, ``passed``, ``alpha``,
        ``ks_threshold``, ``n``, ``candidates`` (each fit's :meth:`DistributionFit.to_dict` plus
        ``credible`` and ``rejected``, the list of reasons), ``rejections`` and ``failures``."""
        return {
            "best": self.best.to_dict(),
            "fallback": self.fallback,
            "passed": self.passed,
            "alpha": float(self.alpha),
            "ks_threshold": float(self.ks_threshold),
            "n": None if self.n is None else float(self.n),
            "candidates": [
                {**fit.to_dict(), "credible": not self.rejected(fit.name), "rejected": list(self.rejected(fit.name))}
                for fit in self.candidates
            ],
            "rejections": [r.to_dict() for r in self.rejections],
            "failures": [{"name": name, "reason": reason} for name, reason in self.failures],
        }


# -- maximum-likelihood estimates (loc = 0) -----------------------------------------------------
def _maxwell_mle(x: np.ndarray) -> tuple[float]:
    scale2 = float(np.dot(x, x)) / (3.0 * x.size)
    if not scale2 > 0:
        raise FitError("maxwell: all values are 0; the scale cannot be estimated")
    return (float(np.sqrt(scale2)),)


def _gamma_shape(s: float) -> float:
    """Solve ``log a - digamma(a) = s`` (s > 0) by Minka's generalized Newton iteration."""
    a = (3.0 - s + np.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(100):
        g = np.log(a) - special.digamma(a) - s
        step = g / (a * a * (1.0 / a - special.polygamma(1, a)))
        a_new = 1.0 / (1.0 / a + step)
        if not np.isfinite(a_new) or a_new <= 0:
            break
        if abs(a_new - a) <= 1e-12 * a:
            return float(a_new)
        a = a_new
    return float(a)


def _log_spread(mean_log_of_mean: float, mean_of_log: float, what: str) -> float:
    s = mean_log_of_mean - mean_of_log
    if not s > 1e-12:
        raise FitError(f"{what}: the positive values are (nearly) all equal; no spread to fit a shape")
    return s


def _gamma_mle(x: np.ndarray) -> tuple[float, float]:
    m = float(x.mean())
    a = _gamma_shape(_log_spread(np.log(m), float(np.log(x).mean()), "gamma"))
    return (a, m / a)


def _gengamma_profile(logy: np.ndarray, c: float) -> tuple[float, float, float]:
    """Profile log-likelihood per value at ``c`` for y with mean(log y) = 0; returns (ll, a, log θ)."""
    log_mean = special.logsumexp(c * logy) - np.log(logy.size)  # log mean(y**c) >= 0 (Jensen)
    if not log_mean > 1e-12:  # |c| too small to resolve the spread: not a candidate optimum
        return -np.inf, np.nan, np.nan
    a = _gamma_shape(log_mean)
    log_theta = log_mean - np.log(a)
    ll = -a - a * log_theta - special.gammaln(a) + np.log(abs(c))
    return float(ll), a, float(log_theta)


def _gengamma_mle(x: np.ndarray) -> tuple[float, float, float]:
    logx = np.log(x)
    log_g = float(logx.mean())  # work with y = x / geometric mean, then scale back
    logy = logx - log_g
    if not np.ptp(logy) > 1e-12:
        raise FitError("gengamma: the positive values are all equal; no spread to fit a shape")
    lo, hi = np.log(GENGAMMA_C_BOUNDS[0]), np.log(GENGAMMA_C_BOUNDS[1])
    best = None
    for sign in (1.0, -1.0):
        res = optimize.minimize_scalar(
            lambda u: min(-_gengamma_profile(logy, sign * np.exp(u))[0], np.finfo(float).max),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-6},
        )
        c = sign * float(np.exp(res.x))
        ll, a, log_theta = _gengamma_profile(logy, c)
        if np.isfinite(ll) and (best is None or ll > best[0]):
            best = (ll, a, c, log_theta)
    if best is None:
        raise FitError("gengamma: the likelihood search found no valid shape c")
    _, a, c, log_theta = best
    scale = float(np.exp(log_g + log_theta / c))
    return (a, c, scale)


def _estimate(name: str, x: np.ndarray, min_values: int, seed: int) -> tuple[float, ...]:
    if name == "maxwell":
        return _maxwell_mle(x)
    positive = x[x > ZERO_RTOL * np.median(x)]
    if positive.size < min_values:
        raise FitError(
            f"{name}: {positive.size} positive values (zeros, and values below {ZERO_RTOL:g} times the "
            f"median, are left out of this fit), at least {min_values} are needed"
        )
    if name == "gamma":
        return _gamma_mle(positive)
    if positive.size > FIT_SAMPLE_SIZE:
        rng = np.random.default_rng([seed, 1])
        positive = positive[rng.choice(positive.size, FIT_SAMPLE_SIZE, replace=False)]
    return _gengamma_mle(positive)


def _ks_sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    if x.size <= size:
        return x
    return x[np.random.default_rng(seed).choice(x.size, size, replace=False)]


def _finish(name, params, x, n, n_trimmed, ks_sample_size, seed) -> DistributionFit:
    fit = DistributionFit(name, params, n=n, n_trimmed=n_trimmed)
    sample = _ks_sample(x, ks_sample_size, seed)
    result = stats.kstest(sample, fit.frozen.cdf)
    return DistributionFit(
        name,
        params,
        ks_statistic=float(result.statistic),
        ks_pvalue=float(result.pvalue),
        n=n,
        ks_sample_size=int(sample.size),
        n_trimmed=n_trimmed,
    )


def _relative_change(old: Sequence[float], new: Sequence[float]) -> float:
    old, new = np.asarray(old), np.asarray(new)
    return float(np.max(np.abs(new - old) / np.abs(old)))


def fit_distribution(
    values,
    name: str = "maxwell",
    *,
    robust: bool = False,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    min_values: int = MIN_VALUES,
) -> DistributionFit:
    """Fit one family with ``loc = 0`` by maximum likelihood and KS-test the result.

    Parameters
    ----------
    values : array_like
        Non-negative, finite values (e.g. force-error magnitudes in eV/Å or uncertainties σ);
        flattened.
    name : {"maxwell", "gamma", "gengamma"}
        Family to fit.
    robust : bool, default False
        Iteratively drop values above ``cutoff(len(values))`` and refit (see the module notes).
    ks_sample_size : int, default ``KS_SAMPLE_SIZE``
        Most values the KS test uses; larger inputs are subsampled with ``seed``.
    seed : int, default ``SEED``
        Seed of the KS (and generalized-Gamma fit) subsamples.
    min_values : int, default ``MIN_VALUES``
        Fewest values accepted.

    Returns
    -------
    DistributionFit

    Raises
    ------
    DataError
        Values empty, not finite, negative, or fewer than ``min_values``.
    UserError
        Unknown ``name``.
    FitError
        The values cannot determine the parameters (all zero, all equal, too few positive values).
    """
    _check_name(name)
    x = as_nonnegative(values, "values", min_count=min_values)
    params = _estimate(name, x, min_values, seed)
    if not robust:
        return _finish(name, params, x, x.size, 0, ks_sample_size, seed)

    kept = x
    for _ in range(ROBUST_MAX_ITER):
        cut = DistributionFit(name, params).cutoff(x.size)
        trimmed = x[x <= cut]
        if trimmed.size == kept.size or trimmed.size < min_values:
            break
        new_params = _estimate(name, trimmed, min_values, seed)
        settled = _relative_change(params, new_params) < ROBUST_RTOL
        kept, params = trimmed, new_params
        if settled:
            break
    return _finish(name, params, kept, x.size, x.size - kept.size, ks_sample_size, seed)


# -- credibility --------------------------------------------------------------------------------
def _check_n(n) -> float:
    n = float(n)
    if not n > 1:
        raise UserError(f"n = {n:g}: the cutoff needs a sampling-set size n > 1")
    return n


def extrapolation_limit(x_max: float, m: int, n: float, factor: float = EXTRAPOLATION_FACTOR) -> float:
    """Largest credible ``cutoff(n)`` of a fit to ``m`` values whose maximum is ``x_max``.

    ``factor * x_max * max(1, ln n / ln m)``: an exponential-type tail puts the 1 - 1/m quantile
    (about the largest of m values) and the 1 - 1/n quantile in the ratio ln n / ln m (module
    notes, "Credibility").
    """
    growth = max(1.0, np.log(float(n)) / np.log(max(int(m), 2)))
    return float(factor) * float(x_max) * growth


def _bound_rejections(fit: DistributionFit) -> list[Rejection]:
    out = []
    if fit.name in ("gamma", "gengamma"):
        a = fit.params[0]
        lo, hi = SHAPE_BOUNDS
        if not lo < a < hi:
            out.append(Rejection(
                fit.name, "bound", f"shape a = {a:.4g} is outside ({lo:g}, {hi:g}): the estimate diverged"
            ))
    if fit.name == "gengamma":
        c = fit.params[1]
        lo, hi = GENGAMMA_C_BOUNDS
        if abs(c) >= hi * (1.0 - BOUND_RTOL) or abs(c) <= lo * (1.0 + BOUND_RTOL):
            edge = hi if abs(c) >= hi * (1.0 - BOUND_RTOL) else lo
            out.append(Rejection(
                fit.name, "bound",
                f"c = {c:.4g} sits on the search bound |c| = {edge:g}: the likelihood still rises beyond it, "
                "so the shape is not estimated",
            ))
    return out


def check_credibility(
    fit: DistributionFit,
    values,
    n: float | None = None,
    *,
    ks_threshold: float = KS_THRESHOLD,
    extrapolation_factor: float = EXTRAPOLATION_FACTOR,
) -> tuple[Rejection, ...]:
    """The credibility rules a fit fails (empty tuple: credible). See the module notes.

    Parameters
    ----------
    fit : DistributionFit
        A fit of ``values``.
    values : array_like
        The values it was fitted to (their count ``m`` and maximum enter the extrapolation rule).
    n : float, optional
        Sampling-set size; without it the extrapolation rule is not applied.
    ks_threshold : float, default ``KS_THRESHOLD``
        Smallest credible KS p-value (0 disables the rule).
    extrapolation_factor : float, default ``EXTRAPOLATION_FACTOR``
        Factor of :func:`extrapolation_limit` (``inf`` disables the rule).

    Returns
    -------
    tuple of Rejection
        In the order bound, extrapolation, ks.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    out = _bound_rejections(fit)
    if n is not None:
        n = _check_n(n)
        limit = extrapolation_limit(x.max(), x.size, n, extrapolation_factor)
        cut = fit.cutoff(n)
        if not cut <= limit:
            growth = max(1.0, np.log(n) / np.log(max(x.size, 2)))
            out.append(Rejection(
                fit.name, "extrapolation",
                f"cutoff at n = {n:g} is {cut:.4g}, beyond {extrapolation_factor:g} x max {x.max():.4g} "
                f"x max(1, ln n / ln m = {growth:.3g}) = {limit:.4g} for the m = {x.size} values fitted",
            ))
    if not fit.ks_pvalue >= ks_threshold:
        out.append(Rejection(fit.name, "ks", f"KS p-value {fit.ks_pvalue:.3g} is below the threshold {ks_threshold:g}"))
    return tuple(out)


# -- the fallback ---------------------------------------------------------------------------------
def _tail_params(xs: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    m = xs.size
    k = min(max(int(np.ceil(TAIL_FRACTION * m)), TAIL_MIN_EXCESS), m - 1)
    u = float(xs[m - k - 1])
    # median excess / ln 2: the exponential's scale from the median, which a few outliers among
    # the k largest values (validation atoms far from the data) cannot move; the mean excess can
    beta = max(float(np.median(xs[m - k:] - u)) / np.log(2.0), TAIL_MIN_BETA_RTOL * float(xs[-1]))
    p_u = k / m
    probabilities = (1.0 - p_u) * np.arange(TAIL_BODY_PIECES) / TAIL_BODY_PIECES
    knots = np.quantile(xs, probabilities, method="inverted_cdf")
    knots[0] = xs[0]
    knots = np.minimum(np.maximum.accumulate(knots), u)
    return u, beta, p_u, knots


def fit_tail(
    values,
    *,
    n: float | None = None,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    min_values: int = MIN_VALUES,
    extrapolation_factor: float = EXTRAPOLATION_FACTOR,
) -> DistributionFit:
    """The fallback: empirical body and a peaks-over-threshold exponential tail (name ``"tail"``).

    Threshold ``u`` = the ``1 - TAIL_FRACTION`` empirical quantile (at least ``TAIL_MIN_EXCESS``
    values above it), ``β`` = the median excess of those values over ``u`` divided by ln 2 (the
    exponential scale, estimated robustly), ``p_u`` = their share;
    ``cutoff(n) = u + β ln(n p_u)``. Below ``u`` the CDF interpolates the empirical quantiles
    (:class:`TailDistribution`). With ``n`` given, ``β`` is lowered if needed so that
    ``cutoff(n)`` stays within :func:`extrapolation_limit`. The KS evidence is computed like
    the candidates' (the body is the data's own quantiles, so it says little about the tail).

    Raises
    ------
    DataError
        Bad values (as :func:`fit_distribution`).
    FitError
        All values are 0.
    """
    x = as_nonnegative(values, "values", min_count=max(int(min_values), 2))
    xs = np.sort(x)
    if not xs[-1] > 0:
        raise FitError("tail: all values are 0; no scale to fit")
    u, beta, p_u, knots = _tail_params(xs)
    if n is not None:
        n = _check_n(n)
        limit = extrapolation_limit(xs[-1], xs.size, n, extrapolation_factor)
        if n * p_u > 1 and u + beta * np.log(n * p_u) > limit:
            beta = max((limit - u) / np.log(n * p_u), TAIL_MIN_BETA_RTOL * float(xs[-1]))
    params = (u, beta, p_u, *knots)
    fit = DistributionFit(FALLBACK, params, n=x.size)
    sample = _ks_sample(x, ks_sample_size, seed)
    result = stats.kstest(sample, fit.frozen.cdf)
    return DistributionFit(
        FALLBACK,
        params,
        ks_statistic=float(result.statistic),
        ks_pvalue=float(result.pvalue),
        n=x.size,
        ks_sample_size=int(sample.size),
    )


def fit_best(
    values,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    alpha: float = PASS_LEVEL,
    robust: bool = False,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    min_values: int = MIN_VALUES,
    n: float | None = None,
    ks_threshold: float = KS_THRESHOLD,
    extrapolation_factor: float = EXTRAPOLATION_FACTOR,
    fallback: bool = True,
) -> BestFit:
    """Fit every candidate family and keep the credible one with the highest KS p-value.

    All candidates are tested on the same KS subsample. A candidate whose fit fails (e.g. the
    generalized Gamma on values that are all equal) is listed in ``BestFit.failures``; a fitted
    candidate that fails a credibility rule (:func:`check_credibility`: parameter on a search
    bound, cutoff at ``n`` far beyond the data, KS p-value below ``ks_threshold``) stays in
    ``BestFit.candidates`` and is listed in ``BestFit.rejections``, and cannot win. When no
    candidate is credible, ``BestFit.best`` is the fallback of :func:`fit_tail` and
    ``BestFit.fallback`` says why.

    Parameters
    ----------
    values : array_like
        Non-negative, finite values.
    candidates : sequence of str, default ("maxwell", "gamma", "gengamma")
        Families to try, in order of preference for ties.
    alpha : float, default 0.05
        Level for ``BestFit.passed``.
    robust, ks_sample_size, seed, min_values
        As in :func:`fit_distribution`.
    n : float, optional
        Sampling-set size the cutoff is for; enables the extrapolation rule (and caps the
        fallback's tail by it).
    ks_threshold : float, default ``KS_THRESHOLD`` (1e-3)
        Smallest credible KS p-value; 0 disables the rule.
    extrapolation_factor : float, default ``EXTRAPOLATION_FACTOR``
        Factor of :func:`extrapolation_limit`; ``inf`` disables the rule.
    fallback : bool, default True
        Use the tail fallback when no candidate is credible (False: raise :class:`FitError`).

    Returns
    -------
    BestFit

    Raises
    ------
    UserError
        Empty, unknown or repeated candidate names; ``n`` not above 1.
    DataError
        Bad values (see :func:`fit_distribution`).
    FitError
        No candidate could be fitted, or none is credible and ``fallback`` is False (or the
        fallback cannot be fitted either: all values 0).
    """
    names = tuple(candidates)
    if not names:
        raise UserError(f"no candidate distributions given; expected some of {', '.join(DISTRIBUTIONS)}")
    for name in names:
        _check_name(name)
    if len(set(names)) != len(names):
        raise UserError(f"candidate distributions {', '.join(names)} repeat a name")
    x = as_nonnegative(values, "values", min_count=min_values)
    if n is not None:
        n = _check_n(n)

    fits, failures = [], []
    for name in names:
        try:
            fits.append(
                fit_distribution(
                    x, name, robust=robust, ks_sample_size=ks_sample_size, seed=seed, min_values=min_values
                )
            )
        except FitError as exc:
            failures.append((name, str(exc)))
    if not fits:
        raise FitError("no candidate distribution could be fitted: " + "; ".join(m for _, m in failures))

    rejections = []
    credible = []
    for fit in fits:
        found = check_credibility(
            fit, x, n, ks_threshold=ks_threshold, extrapolation_factor=extrapolation_factor
        )
        rejections.extend(found)
        if not found:
            credible.append(fit)

    evidence = dict(
        candidates=tuple(fits), alpha=alpha, failures=tuple(failures), rejections=tuple(rejections),
        ks_threshold=float(ks_threshold), n=n,
    )
    if credible:
        best = credible[0]
        for fit in credible[1:]:
            if (fit.ks_pvalue, -fit.ks_statistic) > (best.ks_pvalue, -best.ks_statistic):
                best = fit
        return BestFit(best=best, **evidence)

    why = "no credible candidate (" + "; ".join(f"{r.name}: {r.reason}" for r in rejections)
    why += "".join(f"; {name}: fit failed: {reason}" for name, reason in failures) + ")"
    if not fallback:
        raise FitError(why)
    try:
        tail = fit_tail(
            x, n=n, ks_sample_size=ks_sample_size, seed=seed, min_values=min_values,
            extrapolation_factor=extrapolation_factor,
        )
    except FitError as exc:
        raise FitError(f"{why}; the tail fallback failed too: {exc}") from None
    u, beta, p_u = tail.params[:3]
    why += f"; fallback: exponential tail above u = {u:.4g} (top {p_u:.3g} of the values), beta = {beta:.4g}"
    return BestFit(best=tail, fallback=why, **evidence)
