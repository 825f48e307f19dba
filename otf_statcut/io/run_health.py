"""Is a run file resumable? Inspect it before anything is written, repair what a kill leaves.

A kill (SIGKILL, out of memory, a node failure) can stop a run anywhere, also in the middle of
an HDF5 flush. What it can leave behind, and what :func:`inspect` does about it:

* **rows after the last checkpoint** (trajectory rows, models and cutoff refits trained after
  it): normal; a resume drops them and recomputes them (:func:`repair`).
* **a torn append**: the columns of one table have different lengths, or a row's data never
  reached the disk (zeros where a frame should be). Every labelled frame carries a SHA-1 of its
  stored values (``/dataset/checksum``); frames are kept up to the first that fails it, so a
  resume never trains on a half-written label, and a label the checkpoint counts is never
  dropped silently (that is damage, reported).
* **a torn checkpoint**: the checkpoint is double-buffered and checksummed
  (:mod:`otf_statcut.io.checkpoint`); the previous one is used.

Damage that no resume can repair (a labelled frame the checkpoint counts fails its checksum,
both checkpoint slots torn, a table that cannot be read) is reported on one line saying what is
damaged and what can still be recovered; ``otf-statcut export`` reads the intact frames of such
a file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import h5py
import numpy as np

from .checkpoint import Checkpoint, read_checkpoint

__all__ = ["FileHealth", "inspect", "repair", "frame_checksum", "audit"]

#: Tables whose rows after the checkpoint a resume drops (they are recomputed).
_REDONE = ("trajectory", "models", "cutoffs")


@dataclass
class FileHealth:
    """What :func:`inspect` found in a run file.

    Attributes
    ----------
    path : str
    checkpoint : Checkpoint or None
        The latest intact checkpoint.
    rows : dict
        Usable rows per table (``trajectory``, ``models``, ``cutoffs``, ``failures``,
        ``dataset``: intact labelled frames; ``dataset_atoms``: their atoms).
    stored : dict
        Rows present per table (the longest column).
    problems : list of str
        Damage that blocks a resume.
    notes : list of str
        What a resume repairs (torn rows dropped, a torn checkpoint replaced by the previous one).
    """

    path: str
    checkpoint: Checkpoint | None = None
    rows: dict = field(default_factory=dict)
    stored: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def resumable(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """One line: what is damaged and what can still be recovered."""
        n_frames = self.rows.get("dataset", 0)
        n_models = self.rows.get("models", 0)
        return (f"{self.path}: the run file is damaged and cannot be resumed: {'; '.join(self.problems)}. "
                f"Recoverable: {n_frames} labelled frame(s) of {self.stored.get('dataset', 0)}, "
                f"{n_models} model row(s), {self.rows.get('trajectory', 0)} trajectory row(s) "
                f"(`otf-statcut export {self.path} data.extxyz` writes the intact frames); move the file "
                "aside to start a new run in this folder")


def frame_checksum(numbers, positions, forces, cell, pbc, energy, stress, step, reason, split, key) -> str:
    """SHA-1 of one labelled frame's stored values (in their stored dtypes)."""
    h = hashlib.sha1()
    for value, dtype in ((numbers, np.int32), (positions, np.float64), (forces, np.float64),
                         (cell, np.float64), (pbc, np.bool_), (energy, np.float64), (stress, np.float64),
                         (step, np.int64), (split, np.int8)):
        h.update(np.ascontiguousarray(value, dtype=dtype).tobytes())
    for text in (reason, key):
        h.update(text if isinstance(text, bytes) else str(text).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def inspect(f: h5py.File) -> FileHealth:
    """Check every table and the checkpoint of an open run file; nothing is written."""
    health = FileHealth(path=f.filename)
    for table in ("trajectory", *_walker_tables(f), "models", "cutoffs", "failures"):
        _check_table(f, table, health)
    _check_dataset(f, health)
    if "checkpoint" in f:
        cp, problems = read_checkpoint(f["checkpoint"])
        health.checkpoint = cp
        if cp is None and problems:
            health.problems.extend(problems)
        else:
            health.notes.extend(p + "; the previous checkpoint is used" for p in problems)
    cp = health.checkpoint
    if cp is not None:
        if health.rows.get("dataset", 0) < cp.dataset_rows:
            health.problems.append(
                f"labelled frames {health.rows.get('dataset', 0)}..{cp.dataset_rows - 1} (saved before the "
                "checkpoint) fail their checksums")
        for table, need in _committed_rows(cp):
            have = health.rows.get(table, 0)
            if have < need:
                health.problems.append(f"/{table} has {have} intact rows, the checkpoint counts {need}")
    return health


def repair(f: h5py.File, health: FileHealth) -> list[str]:
    """Bring a resumable file back to its last checkpoint (labels after it are kept).

    Drops trajectory, model and cutoff rows after the checkpoint (all of them without one: the
    run starts again from its labelled frames), torn rows of every table, and frames that fail
    their checksum. Returns a line per table changed.
    """
    if not health.resumable:
        raise ValueError(health.message())
    cp = health.checkpoint
    committed = dict(_committed_rows(cp)) if cp is not None else {}
    done = []
    for table in (*_REDONE, *_walker_tables(f), "failures"):
        if table not in f:
            continue
        keep = health.rows.get(table, 0)
        if table != "failures":  # redone after the checkpoint (all of them without one)
            keep = min(keep, committed.get(table, 0))
        if _truncate(f[table], keep):
            done.append(f"/{table}: {health.stored.get(table, 0) - keep} row(s) after the checkpoint dropped")
    g = f["dataset"]
    frames, atoms = health.rows.get("dataset", 0), health.rows.get("dataset_atoms", 0)
    changed = _truncate(g, frames, columns=_frame_columns(g)) | _truncate(g, atoms, columns=_atom_columns(g))
    if changed:
        done.append(f"/dataset: torn rows after frame {frames - 1} dropped")
    return done


# --- helpers -----------------------------------------------------------------------------------
_ATOM_COLUMNS = ("numbers", "positions", "forces")


def _walker_tables(f: h5py.File) -> list[str]:
    """``walkers/<i>/trajectory`` of a many-walker run."""
    if "walkers" not in f:
        return []
    return [f"walkers/{name}/trajectory" for name in sorted(f["walkers"], key=int)
            if "trajectory" in f["walkers"][name]]


def _committed_rows(cp: Checkpoint) -> list[tuple[str, int]]:
    """(table, rows the checkpoint counts) for the tables a resume redoes after it."""
    out = [(table, getattr(cp, f"{table}_rows")) for table in _REDONE]
    out += [(f"walkers/{w['index']}/trajectory", int(w.get("trajectory_rows", 0))) for w in cp.walkers]
    return out


def _frame_columns(g: h5py.Group) -> list[str]:
    return [name for name in g if isinstance(g[name], h5py.Dataset) and name not in _ATOM_COLUMNS]


def _atom_columns(g: h5py.Group) -> list[str]:
    return [name for name in _ATOM_COLUMNS if name in g]


def _columns(g: h5py.Group) -> list[str]:
    # /trajectory/numbers is per atom of the cell, not per row
    return [name for name in g if isinstance(g[name], h5py.Dataset)
            and not (g.name.endswith("/trajectory") and name == "numbers")]


def _check_table(f: h5py.File, table: str, health: FileHealth) -> None:
    if table not in f:
        health.rows[table] = health.stored[table] = 0
        return
    g = f[table]
    names = _columns(g)
    try:
        lengths = [g[name].shape[0] for name in names]
    except (KeyError, OSError, ValueError) as exc:
        health.problems.append(f"/{table} unreadable ({exc})")
        health.rows[table] = health.stored[table] = 0
        return
    rows, stored = (min(lengths), max(lengths)) if lengths else (0, 0)
    health.stored[table] = stored
    if rows != stored:
        health.notes.append(f"/{table}: torn append (columns of {rows}..{stored} rows)")
    try:
        for name in names:  # the last rows are where a torn write would be
            g[name][max(rows - 2, 0):rows]
    except (OSError, ValueError) as exc:
        health.problems.append(f"/{table} unreadable near row {rows - 1} ({exc})")
        rows = 0
    health.rows[table] = rows


def _check_dataset(f: h5py.File, health: FileHealth) -> None:
    if "dataset" not in f:
        health.rows["dataset"] = health.stored["dataset"] = health.rows["dataset_atoms"] = 0
        return
    g = f["dataset"]
    try:
        n_frames = min(g[name].shape[0] for name in _frame_columns(g))
        n_atoms_rows = min(g[name].shape[0] for name in _atom_columns(g))
        health.stored["dataset"] = max(g[name].shape[0] for name in _frame_columns(g))
        offset, n_atoms = g["offset"][:n_frames], g["n_atoms"][:n_frames]
        good = n_frames
        ends = offset + n_atoms
        beyond = np.flatnonzero(ends > n_atoms_rows)
        if beyond.size:
            good = int(beyond[0])
        if "checksum" in g and good:
            good = _intact_prefix(g, good, offset, n_atoms)
    except (KeyError, OSError, ValueError) as exc:
        health.problems.append(f"/dataset unreadable ({exc})")
        health.rows["dataset"] = health.rows["dataset_atoms"] = 0
        health.stored.setdefault("dataset", 0)
        return
    health.rows["dataset"] = good
    health.rows["dataset_atoms"] = int(offset[good - 1] + n_atoms[good - 1]) if good else 0
    if good < health.stored["dataset"]:
        health.notes.append(f"/dataset: {health.stored['dataset'] - good} torn frame(s) after frame {good - 1}")


def _intact_prefix(g: h5py.Group, n: int, offset: np.ndarray, n_atoms: np.ndarray) -> int:
    """Number of leading frames whose checksum holds."""
    end = int(offset[n - 1] + n_atoms[n - 1])
    numbers, positions, forces = (g[name][:end] for name in _ATOM_COLUMNS)
    cell, pbc, energy, stress = (g[name][:n] for name in ("cell", "pbc", "energy", "stress"))
    step, reason, split, key, checksum = (g[name][:n] for name in ("step", "reason", "split", "key", "checksum"))
    for i in range(n):
        lo, hi = int(offset[i]), int(offset[i] + n_atoms[i])
        if offset[i] < 0 or n_atoms[i] <= 0:
            return i
        expected = frame_checksum(numbers[lo:hi], positions[lo:hi], forces[lo:hi], cell[i], pbc[i], energy[i],
                                  stress[i], step[i], bytes(reason[i]), split[i], bytes(key[i]))
        if bytes(checksum[i]).decode("ascii", "replace") != expected:
            return i
    return n


def _truncate(g: h5py.Group, rows: int, columns=None) -> bool:
    changed = False
    for name in (columns if columns is not None else _columns(g)):
        ds = g[name]
        if ds.shape[0] != rows:
            ds.resize(rows, axis=0)
            changed = True
    return changed


def audit(path) -> list[str]:
    """Consistency of a run file's contents (after a run, or a campaign of kills and resumes).

    Checks: the trajectory's steps strictly increase (contiguous when every step is recorded),
    no configuration is in the data set twice, model ids are their row numbers and every model's
    folder holds its weights and head, each model was trained on no more frames than the data set
    holds, and the checkpoint counts no more rows than there are. Returns one line per problem
    (empty: consistent).
    """
    from pathlib import Path

    from .runlog import RunLog, read_table

    problems: list[str] = []
    path = Path(path)
    with RunLog.open(path, "r") as log:
        if not log.health.resumable:
            return [log.health.message()]
        cp = log.read_checkpoint()
        n_frames = log.rows("dataset")
        config = log.config
    every = int(config.get("output", {}).get("trajectory_every", 1))
    with h5py.File(path, "r", locking=False) as f:
        tables = ["trajectory"] + _walker_tables(f)
    for table in tables:
        steps = read_table(path, table, columns=("step",)).get("step", np.zeros(0, dtype=int))
        if steps.size and (np.diff(steps) <= 0).any():
            problems.append(f"/{table}: steps do not strictly increase (a step recorded twice or out of order)")
        if steps.size and every == 1 and not np.array_equal(steps, np.arange(steps[0], steps[0] + steps.size)):
            problems.append(f"/{table}: steps are not contiguous ({steps.size} rows for steps {steps[0]}..{steps[-1]})")
        if cp is not None:
            committed = dict(_committed_rows(cp)).get(table, 0)
            if committed > steps.size:
                problems.append(f"the checkpoint counts {committed} rows of /{table}, the file holds {steps.size}")
    data = read_table(path, "dataset")
    keys = data.get("key", np.zeros(0, dtype=object))
    if len(set(keys)) != len(keys):
        problems.append(f"{len(keys) - len(set(keys))} configuration(s) stored twice in the data set")
    models = read_table(path, "models")
    ids = models.get("model", np.zeros(0, dtype=int))
    if not np.array_equal(ids, np.arange(ids.size)):
        problems.append(f"model ids {list(ids)} are not their row numbers")
    for i, rel in enumerate(models.get("path", [])):
        folder = path.parent / str(rel)
        if not (folder / "potential" / "weights.pt").is_file() or not (folder / "head").is_dir():
            problems.append(f"model {i}: {folder} lacks its weights or head")
        if models["n_train"][i] + models["n_val"][i] > n_frames:
            problems.append(f"model {i} was trained on {models['n_train'][i] + models['n_val'][i]} frames, "
                            f"the data set holds {n_frames}")
    if cp is not None:
        if cp.model >= ids.size:
            problems.append(f"the checkpoint's model {cp.model} is not in /models ({ids.size} rows)")
        if cp.dataset_rows > n_frames:
            problems.append("the checkpoint counts labelled frames the file does not hold")
    return problems
