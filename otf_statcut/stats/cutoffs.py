"""Statistical cutoffs: the minimum (CDF = 1 - 1/n) and maximum cutoffs on the uncertainty scale.

Pure functions, arrays in and values out. The method (paper §2–3):

* the **error fit** is a Maxwell distribution fitted to validation force-error magnitudes; its
  cutoff ``isf(1/n)`` is the error above which fewer than one in ``n`` sampled atoms is expected;
* the **uncertainty fit** is the best (highest KS p-value) of the candidate families fitted to the
  validation uncertainties σ; its cutoff at the same ``n`` is the **minimum** cutoff: σ below it
  is trusted;
* both fits must be **credible** at this ``n`` (:func:`~otf_statcut.stats.distributions.fit_best`:
  no parameter on a search bound, cutoff within the extrapolation limit, KS p-value at least
  ``ks_threshold``); a fit without a credible candidate is the ``"tail"`` fallback (empirical
  body, exponential tail), and ``CutoffSet.fallbacks`` says which and why;
* the **maximum** cutoff carries an error-scale bound (``max_error``, default 1 eV/Å, the paper's
  stability limit) onto the uncertainty scale with the linear map fixed by two points of the two
  fitted distributions:

  .. math::  u(e) = \\bar u + (e - \\bar e)\\,\\frac{u_c - \\bar u}{e_c - \\bar e}

  where :math:`\\bar e, \\bar u` are the means and :math:`e_c, u_c` the cutoffs of the error and
  uncertainty fits, so the error mean maps to the uncertainty mean and the error cutoff to the
  uncertainty cutoff (the minimum).

Failure cases of the mapping, and what happens:

* ``max_error`` below the error cutoff: the model's ordinary validation errors already exceed the
  bound, and the map would put the maximum below the minimum. By default the maximum is
  **clamped** to the minimum (``CutoffSet.clamped`` is True), so every uncertain step is treated as
  beyond the bound, the conservative choice; with ``clamp=False`` a :class:`UserError` is raised.
* a cutoff at or below its distribution's mean (only for tiny ``n``, e.g. n = 2 gives the median):
  the map is undefined or reversed, and :class:`FitError` is raised.
* ``max_error = inf`` gives ``maximum = inf`` (never halt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataError, FitError, UserError
from ._validate import as_nonnegative, same_length
from .distributions import (
    DEFAULT_CANDIDATES,
    EXTRAPOLATION_FACTOR,
    KS_SAMPLE_SIZE,
    KS_THRESHOLD,
    SEED,
    BestFit,
    DistributionFit,
    Rejection,
    fit_best,
)

#: Error-scale bound (eV/Å) mapped onto the uncertainty scale as the maximum cutoff.
DEFAULT_MAX_ERROR = 1.0


@dataclass(frozen=True)
class CutoffSet:
    """The two cutoffs on the uncertainty scale and the fits they come from.

    Attributes
    ----------
    error_fit : DistributionFit
        Maxwell fit of the validation force-error magnitudes (eV/Å).
    uncertainty_fit : DistributionFit
        Best fit of the validation uncertainties σ (eV/Å).
    n : int
        Sampling-set size the cutoffs are for (CDF = 1 - 1/n).
    error_cutoff : float
        ``error_fit.cutoff(n)``, eV/Å.
    minimum : float
        ``uncertainty_fit.cutoff(n)``: σ below it is trusted.
    maximum : float
        ``max_error`` mapped onto the uncertainty scale: σ above it is beyond the bound.
    max_error : float
        Error-scale bound, eV/Å.
    uncertainty_candidates : tuple of DistributionFit
        KS evidence of every uncertainty candidate (empty if not recorded).
    error_fallback, uncertainty_fallback : str
        Why the error / uncertainty fit is the ``"tail"`` fallback (no credible candidate, see
        :func:`~otf_statcut.stats.distributions.fit_best`); empty when it is not.
    error_rejections, uncertainty_rejections : tuple of Rejection
        The credibility rules the candidates of each fit failed (empty if none or not recorded).
    """

    error_fit: DistributionFit
    uncertainty_fit: DistributionFit
    n: int
    error_cutoff: float
    minimum: float
    maximum: float
    max_error: float = DEFAULT_MAX_ERROR
    uncertainty_candidates: tuple[DistributionFit, ...] = field(default=(), repr=False)
    error_fallback: str = field(default="", repr=False)
    uncertainty_fallback: str = field(default="", repr=False)
    error_rejections: tuple[Rejection, ...] = field(default=(), repr=False)
    uncertainty_rejections: tuple[Rejection, ...] = field(default=(), repr=False)

    @property
    def clamped(self) -> bool:
        """True when ``max_error`` is below the error cutoff, so ``maximum`` was set to ``minimum``."""
        return bool(self.max_error < self.error_cutoff)

    @property
    def fallbacks(self) -> dict[str, str]:
        """``{"error": reason, "uncertainty": reason}`` for the fits that are the tail fallback
        (empty when both fits are credible candidates)."""
        out = {}
        if self.error_fallback or self.error_fit.is_fallback:
            out["error"] = self.error_fallback or "tail fallback"
        if self.uncertainty_fallback or self.uncertainty_fit.is_fallback:
            out["uncertainty"] = self.uncertainty_fallback or "tail fallback"
        return out

    @property
    def fallback(self) -> bool:
        """True when either fit is the tail fallback."""
        return bool(self.fallbacks)

    def to_dict(self) -> dict:
        """Plain, JSON-ready summary (``fallbacks``, ``error_rejections`` and
        ``uncertainty_rejections`` say which fits are the fallback and which candidates were
        rejected, and why; each uncertainty candidate carries its ``rejected`` reasons)."""
        rejected = {}
        for r in self.uncertainty_rejections:
            rejected.setdefault(r.name, []).append(f"{r.rule}: {r.reason}")
        return {
            "n": int(self.n),
            "error_cutoff": float(self.error_cutoff),
            "minimum": float(self.minimum),
            "maximum": float(self.maximum),
            "max_error": float(self.max_error),
            "clamped": self.clamped,
            "error_fit": self.error_fit.to_dict(),
            "uncertainty_fit": self.uncertainty_fit.to_dict(),
            "uncertainty_candidates": [
                {**fit.to_dict(), "rejected": rejected.get(fit.name, [])} for fit in self.uncertainty_candidates
            ],
            "fallbacks": self.fallbacks,
            "error_rejections": [r.to_dict() for r in self.error_rejections],
            "uncertainty_rejections": [r.to_dict() for r in self.uncertainty_rejections],
        }


@dataclass(frozen=True)
class ElementCutoff:
    """Fit and cutoff of one chemical species (see :func:`per_element_cutoffs`)."""

    symbol: str
    fit: BestFit
    n: int
    cutoff: float


def error_to_uncertainty(error, error_fit: DistributionFit, uncertainty_fit: DistributionFit, n: float):
    """Map error-scale values (eV/Å) onto the uncertainty scale with the two-point linear map.

    The map sends ``error_fit.mean()`` to ``uncertainty_fit.mean()`` and ``error_fit.cutoff(n)`` to
    ``uncertainty_fit.cutoff(n)`` (see the module notes).

    Raises
    ------
    FitError
        If either cutoff is not above its distribution's mean (``n`` too small).
    """
    e_mean, e_cut = error_fit.mean(), error_fit.cutoff(n)
    u_mean, u_cut = uncertainty_fit.mean(), uncertainty_fit.cutoff(n)
    for what, mean, cut in (("error", e_mean, e_cut), ("uncertainty", u_mean, u_cut)):
        if not cut > mean:
            raise FitError(
                f"{what} cutoff {cut:g} at n = {n:g} is not above the {what} mean {mean:g}; "
                "the error-to-uncertainty map needs a larger n"
            )
    slope = (u_cut - u_mean) / (e_cut - e_mean)
    return u_mean + (np.asarray(error, dtype=float) - e_mean) * slope


def maximum_cutoff(
    error_fit: DistributionFit,
    uncertainty_fit: DistributionFit,
    n: float,
    max_error: float = DEFAULT_MAX_ERROR,
    *,
    clamp: bool = True,
) -> float:
    """The maximum cutoff: ``max_error`` (eV/Å) mapped onto the uncertainty scale.

    Parameters
    ----------
    error_fit, uncertainty_fit : DistributionFit
        Fits of the validation errors and uncertainties.
    n : float
        Sampling-set size.
    max_error : float, default 1.0
        Error-scale bound in eV/Å (``inf`` disables the maximum).
    clamp : bool, default True
        If ``max_error`` is below the error cutoff, return the minimum cutoff (True) or raise (False).

    Raises
    ------
    UserError
        ``max_error`` not positive, or below the error cutoff with ``clamp=False``.
    FitError
        From :func:`error_to_uncertainty`.
    """
    max_error = float(max_error)
    if not max_error > 0:
        raise UserError(f"max_error = {max_error:g} eV/Å; expected a bound > 0")
    error_cutoff = error_fit.cutoff(n)
    minimum = uncertainty_fit.cutoff(n)
    if max_error < error_cutoff:
        if clamp:
            return minimum
        raise UserError(
            f"max_error = {max_error:g} eV/Å is below the error cutoff {error_cutoff:g} eV/Å at n = {n:g}: "
            "the validation errors already exceed the bound; raise max_error or improve the model"
        )
    if np.isinf(max_error):
        return float("inf")
    return float(error_to_uncertainty(max_error, error_fit, uncertainty_fit, n))


def statistical_cutoffs(
    errors,
    sigmas,
    n: int,
    max_error: float = DEFAULT_MAX_ERROR,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    robust: bool = False,
    *,
    clamp: bool = True,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    ks_threshold: float = KS_THRESHOLD,
    extrapolation_factor: float = EXTRAPOLATION_FACTOR,
    fallback: bool = True,
) -> CutoffSet:
    """Fit errors and uncertainties of a validation set and derive the minimum and maximum cutoffs.

    Both fits go through the credibility check of
    :func:`~otf_statcut.stats.distributions.fit_best` at this ``n``: the Maxwell error fit (KS
    threshold and extrapolation rule; it has no search bound) and every uncertainty candidate.
    A fit with no credible candidate is the ``"tail"`` fallback, recorded in
    ``CutoffSet.error_fallback`` / ``uncertainty_fallback``.

    Parameters
    ----------
    errors : array_like
        Validation force-error magnitudes, eV/Å (fitted with a Maxwell distribution).
    sigmas : array_like
        Validation uncertainties σ, eV/Å (best of ``candidates``). Need not be the same length as
        ``errors``.
    n : int
        Sampling-set size: the cutoffs sit at CDF = 1 - 1/n.
    max_error : float, default 1.0
        Error-scale bound, eV/Å, mapped onto the uncertainty scale as the maximum.
    candidates : sequence of str, default ("maxwell", "gamma", "gengamma")
        Families tried for the uncertainties.
    robust : bool, default False
        Trimmed refits for both fits (see :func:`~otf_statcut.stats.distributions.fit_distribution`).
    clamp, ks_sample_size, seed
        See :func:`maximum_cutoff` and :func:`~otf_statcut.stats.distributions.fit_distribution`.
    ks_threshold, extrapolation_factor, fallback
        Credibility check and fallback, as in :func:`~otf_statcut.stats.distributions.fit_best`.

    Returns
    -------
    CutoffSet

    Raises
    ------
    FitError
        A fit failed, or (``fallback=False``) has no credible candidate; see also
        :func:`maximum_cutoff`.
    """
    credibility = dict(
        robust=robust, ks_sample_size=ks_sample_size, seed=seed, n=n, ks_threshold=ks_threshold,
        extrapolation_factor=extrapolation_factor, fallback=fallback,
    )
    error_best = fit_best(errors, ("maxwell",), **credibility)
    best = fit_best(sigmas, candidates, **credibility)
    error_fit, uncertainty_fit = error_best.best, best.best
    maximum = maximum_cutoff(error_fit, uncertainty_fit, n, max_error, clamp=clamp)
    return CutoffSet(
        error_fit=error_fit,
        uncertainty_fit=uncertainty_fit,
        n=int(n),
        error_cutoff=error_fit.cutoff(n),
        minimum=uncertainty_fit.cutoff(n),
        maximum=maximum,
        max_error=float(max_error),
        uncertainty_candidates=best.candidates,
        error_fallback=error_best.fallback,
        uncertainty_fallback=best.fallback,
        error_rejections=error_best.rejections,
        uncertainty_rejections=best.rejections,
    )


def group_by_symbol(values, symbols) -> dict[str, np.ndarray]:
    """Split ``values`` by chemical symbol: ``{symbol: values of that species}``, symbols sorted.

    Raises
    ------
    DataError
        If ``values`` and ``symbols`` differ in length.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    symbols = np.asarray(symbols, dtype=str).ravel()
    same_length(values, symbols, "values", "symbols")
    return {str(s): values[symbols == s] for s in np.unique(symbols)}


def _n_for(n, symbol: str, default: int) -> int:
    if n is None:
        return default
    if isinstance(n, Mapping):
        if symbol not in n:
            raise UserError(f"no sampling-set size n given for element {symbol!r}")
        return int(n[symbol])
    return int(n)


def per_element_cutoffs(
    values,
    symbols,
    n: int | Mapping[str, int] | None = None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    robust: bool = False,
    *,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    ks_threshold: float = KS_THRESHOLD,
    extrapolation_factor: float = EXTRAPOLATION_FACTOR,
    fallback: bool = True,
) -> dict[str, ElementCutoff]:
    """Fit each chemical species separately and give its cutoff.

    Parameters
    ----------
    values : array_like
        Non-negative per-atom values (error magnitudes or σ).
    symbols : array_like of str
        Chemical symbol of each value.
    n : int, mapping of symbol to int, or None
        Sampling-set size; None means the number of values of that species.
    candidates, robust, ks_sample_size, seed, ks_threshold, extrapolation_factor, fallback
        As in :func:`~otf_statcut.stats.distributions.fit_best` (the credibility check runs at each
        species' ``n``; ``ElementCutoff.fit.fallback`` says when a species got the tail fallback).

    Returns
    -------
    dict of str to ElementCutoff, keyed by symbol (sorted)

    Raises
    ------
    DataError
        Bad values, mismatched lengths, or a species with too few values (the message names it).
    """
    as_nonnegative(values, "values")
    result = {}
    for symbol, group in group_by_symbol(values, symbols).items():
        n_symbol = _n_for(n, symbol, group.size)
        try:
            fit = fit_best(
                group, candidates, robust=robust, ks_sample_size=ks_sample_size, seed=seed,
                n=n_symbol if n_symbol > 1 else None, ks_threshold=ks_threshold,
                extrapolation_factor=extrapolation_factor, fallback=fallback,
            )
        except (DataError, FitError) as exc:
            raise type(exc)(f"element {symbol}: {exc}") from None
        result[symbol] = ElementCutoff(symbol=symbol, fit=fit, n=n_symbol, cutoff=fit.cutoff(n_symbol))
    return result


def per_element_statistical_cutoffs(
    errors,
    sigmas,
    symbols,
    n: int | Mapping[str, int],
    max_error: float = DEFAULT_MAX_ERROR,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    robust: bool = False,
    *,
    clamp: bool = True,
    ks_sample_size: int = KS_SAMPLE_SIZE,
    seed: int = SEED,
    ks_threshold: float = KS_THRESHOLD,
    extrapolation_factor: float = EXTRAPOLATION_FACTOR,
    fallback: bool = True,
) -> dict[str, CutoffSet]:
    """:func:`statistical_cutoffs` for each chemical species; ``errors``, ``sigmas``, ``symbols`` per atom.

    The credibility check and fallback run per species at that species' ``n``."""
    errors = as_nonnegative(errors, "errors")
    sigmas = as_nonnegative(sigmas, "sigmas")
    same_length(errors, sigmas, "errors", "sigmas")
    by_error = group_by_symbol(errors, symbols)
    by_sigma = group_by_symbol(sigmas, symbols)
    result = {}
    for symbol in by_error:
        try:
            result[symbol] = statistical_cutoffs(
                by_error[symbol],
                by_sigma[symbol],
                _n_for(n, symbol, by_error[symbol].size),
                max_error,
                candidates,
                robust,
                clamp=clamp,
                ks_sample_size=ks_sample_size,
                seed=seed,
                ks_threshold=ks_threshold,
                extrapolation_factor=extrapolation_factor,
                fallback=fallback,
            )
        except (DataError, FitError) as exc:
            raise type(exc)(f"element {symbol}: {exc}") from None
    return result
