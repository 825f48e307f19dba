"""The run's checkpoint: a double-buffered, checksummed record that no kill can tear.

A run file's ``/checkpoint`` group holds two *slots* of fixed-size datasets and a one-number
``pointer`` to the slot with the latest complete checkpoint. Writing one::

    1. flush everything appended so far (the rows the checkpoint counts are on disk);
    2. write the *other* slot in place (fixed shapes: nothing is allocated, no heap touched),
       including a SHA-1 of its own contents, and flush;
    3. write ``pointer`` (one 8-byte number, in place) and flush.

A kill during 2 leaves ``pointer`` on the previous, intact slot; a kill during 3 leaves it on
either slot, both complete. A reader takes the pointed-to slot if its checksum holds and the
other one otherwise (the previous checkpoint: the resumed run then repeats a few more steps).
Nothing in the group is ever resized, deleted or rewritten with a different size, and no
variable-length string is involved (random-number and integrator state are JSON in a fixed
byte buffer), which is what made the old layout (attributes rewritten at every checkpoint)
unresumable after an unlucky kill ("bad heap index").

Layout::

    /checkpoint/pointer          int64 ()   slot of the latest checkpoint (-1: none yet)
    /checkpoint/slot_0, slot_1/
        counters  int64 (11,)    step, model, n_labels, labels_since_retrain, retrain_pending,
                                 trajectory_rows, dataset_rows, models_rows, cutoffs_rows,
                                 failures_rows, state_length
        times     float64 (2,)   time_fs, wall_time_s
        positions float64 (n, 3), momenta float64 (n, 3), cell float64 (3, 3),
        numbers   int32 (n,), pbc bool (3,)
        state     uint8 (STATE_BYTES,)  UTF-8 JSON {"rng": ..., "dynamics": ..., "walkers": [...]},
                                 zero padded

With many walkers (:mod:`otf_statcut.engine.walkers`) the arrays hold every walker's atoms one
after another, and ``walkers`` in the state gives each walker's index, step, time, atoms, cell,
pbc, random-number and integrator state and trajectory rows (``step`` is then the smallest).
        digest    S40 ()         SHA-1 of everything above (hex)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import h5py
import numpy as np
from ase import Atoms

__all__ = ["Checkpoint", "STATE_BYTES", "create_slots", "write_checkpoint", "read_checkpoint"]

#: Room for the random-number and integrator state (JSON); a PCG64 state takes ~200 bytes and
#: the thermostat chains of ASE's integrators a few hundred more.
STATE_BYTES = 65536
_COUNTERS = ("step", "model", "n_labels", "labels_since_retrain", "retrain_pending", "trajectory_rows",
             "dataset_rows", "models_rows", "cutoffs_rows", "failures_rows")
_ARRAYS = {"positions": ("float64", ("n", 3)), "momenta": ("float64", ("n", 3)), "cell": ("float64", (3, 3)),
           "numbers": ("int32", ("n",)), "pbc": ("bool", (3,))}


@dataclass
class Checkpoint:
    """Everything needed to continue a run: MD state, counters, RNG and dynamics state.

    Attributes
    ----------
    step : int
        MD steps done.
    time_fs : float
        Simulated time, fs.
    positions, momenta : ndarray (n, 3)
        Å and ASE momentum units (amu·Å/ASE-time).
    cell : ndarray (3, 3)
    numbers : ndarray (n,)
    pbc : ndarray (3,)
    model : int
        Id of the current model (row of ``/models``; its weights are in ``models/<id>``).
    n_labels : int
        Labelled frames added during MD so far.
    labels_since_retrain : int
    retrain_pending : bool
        A retrain was due (e.g. the run stopped while training): do it first on resume.
    rng : dict
        ``numpy.random.Generator.bit_generator.state`` of the dynamics' random numbers.
    dynamics : dict
        Extra state of the integrator (JSON-serialisable; e.g. thermostat variables).
    trajectory_rows, dataset_rows, models_rows, cutoffs_rows, failures_rows : int
        Rows of those tables when the checkpoint was written (filled in by the writer). The
        checkpoint is the commit point of a run: on resume, rows after it are dropped and
        recomputed, except labelled frames, which are kept (see :mod:`otf_statcut.io.run_health`).
    wall_time_s : float
        Wall time of the run so far (all sessions).
    walkers : list of dict
        Many walkers: per walker ``index``, ``step``, ``time_fs``, ``n_atoms``, ``cell``, ``pbc``,
        ``rng``, ``dynamics``, ``trajectory_rows`` (their atoms are consecutive blocks of the
        arrays, in this order). Empty for a single-walker run.
    """

    step: int
    time_fs: float
    positions: np.ndarray
    momenta: np.ndarray
    cell: np.ndarray
    numbers: np.ndarray
    pbc: np.ndarray
    model: int
    n_labels: int = 0
    labels_since_retrain: int = 0
    retrain_pending: bool = False
    rng: dict = field(default_factory=dict)
    dynamics: dict = field(default_factory=dict)
    trajectory_rows: int = 0
    dataset_rows: int = 0
    models_rows: int = 0
    cutoffs_rows: int = 0
    failures_rows: int = 0
    wall_time_s: float = 0.0
    walkers: list = field(default_factory=list)

    def atoms(self) -> Atoms:
        """The MD configuration with its momenta."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.set_momenta(self.momenta, apply_constraint=False)
        return atoms

    def walker_atoms(self) -> list[Atoms]:
        """Each walker's configuration with its momenta (many-walker checkpoints)."""
        out, start = [], 0
        for w in self.walkers:
            stop = start + int(w["n_atoms"])
            atoms = Atoms(numbers=self.numbers[start:stop], positions=self.positions[start:stop],
                          cell=np.asarray(w["cell"]), pbc=np.asarray(w["pbc"], dtype=bool))
            atoms.set_momenta(self.momenta[start:stop], apply_constraint=False)
            out.append(atoms)
            start = stop
        return out


def create_slots(group: h5py.Group, n_atoms: int) -> None:
    """Create the pointer (-1) and both slots for a cell of ``n_atoms`` atoms, all allocated
    now (contiguous, written with zeros), so that later checkpoints only overwrite bytes."""
    if "pointer" not in group:
        group.create_dataset("pointer", data=np.int64(-1))
    for s in (0, 1):
        name = f"slot_{s}"
        if name in group:
            continue
        g = group.create_group(name)
        g.create_dataset("counters", data=np.zeros(len(_COUNTERS) + 1, dtype=np.int64))
        g.create_dataset("times", data=np.zeros(2, dtype=np.float64))
        for key, (dtype, shape) in _ARRAYS.items():
            g.create_dataset(key, data=np.zeros(tuple(n_atoms if d == "n" else d for d in shape), dtype=dtype))
        g.create_dataset("state", data=np.zeros(STATE_BYTES, dtype=np.uint8))
        g.create_dataset("digest", data=np.bytes_(b"0" * 40), dtype="S40")


def slots_atoms(group: h5py.Group) -> int | None:
    """Atoms per slot (None if the slots do not exist yet)."""
    return int(group["slot_0/numbers"].shape[0]) if "slot_0" in group else None


def write_checkpoint(group: h5py.Group, cp: Checkpoint, flush) -> int:
    """Write ``cp`` into the slot the pointer does not point at, then move the pointer.

    ``flush`` is called after the slot and after the pointer (the file's flush). Returns the
    slot written.
    """
    current = int(group["pointer"][()])
    slot = 1 - current if current in (0, 1) else 0
    state = json.dumps({"rng": cp.rng, "dynamics": cp.dynamics, "walkers": cp.walkers},
                       default=_json_default).encode("utf-8")
    if len(state) > STATE_BYTES:
        raise ValueError(f"checkpoint state is {len(state)} bytes, more than the {STATE_BYTES} reserved")
    buffer = np.zeros(STATE_BYTES, dtype=np.uint8)
    buffer[:len(state)] = np.frombuffer(state, dtype=np.uint8)
    values = _values(cp, len(state), buffer)
    g = group[f"slot_{slot}"]
    for key, value in values.items():
        if g[key].shape != value.shape:
            raise ValueError(f"checkpoint {key} has shape {value.shape}, the slots hold {g[key].shape} "
                             "(the number of atoms cannot change during a run)")
        g[key][...] = value
    g["digest"][()] = np.bytes_(_digest(values).encode())
    flush()
    group["pointer"][()] = np.int64(slot)
    flush()
    return slot


def read_checkpoint(group: h5py.Group) -> tuple[Checkpoint | None, list[str]]:
    """The latest intact checkpoint and a list of problems met on the way.

    Returns ``(None, [])`` when no checkpoint was ever written, ``(None, problems)`` when none
    is intact, and the previous slot's checkpoint (with a problem line) when the latest one is
    torn.
    """
    problems: list[str] = []
    try:
        pointer = int(group["pointer"][()])
    except (KeyError, OSError, ValueError) as exc:
        return None, [f"checkpoint pointer unreadable ({exc})"]
    if pointer not in (0, 1):
        return None, []
    for slot in (pointer, 1 - pointer):
        try:
            cp = _read_slot(group[f"slot_{slot}"])
        except (KeyError, OSError, ValueError, UnicodeDecodeError) as exc:
            problems.append(f"checkpoint slot {slot} damaged ({exc})")
            continue
        if cp is None:
            problems.append(f"checkpoint slot {slot} fails its checksum (torn write)")
            continue
        return cp, problems
    return None, problems


def _values(cp: Checkpoint, state_length: int, buffer: np.ndarray) -> dict[str, np.ndarray]:
    counters = [int(getattr(cp, name)) for name in _COUNTERS] + [state_length]
    values = {"counters": np.asarray(counters, dtype=np.int64),
              "times": np.asarray([cp.time_fs, cp.wall_time_s], dtype=np.float64)}
    for key, (dtype, _) in _ARRAYS.items():
        values[key] = np.ascontiguousarray(getattr(cp, key), dtype=dtype)
    values["state"] = buffer
    return values


def _digest(values: dict[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for key in sorted(values):
        h.update(key.encode())
        h.update(np.ascontiguousarray(values[key]).tobytes())
    return h.hexdigest()


def _read_slot(g: h5py.Group) -> Checkpoint | None:
    values = {key: g[key][()] for key in ("counters", "times", *_ARRAYS, "state")}
    if _digest(values) != bytes(g["digest"][()]).decode():
        return None
    counters = dict(zip(_COUNTERS, (int(c) for c in values["counters"])))
    length = int(values["counters"][-1])
    state = json.loads(values["state"][:length].tobytes().decode("utf-8")) if length else {}
    return Checkpoint(
        time_fs=float(values["times"][0]), wall_time_s=float(values["times"][1]),
        positions=values["positions"], momenta=values["momenta"], cell=values["cell"],
        numbers=values["numbers"], pbc=values["pbc"].astype(bool),
        rng=state.get("rng", {}), dynamics=state.get("dynamics", {}), walkers=state.get("walkers", []),
        **{k: (bool(v) if k == "retrain_pending" else v) for k, v in counters.items()},
    )


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
