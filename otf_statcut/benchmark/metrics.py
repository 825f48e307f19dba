"""Per-iteration benchmark metrics on arrays (the paper's Fig. 3–5 quantities).

Pure functions over per-atom / per-frame arrays of one iteration; the classification counts come
from :mod:`otf_statcut.stats.metrics` (strict ``>`` on both axes) and the frame classes from the
shared decision function (through :func:`~otf_statcut.benchmark.selection.classify_frames`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from otf_statcut.engine.decision import Action
from otf_statcut.stats import confusion, sweep

from .selection import classify_frames

__all__ = ["Classification", "classification", "frame_counts", "frame_max", "sweep_grids", "mean_or_nan"]


@dataclass(frozen=True)
class Classification:
    """Per-atom classification of the sampling set at one (error cutoff, σ cutoff) pair."""

    true_positive: int
    uncertain: int
    high_error: int
    precision: float
    recall: float
    f1: float


def classification(errors, sigmas, error_cutoff: float, sigma_cutoff: float) -> Classification:
    """True positives, uncertain and high-error counts, precision, recall and F1.

    An atom has a high error when ``error > error_cutoff`` and is uncertain when
    ``σ > sigma_cutoff``; undefined ratios (0/0) are NaN.
    """
    c = confusion(errors, sigmas, error_cutoff, sigma_cutoff)
    return Classification(
        true_positive=c.tp,
        uncertain=c.tp + c.fp,
        high_error=c.tp + c.fn,
        precision=float(c.precision()),
        recall=float(c.recall()),
        f1=float(c.f1()),
    )


def frame_counts(frame_sigma, minimum: float, maximum: float) -> tuple[int, int]:
    """Frames labelled (between the cutoffs) and halting (above the maximum) by the decision rule."""
    actions = classify_frames(frame_sigma, minimum, maximum)
    return int(np.count_nonzero(actions == Action.LABEL)), int(np.count_nonzero(actions == Action.HALT))


def frame_max(per_atom: Sequence[np.ndarray]) -> np.ndarray:
    """Per-frame maximum of per-atom values (the per-frame reduction used throughout)."""
    return np.array([float(np.max(v)) for v in per_atom], dtype=np.float64)


def _axis(values: np.ndarray, cutoff: float, points: int) -> np.ndarray:
    """Grid from 0 to twice the statistical cutoff or the 99.5 % quantile, whichever is larger
    (a few extreme outliers would otherwise squeeze the interesting region into one cell)."""
    finite = values[np.isfinite(values)]
    top = float(np.quantile(finite, 0.995)) if finite.size else 1.0
    if np.isfinite(cutoff):
        top = max(top, 2.0 * float(cutoff))
    return np.linspace(0.0, top if top > 0 else 1.0, int(points))


def sweep_grids(errors, sigmas, error_cutoff: float, sigma_cutoff: float,
                points: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 over a grid of error × uncertainty cutoffs (paper Fig. 3).

    Returns
    -------
    dict
        ``sweep_error_cutoffs`` (n,), ``sweep_sigma_cutoffs`` (n,), and ``sweep_precision``,
        ``sweep_recall``, ``sweep_f1`` of shape (n, n) indexed ``[error, sigma]`` (NaN where 0/0).
    """
    e = np.asarray(errors, dtype=np.float64)
    s = np.asarray(sigmas, dtype=np.float64)
    grid = sweep(e, s, _axis(e, error_cutoff, points), _axis(s, sigma_cutoff, points))
    return {
        "sweep_error_cutoffs": grid.error_cutoffs,
        "sweep_sigma_cutoffs": grid.sigma_cutoffs,
        "sweep_precision": grid.precision(),
        "sweep_recall": grid.recall(),
        "sweep_f1": grid.f1(),
    }


def mean_or_nan(values: Sequence[np.ndarray]) -> float:
    """Mean of concatenated per-atom arrays; NaN when there are none."""
    arrays = [np.asarray(v).ravel() for v in values]
    total = sum(a.size for a in arrays)
    return float(np.concatenate(arrays).mean()) if total else float("nan")
