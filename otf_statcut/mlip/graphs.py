"""ASE frames -> NequIP graphs (``AtomicDataDict``) and the data statistics a model is built with.

A graph holds positions, cell, pbc, atom types and the neighbour list within ``r_max``; a
*labelled* graph also holds the reference total energy, forces and stress (NaN when the frame
has no stress label, so frames with and without stress batch together). Floating-point fields
are always float64, whatever torch's default dtype is at the time.

Graph cache. Building a neighbour list is the expensive part of a graph (about 3 ms for a
54-atom cell), and the on-the-fly loop retrains on the same labelled frames again and again
(and an ensemble trains several models on them). :class:`GraphCache` keeps the unlabelled graph of
every *labelled* frame a converter has seen, keyed by the converter's species and cutoff and a
digest of the frame's geometry (:func:`geometry_digest`: positions, cell, pbc, atomic numbers), so
each frame's neighbour list is built once per process: a graph built for another cutoff or species
set is never returned (a different ``r_max`` or species list is a different key), and a frame
whose atoms moved has another digest. Unlabelled lookups (:meth:`GraphConverter.graph`, used by
``predict`` and the calculator) read the cache but never add to it, so MD frames do not flush the
training graphs out. The process-wide :data:`GRAPH_CACHE` is bounded in bytes (least recently
used graphs go first). Cached tensors are shared, never modified: every lookup returns a new dict.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
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
    "GraphCache",
    "GRAPH_CACHE",
    "geometry_digest",
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


def geometry_digest(atoms: Atoms) -> bytes:
    """A 16-byte digest of what a graph depends on: positions, cell, pbc and atomic numbers.

    Equal digests mean bitwise-equal geometry (labels and ``info`` are not part of it). About 2 µs
    for a 54-atom frame.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype=bool).tobytes())
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    return h.digest()


def _graph_bytes(graph: dict[str, torch.Tensor]) -> int:
    return sum(int(v.numel()) * v.element_size() for v in graph.values() if isinstance(v, torch.Tensor))


class GraphCache:
    """Least-recently-used store of unlabelled graphs, keyed by ``(species, r_max, digest)``.

    Parameters
    ----------
    max_bytes : int
        Bound on the summed tensor sizes held (default 1 GiB: about 15,000 graphs of 54-atom
        cells at a 4.5 Å cutoff); the least recently used graphs are dropped beyond it.

    Attributes
    ----------
    hits, misses : int
        Lookups answered from the cache, and lookups that were not.
    enabled : bool
        False: :meth:`get` always misses and :meth:`put` stores nothing (every graph is rebuilt,
        the behaviour before the cache).
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._bytes = 0
        self._items: OrderedDict[tuple, tuple[dict, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Summed tensor bytes of the graphs held."""
        return self._bytes

    def get(self, key: tuple) -> dict[str, torch.Tensor] | None:
        """A new dict holding the cached graph's tensors, or None."""
        with self._lock:
            item = self._items.get(key) if self.enabled else None
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return dict(item[0])

    def put(self, key: tuple, graph: dict[str, torch.Tensor]) -> None:
        """Store ``graph`` (a shallow copy of it) under ``key``."""
        if not self.enabled:
            return
        size = _graph_bytes(graph)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (dict(graph), size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def invalidate(self, species: Sequence[str] | None = None, r_max: float | None = None) -> int:
        """Drop the graphs of one species set and/or cutoff (all graphs when both are None);
        returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._items
                    if (species is None or k[0] == tuple(species))
                    and (r_max is None or k[1] == float(r_max))]
            for key in keys:
                self._bytes -= self._items.pop(key)[1]
            return len(keys)

    def clear(self) -> None:
        """Drop every graph and reset the counters."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @contextlib.contextmanager
    def disabled(self):
        """Run a block without the cache (every graph rebuilt, nothing stored)."""
        previous = self.enabled
        self.enabled = False
        try:
            yield self
        finally:
            self.enabled = previous


#: The process-wide graph cache every :class:`GraphConverter` uses unless given another one.
GRAPH_CACHE = GraphCache()
_DEFAULT = object()


class GraphConverter:
    """Turn ASE frames into NequIP graphs for one species set and cutoff.

    Parameters
    ----------
    species : sequence of str
        The model's type names (chemical symbols), in type-index order.
    r_max : float
        Neighbour-list cutoff in Å.
    cache : GraphCache or None
        Where graphs of labelled frames are kept across fits (default: :data:`GRAPH_CACHE`,
        shared by every converter; entries are keyed by species and ``r_max`` too); None: no
        cache.
    """

    def __init__(
        self, species: Sequence[str], r_max: float, cache: GraphCache | None | object = _DEFAULT
    ) -> None:
        from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

        self.species = tuple(species)
        self.r_max = float(r_max)
        self.type_mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=list(self.species))
        self.neighbor_list = NeighborListTransform(r_max=self.r_max)
        self.cache = GRAPH_CACHE if cache is _DEFAULT else cache

    def __getstate__(self):
        # The process-wide cache (a lock and up to a GiB of graphs) is not part of a converter's
        # state: a pickled converter uses the process-wide cache of wherever it is unpickled.
        state = self.__dict__.copy()
        if state.get("cache") is GRAPH_CACHE:
            state["cache"] = "process-wide"
        elif state.get("cache") is not None:
            state["cache"] = None
        return state

    def __setstate__(self, state):
        if state.get("cache") == "process-wide":
            state["cache"] = GRAPH_CACHE
        self.__dict__.update(state)

    def cache_key(self, atoms: Atoms) -> tuple:
        """The cache key of ``atoms`` for this converter: ``(species, r_max, geometry digest)``."""
        return (self.species, self.r_max, geometry_digest(atoms))

    @property
    def transforms(self) -> list[torch.nn.Module]:
        """The NequIP data transforms (type mapping, neighbour list), in order."""
        return [self.type_mapper, self.neighbor_list]

    def check_species(self, atoms: Atoms, where: str) -> None:
        """Raise :class:`DataError` if ``atoms`` holds an element the model does not know."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.species))
        if unknown:
            raise DataError(f"{where}: element(s) {unknown} not among the model species {list(self.species)}")

    def graph(self, atoms: Atoms, where: str = "frame", store: bool = False) -> dict[str, torch.Tensor]:
        """Unlabelled graph of one frame (the calculator's and ``predict``'s input).

        Taken from the cache when a labelled frame with the same geometry was converted before;
        a newly built graph is added to the cache only with ``store`` (labelled frames)."""
        self.check_species(atoms, where)
        key = None
        if self.cache is not None and self.cache.enabled:
            key = self.cache_key(atoms)
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        with float64_default():
            data = self._graph(atoms, where)
        if store and key is not None:
            self.cache.put(key, data)
        return data

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
        data = self.graph(atoms, where, store=True)
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
