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
PARAM_NAMES = {"maxwell": ("scale",), "gamma": ("a", "scale"), "gengamma": ("a", "c", "scale")}
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


def _check_name(name: str) -> str:
    if name not in _FAMILIES:
        raise UserError(f"unknown distribution {name!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    return name


@dataclass(frozen=True)
class DistributionFit:
    """A fitted distribution with ``loc`` fixed at 0: a value, never changed after creation.

    Parameters
    ----------
    name : {"maxwell", "gamma", "gengamma"}
        Family, as in :mod:`scipy.stats`.
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
    frozen : scipy.stats.rv_continuous_frozen
        ``scipy.stats.<name>(*shapes, loc=0, scale=scale)``; the methods below forward to it.

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
        _check_name(self.name)
        params = tuple(float(p) for p in self.params)
        expected = PARAM_NAMES[self.name]
        if len(params) != len(expected):
            raise ValueError(f"{self.name} takes parameters {expected}, got {len(params)} values")
        if not all(np.isfinite(params)) or params[-1] <= 0:
            raise ValueError(f"{self.name} parameters {params}: scale must be finite and > 0")
        if self.name in ("gamma", "gengamma") and params[0] <= 0:
            raise ValueError(f"{self.name} parameters {params}: shape a must be > 0")
        if self.name == "gengamma" and params[1] == 0:
            raise ValueError(f"gengamma parameters {params}: shape c must be non-zero")
        object.__setattr__(self, "params", params)
        frozen = _FAMILIES[self.name](*params[:-1], loc=0.0, scale=params[-1])
        object.__setattr__(self, "frozen", frozen)

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
class BestFit:
    """Result of :func:`fit_best`: the winner and the evidence for every candidate.

    Attributes
    ----------
    best : DistributionFit
        Candidate with the highest KS p-value (ties: smaller KS statistic, then candidate order).
    candidates : tuple of DistributionFit
        Every candidate that could be fitted, in the order asked for.
    alpha : float
        KS level used for :attr:`passed`.
    failures : tuple of (str, str)
        ``(name, reason)`` for candidates whose fit failed.
    """

    best: DistributionFit
    candidates: tuple[DistributionFit, ...]
    alpha: float = PASS_LEVEL
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def passed(self) -> bool:
        """True when the best fit's KS p-value is at least :attr:`alpha`."""
        return self.best.passed(self.alpha)

    def cutoff(self, n: float) -> float:
        """Statistical cutoff of the best fit, ``best.isf(1/n)``."""
        return self.best.cutoff(n)

    def candidate(self, name: str) -> DistributionFit:
        """The fit of one candidate family, by name."""
        for fit in self.candidates:
            if fit.name == name:
                return fit
        raise KeyError(name)


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


def fit_best(
    values,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    alpha: float = PASS_LEVEL,
    robust: bool = False,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    min_values: int = MIN_VALUES,
) -> BestFit:
    """Fit every candidate family and keep the one with the highest KS p-value.

    All candidates are tested on the same KS subsample. A candidate whose fit fails (e.g. the
    generalized Gamma on values that are all equal) is listed in ``BestFit.failures`` instead.

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

    Returns
    -------
    BestFit

    Raises
    ------
    UserError
        Empty, unknown or repeated candidate names.
    DataError
        Bad values (see :func:`fit_distribution`).
    FitError
        No candidate could be fitted.
    """
    names = tuple(candidates)
    if not names:
        raise UserError(f"no candidate distributions given; expected some of {', '.join(DISTRIBUTIONS)}")
    for name in names:
        _check_name(name)
    if len(set(names)) != len(names):
        raise UserError(f"candidate distributions {', '.join(names)} repeat a name")
    x = as_nonnegative(values, "values", min_count=min_values)

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

    best = fits[0]
    for fit in fits[1:]:
        if (fit.ks_pvalue, -fit.ks_statistic) > (best.ks_pvalue, -best.ks_statistic):
            best = fit
    return BestFit(best=best, candidates=tuple(fits), alpha=alpha, failures=tuple(failures))
