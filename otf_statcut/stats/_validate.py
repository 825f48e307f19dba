"""Checks shared by the stats modules: turn user arrays into clean 1-D float arrays or raise.

Every check raises :class:`~otf_statcut.errors.DataError` with a message that says what is wrong
and where (count and first index), so a caller can prefix the file name and show it on one line.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def as_finite(values, what: str = "values") -> np.ndarray:
    """Return ``values`` as a flat float64 array; raise if it is empty or holds NaN/inf."""
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: not numeric ({exc})") from None
    if array.size == 0:
        raise DataError(f"{what}: empty, expected at least one value")
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{what}: {int(bad.sum())} NaN or infinite entries (first at index {first}); "
            "expected finite numbers"
        )
    return array


def as_nonnegative(values, what: str = "values", min_count: int = 1) -> np.ndarray:
    """Return finite, non-negative ``values`` as a flat float64 array with at least ``min_count`` entries."""
    array = as_finite(values, what)
    negative = array < 0
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        raise DataError(
            f"{what}: {int(negative.sum())} negative entries (first at index {first}: "
            f"{array[first]:g}); expected magnitudes >= 0"
        )
    if array.size < min_count:
        raise DataError(f"{what}: {array.size} values, at least {min_count} are needed")
    return array


def as_positive(values, what: str = "values") -> np.ndarray:
    """Return finite, strictly positive ``values`` (e.g. uncertainties σ) as a flat float64 array."""
    array = as_finite(values, what)
    nonpositive = array <= 0
    if nonpositive.any():
        first = int(np.flatnonzero(nonpositive)[0])
        raise DataError(
            f"{what}: {int(nonpositive.sum())} entries <= 0 (first at index {first}: "
            f"{array[first]:g}); expected values > 0"
        )
    return array


def same_length(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    """Raise unless the two flat arrays have the same length."""
    if a.shape != b.shape:
        raise DataError(
            f"{what_a} has {a.size} values but {what_b} has {b.size}; expected one per atom in both"
        )
