"""Replay of a precomputed, labelled trajectory: the benchmark's "dynamics" and "DFT".

As FLARE's ``FakeMD``/``FakeDFT`` pair does, a benchmark replaces the two expensive parts of
on-the-fly learning by recordings, passed in memory:

* :class:`SamplingSet` plays the dynamics: the configurations of one or more labelled files, in
  file order (the sampling order), optionally filtered by ``atoms.info`` values and chemical
  formula, and sliced (first, stride, count);
* :class:`ReplayLabeler` plays the DFT code: a :class:`~otf_statcut.labelers.Labeler` whose
  "calculation" looks the configuration up in the recording. It goes through the same labeller
  contract (copies, checks, retries) as GPAW in ``otf-statcut run``, and its call count is the
  number of DFT labels the method would have paid for.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from otf_statcut.data import frame_energy, frame_forces, frame_stress, read_frames, species_of
from otf_statcut.errors import DataError
from otf_statcut.labelers import Labeler, LabelingError

from .config import DatasetSpec

__all__ = ["SamplingSet", "ReplayLabeler", "load_sampling_set", "REPLAY_KEY"]

#: ``atoms.info`` key holding a frame's position in the sampling order.
REPLAY_KEY = "replay_index"


@dataclass(frozen=True)
class SamplingSet:
    """Labelled frames in sampling order.

    Attributes
    ----------
    name : str
        Dataset name (results group).
    path : str
        File the frames came from (several joined by " + ").
    frames : tuple of ase.Atoms
        Labelled frames; ``info["replay_index"]`` is each frame's position.
    """

    name: str
    path: str
    frames: tuple[Atoms, ...]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def species(self) -> tuple[str, ...]:
        """Sorted chemical symbols present."""
        return species_of(self.frames)

    @property
    def frame_sizes(self) -> np.ndarray:
        """Atoms per frame, in sampling order."""
        return np.array([len(a) for a in self.frames], dtype=np.int64)

    @functools.cached_property
    def frame_symbols(self) -> tuple[np.ndarray, ...]:
        """Chemical symbol of every atom, one array per frame (computed once: the set is fixed)."""
        return tuple(np.asarray(f.get_chemical_symbols(), dtype=str) for f in self.frames)

    @functools.cached_property
    def atom_symbols(self) -> np.ndarray:
        """Chemical symbol of every atom of the set, frames concatenated in sampling order."""
        return np.concatenate(self.frame_symbols)

    @property
    def n_atoms(self) -> int:
        """Per-atom values in the whole set (the N of the statistical cutoffs)."""
        return int(self.frame_sizes.sum())

    def configuration(self, index: int) -> Atoms:
        """The unlabelled configuration at ``index`` (what a dynamics run would produce)."""
        frame = self.frames[index]
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.info[REPLAY_KEY] = int(index)
        return atoms

    def reference_forces(self) -> list[np.ndarray]:
        """Recorded forces of every frame (eV/Å), in order."""
        return [frame_forces(a) for a in self.frames]


def load_sampling_set(spec: DatasetSpec, *, min_frames: int = 2) -> SamplingSet:
    """Read, filter and slice a dataset as its :class:`DatasetSpec` says.

    The files are read in the order given and joined; then ``select`` (``atoms.info`` values) and
    ``formula`` filter, and ``frames[first::stride][:count]`` is the sampling set.

    Parameters
    ----------
    spec : DatasetSpec
        The dataset entry of a benchmark input.
    min_frames : int
        Fewest frames the benchmark can use (the seed plus at least one frame to sample).

    Raises
    ------
    DataError
        If a file is missing or unreadable, a frame has no energy/forces, or too few frames
        remain after ``select``/``formula``/``first``/``stride``/``count`` (the message names the
        file and the key).
    """
    where = " + ".join(str(p) for p in spec.paths)
    frames = [atoms for path in spec.paths for atoms in read_frames(path)]
    for key, values in spec.select:
        frames = [a for a in frames if str(a.info.get(key)) in values]
        if not frames:
            raise DataError(f"{where}: no frame has info '{key}' in {list(values)} "
                            f"(dataset {spec.name!r}, key 'select.{key}')")
    if spec.formula:
        found = sorted({a.get_chemical_formula() for a in frames})
        frames = [a for a in frames if a.get_chemical_formula() in spec.formula]
        if not frames:
            raise DataError(f"{where}: no frame has a formula in {list(spec.formula)} "
                            f"(dataset {spec.name!r}, key 'formula'; formulas there: {', '.join(found[:8])}"
                            f"{' ...' if len(found) > 8 else ''})")
    frames = frames[spec.first::spec.stride][:spec.count]
    if len(frames) < min_frames:
        raise DataError(f"{where}: dataset {spec.name!r} has {len(frames)} frame(s) after "
                        f"select/formula/first/stride/count; the benchmark needs at least {min_frames} "
                        "(protocol.seed_frames + 1)")
    for index, atoms in enumerate(frames):
        atoms.info[REPLAY_KEY] = index
    return SamplingSet(name=spec.name, path=where, frames=tuple(frames))


class ReplayLabeler(Labeler):
    """Labels a configuration of a :class:`SamplingSet` with its recorded energy/forces/stress.

    The configuration must carry ``info["replay_index"]`` (as :meth:`SamplingSet.configuration`
    sets it) and match the recorded positions; anything else is a :class:`LabelingError`, so a
    frame can never be labelled with another frame's data.

    Parameters
    ----------
    sampling : SamplingSet
        The recording.
    """

    name = "replay"

    def __init__(self, sampling: SamplingSet):
        super().__init__(retries=0, max_force=np.inf)
        self.sampling = sampling

    def settings(self) -> dict:
        return {"name": self.name, "path": self.sampling.path, "dataset": self.sampling.name}

    def _compute(self, atoms: Atoms) -> dict:
        index = atoms.info.get(REPLAY_KEY)
        if index is None or not 0 <= int(index) < len(self.sampling):
            raise LabelingError(f"configuration has no valid info[{REPLAY_KEY!r}] ({index!r})")
        frame = self.sampling.frames[int(index)]
        if len(frame) != len(atoms) or not np.allclose(frame.positions, atoms.positions, atol=1e-8):
            raise LabelingError(f"configuration does not match recorded frame {index} of "
                                f"{self.sampling.path}")
        result = {"energy": frame_energy(frame), "forces": frame_forces(frame)}
        stress = frame_stress(frame)
        if stress is not None:
            result["stress"] = stress
        return result

    def label_many(self, indices: Sequence[int]) -> list[Atoms]:
        """Label the configurations at these sampling positions, in the order given."""
        return [self.label(self.sampling.configuration(int(i))) for i in indices]
