"""State-aware error cutoffs: which atoms of a sampling set lie above the Maxwell error cutoff
when the data mix temperatures, compositions and elements.

Pure functions, NumPy/SciPy only. One entry point, :func:`error_cutoffs`, fits validation
force-error magnitudes ``|ΔF|`` (eV/Å) under a *grouping scheme* and returns a per-atom error
cutoff for every sampling atom, the fits behind it and the ``N`` of each group (CDF = 1 - 1/N, so
about one sampling atom per group is expected above its cutoff).

Why
---
The method assumes one Maxwell distribution of ``|ΔF|``. Pooled over states (300 K and 1000 K,
several compositions, two elements) the errors are a *mixture* of Maxwells with different scales;
a mixture has a heavier tail than the single Maxwell fitted to it, so one global cutoff flags far
more than the one atom of N it promises, nearly all of them from the hottest / worst-described
state. Splitting by element removes the between-element part of the mixture but not the
between-state part.

Schemes
-------
``"global"``
    One Maxwell fit of all validation errors; cutoff at ``N`` = all sampling atoms. The paper's
    method. Correct when the data are one state of one element.
``"element"``
    One Maxwell per element, ``N_e`` = sampling atoms of element ``e``. Correct when each element
    is in one state (one temperature and composition). Needs only chemical symbols: usable in MD.
``"sigma"``
    Errors normalised by the uncertainty head's per-atom σ: ``z = |ΔF| / σ``. If the head is
    calibrated (Maxwell NLL, as every head here is) and σ tracks the state's error scale, ``z`` is
    Maxwell with scale ≈ 1 in *every* state, so one Maxwell fit of validation ``z`` per element
    serves all states, and the per-atom error cutoff is ``σ_i · z_cut(N_e)``: it follows the
    atom's state without knowing the state. Usable in MD (σ is computed every step). Caveat: it
    defines "high error" as "higher than the head predicted", so an atom whose large error the
    head *did* predict is not high-error under this scheme; and per-atom noise in σ makes ``z`` a
    scale mixture again (heavier tail).
``"scaled"``
    The general form of the two above: per element, ``|ΔF_i| ~ Maxwell(s_e · (c_i / c̄_e)^β_e)``
    for a positive per-atom *state covariate* ``c`` given by the caller, with ``c̄_e`` its
    validation geometric mean and the exponent ``β_e`` fitted by maximum likelihood (profile over
    ``s_e``, bounded search in ``EXPONENT_BOUNDS``). ``β = 0`` is the ``"element"`` scheme,
    ``β = 1`` with ``c = σ`` is ``"sigma"`` (up to a constant), so the data decide how much of the
    covariate to trust. The Maxwell fit and the cutoff are then on ``z = |ΔF| / (c/c̄)^β`` (eV/Å,
    the element's error scale at its typical covariate); per-atom cutoff ``(c_i/c̄_e)^β · z_cut``.
    Useful covariates, all available in MD: the per-atom σ (a fitted ``β < 1`` shrinks noisy σ),
    and *frame-level* ones from :func:`frame_rms` — the RMS of σ, or of the potential's
    predicted forces, over the element's atoms in the same frame. A frame-level covariate tracks
    the thermodynamic state (temperature raises every force and every error of the frame) without
    the per-atom noise, and the predicted-force one does not depend on the head at all, so
    "high error" stays something the head can be judged against.
``"state"``
    One Maxwell per (state label, element), ``N`` = sampling atoms of that group. Needs a state
    label (temperature, composition, config_type) for every validation and sampling atom. An MD
    run has no such label for the structures it visits (its own temperature is one state; what
    it needs is the label of the state its *errors* belong to), so this is a benchmark
    diagnostic: the best one can do when the state is known, the yardstick for the others.

Family
------
``family="maxwell"`` (default) is the method. ``family="best"`` fits the best of Maxwell / Gamma /
generalized Gamma by KS p-value (:func:`~otf_statcut.stats.distributions.fit_best`) to each group
instead: for errors that are not Maxwell *within* a group, where no grouping can help.

Measured (``benchmarks/bench_multistate.py``, pooled 300 K + 1000 K W–Be AIMD, a small NequIP
model, 3 seeds, ~9000 sampling atoms; ``benchmarks/results/multistate.json``): with Maxwell fits
every scheme flags 50–400× the expected count. global 238 ± 53 (1 expected), element 253 ± 68
(2), sigma with the sparse-GP σ 127 ± 19 (2), scaled with GP σ 102 ± 31 (2), state 433 ± 223
(12). The errors are not Maxwell even within one state and element (KS p 1e-8 … 1e-197 on the
sampling errors; a Maxwell fit of each state's own sampling errors still leaves 191 ± 12 above,
12 expected), so the between-state mixture is not the main cause there. With ``family="best"``:
global 6 ± 9, element 21 ± 11, scaled with GP σ 41 ± 29.

When to use which
-----------------
* one element, one state: ``"global"`` (the paper);
* several elements, one state each: ``"element"``;
* several states in one data set, in MD: ``"scaled"`` with the head's per-atom σ as covariate
  (β fitted, so an uninformative σ falls back to ``"element"``), or ``"sigma"`` when the head is
  known to be calibrated per state; the frame RMS of σ (:func:`frame_rms`) when per-atom σ is
  noisy but its frame average tracks the state;
* state labels known (benchmarks, curated data sets): ``"state"`` as the reference, with enough
  validation values per (state, element) group (a few hundred; with tens, fit noise alone
  over-flags);
* check the fits' KS p-values: when they reject Maxwell in every group, try ``family="best"``.

``n``
-----
``None``: ``N`` of a group is the number of sampling atoms given in it (a benchmark, where the
whole sampling set is at hand). An integer: the total number of per-atom values that will be
screened (an MD run: steps × atoms); each group gets the share of it that its atoms have among
the sampling atoms given (in MD, the composition of the current frame). ``N`` is at least 2.

Expected count
--------------
Under each scheme's model, a group with ``N_g`` and ``k_g`` sampling atoms given expects
``k_g / N_g`` atoms above its cutoff: one per group when ``n`` is None. ``ErrorCutoffs.expected``
is the sum over groups (1 for ``"global"``, the number of elements for ``"element"`` / ``"sigma"``
/ ``"scaled"``, the number of (state, element) groups for ``"state"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from ..errors import DataError, FitError, UserError
from ._validate import as_nonnegative, as_positive, same_length
from .distributions import (
    DEFAULT_CANDIDATES,
    DISTRIBUTIONS,
    KS_SAMPLE_SIZE,
    MIN_VALUES,
    SEED,
    DistributionFit,
    fit_best,
    fit_distribution,
)

#: The grouping schemes of :func:`error_cutoffs` (see the module notes).
SCHEMES = ("global", "element", "sigma", "scaled", "state")
#: Families of :func:`error_cutoffs`: one of the fitted families, or ``"best"`` (:func:`fit_best`).
FAMILIES = (*DISTRIBUTIONS, "best")
#: Search range of the exponent β of the ``"scaled"`` scheme.
EXPONENT_BOUNDS = (-2.0, 4.0)
#: Group key of the ``"global"`` scheme.
ALL = "all"
#: Separator of the (state, element) group keys of the ``"state"`` scheme: ``"<state>|<symbol>"``.
STATE_SEPARATOR = "|"


@dataclass(frozen=True)
class ErrorCutoffs:
    """Per-atom error cutoffs of a sampling set under one scheme, and the fits behind them.

    Attributes
    ----------
    scheme : str
        One of ``SCHEMES``.
    family : str
        One of ``FAMILIES``.
    per_atom : ndarray, shape (n_sampling_atoms,)
        Error cutoff of each sampling atom, eV/Å.
    groups : ndarray of str, shape (n_sampling_atoms,)
        Group of each sampling atom (``"all"``, the symbol, or ``"<state>|<symbol>"``).
    fits : dict of str to DistributionFit
        Fit (Maxwell unless another ``family`` was asked for) of each group's validation values:
        ``|ΔF|`` (global, element, state), ``|ΔF| / σ`` (sigma, dimensionless) or
        ``|ΔF| / (c/c̄)^β`` (scaled, eV/Å).
    n : dict of str to int
        ``N`` of each group (the cutoff sits at CDF = 1 - 1/N).
    cutoffs : dict of str to float
        ``fits[g].cutoff(n[g])``, on the fitted variable's scale.
    counts : dict of str to int
        Sampling atoms given in each group.
    exponents : dict of str to float
        ``"scaled"``: fitted β per element; ``"sigma"``: 1.0 per element; otherwise empty.
    references : dict of str to float
        ``"scaled"``: the covariate's validation geometric mean ``c̄`` per element; otherwise empty.
    """

    scheme: str
    family: str
    per_atom: np.ndarray = field(repr=False)
    groups: np.ndarray = field(repr=False)
    fits: dict
    n: dict
    cutoffs: dict
    counts: dict
    exponents: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)

    @property
    def expected(self) -> float:
        """Atoms expected above their cutoff under the scheme's model: ``Σ_g counts[g] / n[g]``."""
        return float(sum(self.counts[g] / self.n[g] for g in self.counts))

    def above(self, errors) -> np.ndarray:
        """Boolean mask of the sampling atoms whose error ``|ΔF|`` (eV/Å) exceeds their cutoff."""
        errors = as_nonnegative(errors, "sampling errors")
        same_length(errors, self.per_atom, "sampling errors", "the sampling atoms of these cutoffs")
        return errors > self.per_atom

    def count_above(self, errors) -> int:
        """Number of sampling atoms above their cutoff."""
        return int(self.above(errors).sum())

    def count_above_by(self, errors, labels) -> dict[str, int]:
        """Atoms above their cutoff for each value of ``labels`` (one label per sampling atom)."""
        mask = self.above(errors)
        labels = np.asarray(labels, dtype=str).ravel()
        if labels.shape != mask.shape:
            raise DataError(f"labels has {labels.size} values but there are {mask.size} sampling atoms")
        return {str(lab): int(mask[labels == lab].sum()) for lab in np.unique(labels)}

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-atom arrays)."""
        return {
            "scheme": self.scheme,
            "family": self.family,
            "expected": self.expected,
            "n": {g: int(v) for g, v in self.n.items()},
            "counts": {g: int(v) for g, v in self.counts.items()},
            "cutoffs": {g: float(v) for g, v in self.cutoffs.items()},
            "fits": {g: f.to_dict() for g, f in self.fits.items()},
            "exponents": {g: float(v) for g, v in self.exponents.items()},
            "references": {g: float(v) for g, v in self.references.items()},
        }


# -- helpers --------------------------------------------------------------------------------------
def _labels(values, size: int, what: str) -> np.ndarray:
    if values is None:
        raise UserError(f"{what} are needed for this scheme")
    labels = np.asarray(values, dtype=str).ravel()
    if labels.size != size:
        raise DataError(f"{what} has {labels.size} entries but there are {size} atoms; expected one per atom")
    return labels


def _state_labels(values, size: int, what: str) -> np.ndarray:
    labels = _labels(values, size, what)
    bad = np.flatnonzero(np.char.find(labels, STATE_SEPARATOR) >= 0)
    if bad.size:
        raise DataError(f"{what}: entry {int(bad[0])} ({str(labels[bad[0]])!r}) contains "
                        f"{STATE_SEPARATOR!r}, "
                        "which separates state and element in group names")
    return labels


def _covariate(values, size: int, what: str, scheme: str) -> np.ndarray:
    if values is None:
        raise UserError(f"scheme {scheme!r} needs {what} (one positive value per atom)")
    array = as_positive(values, what)
    if array.size != size:
        raise DataError(f"{what} has {array.size} values but there are {size} atoms; expected one per atom")
    return array


def _sizes(counts: dict[str, int], n) -> dict[str, int]:
    if n is None:
        return {g: max(2, int(k)) for g, k in counts.items()}
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise UserError(f"n = {n!r}: expected an integer >= 2 (values to be screened) or None")
    total = sum(counts.values())
    return {g: max(2, int(round(int(n) * k / total))) for g, k in counts.items()}


def fit_exponent(errors, covariate, bounds: tuple[float, float] = EXPONENT_BOUNDS) -> float:
    """Maximum-likelihood β of ``errors ~ Maxwell(s · covariate**β)`` (``s`` profiled out).

    The profile negative log-likelihood per value is ``3/2 · log(mean((e / c^β)²)) + 3β · mean(log c)``
    up to constants; it is minimised over ``β`` in ``bounds``.
    """
    e2 = np.asarray(errors, dtype=float) ** 2
    logc = np.log(np.asarray(covariate, dtype=float))
    mean_logc = float(logc.mean())
    if not np.ptp(logc) > 1e-12:
        return 0.0  # a constant covariate carries no information; β is not identified

    def nll(beta: float) -> float:
        return 1.5 * float(np.log(np.mean(e2 * np.exp(-2.0 * beta * logc)))) + 3.0 * beta * mean_logc

    return float(optimize.minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-6}).x)


def frame_rms(values, frame_ids, symbols) -> np.ndarray:
    """Per atom, the RMS of ``values`` over the atoms of the same frame and element.

    A frame-level state covariate for the ``"scaled"`` scheme: pass the per-atom σ, or the norms of
    the potential's predicted forces, with the frame index of each atom.
    """
    values = np.asarray(values, dtype=float).ravel()
    frame_ids = np.asarray(frame_ids).ravel()
    symbols = np.asarray(symbols, dtype=str).ravel()
    if not (values.size == frame_ids.size == symbols.size):
        raise DataError(
            f"values, frame_ids and symbols have {values.size}, {frame_ids.size} and {symbols.size} "
            "entries; expected one per atom in each"
        )
    keys = np.char.add(np.char.add(frame_ids.astype(str), STATE_SEPARATOR), symbols)
    _, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=values**2)
    counts = np.bincount(inverse)
    return np.sqrt(sums / counts)[inverse]


# -- the entry point ------------------------------------------------------------------------------
def error_cutoffs(
    val_errors,
    val_symbols,
    sampling_symbols,
    n: int | None = None,
    scheme: str = "element",
    *,
    val_scale=None,
    sampling_scale=None,
    val_states=None,
    sampling_states=None,
    family: str = "maxwell",
    robust: bool = False,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    min_values: int = MIN_VALUES,
) -> ErrorCutoffs:
    """Per-atom Maxwell error cutoffs of a sampling set, fitted on validation errors under a scheme.

    Parameters
    ----------
    val_errors : array_like
        Validation force-error magnitudes ``|ΔF|``, eV/Å, one per atom.
    val_symbols, sampling_symbols : array_like of str
        Chemical symbol of each validation / sampling atom.
    n : int or None
        Values to be screened (see the module notes); None: the sampling atoms given, per group.
    scheme : {"global", "element", "sigma", "scaled", "state"}, default "element"
        Grouping scheme (module notes).
    val_scale, sampling_scale : array_like, optional
        Positive per-atom covariate: σ (eV/Å) for ``"sigma"``; any state covariate for
        ``"scaled"`` (σ, or :func:`frame_rms` of σ or of predicted forces). Required by those two.
    val_states, sampling_states : array_like of str, optional
        State label per atom; required by ``"state"``.
    family : {"maxwell", "gamma", "gengamma", "best"}, default "maxwell"
        Family fitted to each group's values. ``"maxwell"`` is the method; ``"best"`` takes the
        best of Maxwell / Gamma / generalized Gamma by KS p-value (:func:`fit_best`, with its
        fallback), for errors that are not Maxwell within a group (see the module notes).
    robust, ks_sample_size, seed, min_values
        As in :func:`~otf_statcut.stats.distributions.fit_distribution`.

    Returns
    -------
    ErrorCutoffs

    Raises
    ------
    UserError
        Unknown scheme, bad ``n``, or a covariate / label the scheme needs is missing.
    DataError
        Bad values or lengths, or a group of the sampling set with too few validation values
        (the message names the group).
    """
    if scheme not in SCHEMES:
        raise UserError(f"unknown error-cutoff scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if family not in FAMILIES:
        raise UserError(f"unknown error-cutoff family {family!r}; expected one of {', '.join(FAMILIES)}")
    errors = as_nonnegative(val_errors, "validation errors")
    val_sym = _labels(val_symbols, errors.size, "validation symbols")
    samp_sym = np.asarray(sampling_symbols, dtype=str).ravel()
    if samp_sym.size == 0:
        raise DataError("sampling symbols: empty, expected one symbol per sampling atom")

    # group keys of validation and sampling atoms
    if scheme == "global":
        val_groups, samp_groups = np.full(errors.size, ALL), np.full(samp_sym.size, ALL)
    elif scheme == "state":
        val_st = _state_labels(val_states, errors.size, "validation states")
        samp_st = _state_labels(sampling_states, samp_sym.size, "sampling states")
        val_groups = np.char.add(np.char.add(val_st, STATE_SEPARATOR), val_sym)
        samp_groups = np.char.add(np.char.add(samp_st, STATE_SEPARATOR), samp_sym)
    else:
        val_groups, samp_groups = val_sym, samp_sym

    # the fitted variable and the per-atom multiplier of its cutoff
    values = errors
    multiplier = np.ones(samp_sym.size)
    exponents: dict[str, float] = {}
    references: dict[str, float] = {}
    if scheme in ("sigma", "scaled"):
        what = "σ" if scheme == "sigma" else "scale covariates"
        val_c = _covariate(val_scale, errors.size, f"validation {what}", scheme)
        samp_c = _covariate(sampling_scale, samp_sym.size, f"sampling {what}", scheme)
        values = np.empty_like(errors)
        for symbol in np.unique(samp_groups):
            v, s = val_groups == symbol, samp_groups == symbol
            if v.sum() < min_values:
                continue  # reported below with the other groups
            if scheme == "sigma":
                beta, ref = 1.0, 1.0
            else:
                ref = float(np.exp(np.mean(np.log(val_c[v]))))
                beta = fit_exponent(errors[v], val_c[v] / ref)
                references[str(symbol)] = ref
            exponents[str(symbol)] = beta
            values[v] = errors[v] / (val_c[v] / ref) ** beta
            multiplier[s] = (samp_c[s] / ref) ** beta

    counts = {str(g): int((samp_groups == g).sum()) for g in np.unique(samp_groups)}
    sizes = _sizes(counts, n)
    fits, cutoffs = {}, {}
    for group in counts:
        group_values = values[val_groups == group]
        if group_values.size < min_values:
            raise DataError(
                f"group {group!r}: {group_values.size} validation values, at least {min_values} are needed "
                f"(the sampling set has {counts[group]} atoms in it)"
            )
        options = dict(robust=robust, ks_sample_size=ks_sample_size, seed=seed, min_values=min_values)
        try:
            if family == "best":
                fits[group] = fit_best(group_values, DEFAULT_CANDIDATES, **options).best
            else:
                fits[group] = fit_distribution(group_values, family, **options)
        except (DataError, FitError) as exc:
            raise type(exc)(f"group {group!r}: {exc}") from None
        cutoffs[group] = fits[group].cutoff(sizes[group])

    per_atom = np.empty(samp_sym.size)
    for group, cut in cutoffs.items():
        per_atom[samp_groups == group] = cut
    per_atom *= multiplier
    return ErrorCutoffs(scheme=scheme, family=family, per_atom=per_atom, groups=samp_groups.astype(str),
                        fits=fits,
                        n=sizes, cutoffs=cutoffs, counts=counts, exponents=exponents, references=references)


__all__ = ["ALL", "EXPONENT_BOUNDS", "FAMILIES", "SCHEMES", "ErrorCutoffs", "error_cutoffs", "fit_exponent",
           "frame_rms"]
