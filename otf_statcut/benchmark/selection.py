"""Which sampled frames one active-learning iteration adds: pure functions on per-frame arrays.

The paper's replay rule (section 4): walk the sampling set in its recorded order; the first frame
whose uncertainty is above the **maximum** cutoff stops the walk (an MLIP-driven trajectory would
have become unstable there, so nothing after it can be reached); the frames before it whose
uncertainty is above the **minimum** cutoff are candidates; at most as many frames are added as
the data set already holds (the set at most doubles per iteration).

Every frame is classified by :func:`otf_statcut.engine.decision.decide`, the same function the
on-the-fly engine applies at every MD step, so the benchmark and ``otf-statcut run`` can never
disagree on a boundary case (``σ == minimum`` labels, ``σ == maximum`` labels, NaN halts).

Choices the paper leaves open, made here:

* **Per-frame value.** A frame's uncertainty is the maximum of its per-atom σ (what ``decide``
  looks at: one uncertain atom makes the configuration uncertain).
* **The halting frame.** The paper: "No datapoint can be added ... that is greater than the first
  point that has an uncertainty above this upper cutoff". The halting frame itself is not *after*
  that point, and the on-the-fly engine labels the configuration at which it halts, so it is a
  candidate by default (``include_halt=True``). Without this, a sampling set whose first
  unlabelled frame is above the maximum could never progress.
* **Frames already labelled** (seed frames and earlier additions) are skipped by the walk: they
  are neither candidates nor able to stop it (their labels are known).
* **More candidates than room.** The most uncertain candidates are taken (the paper adds "the
  most uncertain points"); ties keep the sampling order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from otf_statcut.engine.decision import Action, decide

__all__ = ["Bounds", "Selection", "classify_frames", "select_candidates", "select_random", "capacity"]


@dataclass(frozen=True)
class Bounds:
    """The two uncertainty cutoffs (eV/Å) as :func:`decide` reads them from a ``CutoffSet``."""

    minimum: float
    maximum: float


class Selection(NamedTuple):
    """Result of :func:`select_candidates`.

    Attributes
    ----------
    indices : np.ndarray of int
        Frames to add (positions in the sampling order), ascending.
    stopped_at : int
        Position of the first unlabelled frame above the maximum cutoff, or ``-1`` when the walk
        reached the end of the sampling set.
    """

    indices: np.ndarray
    stopped_at: int


def classify_frames(sigma_per_frame, minimum: float, maximum: float) -> np.ndarray:
    """Action code (``Action.TRUST/LABEL/HALT`` as int) of each frame from its max σ.

    Parameters
    ----------
    sigma_per_frame : array_like, shape (n_frames,)
        Per-frame uncertainty in eV/Å (the maximum over the frame's atoms).
    minimum, maximum : float
        Uncertainty cutoffs in eV/Å.

    Returns
    -------
    np.ndarray of int8, shape (n_frames,)
    """
    bounds = Bounds(float(minimum), float(maximum))
    values = np.asarray(sigma_per_frame, dtype=float).ravel()
    return np.array([int(decide(values[i:i + 1], bounds).action) for i in range(values.size)], dtype=np.int8)


def capacity(current_size: int, budget: int | None = None) -> int:
    """How many frames one iteration may add: the current size (doubling), within the budget.

    Parameters
    ----------
    current_size : int
        Frames in the data set now (training + validation).
    budget : int, optional
        Labels still allowed by a label budget; ``None`` means unlimited.
    """
    room = max(int(current_size), 0)
    if budget is not None:
        room = min(room, max(int(budget), 0))
    return room


def select_candidates(sigma_per_frame, min_cut: float, max_cut: float, current_size: int, *,
                      labelled=None, include_halt: bool = True, budget: int | None = None) -> Selection:
    """Frames one iteration adds under the paper's replay rule.

    Parameters
    ----------
    sigma_per_frame : array_like, shape (n_frames,)
        Per-frame uncertainty (eV/Å) in sampling order.
    min_cut, max_cut : float
        Minimum and maximum uncertainty cutoffs (eV/Å).
    current_size : int
        Frames in the data set now; at most this many are added (doubling limit).
    labelled : array_like, optional
        Positions (int) or a boolean mask of frames already in the data set; skipped by the walk.
    include_halt : bool
        Whether the first frame above the maximum cutoff is itself a candidate (see module notes).
    budget : int, optional
        Labels still allowed; further limits the number added.

    Returns
    -------
    Selection
        ``(indices, stopped_at)``.

    Examples
    --------
    >>> s = select_candidates([0.1, 0.5, 0.6, 2.0, 0.7], 0.4, 1.0, current_size=1)
    >>> s.indices.tolist(), s.stopped_at
    ([3], 3)
    >>> select_candidates([0.1, 0.5, 0.6, 2.0, 0.7], 0.4, 1.0, 2, include_halt=False).indices.tolist()
    [1, 2]
    """
    sigma = np.asarray(sigma_per_frame, dtype=float).ravel()
    n = sigma.size
    skip = _mask(labelled, n)
    actions = classify_frames(sigma, min_cut, max_cut)
    halts = np.flatnonzero((actions == Action.HALT) & ~skip)
    stopped_at = int(halts[0]) if halts.size else -1
    end = stopped_at if stopped_at >= 0 else n
    positions = np.arange(n)
    candidate = (positions < end) & (actions == Action.LABEL) & ~skip
    if include_halt and stopped_at >= 0:
        candidate[stopped_at] = True
    candidates = np.flatnonzero(candidate)
    room = capacity(current_size, budget)
    if candidates.size > room:
        # most uncertain first; a stable sort keeps the sampling order among equal values (NaN first)
        key = np.where(np.isnan(sigma[candidates]), np.inf, sigma[candidates])
        order = np.argsort(-key, kind="stable")
        candidates = np.sort(candidates[order[:room]])
    return Selection(candidates.astype(np.int64), stopped_at)


def select_random(n_select: int, stopped_at: int, n_frames: int, rng: np.random.Generator, *,
                  labelled=None, include_halt: bool = True) -> np.ndarray:
    """The random baseline: ``n_select`` unlabelled frames drawn uniformly from the reachable window.

    The window is the part of the sampling order the walk reached (before ``stopped_at``, plus the
    halting frame when ``include_halt``), so random sampling obeys the same stability limit as the
    other methods; only the choice *within* the window ignores the uncertainty.

    Parameters
    ----------
    n_select : int
        How many frames to draw (capped at the number available).
    stopped_at : int
        First frame above the maximum cutoff, or -1 for none.
    n_frames : int
        Size of the sampling set.
    rng : numpy.random.Generator
        Source of randomness (seeded by the caller).
    labelled : array_like, optional
        Frames already in the data set (never drawn).
    include_halt : bool
        Whether the halting frame belongs to the window.

    Returns
    -------
    np.ndarray of int
        Drawn positions, ascending.
    """
    skip = _mask(labelled, n_frames)
    end = n_frames if stopped_at < 0 else stopped_at + (1 if include_halt else 0)
    window = np.flatnonzero(~skip[:end])
    k = min(max(int(n_select), 0), window.size)
    return np.sort(rng.choice(window, size=k, replace=False)).astype(np.int64) if k else np.zeros(0, np.int64)


def _mask(labelled, n: int) -> np.ndarray:
    if labelled is None:
        return np.zeros(n, dtype=bool)
    values = np.asarray(labelled)
    if values.dtype == bool:
        if values.shape != (n,):
            raise ValueError(f"labelled mask has shape {values.shape}, expected ({n},)")
        return values.copy()
    mask = np.zeros(n, dtype=bool)
    mask[values.astype(np.int64)] = True
    return mask
