"""Reproducible train/validation splits of a list of frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from otf_statcut.errors import UserError

__all__ = ["train_val_split"]

T = TypeVar("T")


def train_val_split(frames: Sequence[T], val_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split frames at random into a training and a validation list.

    Parameters
    ----------
    frames : sequence
        The frames (any items; they are not copied).
    val_fraction : float
        Fraction in [0, 1) that goes to validation. The validation size is
        ``round(val_fraction * len(frames))``, at least 1 when ``val_fraction > 0`` and there are
        two or more frames, and never all of them.
    seed : int
        Seed of the permutation: the same frames, fraction and seed give the same split.

    Returns
    -------
    train, val : list, list
        Disjoint lists that together hold every frame once; each keeps the input order.

    Raises
    ------
    UserError
        If ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(frames)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [frames[i] for i in range(n) if i not in val_idx]
    val = [frames[i] for i in range(n) if i in val_idx]
    return train, val
