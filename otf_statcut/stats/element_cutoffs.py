"""Cutoffs per chemical element, and the per-atom thresholds every decision reads.

In a multi-element system the elements' force-error scales differ (Li and Al in a Li–Al alloy by
2.3×), so one fit of the pooled values is a mixture: the light element's tail hides under the
heavy element's bulk, and the heavy element's ordinary errors sit above the pooled cutoff. Per
element, each species gets its own error fit, σ fit, N and cutoffs, and each atom is judged by
its element's cutoffs.

* **N per element** is the number of that element's per-atom values screened (run: steps ×
  atoms of the element in the cell; benchmark: that element's atoms in the sampling set), so the
  expected number of atoms above each element's error cutoff is about 1, as for one global fit.
* **An element with too few validation values** (fewer than ``MIN_VALUES``) is judged by the
  pooled fits evaluated at that element's N; it is listed in ``ElementCutoffs.pooled`` so the
  record says so.
* ``per_element=None`` (auto) means per element exactly when the values hold more than one
  element.

:func:`thresholds` gives per-atom minimum, maximum and error cutoffs for a
:class:`~otf_statcut.stats.CutoffSet` (the same for every atom) or an :class:`ElementCutoffs`, so
the decision and the metrics code never branch on which one they have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import re

import numpy as np

from ..errors import DataError
from .cutoffs import DEFAULT_MAX_ERROR, CutoffSet, maximum_cutoff, statistical_cutoffs
from .distributions import DEFAULT_CANDIDATES, MIN_VALUES, DistributionFit

#: What counts as a chemical symbol among the keys of ``n`` (other keys only add to the total N).
_SYMBOL = re.compile(r"[A-Z][a-z]?")

__all__ = ["ElementCutoffs", "fit_cutoffs", "thresholds", "cutoffs_to_dict", "cutoffs_from_dict", "describe"]


@dataclass(frozen=True)
class ElementCutoffs:
    """One :class:`CutoffSet` per chemical element, plus the pooled fit for reference.

    Attributes
    ----------
    by_element : dict of str to CutoffSet
        Cutoffs of each element (sorted by symbol), each at that element's N.
    pooled_cutoffs : CutoffSet
        The fit of all values together, at the total N (recorded for comparison; also the fit
        used for the elements in :attr:`pooled`).
    pooled : tuple of str
        Elements with fewer than ``MIN_VALUES`` validation values, judged by the pooled fits.
    """

    by_element: dict[str, CutoffSet]
    pooled_cutoffs: CutoffSet
    pooled: tuple[str, ...] = field(default=())

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(self.by_element)

    @property
    def minimum(self) -> float:
        """Smallest per-element minimum cutoff (a one-number summary for logs; decisions use
        :func:`thresholds`)."""
        return min(c.minimum for c in self.by_element.values())

    @property
    def maximum(self) -> float:
        """Smallest per-element maximum cutoff (summary for logs)."""
        return min(c.maximum for c in self.by_element.values())

    @property
    def error_cutoff(self) -> float:
        """Smallest per-element error cutoff (summary for logs)."""
        return min(c.error_cutoff for c in self.by_element.values())

    @property
    def clamped(self) -> bool:
        return any(c.clamped for c in self.by_element.values())

    def to_dict(self) -> dict:
        return cutoffs_to_dict(self)


def _scalar(cutoffs, name: str) -> float:
    value = float(getattr(cutoffs, name))
    if np.isnan(value):
        raise ValueError(f"cutoffs.{name} is NaN")
    return value


def thresholds(cutoffs, symbols: Sequence[str] | None = None, n_atoms: int | None = None):
    """Per-atom ``(minimum, maximum, error_cutoff)`` arrays (eV/Å).

    Parameters
    ----------
    cutoffs : CutoffSet or ElementCutoffs
        Or any object with float attributes ``minimum``, ``maximum`` (and ``error_cutoff``).
    symbols : sequence of str, optional
        Chemical symbol of each atom; required for :class:`ElementCutoffs`.
    n_atoms : int, optional
        Number of atoms when ``symbols`` is not given.

    Raises
    ------
    DataError
        An atom's element has no cutoffs.
    """
    if isinstance(cutoffs, ElementCutoffs):
        if symbols is None:
            raise DataError("per-element cutoffs need the chemical symbol of every atom")
        symbols = np.asarray(symbols, dtype=str)
        out = np.empty((3, symbols.size))
        for symbol in np.unique(symbols):
            if symbol not in cutoffs.by_element:
                raise DataError(f"no cutoffs for element {symbol}; the model's data set has "
                                f"{', '.join(cutoffs.by_element)}")
            c = cutoffs.by_element[symbol]
            out[:, symbols == symbol] = np.array([[c.minimum], [c.maximum], [c.error_cutoff]])
        return out[0], out[1], out[2]
    size = len(symbols) if symbols is not None else int(n_atoms if n_atoms is not None else 1)
    error = getattr(cutoffs, "error_cutoff", np.nan)
    return (np.full(size, _scalar(cutoffs, "minimum")), np.full(size, _scalar(cutoffs, "maximum")),
            np.full(size, float(error)))


def _at_n(pooled: CutoffSet, n: int) -> CutoffSet:
    """The pooled fits evaluated at another N."""
    return CutoffSet(
        error_fit=pooled.error_fit, uncertainty_fit=pooled.uncertainty_fit, n=int(n),
        error_cutoff=pooled.error_fit.cutoff(n), minimum=pooled.uncertainty_fit.cutoff(n),
        maximum=maximum_cutoff(pooled.error_fit, pooled.uncertainty_fit, n, pooled.max_error),
        max_error=pooled.max_error, uncertainty_candidates=pooled.uncertainty_candidates,
        error_fallback=pooled.error_fallback, uncertainty_fallback=pooled.uncertainty_fallback,
        error_rejections=pooled.error_rejections, uncertainty_rejections=pooled.uncertainty_rejections,
    )


def fit_cutoffs(
    errors,
    sigmas,
    symbols: Sequence[str],
    n: Mapping[str, int],
    *,
    per_element: bool | None = None,
    max_error: float = DEFAULT_MAX_ERROR,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    robust: bool = False,
    **fit_options,
) -> CutoffSet | ElementCutoffs:
    """Global or per-element statistical cutoffs from validation errors and σ.

    Parameters
    ----------
    errors, sigmas : array_like, shape (n_atoms,)
        Validation force-error magnitudes and σ (eV/Å), one per validation atom.
    symbols : sequence of str, shape (n_atoms,)
        Chemical symbol of each validation atom.
    n : mapping of str to int
        Sampling-set size per element (per-atom values screened); the global N is the sum.
    per_element : bool or None
        None (default): per element when the validation atoms hold more than one element, or
        ``n`` names more than one.
    max_error, candidates, robust, **fit_options
        As in :func:`~otf_statcut.stats.statistical_cutoffs`.
    """
    errors = np.asarray(errors, dtype=float).ravel()
    sigmas = np.asarray(sigmas, dtype=float).ravel()
    symbols = np.asarray(symbols, dtype=str).ravel()
    if not (errors.size == sigmas.size == symbols.size):
        raise DataError(f"errors ({errors.size}), sigmas ({sigmas.size}) and symbols ({symbols.size}) "
                        "must have one value per validation atom")
    n = {str(k): int(v) for k, v in n.items()}
    total = max(2, sum(n.values()))
    pooled = statistical_cutoffs(errors, sigmas, total, max_error, candidates, robust, **fit_options)
    elements = sorted(set(np.unique(symbols).tolist()) | {k for k in n if _SYMBOL.fullmatch(k)})
    if per_element is None:
        per_element = len(elements) > 1
    if not per_element:
        return pooled
    by_element, pooled_elements = {}, []
    for symbol in elements:
        n_symbol = max(2, n.get(symbol, 0))
        mask = symbols == symbol
        if int(mask.sum()) < MIN_VALUES:
            by_element[symbol] = _at_n(pooled, n_symbol)
            pooled_elements.append(symbol)
            continue
        by_element[symbol] = statistical_cutoffs(errors[mask], sigmas[mask], n_symbol, max_error, candidates,
                                                 robust, **fit_options)
    return ElementCutoffs(by_element=by_element, pooled_cutoffs=pooled, pooled=tuple(pooled_elements))


def describe(cutoffs, digits: int = 3) -> str:
    """One line for logs: ``min 0.12 max 0.80`` or ``Au min 0.1 max 0.7 | Cu min 0.2 max 0.9``."""
    def pair(c) -> str:
        return f"min {c.minimum:.{digits}g} max {c.maximum:.{digits}g}"

    if isinstance(cutoffs, ElementCutoffs):
        return " | ".join(f"{s} {pair(c)}" for s, c in cutoffs.by_element.items())
    return pair(cutoffs)


# ---------------------------------------------------------------------------- JSON form
def cutoffs_to_dict(cutoffs) -> dict:
    """JSON-ready form of a CutoffSet (``{"kind": "global", ...}``) or ElementCutoffs
    (``{"kind": "per_element", "elements": {...}, "pooled": {...}, "pooled_elements": [...]}``)."""
    if isinstance(cutoffs, ElementCutoffs):
        return {"kind": "per_element",
                "elements": {s: c.to_dict() for s, c in cutoffs.by_element.items()},
                "pooled": cutoffs.pooled_cutoffs.to_dict(),
                "pooled_elements": list(cutoffs.pooled)}
    return {"kind": "global", **cutoffs.to_dict()}


def _cutoffset_from_dict(d: Mapping) -> CutoffSet:
    return CutoffSet(
        error_fit=DistributionFit.from_dict(d["error_fit"]),
        uncertainty_fit=DistributionFit.from_dict(d["uncertainty_fit"]),
        n=int(d["n"]), error_cutoff=float(d["error_cutoff"]), minimum=float(d["minimum"]),
        maximum=float(d["maximum"]), max_error=float(d["max_error"]),
        uncertainty_candidates=tuple(DistributionFit.from_dict(c) for c in d.get("uncertainty_candidates", ())),
        error_fallback=str(d.get("fallbacks", {}).get("error", "")),
        uncertainty_fallback=str(d.get("fallbacks", {}).get("uncertainty", "")),
    )


def cutoffs_from_dict(d: Mapping) -> CutoffSet | ElementCutoffs:
    """Inverse of :func:`cutoffs_to_dict`."""
    if d.get("kind") == "per_element":
        return ElementCutoffs(
            by_element={s: _cutoffset_from_dict(c) for s, c in sorted(d["elements"].items())},
            pooled_cutoffs=_cutoffset_from_dict(d["pooled"]),
            pooled=tuple(d.get("pooled_elements", ())),
        )
    return _cutoffset_from_dict(d)
