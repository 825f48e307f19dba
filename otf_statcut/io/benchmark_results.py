"""The benchmark results file: one HDF5 file per benchmark, plus the CSV summaries.

This module is the only code that writes (or lays out) a benchmark results file. The file is
opened, written and closed for every iteration under an exclusive ``fcntl`` lock on
``<file>.lock``, so several MPI ranks (each running its own dataset/method/seed runs) can share
one file without parallel HDF5, and a killed run leaves a closed, readable file behind.

Layout (schema ``otf-statcut/benchmark``, version :data:`SCHEMA_VERSION`); one *run* per
dataset, method and seed::

    /                                attrs: schema, schema_version, otf_statcut_version, created,
                                            input (the YAML text), settings (JSON), fingerprint
    /<dataset>/                      attrs: path, n_frames, n_atoms, species (JSON)
    /<dataset>/frame_sizes           int64 (n_frames,)   atoms per sampling frame, in sampling order
    /<dataset>/<method>/             one group per run seed, nothing else
    /<dataset>/<method>/seed_<s>/    attrs: seed, status, stop_reason, wall_time (s), + final summary
    /<dataset>/<method>/seed_<s>/records   compound (n_iterations,): one row per completed
                                     iteration, columns = fields of :class:`IterationRecord`
    /<dataset>/<method>/seed_<s>/iterations/<i>/   arrays of iteration i (see
                                     :data:`ITERATION_ARRAYS`); attrs: error_fit, sigma_fit,
                                     sigma_candidates, cutoffs (JSON)

Files of schema version 1 (one run per dataset/method, no seed groups) are refused with a one-line
message: re-run the benchmark into a new folder, or with ``--restart``.

An iteration is *complete* when its row is in ``records``; the row is written after the
iteration's arrays, so an interruption in between leaves an orphan ``iterations/<i>`` group,
which :meth:`BenchmarkResults.completed` ignores and the next write replaces. This is what makes
``otf-statcut benchmark`` resume from the file.

Per-atom arrays (``*_errors``, ``*_sigma``) are concatenated over frames in sampling order (split
them with ``frame_sizes``) and stored as float32 with gzip compression.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import fcntl
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from otf_statcut import __version__
from otf_statcut.errors import DataError, UserError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "SEED_GROUP",
    "STATUSES",
    "ITERATION_ARRAYS",
    "OPTIONAL_ARRAYS",
    "IterationRecord",
    "MethodSummary",
    "BenchmarkResults",
    "write_summary_csv",
    "write_seed_statistics_csv",
    "record_columns",
]

SCHEMA = "otf-statcut/benchmark"
SCHEMA_VERSION = 2
#: Prefix of the run groups: ``/<dataset>/<method>/seed_<s>``.
SEED_GROUP = "seed_"
#: Method status values: ``running`` until one of the others ends it.
STATUSES = ("running", "converged", "stalled", "exhausted", "max_iterations", "label_budget")

_STR = 24  # width of the fixed-length strings in the records table


def _col(unit: str, doc: str, dtype: str):
    return field(metadata={"unit": unit, "doc": doc, "dtype": dtype})


@dataclass(frozen=True)
class IterationRecord:
    """Scalar metrics of one active-learning iteration (one row of ``records``).

    Per-atom classification statistics compare the sampling set's per-atom force-error magnitudes
    with the error cutoff and per-atom σ with the minimum uncertainty cutoff (strictly above =
    high error / uncertain); frame counts classify the maximum σ of each frame not yet in the
    data set with the shared decision rule (``minimum <= max σ <= maximum`` labels,
    ``max σ > maximum`` halts).
    """

    iteration: int = _col("", "active-learning index, from 0", "i4")
    dataset_size: int = _col("frames", "frames the model of this iteration was trained/validated on", "i4")
    n_train: int = _col("frames", "training frames", "i4")
    n_val: int = _col("frames", "validation frames", "i4")
    n_added: int = _col("frames", "frames selected for the next iteration", "i4")
    n_candidates: int = _col("frames", "frames the rule could add: unlabelled, above the minimum, before "
                                       "the stop (plus the halting frame)", "i4")
    stopped_at: int = _col("", "sampling position of the first frame above the maximum cutoff (-1: none)",
                           "i4")
    coverage: float = _col("", "fraction of the sampling order walked before stopping", "f8")
    n_between: int = _col("frames", "unlabelled sampling frames with minimum <= max σ <= maximum", "i4")
    n_above: int = _col("frames", "unlabelled sampling frames with max σ > maximum", "i4")
    n_true_positive: int = _col("atoms", "sampling atoms with high error and high σ", "i4")
    n_uncertain: int = _col("atoms", "sampling atoms with σ > minimum cutoff", "i4")
    n_high_error: int = _col("atoms", "sampling atoms with error > error cutoff", "i4")
    precision: float = _col("", "TP / uncertain (NaN when nothing is uncertain)", "f8")
    recall: float = _col("", "TP / high error (NaN when nothing has a high error)", "f8")
    f1: float = _col("", "harmonic mean of precision and recall (NaN when undefined)", "f8")
    mean_error_train: float = _col("eV/Å", "mean per-atom force-error magnitude, training frames", "f8")
    mean_error_val: float = _col("eV/Å", "mean per-atom force-error magnitude, validation frames", "f8")
    mean_error_sampling: float = _col("eV/Å", "mean per-atom force-error magnitude, whole sampling set",
                                      "f8")
    error_cutoff: float = _col("eV/Å", "statistical error cutoff (Maxwell on validation errors)", "f8")
    sigma_minimum: float = _col("eV/Å", "minimum uncertainty cutoff", "f8")
    sigma_maximum: float = _col("eV/Å", "maximum uncertainty cutoff (max_error mapped to σ)", "f8")
    error_fit: str = _col("", "family fitted to validation errors", f"S{_STR}")
    sigma_fit: str = _col("", "family fitted to validation σ (best KS p-value)", f"S{_STR}")
    sigma_fit_pvalue: float = _col("", "KS p-value of the σ fit", "f8")
    n_screened: int = _col("atoms", "N of the cutoffs (CDF = 1 - 1/N): per-atom values screened", "i8")
    train_time: float = _col("s", "wall time of training the potential (and ensemble members)", "f8")
    wall_time: float = _col("s", "wall time of the whole iteration", "f8")

    def to_row(self) -> tuple:
        return tuple(
            getattr(self, f.name).encode() if f.metadata["dtype"].startswith("S") else getattr(self, f.name)
            for f in dataclasses.fields(self)
        )

    @classmethod
    def from_row(cls, row) -> IterationRecord:
        values = {}
        for f in dataclasses.fields(cls):
            value = row[f.name]
            if f.metadata["dtype"].startswith("S"):
                values[f.name] = value.decode() if isinstance(value, bytes) else str(value)
            elif f.metadata["dtype"].startswith("i"):
                values[f.name] = int(value)
            else:
                values[f.name] = float(value)
        return cls(**values)


def record_columns() -> list[tuple[str, str, str, str]]:
    """``(name, dtype, unit, description)`` of every records column, in order (for the README)."""
    return [(f.name, f.metadata["dtype"], f.metadata["unit"], f.metadata["doc"])
            for f in dataclasses.fields(IterationRecord)]


_RECORD_DTYPE = np.dtype([(f.name, f.metadata["dtype"]) for f in dataclasses.fields(IterationRecord)])

#: Arrays of ``iterations/<i>``: name -> (dtype, description). All are required on write.
ITERATION_ARRAYS: dict[str, tuple[str, str]] = {
    "labelled": ("i8", "sampling positions of the frames in the data set, in order of addition"),
    "is_val": ("?", "per labelled frame: True if it is a validation frame"),
    "selected": ("i8", "sampling positions selected for the next iteration"),
    "frame_sigma": ("f4", "per sampling frame: max per-atom σ (eV/Å)"),
    "frame_error": ("f4", "per sampling frame: max per-atom force-error magnitude (eV/Å)"),
    "sampling_errors": ("f4", "per sampling atom: force-error magnitude (eV/Å)"),
    "sampling_sigma": ("f4", "per sampling atom: σ (eV/Å)"),
    "val_errors": ("f4", "per validation atom: force-error magnitude (eV/Å)"),
    "val_sigma": ("f4", "per validation atom: σ (eV/Å)"),
    "sweep_error_cutoffs": ("f8", "F1 sweep grid: error cutoffs (eV/Å)"),
    "sweep_sigma_cutoffs": ("f8", "F1 sweep grid: uncertainty cutoffs (eV/Å)"),
    "sweep_precision": ("f4", "precision over (error cutoff, σ cutoff), shape (n_err, n_sigma)"),
    "sweep_recall": ("f4", "recall over the same grid"),
    "sweep_f1": ("f4", "F1 over the same grid"),
}

#: Arrays of ``iterations/<i>`` written when the protocol gives them: name -> (dtype, description).
#: Any other array given is stored too, with its own dtype.
OPTIONAL_ARRAYS: dict[str, tuple[str, str]] = {
    "frame_severity": ("f8", "per sampling frame: max per-atom severity (σ through its element's "
                             "cutoffs: minimum -> 1, maximum -> 2); what the selection ranks, stored "
                             "exactly for resume"),
    "element_symbols": ("S8", "elements of the cutoffs ('all' for one global set)"),
    "element_n": ("i8", "per element: N of its cutoffs"),
    "element_error_cutoff": ("f8", "per element: error cutoff (eV/Å)"),
    "element_sigma_minimum": ("f8", "per element: minimum σ cutoff (eV/Å)"),
    "element_sigma_maximum": ("f8", "per element: maximum σ cutoff (eV/Å)"),
    "element_n_above_error": ("i8", "per element: sampling atoms above its error cutoff"),
}


@dataclass(frozen=True)
class MethodSummary:
    """Final summary of one dataset/method/seed run (attributes of its group, one CSV row)."""

    dataset: str
    method: str
    seed: int
    status: str
    iterations: int
    final_dataset_size: int
    dft_labels: int
    final_mean_error_train: float
    final_mean_error_val: float
    final_mean_error_sampling: float
    final_precision: float
    final_recall: float
    final_f1: float
    final_coverage: float
    final_error_cutoff: float
    final_sigma_minimum: float
    final_sigma_maximum: float
    wall_time: float


class BenchmarkResults:
    """Reader/writer of one benchmark results file.

    Parameters
    ----------
    path : str or Path
        The ``.h5`` file; it need not exist yet (see :meth:`initialise`).

    Notes
    -----
    Every method opens and closes the file under an exclusive lock; no handle is kept between
    calls, so an object can be shared freely and a crash never leaves the file open.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    # ------------------------------------------------------------------------------ opening
    @contextlib.contextmanager
    def _open(self, mode: str) -> Iterator[h5py.File]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with h5py.File(self.path, mode) as handle:
                    yield handle
                    handle.flush()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def initialise(self, *, input_text: str, settings: Mapping[str, Any], fingerprint: str) -> bool:
        """Create the file, or check that an existing one belongs to the same benchmark input.

        Parameters
        ----------
        input_text : str
            The benchmark YAML as given (stored for reference).
        settings : mapping
            The resolved settings (stored as JSON).
        fingerprint : str
            Digest of the settings that determine the results; an existing file with another
            fingerprint is refused (its results would not be comparable).

        Returns
        -------
        bool
            True if the file already existed (a resumed benchmark).

        Raises
        ------
        UserError
            If the existing file is not a benchmark results file of this schema version or was
            written for other settings.
        """
        existed = self.path.exists()
        if existed:
            self.check()
            with self._open("r") as f:
                old = str(f.attrs.get("fingerprint", ""))
                old_settings = json.loads(str(f.attrs.get("settings", "{}")))
            if old != fingerprint:
                changed = _changed_keys(old_settings, dict(settings))
                raise UserError(
                    f"{self.path}: results of a benchmark with other settings "
                    f"({', '.join(changed) or 'unknown'} differ); choose another output folder or pass "
                    "--restart to discard them"
                )
            return True
        with self._open("w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["otf_statcut_version"] = __version__
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.attrs["input"] = input_text
            f.attrs["settings"] = json.dumps(settings, sort_keys=True, default=str)
            f.attrs["fingerprint"] = fingerprint
        return False

    def check(self) -> None:
        """Raise :class:`UserError` unless the file is a benchmark results file this code reads."""
        if not self.path.is_file():
            raise DataError(f"{self.path}: results file not found")
        try:
            with self._open("r") as f:
                schema = f.attrs.get("schema")
                version = f.attrs.get("schema_version")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        if schema != SCHEMA:
            raise DataError(f"{self.path}: attribute 'schema' is {schema!r}, expected {SCHEMA!r} "
                            "(not an otf-statcut benchmark results file)")
        if version == 1:
            raise DataError(f"{self.path}: schema_version 1 (one run per dataset/method, written before "
                            f"seeds); this otf-statcut reads version {SCHEMA_VERSION} (runs under "
                            "/<dataset>/<method>/seed_<s>): re-run the benchmark into a new folder or with "
                            "--restart")
        if version != SCHEMA_VERSION:
            raise DataError(f"{self.path}: attribute 'schema_version' is {version!r}, "
                            f"this version of otf-statcut reads {SCHEMA_VERSION}")

    # ------------------------------------------------------------------------------ writing
    def write_dataset(self, name: str, *, path: str, frame_sizes: Sequence[int],
                      species: Sequence[str]) -> None:
        """Record a sampling set (idempotent; a second call must describe the same set)."""
        sizes = np.asarray(frame_sizes, dtype=np.int64)
        with self._open("a") as f:
            if name in f:
                old = f[name]["frame_sizes"][()]
                if not np.array_equal(old, sizes):
                    raise UserError(f"{self.path}: dataset {name!r} holds {old.size} frames of other "
                                    f"sizes than the {sizes.size} frames read from {path}; use another "
                                    "output folder")
                return
            g = f.create_group(name)
            g.attrs["path"] = str(path)
            g.attrs["n_frames"] = int(sizes.size)
            g.attrs["n_atoms"] = int(sizes.sum())
            g.attrs["species"] = json.dumps(list(species))
            g.create_dataset("frame_sizes", data=sizes)

    def append_iteration(self, dataset: str, method: str, record: IterationRecord,
                         arrays: Mapping[str, np.ndarray], fits: Mapping[str, Mapping[str, Any]], *,
                         seed: int) -> None:
        """Store one completed iteration of a run (arrays first, then its ``records`` row).

        Parameters
        ----------
        dataset, method : str
            Group names.
        record : IterationRecord
            Its ``iteration`` must equal the number of rows already stored for the run.
        arrays : mapping
            Every key of :data:`ITERATION_ARRAYS`; keys of :data:`OPTIONAL_ARRAYS` and any others
            are stored too.
        fits : mapping
            ``{"error_fit": {...}, "sigma_fit": {...}}`` JSON-ready descriptions of the fits.
        seed : int
            The run seed (group ``seed_<seed>``).
        """
        missing = sorted(set(ITERATION_ARRAYS) - set(arrays))
        if missing:
            raise ValueError(f"iteration arrays missing: {missing}")
        with self._open("a") as f:
            g = self._run_group(f, dataset, method, seed)
            n_done = g["records"].shape[0]
            if record.iteration != n_done:
                raise ValueError(f"{dataset}/{method}/seed {seed}: iteration {record.iteration} written "
                                 f"after {n_done} rows")
            iters = g.require_group("iterations")
            key = str(record.iteration)
            if key in iters:  # an orphan from an interrupted write
                del iters[key]
            it = iters.create_group(key)
            for name, value in arrays.items():
                known = ITERATION_ARRAYS.get(name) or OPTIONAL_ARRAYS.get(name)
                data = np.asarray(value, dtype=known[0]) if known else np.asarray(value)
                compress = {"compression": "gzip", "compression_opts": 4} if data.size > 256 else {}
                it.create_dataset(name, data=data, **compress)
            for name, value in fits.items():
                it.attrs[name] = json.dumps(value, default=_json_default)
            table = g["records"]
            table.resize((n_done + 1,))
            table[n_done] = np.array(record.to_row(), dtype=_RECORD_DTYPE)
            g.attrs["status"] = "running"

    def finish(self, summary: MethodSummary, stop_reason: str) -> None:
        """Mark a run finished: status, stop reason and the summary as attributes of its group."""
        if summary.status not in STATUSES[1:]:
            raise ValueError(f"final status {summary.status!r} not one of {STATUSES[1:]}")
        with self._open("a") as f:
            g = self._run_group(f, summary.dataset, summary.method, summary.seed)
            for key, value in dataclasses.asdict(summary).items():
                if key not in ("dataset", "method"):
                    g.attrs[key] = value
            g.attrs["stop_reason"] = stop_reason

    def reopen(self, dataset: str, method: str, *, seed: int) -> None:
        """Mark a finished run as running again (its budget was raised); keeps its iterations."""
        with self._open("a") as f:
            g = self._run_group(f, dataset, method, seed)
            g.attrs["status"] = "running"
            g.attrs["stop_reason"] = ""

    @staticmethod
    def _run_group(f: h5py.File, dataset: str, method: str, seed: int) -> h5py.Group:
        if dataset not in f:
            raise KeyError(f"dataset {dataset!r} not written yet (call write_dataset first)")
        g = f[dataset].require_group(method).require_group(f"{SEED_GROUP}{int(seed)}")
        if "records" not in g:
            g.create_dataset("records", shape=(0,), maxshape=(None,), dtype=_RECORD_DTYPE, chunks=(64,))
            g.attrs["seed"] = int(seed)
            g.attrs["status"] = "running"
            g.attrs["stop_reason"] = ""
        return g

    @staticmethod
    def _find(f: h5py.File, dataset: str, method: str, seed: int) -> h5py.Group | None:
        """The run group, or None if nothing is stored for it."""
        key = f"{dataset}/{method}/{SEED_GROUP}{int(seed)}"
        return f[key] if key in f else None

    # ------------------------------------------------------------------------------ reading
    def datasets(self) -> list[str]:
        """Dataset names, sorted."""
        with self._open("r") as f:
            return sorted(f.keys())

    def methods(self, dataset: str) -> list[str]:
        """Methods with at least a group under ``dataset``."""
        with self._open("r") as f:
            return [k for k in f[dataset].keys() if isinstance(f[dataset][k], h5py.Group)]

    def seeds(self, dataset: str, method: str) -> list[int]:
        """Seeds with a run group under ``dataset/method``, ascending."""
        with self._open("r") as f:
            if dataset not in f or method not in f[dataset]:
                return []
            return sorted(int(k[len(SEED_GROUP):]) for k in f[dataset][method].keys()
                          if k.startswith(SEED_GROUP) and k[len(SEED_GROUP):].isdigit())

    def runs(self) -> list[tuple[str, str, int]]:
        """Every stored ``(dataset, method, seed)``: datasets sorted, methods as stored, seeds ascending."""
        return [(d, m, s) for d in self.datasets() for m in self.methods(d) for s in self.seeds(d, m)]

    def dataset_info(self, dataset: str) -> dict[str, Any]:
        """``path``, ``n_frames``, ``n_atoms``, ``species`` and ``frame_sizes`` of a sampling set."""
        with self._open("r") as f:
            g = f[dataset]
            return {
                "path": str(g.attrs["path"]),
                "n_frames": int(g.attrs["n_frames"]),
                "n_atoms": int(g.attrs["n_atoms"]),
                "species": json.loads(str(g.attrs["species"])),
                "frame_sizes": g["frame_sizes"][()],
            }

    def status(self, dataset: str, method: str, *, seed: int = 0) -> tuple[str, str]:
        """``(status, stop_reason)`` of a run; ``("new", "")`` when nothing is stored yet."""
        with self._open("r") as f:
            g = self._find(f, dataset, method, seed)
            if g is None:
                return "new", ""
            return str(g.attrs.get("status", "running")), str(g.attrs.get("stop_reason", ""))

    def completed(self, dataset: str, method: str, *, seed: int = 0) -> list[IterationRecord]:
        """Records of the completed iterations of a run, in order (empty when none)."""
        with self._open("r") as f:
            g = self._find(f, dataset, method, seed)
            if g is None:
                return []
            rows = g["records"][()]
        return [IterationRecord.from_row(row) for row in rows]

    def iteration_arrays(self, dataset: str, method: str, iteration: int, *, seed: int = 0) -> dict[str, Any]:
        """Arrays of one completed iteration of a run, plus its fits under ``"fits"``.

        ``iteration`` may be negative (``-1``: the last completed one).
        """
        records = self.completed(dataset, method, seed=seed)
        if not records:
            raise DataError(f"{self.path}: no completed iteration for {dataset}/{method}/seed {seed}")
        index = range(len(records))[iteration]
        with self._open("r") as f:
            it = self._find(f, dataset, method, seed)["iterations"][str(index)]
            data: dict[str, Any] = {name: it[name][()] for name in it.keys()}
            data["fits"] = {k: json.loads(str(v)) for k, v in it.attrs.items()}
        data["iteration"] = index
        data["seed"] = int(seed)
        return data

    def summary(self, dataset: str, method: str, *, seed: int = 0) -> MethodSummary | None:
        """The stored final summary of a run, or None while it has not finished."""
        with self._open("r") as f:
            g = self._find(f, dataset, method, seed)
            if g is None:
                return None
            attrs = dict(g.attrs)
        if str(attrs.get("status", "running")) not in STATUSES[1:]:
            return None
        names = [x.name for x in dataclasses.fields(MethodSummary)]
        values = {k: _plain(attrs[k]) for k in names if k in attrs}
        values["seed"] = int(seed)
        return MethodSummary(dataset=dataset, method=method, **{k: v for k, v in values.items()
                                                                  if k not in ("dataset", "method")})

    def metadata(self) -> dict[str, Any]:
        """Root attributes: schema, versions, creation time, input text and settings."""
        with self._open("r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
        attrs["settings"] = json.loads(attrs.get("settings", "{}"))
        return attrs


def write_summary_csv(path, summaries: Sequence[MethodSummary],
                      oracle: Mapping[tuple[str, str, int], tuple[float, float]] | None = None) -> Path:
    """Write one CSV row per dataset/method/seed run.

    Columns: the :class:`MethodSummary` fields, then ``oracle_target`` (1.1 × the final sampling
    error of the oracle run with the same dataset and seed; ``nan`` without one) and
    ``labels_to_oracle`` (data-set size of the first iteration at or below that target; ``nan``:
    not reached), both from ``oracle`` (``(dataset, method, seed) -> (target, labels)``, as
    :func:`otf_statcut.benchmark.metrics.seed_statistics` returns it; left out when None).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [x.name for x in dataclasses.fields(MethodSummary)]
    if oracle is not None:
        names += ["oracle_target", "labels_to_oracle"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for s in summaries:
            row = dataclasses.asdict(s)
            if oracle is not None:
                nan = float("nan")
                target, labels = oracle.get((s.dataset, s.method, s.seed), (nan, nan))
                row["oracle_target"], row["labels_to_oracle"] = target, labels
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def write_seed_statistics_csv(path, rows: Sequence) -> Path:
    """Write the over-seeds table (one row per dataset × method; columns = fields of
    :class:`otf_statcut.benchmark.metrics.SeedStatistics`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(path, "w", newline="") as handle:
        if not rows:
            return path
        names = [x.name for x in dataclasses.fields(rows[0])]
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(v) for k, v in dataclasses.asdict(r).items()})
    return path


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _changed_keys(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys.extend(_changed_keys(a, b, name + "."))
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            keys.append(name)
    return keys

