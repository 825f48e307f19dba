"""AOTInductor-compiled inference for a :class:`~otf_statcut.mlip.NequIPPotential` in the
on-the-fly loop (issue 11), with the latent node features the uncertainty heads need.

What is compiled
----------------
The potential's *current* weights are exported with nequip's own ``aot_export_model`` (what
``nequip-compile --mode aotinductor`` calls) for the potential's device, with the batch inputs of
``nequip-compile --target batch`` (positions, edge index, atom types, cell, edge cell shifts,
batch, number of atoms per frame; every dimension dynamic) and these outputs
(:data:`COMPILED_OUTPUTS`): total energy, per-atom energy, forces, stress, virial and the
invariant node features (``node_features``, what the heads read). :class:`CompiledModel` calls it
on a batched or single-frame ``AtomicDataDict`` and returns a dict like the eager model's: the
input fields plus those outputs, same shapes, same units (eV, eV/Å, eV/Å³), so
:func:`~otf_statcut.mlip.potential.predictions_from_output`, ``NequIPPotential.predict`` and the
:class:`~otf_statcut.mlip.calculator.PotentialCalculator` (and the engine's σ hook, which reads
``node_features``) use it unchanged. Agreement with eager in float64 is at rounding level
(~1e-14 eV/Å); every compiled model is checked against the eager model it was built from
before it is used (:data:`CHECK_TOLERANCE`).

Compilation runs in a child Python (``python -m otf_statcut.mlip.compiled``): the export sets
``requires_grad=False`` on the parameters it traces, resets dynamo and spends most of its time in
Python and the C++ compiler, none of which may touch the caller's model or hold the caller's GIL.
The child rebuilds the model from the config, statistics and a snapshot of the weights, traces
a batch of two copies of an example frame (nequip's recipe against 0/1 specialisation), compiles,
loads the result and compares it with eager on single frames and a batch of the example frames.
Compile time (the child's wall time) is recorded (``compile_seconds``): ~20-60 s on a loaded
2-core CPU for a quickstart-size model.

Amortisation policy (:class:`CompiledManager`, ``potential.enable_compiled``)
---------------------------------------------------------------------------
* A compiled model is valid for exactly one set of weights: it carries the **weights digest**
  (BLAKE2b over the state dict: names, dtypes, shapes, bytes; see :func:`weights_digest`) and the
  device it was compiled for. Every evaluation compares it with the digest of the potential's
  current model; a stale one is never used and is discarded (its file deleted). The digest is
  recomputed only when the cheap *version key* changes (the model object, the device, and the
  in-place version counters of the state tensors, which every optimiser step and
  ``load_state_dict`` bump), so an unchanged model costs a few microseconds per call.
* Weights change at each retrain, so a fresh compilation is started when an evaluation finds
  none for the current weights (the first step after a fit) or when :meth:`CompiledManager.refresh`
  is called (e.g. right after a fit). Until it is ready, **eager** evaluates: the loop never waits.
  ``mode="background"`` (default) compiles in a daemon thread driving a niced child process; a
  job for weights that have since changed is cancelled (its child terminated) and replaced by
  one for the new weights, so at most one compilation runs. ``mode="blocking"`` compiles in the
  calling thread at the first evaluation with new weights and then uses it (for scripts and
  benchmarks, or long MD segments between rare retrains).
* Whether compiling pays: a compile costs C seconds of CPU once per set of weights; each step
  saves (t_eager - t_compiled). Background compilation steals at most one core for C seconds and
  pays off after C / (t_eager - t_compiled) steps: at 250 atoms on CPU (~0.1 s saved per step)
  after a few hundred steps, so it is worth it when retrains are rarer than that (late in a
  run, when labels become rare), and harmless otherwise (eager runs in the meantime).
  ``mode="off"``/``disable_compiled`` keeps eager only.
* **Eager is the fallback** whenever compilation or a compiled evaluation fails (no C++ compiler,
  a torch/nequip export error, a disagreement with eager beyond the tolerance, a timeout): the
  failure is logged once (a warning naming the reason) and compilation is switched off for this
  potential (``compiled_status()["state"] == "failed"``) so a broken tool chain does not cost a
  compile per retrain; ``enable_compiled`` again re-arms it.

Files: each compiled model is a ``.nequip.pt2`` in the manager's work folder (a temporary folder
unless ``workdir`` is given); only the current one is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ase import Atoms

from otf_statcut.errors import OTFStatcutError

__all__ = [
    "COMPILED_OUTPUTS",
    "COMPILED_INPUTS",
    "CHECK_TOLERANCE",
    "CompileError",
    "CompiledModel",
    "CompiledManager",
    "weights_digest",
    "compile_potential",
    "load_compiled",
    "MODES",
]

log = logging.getLogger(__name__)

#: Input fields of the compiled model (nequip-compile's ``--target batch`` inputs).
COMPILED_INPUTS = ["pos", "edge_index", "atom_types", "cell", "edge_cell_shift", "batch", "num_atoms"]
#: Output fields (AtomicDataDict keys): total energy, per-atom energy, forces, stress, virial,
#: latent node features.
COMPILED_OUTPUTS = ["total_energy", "atomic_energy", "forces", "stress", "virial", "node_features"]
#: Agreement required between a compiled model and eager on the check frames, relative to
#: max(1, |field|_max) per field: float64 1e-9 (AOTInductor reorders sums/fuses kernels, which moves
#: results by a few ulps, ~1e-14 relative; 1e-9 leaves five orders of margin yet catches any real
#: error, which is O(1)); float32 1e-4.
CHECK_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
#: Policies of :class:`CompiledManager`.
MODES = ("background", "blocking")
_SUFFIX = ".nequip.pt2"


class CompileError(OTFStatcutError, RuntimeError):
    """Compiling a potential, or loading/checking the compiled model, failed (one-line message)."""


# ------------------------------------------------------------------------------ digests
def weights_digest(model: torch.nn.Module) -> str:
    """Hex BLAKE2b digest of ``model``'s state dict (names, dtypes, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _version_key(model: torch.nn.Module, device: torch.device) -> tuple:
    """Cheap key that changes whenever the weights may have changed: the module, the device and
    the version counters and storages of its state tensors (bumped by every in-place update)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return (id(model), str(device), tuple(t._version for t in tensors), tuple(t.data_ptr() for t in tensors))


# ------------------------------------------------------------------------------ compiled model
@dataclass
class CompiledModel:
    """An AOTInductor-compiled potential for one set of weights on one device.

    Calling it with an ``AtomicDataDict`` (one frame, or a batch with ``batch``/``num_atoms``)
    returns the input fields plus :data:`COMPILED_OUTPUTS`, like the eager model.
    """

    path: Path
    digest: str
    device: str
    compile_seconds: float
    check: dict = field(default_factory=dict)
    _runner: Any = field(default=None, repr=False)

    def __call__(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from nequip.data import AtomicDataDict

        data = dict(data)
        if AtomicDataDict.BATCH_KEY not in data:
            n = data[AtomicDataDict.POSITIONS_KEY].shape[0]
            device = data[AtomicDataDict.POSITIONS_KEY].device
            data[AtomicDataDict.BATCH_KEY] = torch.zeros(n, dtype=torch.long, device=device)
            data[AtomicDataDict.NUM_NODES_KEY] = torch.tensor([n], dtype=torch.long, device=device)
        cell = data[AtomicDataDict.CELL_KEY]
        n_frames = data[AtomicDataDict.NUM_NODES_KEY].shape[0]
        inputs = []
        for key in COMPILED_INPUTS:
            value = data[key]
            if key == AtomicDataDict.CELL_KEY:
                value = cell.reshape(n_frames, 3, 3)
            # the AOTI model reads inputs at their compile-time strides: make them contiguous
            inputs.append(value.contiguous())
        with torch.inference_mode():
            outputs = self._runner(inputs)
        data.update(zip(COMPILED_OUTPUTS, outputs))
        return data


def load_compiled(path: str | Path, digest: str, device: str, compile_seconds: float = float("nan"),
                  check: dict | None = None) -> CompiledModel:
    """Load a ``.nequip.pt2`` written by :func:`compile_potential` (its outputs must be
    :data:`COMPILED_OUTPUTS`)."""
    from nequip.utils.aoti_metadata import NEQUIP_AOTI_OUTPUTS_KEY, import_custom_ops_libs, parse_aoti_keys

    path = Path(path)
    try:
        import_custom_ops_libs(str(path))
        runner = torch._inductor.aoti_load_package(str(path))
        outputs = parse_aoti_keys(runner.get_metadata()[NEQUIP_AOTI_OUTPUTS_KEY])
    except Exception as exc:  # torch raises RuntimeError, OSError, KeyError, ...
        raise CompileError(f"{path}: cannot load the compiled model ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from exc
    if list(outputs) != COMPILED_OUTPUTS:
        raise CompileError(f"{path}: compiled outputs {outputs}, expected {COMPILED_OUTPUTS}")
    return CompiledModel(path, digest, str(device), compile_seconds, dict(check or {}), runner)


# ------------------------------------------------------------------------------ compiling
@dataclass
class _Snapshot:
    """What the child needs to rebuild the potential: written before the weights can move on."""

    config: dict
    statistics: dict
    state: dict
    digest: str
    device: str
    dtype: str
    example: list


def _snapshot(potential, example: Sequence[Atoms] | None) -> _Snapshot:
    from .nequip_native import probe_structure

    frames = [a for a in (example or []) if set(a.get_chemical_symbols()) <= set(potential.species)][:4]
    if not frames:
        frames = [probe_structure(potential.species, potential.config.r_max)]
    state = {k: v.detach().to("cpu", copy=True) for k, v in potential.model.state_dict().items()}
    return _Snapshot(potential.config.to_dict(), potential.statistics.to_dict(), state,
                     weights_digest(potential.model), str(potential.device), potential.config.model_dtype,
                     [Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc) for a in frames])


def _write_snapshot(snap: _Snapshot, folder: Path) -> None:
    import ase.io

    from ..io.files import torch_save

    folder.mkdir(parents=True, exist_ok=True)
    torch_save(snap.state, folder / "weights.pt")
    (folder / "spec.json").write_text(json.dumps({
        "model_config": snap.config, "statistics": snap.statistics, "device": snap.device,
        "digest": snap.digest, "dtype": snap.dtype}, indent=1))
    ase.io.write(folder / "example.extxyz", snap.example, format="extxyz")


class _Job:
    """One compilation (a child process); ``cancel`` terminates the child."""

    def __init__(self, snap: _Snapshot, path: Path, nice: int = 0, timeout: float | None = None):
        self.snap, self.path, self.nice, self.timeout = snap, path, nice, timeout
        self.cancelled = False
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()

    def run(self) -> CompiledModel:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="otf-statcut-aoti-") as tmp:
            tmp = Path(tmp)
            _write_snapshot(self.snap, tmp / "snapshot")
            built = tmp / ("model" + _SUFFIX)
            env = dict(os.environ)
            env.setdefault("OMP_NUM_THREADS", "1")
            # the child imports this very copy of the package (not another one on the path)
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            nice = self.nice
            preexec = (lambda: os.nice(nice)) if nice and hasattr(os, "nice") else None
            with self._lock:
                if self.cancelled:
                    raise CompileError("cancelled")
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "otf_statcut.mlip.compiled", str(tmp / "snapshot"), str(built)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=preexec)
            try:
                output, _ = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
                raise CompileError(f"compilation timed out after {self.timeout:g} s") from None
            if self.cancelled:
                raise CompileError("cancelled")
            if self.proc.returncode != 0:
                raise CompileError(f"compilation failed (exit status {self.proc.returncode}): "
                                   f"{_last_error(output)}")
            check = json.loads((tmp / "check.json").read_text())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(built), str(self.path))
        seconds = time.perf_counter() - start
        return load_compiled(self.path, self.snap.digest, self.snap.device, seconds, check)


def compile_potential(potential, path: str | Path, example: Sequence[Atoms] | None = None,
                      timeout: float | None = None) -> CompiledModel:
    """Compile ``potential``'s current weights for its device into ``path`` (``.nequip.pt2``),
    check it against eager on the example frames (default: a 27-atom probe structure) and load it.

    Raises
    ------
    CompileError
        If the export, the C++ compilation or the check fails, or ``timeout`` (s) passes.
    """
    path = Path(path)
    if not path.name.endswith(_SUFFIX):
        raise CompileError(f"{path}: a compiled model's file name must end with {_SUFFIX}")
    return _Job(_snapshot(potential, example), path, timeout=timeout).run()


# ------------------------------------------------------------------------------ manager
class CompiledManager:
    """Keeps a compiled model for a potential's current weights (see the module docstring).

    Parameters
    ----------
    potential : NequIPPotential
    mode : {"background", "blocking"}
    workdir : path, optional
        Where compiled files go (default: a temporary folder removed with the manager).
    example : sequence of ase.Atoms, optional
        Frames to trace and check with (default: a probe structure of the potential's species).
    timeout : float, optional
        Seconds one compilation may take (default: 1800).
    nice : int
        Niceness added to the background compiling child (default 10) so MD keeps priority.
    compiler : callable, optional
        ``compiler(snapshot, path) -> CompiledModel`` replacing the child-process compilation
        (tests).
    """

    def __init__(self, potential, mode: str = "background", workdir: str | Path | None = None,
                 example: Sequence[Atoms] | None = None, timeout: float | None = 1800.0, nice: int = 10,
                 compiler: Callable | None = None):
        if mode not in MODES:
            raise ValueError(f"compiled mode must be one of {MODES}, got {mode!r}")
        self._potential = weakref.ref(potential)
        self.mode = mode
        self.example = list(example) if example else None
        self.timeout = timeout
        self.nice = nice
        self._compiler = compiler
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="otf-statcut-compiled-")
            self.workdir = Path(self._tmp.name)
        else:
            self._tmp = None
            self.workdir = Path(workdir)
        self._lock = threading.RLock()
        self._key: tuple | None = None
        self._digest: str | None = None
        self._ready: CompiledModel | None = None
        self._job: _Job | None = None
        self._job_digest: str | None = None
        self._threads: list[threading.Thread] = []
        self._counter = 0
        self.failed: str | None = None
        self.n_compiled = 0
        self.n_discarded = 0
        self.n_compiled_calls = 0
        self.n_eager_calls = 0
        self.compile_seconds: list[float] = []

    # --- digest of the potential's current weights ---------------------------------------
    def current_digest(self) -> str:
        """Digest of the potential's current weights and device (cached on the version key)."""
        potential = self._potential()
        key = _version_key(potential.model, potential.device)
        with self._lock:
            if key != self._key:
                self._key, self._digest = key, f"{weights_digest(potential.model)}@{potential.device}"
            return self._digest

    # --- evaluation ------------------------------------------------------------------------
    def model(self) -> CompiledModel | None:
        """The compiled model for the current weights, or None (eager must run); starts a
        compilation for the current weights when none is ready or running (background), or
        compiles now (blocking)."""
        if self.failed is not None:
            return None
        digest = self.current_digest()
        with self._lock:
            ready = self._ready
            if ready is not None and f"{ready.digest}@{ready.device}" == digest:
                return ready
            if ready is not None:
                self._discard(ready, "stale: the weights changed after it was compiled")
            if self._job_digest == digest:
                return None  # compiling these weights in the background
            self._start(digest)
            return self._ready if self.mode == "blocking" else None

    def run(self, data: dict, eager: torch.nn.Module) -> dict:
        """``data`` through the compiled model when one is ready for the current weights, else
        through ``eager``; a failing compiled call logs once, switches compilation off and
        falls back to eager."""
        compiled = self.model()
        if compiled is not None:
            try:
                out = compiled(data)
                self.n_compiled_calls += 1
                return out
            except Exception as exc:  # AOTI raises RuntimeError on shape/device problems
                self._fail(f"the compiled model failed at evaluation ({type(exc).__name__}: {_first_line(exc)})")
        self.n_eager_calls += 1
        return eager(data)

    def refresh(self) -> None:
        """Start compiling the current weights now (call after a fit) unless done or running."""
        self.model()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running background compilation; True when a compiled model for the current
        weights is ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.model() is not None if self.failed is None else False

    def status(self) -> dict:
        """``state`` ("ready", "compiling", "eager", "failed"), the reason of a failure, counters
        and compile times (s)."""
        digest = self.current_digest()
        with self._lock:
            ready = self._ready is not None and f"{self._ready.digest}@{self._ready.device}" == digest
            state = ("failed" if self.failed else "ready" if ready
                     else "compiling" if self._job_digest is not None else "eager")
            return {
                "state": state, "mode": self.mode, "reason": self.failed,
                "digest": digest.split("@")[0], "device": digest.split("@")[-1],
                "path": str(self._ready.path) if ready else None,
                "compiling_for_current": self._job_digest == digest,
                "n_compiled": self.n_compiled, "n_discarded": self.n_discarded,
                "n_compiled_calls": self.n_compiled_calls, "n_eager_calls": self.n_eager_calls,
                "compile_seconds": list(self.compile_seconds),
                "check": dict(self._ready.check) if ready else None,
            }

    def close(self) -> None:
        """Cancel a running compilation and remove the work folder (if temporary)."""
        with self._lock:
            job = self._job
            self._job = self._job_digest = None
            self._ready = None
        if job is not None:
            job.cancel()
        for thread in list(self._threads):
            thread.join(10)
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- internals -------------------------------------------------------------------------
    def _start(self, digest: str) -> None:
        potential = self._potential()
        if self._job is not None:  # a compilation for older weights: cancel it
            self._job.cancel()
            log.debug("cancelled the compilation of stale weights")
        snap = _snapshot(potential, self.example)
        snap.digest = digest.split("@")[0]
        self._counter += 1
        path = self.workdir / f"model-{self._counter:04d}{_SUFFIX}"
        job = _Job(snap, path, nice=self.nice if self.mode == "background" else 0, timeout=self.timeout)
        self._job, self._job_digest = job, digest
        if self.mode == "blocking":
            self._execute(job, digest)
        else:
            thread = threading.Thread(target=self._execute, args=(job, digest), daemon=True,
                                      name="otf-statcut-compile")
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _execute(self, job: _Job, digest: str) -> None:
        try:
            compiled = self._compiler(job.snap, job.path) if self._compiler is not None else job.run()
        except Exception as exc:
            with self._lock:
                if job is not self._job:
                    return  # cancelled for newer weights: not a failure
                self._job = self._job_digest = None
            self._fail(str(exc) if isinstance(exc, CompileError) else f"{type(exc).__name__}: {_first_line(exc)}")
            return
        with self._lock:
            if job is not self._job:  # the weights moved on while it compiled
                self.n_discarded += 1
                _unlink(compiled.path)
                return
            self._job = self._job_digest = None
            self._ready = compiled
            self.n_compiled += 1
            self.compile_seconds.append(float(compiled.compile_seconds))
        log.info("compiled model ready (%.1f s) for weights %s on %s", compiled.compile_seconds,
                 compiled.digest[:12], compiled.device)

    def _discard(self, compiled: CompiledModel, why: str) -> None:
        self._ready = None
        self.n_discarded += 1
        _unlink(compiled.path)
        log.debug("discarded compiled model %s (%s)", compiled.path.name, why)

    def _fail(self, reason: str) -> None:
        with self._lock:
            first = self.failed is None
            self.failed = reason
            self._ready = None
        if first:
            log.warning("compiled inference off, eager from now on: %s", reason)

    def __reduce__(self):
        # a pickled or deep-copied potential comes back eager-only (threads, child processes and
        # loaded .so files do not travel): its ``_compiled`` unpickles as None
        return (_none, ())

    def __del__(self):  # best effort: stop a child that would outlive its potential
        job = getattr(self, "_job", None)
        if job is not None:
            try:
                job.cancel()
            except Exception:
                pass


def _none() -> None:
    return None


def _unlink(path: Path) -> None:
    try:
        Path(path).unlink()
    except OSError:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _last_error(output: str) -> str:
    lines = [ln.strip() for ln in (output or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or ln.startswith("ERROR")]
    return ((errors or lines or ["no output"])[-1])[:400]


# ------------------------------------------------------------------------------ child process
def _compile_in_child(snapshot_dir: Path, out_path: Path) -> dict:
    """Rebuild the potential from a snapshot, export + compile it, check it; returns the check."""
    import warnings

    import ase.io
    from nequip.data import AtomicDataDict
    from nequip.scripts.compile import _COMPILE_SEED, _parse_bounds_to_Dim
    from nequip.utils.aot import aot_export_model
    from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY, NEQUIP_AOTI_OUTPUTS_KEY, serialize_aoti_keys
    from nequip.utils.global_state import get_latest_global_state

    from .config import ModelConfig
    from .graphs import DataStatistics, GraphConverter, batch_graphs, ensure_nequip_state, float64_default
    from .potential import NequIPPotential

    spec = json.loads((snapshot_dir / "spec.json").read_text())
    ensure_nequip_state()
    device = torch.device(spec["device"])
    with float64_default():
        potential = NequIPPotential(ModelConfig.from_dict(spec["model_config"]),
                                    DataStatistics.from_dict(spec["statistics"]))
    weights = torch.load(snapshot_dir / "weights.pt", map_location="cpu", weights_only=True)
    potential.model.load_state_dict(weights, strict=True)
    potential.to(device)
    frames = ase.io.read(snapshot_dir / "example.extxyz", ":")
    converter = GraphConverter(potential.species, potential.config.r_max, cache=None)
    graphs = [converter.graph(a) for a in frames]
    # eager references first (the export freezes the parameters)
    eager = potential.model
    eager.eval()
    checks = [("single", [g]) for g in graphs[:2]] + ([("batch", graphs)] if len(graphs) > 1 else [])
    checks.append(("batch", [graphs[0], graphs[0]]))
    references = []
    with float64_default():
        for _, group in checks:
            data = AtomicDataDict.to_(batch_graphs(group), device)
            out = eager(data)
            references.append({k: out[k].detach().clone() for k in COMPILED_OUTPUTS})
    metadata = dict(eager.metadata)
    metadata.update(get_latest_global_state(only_metadata_related=True))
    metadata = {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in metadata.items()}
    metadata[NEQUIP_AOTI_INPUTS_KEY] = serialize_aoti_keys(COMPILED_INPUTS)
    metadata[NEQUIP_AOTI_OUTPUTS_KEY] = serialize_aoti_keys(COMPILED_OUTPUTS)
    data = AtomicDataDict.to_(batch_graphs([graphs[0], graphs[0]]), device)  # 2 frames: no 0/1 specialisation
    batch_map = {"graph": _parse_bounds_to_Dim("num_frames", "2,inf"),
                 "node": _parse_bounds_to_Dim("num_nodes", "2,inf"),
                 "edge": _parse_bounds_to_Dim("num_edges", "2,inf")}
    start = time.perf_counter()
    with warnings.catch_warnings(), float64_default():
        warnings.simplefilter("ignore")
        aot_export_model(model=eager, device=device, input_fields=COMPILED_INPUTS, output_fields=COMPILED_OUTPUTS,
                         data=data, batch_map=batch_map, output_path=str(out_path),
                         inductor_configs={"aot_inductor.metadata": metadata}, seed=_COMPILE_SEED)
    export_seconds = time.perf_counter() - start
    compiled = load_compiled(out_path, spec["digest"], spec["device"])
    tol = CHECK_TOLERANCE.get(spec["dtype"], 1e-4)
    worst: dict[str, float] = {}
    with float64_default():
        for (kind, group), ref in zip(checks, references):
            out = compiled(AtomicDataDict.to_(batch_graphs(group), device))
            for key in COMPILED_OUTPUTS:
                a, b = out[key].detach().double().cpu(), ref[key].double().cpu()
                if a.shape != b.shape:
                    raise CompileError(f"{kind} check: {key} has shape {tuple(a.shape)}, eager {tuple(b.shape)}")
                finite = torch.isfinite(b)
                if not torch.equal(finite, torch.isfinite(a)):
                    raise CompileError(f"{kind} check: {key} finite where eager is not (or vice versa)")
                diff = float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0
                scale = max(1.0, float(b[finite].abs().max()) if finite.any() else 1.0)
                worst[key] = max(worst.get(key, 0.0), diff / scale)
                if diff > tol * scale:
                    raise CompileError(f"{kind} check: compiled {key} differs from eager by {diff:.3g} "
                                       f"(tolerance {tol:g} x {scale:.3g})")
    return {"max_relative_difference": worst, "tolerance": tol, "export_seconds": export_seconds,
            "n_check_batches": len(checks)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m otf_statcut.mlip.compiled SNAPSHOT_DIR OUT.nequip.pt2``: compile a snapshot
    written by the manager; writes ``check.json`` beside ``SNAPSHOT_DIR``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m otf_statcut.mlip.compiled SNAPSHOT_DIR OUT.nequip.pt2", file=sys.stderr)
        return 2
    snapshot_dir, out_path = Path(argv[0]), Path(argv[1])
    if os.environ.get("OTF_STATCUT_COMPILE_FAIL"):  # test hook: a compiler that fails
        print("CompileError: forced failure (OTF_STATCUT_COMPILE_FAIL)", file=sys.stderr)
        return 3
    try:
        check = _compile_in_child(snapshot_dir, out_path)
    except Exception as exc:
        print(f"{type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 1
    (snapshot_dir.parent / "check.json").write_text(json.dumps(check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
