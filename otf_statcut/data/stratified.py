"""Validation that grows with the data set and represents it: a stratified, streaming split.

Frames enter an active-learning data set a few at a time (a batch of new labels, often one). A
random split of each batch on its own sends a one-frame batch wholly to training, so validation
freezes at its first few frames; and nothing stops it from holding one element only. The
:class:`StratifiedSplitter` instead decides each frame's side from the whole data set so far,
one frame at a time, so the configured fraction holds at every size and in batches of one.

Rules, applied in order to each new frame (its *stratum* is its config type, if the frame has
one in ``info['config_type']`` or ``info['group']``, plus its reduced composition)::

    1. an element of the frame that no training frame has yet     -> train  (a model must see it)
    2. an element of the frame that no validation frame has yet   -> validation
    3. validation frames of its stratum < floor(f × stratum size) -> validation
    4. validation frames overall        < floor(f × data-set size) -> validation
    5. otherwise                                                   -> train

(sizes counting the new frame). So a two-element data set validates on both elements as soon as
the second frame with each arrives; every composition/config type gets its share of
validation; the overall fraction is ``floor(f × size)`` after every frame (rules 2–3 can add a
few more while strata fill). The split depends only on the order in which frames arrive, so a
resumed run that rebuilds the splitter from its data set continues the same pattern.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from ase import Atoms

from otf_statcut.errors import UserError

__all__ = ["StratifiedSplitter", "stratum_of"]

TRAIN, VALIDATION = 0, 1
_EPS = 1e-9


def stratum_of(atoms: Atoms) -> str:
    """The frame's stratum: ``"<config type>|<reduced formula>"`` (config type may be empty)."""
    info = getattr(atoms, "info", {}) or {}
    kind = info.get("config_type", info.get("group", ""))
    return f"{kind}|{atoms.get_chemical_formula(mode='metal', empirical=True)}"


class StratifiedSplitter:
    """Assign frames to training (0) or validation (1) as they arrive (see the module notes).

    Parameters
    ----------
    fraction : float
        Target validation fraction, in [0, 1).

    Examples
    --------
    >>> from ase.build import bulk
    >>> s = StratifiedSplitter(0.25)
    >>> [s.assign(bulk("Cu") * (2, 1, 1)) for _ in range(8)]
    [0, 1, 0, 0, 0, 0, 0, 1]
    """

    def __init__(self, fraction: float):
        fraction = float(fraction)
        if not 0.0 <= fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {fraction}")
        self.fraction = fraction
        self.size = 0
        self.n_val = 0
        self.stratum_size: Counter[str] = Counter()
        self.stratum_val: Counter[str] = Counter()
        self.train_elements: set[str] = set()
        self.val_elements: set[str] = set()

    @classmethod
    def from_frames(cls, fraction: float, frames: Iterable[Atoms], splits: Iterable[int]) -> StratifiedSplitter:
        """A splitter that has seen ``frames`` with the given ``splits`` (for a resumed data set)."""
        splitter = cls(fraction)
        for frame, split in zip(frames, splits, strict=True):
            splitter.record(frame, int(split))
        return splitter

    def _quota(self, size: int) -> int:
        return math.floor(self.fraction * size + _EPS)

    def choose(self, frame: Atoms) -> int:
        """The side the rules give ``frame`` now, without recording it."""
        if self.fraction == 0.0:
            return TRAIN
        elements = set(frame.get_chemical_symbols())
        if not elements <= self.train_elements:
            return TRAIN
        if not elements <= self.val_elements:
            return VALIDATION
        stratum = stratum_of(frame)
        if self.stratum_val[stratum] < self._quota(self.stratum_size[stratum] + 1):
            return VALIDATION
        if self.n_val < self._quota(self.size + 1):
            return VALIDATION
        return TRAIN

    def record(self, frame: Atoms, split: int) -> None:
        """Count ``frame`` on side ``split`` (0 train, 1 validation)."""
        if split not in (TRAIN, VALIDATION):
            raise ValueError(f"split must be 0 (train) or 1 (validation), got {split}")
        stratum = stratum_of(frame)
        elements = set(frame.get_chemical_symbols())
        self.size += 1
        self.stratum_size[stratum] += 1
        if split == VALIDATION:
            self.n_val += 1
            self.stratum_val[stratum] += 1
            self.val_elements |= elements
        else:
            self.train_elements |= elements

    def assign(self, frame: Atoms) -> int:
        """Choose the side of a new frame and record it; returns 0 (train) or 1 (validation)."""
        split = self.choose(frame)
        self.record(frame, split)
        return split

    def assign_many(self, frames: Sequence[Atoms], order: Sequence[int] | None = None) -> list[int]:
        """Assign a batch, frame by frame in ``order`` (default: as given); splits in input order."""
        order = range(len(frames)) if order is None else order
        splits = [TRAIN] * len(frames)
        for i in order:
            splits[i] = self.assign(frames[i])
        return splits
