"""Benchmark metrics on arrays: per iteration (the paper's Fig. 3–5 quantities) and over seeds.

Pure functions over per-atom / per-frame arrays of one iteration; the classification counts come
from :mod:`otf_statcut.stats.metrics` (strict ``>`` on both axes) and the frame classes from the
shared decision function (through :func:`~otf_statcut.benchmark.selection.classify_frames`).

Over seeds (:func:`seed_statistics`): every (dataset, method, seed) run gives one final summary;
per dataset × method the mean and sample standard deviation (``ddof=1``; NaN for a single seed)
over seeds of the DFT labels, iterations, final sampling and validation errors, and of the
*labels needed to come within 10 % of the oracle* (:func:`labels_to_reach`: the data-set size of
the first iteration whose ``mean_error_sampling`` is at most ``ORACLE_TOLERANCE`` × the final
sampling error of the oracle run with the same dataset and seed; NaN when never reached; the
mean and sd are over the seeds that reached it, and how many did is reported).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from otf_statcut.engine.decision import Action
from otf_statcut.stats import confusion, sweep

from .selection import classify_frames

__all__ = ["Classification", "classification", "frame_counts", "frame_max", "sweep_grids", "mean_or_nan",
           "ORACLE_TOLERANCE", "labels_to_reach", "oracle_targets", "SeedStatistics", "seed_statistics",
           "mean_sd"]

#: "Within 10 % of the oracle": a sampling error at most this factor times the oracle's final one.
ORACLE_TOLERANCE = 1.1


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


def frame_counts(frame_sigma, minimum: float, maximum: float, labelled) -> tuple[int, int]:
    """Unlabelled frames the decision rule would label (between the cutoffs) and halt on (above
    the maximum).

    Parameters
    ----------
    frame_sigma : array, shape (n_frames,)
        Per-frame max σ.
    minimum, maximum : float
        The uncertainty cutoffs.
    labelled : sequence of int or bool mask
        Sampling positions already in the data set; they are not counted.
    """
    actions = classify_frames(frame_sigma, minimum, maximum)
    free = np.ones(actions.size, dtype=bool)
    labelled = np.asarray(labelled)
    if labelled.dtype == bool:
        free &= ~labelled
    elif labelled.size:
        free[labelled.astype(np.int64)] = False
    return (int(np.count_nonzero((actions == Action.LABEL) & free)),
            int(np.count_nonzero((actions == Action.HALT) & free)))


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


# ------------------------------------------------------------------------------------- over seeds
def labels_to_reach(sizes: Sequence[float], errors: Sequence[float], target: float) -> float:
    """Data-set size of the first iteration with ``error <= target`` (NaN if none or no target).

    Parameters
    ----------
    sizes, errors : sequences
        Per iteration, in order: data-set size (DFT labels) and mean sampling error.
    target : float
        The error to reach (NaN: unknown, gives NaN).
    """
    if not math.isfinite(target):
        return float("nan")
    for size, error in zip(sizes, errors):
        if error <= target:
            return float(size)
    return float("nan")


def oracle_targets(final_errors: Mapping[tuple[str, str, int], float],
                   tolerance: float = ORACLE_TOLERANCE) -> dict[tuple[str, int], float]:
    """``(dataset, seed) -> tolerance × final sampling error of the oracle run`` from
    ``{(dataset, method, seed): final sampling error}`` (finished runs)."""
    return {(d, s): tolerance * float(e) for (d, m, s), e in final_errors.items() if m == "oracle"}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the finite values; NaN where undefined."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan"))


@dataclass(frozen=True)
class SeedStatistics:
    """One dataset × method over its seeds (one row of ``summary_mean.csv``).

    ``*_mean`` / ``*_sd``: mean and sample standard deviation over the seeds (sd NaN for one
    seed). ``labels_to_oracle_*``: over the seeds that came within ``ORACLE_TOLERANCE`` of their
    oracle; ``labels_to_oracle_reached`` of ``labels_to_oracle_runs`` seeds (those whose oracle run
    has finished) did.
    """

    dataset: str
    method: str
    n_seeds: int
    seeds: str  # the seeds, space-separated
    statuses: str  # final statuses with counts, e.g. "converged:4 max_iterations:1"
    dft_labels_mean: float
    dft_labels_sd: float
    iterations_mean: float
    iterations_sd: float
    final_mean_error_sampling_mean: float
    final_mean_error_sampling_sd: float
    final_mean_error_val_mean: float
    final_mean_error_val_sd: float
    labels_to_oracle_mean: float
    labels_to_oracle_sd: float
    labels_to_oracle_reached: int
    labels_to_oracle_runs: int


def seed_statistics(summaries: Sequence, curves: Mapping[tuple[str, str, int], tuple[Sequence, Sequence]],
                    tolerance: float = ORACLE_TOLERANCE) -> tuple[list[SeedStatistics], dict]:
    """Aggregate finished runs over seeds.

    Parameters
    ----------
    summaries : sequence of MethodSummary
        Finished runs (``dataset``, ``method``, ``seed``, ``status``, ``dft_labels``,
        ``iterations``, ``final_mean_error_sampling``, ``final_mean_error_val``).
    curves : mapping
        ``(dataset, method, seed) -> (dataset sizes, mean sampling errors)`` per iteration.
    tolerance : float
        Factor on the oracle's final sampling error (1.1: within 10 %).

    Returns
    -------
    rows : list of SeedStatistics
        One per dataset × method, in the order they first appear in ``summaries``.
    per_run : dict
        ``(dataset, method, seed) -> (target, labels)``: the seed's target error (NaN without a
        finished oracle run) and the labels needed to reach it (NaN: not reached or no target).
    """
    targets = oracle_targets({(s.dataset, s.method, s.seed): s.final_mean_error_sampling for s in summaries},
                             tolerance)
    per_run = {}
    groups: dict[tuple[str, str], list] = {}
    for s in summaries:
        groups.setdefault((s.dataset, s.method), []).append(s)
        target = targets.get((s.dataset, s.seed), float("nan"))
        sizes, errors = curves.get((s.dataset, s.method, s.seed), ((), ()))
        per_run[(s.dataset, s.method, s.seed)] = (target, labels_to_reach(sizes, errors, target))
    rows = []
    for (dataset, method), runs in groups.items():
        runs = sorted(runs, key=lambda r: r.seed)
        reach = [per_run[(dataset, method, r.seed)] for r in runs]
        with_target = [labels for target, labels in reach if math.isfinite(target)]
        reached = [x for x in with_target if math.isfinite(x)]
        statuses = Counter(r.status for r in runs)
        rows.append(SeedStatistics(
            dataset, method, len(runs), " ".join(str(r.seed) for r in runs),
            " ".join(f"{k}:{v}" for k, v in statuses.items()),
            *mean_sd([r.dft_labels for r in runs]),
            *mean_sd([r.iterations for r in runs]),
            *mean_sd([r.final_mean_error_sampling for r in runs]),
            *mean_sd([r.final_mean_error_val for r in runs]),
            *mean_sd(reached),
            len(reached), len(with_target),
        ))
    return rows, per_run
