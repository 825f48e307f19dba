"""Classification metrics of uncertainty cutoffs against error cutoffs (paper eqs. 1–3, Fig. 3).

An atom is a **positive** (high error) when its error is strictly above the error cutoff, and
**flagged** (uncertain) when its σ is strictly above the uncertainty cutoff:

* TP: positive and flagged; FP: flagged, not positive; FN: positive, not flagged; TN: neither.
* precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2 TP / (2 TP + FP + FN) (equal to 2PR / (P + R) whenever both are defined).

**0/0.** When a denominator is 0 the metric is undefined and the value ``zero_division`` is
returned, NaN by default: precision with nothing flagged, recall with no positives, F1 with no
positives *and* nothing flagged. F1 with positives but nothing flagged (or the reverse) is 0, not
undefined. Pass ``zero_division=0.0`` (scikit-learn's convention) or 1.0 for a number everywhere.

Sweeps over grids of both cutoffs count with one 2-D histogram of ``searchsorted`` bin indices and
reversed cumulative sums, O(N log K + K_e K_u), never a loop over cutoff pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_finite, same_length


def _ratio(num, den, zero_division: float):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), zero_division)
    return out if out.ndim else float(out)


def precision(tp, fp, zero_division: float = np.nan):
    """TP / (TP + FP); ``zero_division`` when nothing is flagged. Works on scalars or arrays."""
    return _ratio(tp, np.add(tp, fp), zero_division)


def recall(tp, fn, zero_division: float = np.nan):
    """TP / (TP + FN); ``zero_division`` when there are no positives. Works on scalars or arrays."""
    return _ratio(tp, np.add(tp, fn), zero_division)


def f1_score(tp, fp, fn, zero_division: float = np.nan):
    """2 TP / (2 TP + FP + FN); ``zero_division`` when TP + FP + FN = 0. Works on scalars or arrays."""
    two_tp = np.multiply(tp, 2)
    return _ratio(two_tp, two_tp + np.add(fp, fn), zero_division)


@dataclass(frozen=True)
class Confusion:
    """Confusion counts of one (error cutoff, uncertainty cutoff) pair."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def total(self) -> int:
        """Number of atoms counted."""
        return self.tp + self.fp + self.fn + self.tn

    def precision(self, zero_division: float = np.nan) -> float:
        """TP / (TP + FP)."""
        return precision(self.tp, self.fp, zero_division)

    def recall(self, zero_division: float = np.nan) -> float:
        """TP / (TP + FN)."""
        return recall(self.tp, self.fn, zero_division)

    def f1(self, zero_division: float = np.nan) -> float:
        """2 TP / (2 TP + FP + FN)."""
        return f1_score(self.tp, self.fp, self.fn, zero_division)


@dataclass(frozen=True)
class ConfusionGrid:
    """Confusion counts over a grid of cutoffs; every array has shape (n_err, n_unc).

    Attributes
    ----------
    error_cutoffs : ndarray (n_err,)
    sigma_cutoffs : ndarray (n_unc,)
    tp, fp, fn, tn : ndarray of int64, shape (n_err, n_unc)
        Entry ``[i, j]`` counts with ``error_cutoffs[i]`` and ``sigma_cutoffs[j]``.
    """

    error_cutoffs: np.ndarray
    sigma_cutoffs: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def precision(self, zero_division: float = np.nan) -> np.ndarray:
        """Precision on the grid."""
        return precision(self.tp, self.fp, zero_division)

    def recall(self, zero_division: float = np.nan) -> np.ndarray:
        """Recall on the grid."""
        return recall(self.tp, self.fn, zero_division)

    def f1(self, zero_division: float = np.nan) -> np.ndarray:
        """F1 score on the grid."""
        return f1_score(self.tp, self.fp, self.fn, zero_division)


def _pair(errors, sigmas) -> tuple[np.ndarray, np.ndarray]:
    e = as_finite(errors, "errors")
    s = as_finite(sigmas, "sigmas")
    same_length(e, s, "errors", "sigmas")
    return e, s


def confusion(errors, sigmas, error_cutoff: float, sigma_cutoff: float) -> Confusion:
    """Confusion counts for one pair of cutoffs (strict ``>`` on both axes).

    Parameters
    ----------
    errors, sigmas : array_like of the same length
        Per-atom error magnitudes and uncertainties.
    error_cutoff, sigma_cutoff : float
        An atom is positive if ``error > error_cutoff`` and flagged if ``sigma > sigma_cutoff``.

    Returns
    -------
    Confusion
    """
    e, s = _pair(errors, sigmas)
    positive = e > error_cutoff
    flagged = s > sigma_cutoff
    tp = int(np.count_nonzero(positive & flagged))
    n_pos, n_flag = int(np.count_nonzero(positive)), int(np.count_nonzero(flagged))
    return Confusion(tp=tp, fp=n_flag - tp, fn=n_pos - tp, tn=e.size - n_pos - n_flag + tp)


def _bin_counts(values: np.ndarray, cutoffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort the cutoffs and give each value the number of sorted cutoffs strictly below it."""
    cutoffs = as_finite(cutoffs, "cutoffs")
    order = np.argsort(cutoffs, kind="stable")
    index = np.searchsorted(cutoffs[order], values, side="left")  # value > cutoff[k] for k < index
    return cutoffs, order, index


def sweep(errors, sigmas, error_cutoffs, sigma_cutoffs) -> ConfusionGrid:
    """Confusion counts for every pair of an error-cutoff grid and an uncertainty-cutoff grid.

    Equal to calling :func:`confusion` for each pair, in O(N log K) time: each atom is binned by
    how many cutoffs of each grid it exceeds, and ``TP[i, j]`` (atoms above both) is a reversed
    2-D cumulative sum of that histogram.

    Parameters
    ----------
    errors, sigmas : array_like of the same length
        Per-atom error magnitudes and uncertainties.
    error_cutoffs, sigma_cutoffs : array_like
        Grids (any order; output follows the given order).

    Returns
    -------
    ConfusionGrid
        Counts of shape ``(len(error_cutoffs), len(sigma_cutoffs))``.
    """
    e, s = _pair(errors, sigmas)
    ce, order_e, bin_e = _bin_counts(e, error_cutoffs)
    cs, order_s, bin_s = _bin_counts(s, sigma_cutoffs)
    n_e, n_s = ce.size + 1, cs.size + 1
    hist = np.bincount(bin_e * n_s + bin_s, minlength=n_e * n_s).reshape(n_e, n_s)
    # above[a, b] = atoms exceeding at least a sorted error cutoffs and at least b sorted sigma cutoffs
    above = hist[::-1, ::-1].cumsum(axis=0).cumsum(axis=1)[::-1, ::-1]
    tp_sorted = above[1:, 1:]
    positives_sorted = above[1:, 0]  # atoms above each sorted error cutoff
    flagged_sorted = above[0, 1:]  # atoms above each sorted sigma cutoff
    # back to the caller's order
    tp = np.empty_like(tp_sorted)
    tp[np.ix_(order_e, order_s)] = tp_sorted
    positives = np.empty_like(positives_sorted)
    positives[order_e] = positives_sorted
    flagged = np.empty_like(flagged_sorted)
    flagged[order_s] = flagged_sorted
    fp = flagged[None, :] - tp
    fn = positives[:, None] - tp
    tn = e.size - tp - fp - fn
    return ConfusionGrid(error_cutoffs=ce, sigma_cutoffs=cs, tp=tp, fp=fp, fn=fn, tn=tn)


def cutoff_grid(values, num: int = 100) -> np.ndarray:
    """``num`` evenly spaced cutoffs from 0 to the largest value (a default axis for :func:`sweep`)."""
    top = float(np.max(as_finite(values, "values")))
    return np.linspace(0.0, top if top > 0 else 1.0, int(num))
