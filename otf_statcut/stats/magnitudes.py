"""Per-atom force-error magnitudes, the invariant the error distribution is fitted to."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from ..errors import DataError

ForceArrays = Union[np.ndarray, Sequence[np.ndarray]]


def _forces(array, what: str) -> np.ndarray:
    forces = np.asarray(array, dtype=np.float64)
    if forces.ndim != 2 or forces.shape[1] != 3:
        raise DataError(f"{what}: shape {forces.shape}, expected (n_atoms, 3) forces in eV/Å")
    if not np.isfinite(forces).all():
        raise DataError(f"{what}: NaN or infinite force components")
    return forces


def force_error_magnitudes(pred: ForceArrays, ref: ForceArrays) -> np.ndarray:
    """Per-atom force-error magnitudes ``|F_pred - F_ref|`` in eV/Å.

    Parameters
    ----------
    pred, ref : ndarray of shape (n_atoms, 3), or sequences of such arrays
        Predicted and reference forces in eV/Å. Sequences are taken frame by frame (frames may
        differ in size) and the magnitudes concatenated in order.

    Returns
    -------
    ndarray of shape (n_atoms_total,)

    Raises
    ------
    DataError
        Shapes that are not (n, 3), frames or atom counts that do not match, NaN/inf.

    Examples
    --------
    >>> force_error_magnitudes(np.zeros((2, 3)), [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    array([5., 0.])
    """
    if isinstance(pred, np.ndarray):
        single = pred.ndim == 2
    else:
        single = len(pred) > 0 and np.ndim(pred[0]) == 1  # a nested list of rows is one frame
    if single:
        pred_frames, ref_frames = [pred], [ref]
    else:
        pred_frames, ref_frames = list(pred), list(ref)
        if len(pred_frames) != len(ref_frames):
            raise DataError(
                f"{len(pred_frames)} predicted frames but {len(ref_frames)} reference frames; "
                "expected the same"
            )
        if not pred_frames:
            raise DataError("no frames given; expected at least one (n_atoms, 3) force array")
    magnitudes = []
    for i, (p, r) in enumerate(zip(pred_frames, ref_frames)):
        where = "" if single else f"frame {i}: "
        p = _forces(p, f"{where}predicted forces")
        r = _forces(r, f"{where}reference forces")
        if p.shape != r.shape:
            raise DataError(
                f"{where}predicted forces have {p.shape[0]} atoms but reference forces {r.shape[0]}"
            )
        magnitudes.append(np.linalg.norm(p - r, axis=1))
    return np.concatenate(magnitudes)
