"""ASE frames -> NequIP graphs (``AtomicDataDict``) and the data statistics a model is built with.

A graph holds positions, cell, pbc, atom types and the neighbour list within ``r_max``; a
*labelled* graph also holds the reference total energy, forces and stress (NaN when the frame
has no stress label, so frames with and without stress batch together). Floating-point fields
are always float64, whatever torch's default dtype is at the time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from otf_statcut.data.frames import frame_energy, frame_forces, frame_stress, validate_frame
from otf_statcut.errors import DataError

__all__ = [
    "ensure_nequip_state",
    "float64_default",
    "GraphConverter",
    "DataStatistics",
    "compute_statistics",
    "batch_graphs",
]


def ensure_nequip_state() -> None:
    """Initialise NequIP's global state once per process (required before building a model).

    ``nequip.utils.global_state.set_global_state`` sets torch's default dtype to float64 for the
    whole process and seeds the global RNGs once; later calls are no-ops.
    """
    import warnings

    from nequip.utils.global_state import global_state_initialized, set_global_state

    if not global_state_initialized():
        with warnings.catch_warnings():
            # torch deprecates the JIT fusion-strategy call nequip makes; irrelevant in eager mode
            warnings.simplefilter("ignore", DeprecationWarning)
            set_global_state()


@contextlib.contextmanager
def float64_default():
    """Run a block with torch's default dtype float64, restoring the caller's afterwards.

    NequIP's data code casts positions and cells to the *current* default dtype, so code that
    changes it (e.g. a float32 gpytorch model) must not change what this package computes.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class GraphConverter:
    """Turn ASE frames into NequIP graphs for one species set and cutoff.

    Parameters
    ----------
    species : sequence of str
        The model's type names (chemical symbols), in type-index order.
    r_max : float
        Neighbour-list cutoff in Å.
    """

    def __init__(self, species: Sequence[str], r_max: float) -> None:
        from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

        self.species = tuple(species)
        self.r_max = float(r_max)
        self.type_mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=list(self.species))
        self.neighbor_list = NeighborListTransform(r_max=self.r_max)

    @property
    def transforms(self) -> list[torch.nn.Module]:
        """The NequIP data transforms (type mapping, neighbour list), in order."""
        return [self.type_mapper, self.neighbor_list]

    def check_species(self, atoms: Atoms, where: str) -> None:
        """Raise :class:`DataError` if ``atoms`` holds an element the model does not know."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.species))
        if unknown:
            raise DataError(f"{where}: element(s) {unknown} not among the model species {list(self.species)}")

    def graph(self, atoms: Atoms, where: str = "frame") -> dict[str, torch.Tensor]:
        """Unlabelled graph of one frame (the calculator's and ``predict``'s input)."""
        self.check_species(atoms, where)
        with float64_default():
            return self._graph(atoms, where)

    def _graph(self, atoms: Atoms, where: str) -> dict[str, torch.Tensor]:
        from nequip.data import AtomicDataDict, from_dict

        pbc = np.asarray(atoms.get_pbc(), dtype=bool)
        cell = np.asarray(atoms.get_cell(), dtype=np.float64)
        if pbc.any() and abs(np.linalg.det(cell)) < 1e-12:
            raise DataError(f"{where}: periodic boundary conditions {pbc.tolist()} but a degenerate cell")
        data = from_dict(
            {
                AtomicDataDict.POSITIONS_KEY: torch.as_tensor(atoms.get_positions(), dtype=torch.float64),
                AtomicDataDict.CELL_KEY: torch.as_tensor(cell, dtype=torch.float64),
                AtomicDataDict.PBC_KEY: torch.as_tensor(pbc),
                AtomicDataDict.ATOMIC_NUMBERS_KEY: torch.as_tensor(
                    atoms.get_atomic_numbers(), dtype=torch.long
                ),
            }
        )
        data[AtomicDataDict.POSITIONS_KEY] = data[AtomicDataDict.POSITIONS_KEY].to(torch.float64)
        data[AtomicDataDict.CELL_KEY] = data[AtomicDataDict.CELL_KEY].to(torch.float64)
        for transform in self.transforms:
            data = transform(data)
        data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY].to(torch.float64)
        return data

    def labelled_graph(self, atoms: Atoms, where: str = "frame") -> dict[str, torch.Tensor]:
        """Graph of one labelled frame, with ``total_energy`` (1, 1), ``forces`` (n, 3) and
        ``stress`` (1, 3, 3; NaN if the frame has no stress label), all float64."""
        from ase.stress import voigt_6_to_full_3x3_stress
        from nequip.data import AtomicDataDict

        validate_frame(atoms, where)
        data = self.graph(atoms, where)
        data[AtomicDataDict.TOTAL_ENERGY_KEY] = torch.tensor([[frame_energy(atoms)]], dtype=torch.float64)
        data[AtomicDataDict.FORCE_KEY] = torch.as_tensor(frame_forces(atoms), dtype=torch.float64)
        stress = frame_stress(atoms)
        full = np.full((3, 3), np.nan) if stress is None else voigt_6_to_full_3x3_stress(stress)
        full = np.ascontiguousarray(full)
        data[AtomicDataDict.STRESS_KEY] = torch.tensor(full, dtype=torch.float64).reshape(1, 3, 3)
        return data

    def labelled_graphs(self, frames: Sequence[Atoms], name: str = "frames") -> list[dict[str, torch.Tensor]]:
        """Labelled graphs of many frames; errors name ``name`` and the frame index."""
        return [self.labelled_graph(atoms, f"{name}: frame {i}") for i, atoms in enumerate(frames)]


def batch_graphs(graphs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate graphs into one batch (``AtomicDataDict.batched_from_list``)."""
    from nequip.data import AtomicDataDict

    return AtomicDataDict.batched_from_list(list(graphs))


@dataclass(frozen=True)
class DataStatistics:
    """Per-type energy shifts and scales and the average neighbour count a model is built with.

    Attributes
    ----------
    energy_shifts : dict of str to float
        Per-atom energy shift of each species (eV): least-squares fit of the total energies on
        the per-frame species counts (for one species: mean energy per atom).
    energy_scales : dict of str to float
        Per-atom energy scale of each species (eV/Å): the RMS of the reference force
        components over all atoms (one value shared by all species, robust for rare species).
    avg_num_neighbors : float
        Mean number of neighbours within ``r_max`` per atom.
    """

    energy_shifts: dict[str, float]
    energy_scales: dict[str, float]
    avg_num_neighbors: float

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "energy_shifts": dict(self.energy_shifts),
            "energy_scales": dict(self.energy_scales),
            "avg_num_neighbors": float(self.avg_num_neighbors),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DataStatistics:
        """Inverse of :meth:`to_dict`."""
        return cls(
            energy_shifts={str(k): float(v) for k, v in data["energy_shifts"].items()},
            energy_scales={str(k): float(v) for k, v in data["energy_scales"].items()},
            avg_num_neighbors=float(data["avg_num_neighbors"]),
        )


def compute_statistics(
    frames: Sequence[Atoms], graphs: Sequence[dict[str, torch.Tensor]], species: Sequence[str]
) -> DataStatistics:
    """Statistics of labelled frames (see :class:`DataStatistics`).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Labelled frames.
    graphs : sequence of dict
        Their graphs (from :meth:`GraphConverter.labelled_graphs`), for the neighbour counts.
    species : sequence of str
        The model's species; a species absent from the frames gets the mean energy per atom as
        its shift.

    Raises
    ------
    DataError
        If ``frames`` is empty.
    """
    from nequip.data import AtomicDataDict

    if len(frames) == 0:
        raise DataError("no labelled frames to compute the energy shift/scale and neighbour count from")
    species = list(species)
    counts = np.array(
        [[atoms.get_chemical_symbols().count(s) for s in species] for atoms in frames], dtype=float
    )
    energies = np.array([frame_energy(atoms) for atoms in frames])
    mean_per_atom = float(energies.sum() / counts.sum())
    present = counts.sum(axis=0) > 0
    shifts = np.full(len(species), mean_per_atom)
    solution, *_ = np.linalg.lstsq(counts[:, present], energies, rcond=None)
    shifts[present] = solution
    forces = np.concatenate([frame_forces(atoms).ravel() for atoms in frames])
    rms = float(np.sqrt(np.mean(forces**2)))
    scale = rms if rms > 1e-6 else 1.0
    n_edges = sum(int(g[AtomicDataDict.EDGE_INDEX_KEY].shape[1]) for g in graphs)
    n_atoms = sum(len(atoms) for atoms in frames)
    return DataStatistics(
        energy_shifts={s: float(v) for s, v in zip(species, shifts)},
        energy_scales={s: scale for s in species},
        avg_num_neighbors=max(n_edges / n_atoms, 1.0),
    )
