"""Build a run from its config and drive it: ``otf-statcut run input.yaml`` without the CLI.

The loop reads top to bottom (:meth:`OTFRun.execute`): open or create the run log, start fresh
(label the initial structures, train the first model, fit head and cutoffs) or resume from the
last checkpoint, attach the observers (recorder, progress bar) to the ASE dynamics, iterate
``dyn.irun``, close. Every decision happens inside
:class:`~otf_statcut.engine.calculator.OTFCalculator`.

Under ``mpiexec -n N`` every rank calls :func:`run_otf`; rank 0 runs the MD and the MLIP, the
other ranks serve the labeller (GPAW) until rank 0 is done (see
:mod:`otf_statcut.labelers.mpi`).

Resume: re-running with the same input continues from the last checkpoint. The run file is
inspected first and nothing is written to a damaged one (:mod:`otf_statcut.io.run_health`).
Trajectory rows, models and cutoff refits after the checkpoint are dropped and recomputed;
labelled frames are never dropped (only a frame torn by a kill while it was written, which
fails its checksum), and a configuration already in the data set is reused instead of labelled
(or stored) again. One run at a time writes an output folder: :class:`~otf_statcut.io.lock.RunLock`
(a lock of the program's own, independent of HDF5's file locking) refuses a second. Thermostat random
numbers continue from the stored generator state; the trajectory after a resume is a valid
continuation, not bit-identical to an uninterrupted run (floating-point reductions in the MLIP
and DFT are not bitwise reproducible).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from ..config import RunConfig
from ..errors import ConfigError, DataError, EnvironmentFailure, environment_failure
from ..io.runlog import RunLog, read_table
from ..labelers.base import LabelingError
from ..stats.element_cutoffs import describe
from .calculator import OTFCalculator
from .dynamics import dynamics_state, make_dynamics, restore_dynamics_state, set_velocities
from .label_policy import HARD_TIMEOUT_EXIT, LabelPolicy, RunStopped
from .learner import Learner, sampling_size
from .observers import ProgressBar, RunRecorder, write_events
from .system import build_structure, rattled_copies

__all__ = ["OTFRun", "RunSummary", "run_otf", "RUN_FILE", "MODELS_DIR", "labels_per_window"]

log = logging.getLogger("otf_statcut.engine")

#: File name of the run log inside ``output.folder``.
RUN_FILE = "run.h5"
#: Folder of saved models inside ``output.folder``.
MODELS_DIR = "models"
#: Settings that may change between sessions of one run (everything else must match to resume).
_MAY_CHANGE = {("md", "steps"), ("output",)}


@dataclass
class RunSummary:
    """What a run did (all sessions)."""

    path: Path
    status: str
    steps: int
    total_steps: int
    session_steps: int
    session_wall_s: float
    n_initial: int
    n_labels: int
    n_models: int
    n_failures: int
    minimum: float
    maximum: float
    cutoffs_text: str
    n_retrains: int
    n_learned: int
    val_force_mae: float
    val_force_rmse: float
    val_energy_mae: float
    labels_per_100: list = field(default_factory=list)
    walkers: list = field(default_factory=list)
    batches: tuple = ()

    @property
    def steps_per_s(self) -> float:
        return self.session_steps / self.session_wall_s if self.session_wall_s > 0 else float("nan")

    def lines(self) -> list[str]:
        """Human-readable summary (the CLI prints it)."""
        return [
            f"run file: {self.path} (status: {self.status})",
            f"MD steps: {self.steps}/{self.total_steps}; this session {self.session_steps} steps in "
            f"{self.session_wall_s:.1f} s ({self.steps_per_s:.2f} steps/s, labelling and training included)",
            f"labels: {self.n_initial} initial + {self.n_labels} during MD ({self.n_failures} failed); "
            f"models trained: {self.n_models}",
            f"labels per 100 steps: {self.labels_per_100}",
            f"cutoffs (σ, eV/Å): {self.cutoffs_text}",
            f"retrains that learned (weights changed, error on their new frames lower): "
            f"{self.n_learned} of {self.n_retrains}",
            f"last model on validation: force MAE {self.val_force_mae:.4f} eV/Å, force RMSE "
            f"{self.val_force_rmse:.4f} eV/Å, energy MAE {1000 * self.val_energy_mae:.2f} meV/atom",
        ] + self.walker_lines()

    def walker_lines(self) -> list[str]:
        """Per walker: steps, labels, labels per ps, converged (the states the potential covers)."""
        if not self.walkers:
            return []
        lines = [f"walkers: {len(self.walkers)}"
                 + (f"; {self.batches[1]} evaluations in {self.batches[0]} batched calls" if self.batches else "")]
        for w in self.walkers:
            lines.append(f"  {w['name']}: {w['steps']} steps, {w['labels']} labels "
                         f"({w['labels_per_ps']:.1f} per ps), last at step {w['last_label_step']}, "
                         + ("converged" if w["converged"] else "not converged")
                         + (" (stopped early)" if w.get("stopped_early") else ""))
        covered = [w["name"] for w in self.walkers if w["converged"]]
        lines.append("the potential covers: " + (", ".join(covered) if covered else "none of the states yet"))
        return lines


def labels_per_window(steps: np.ndarray, total_steps: int, window: int = 100) -> list[int]:
    """Number of MD labels in each window of ``window`` steps (initial frames, step -1, excluded)."""
    steps = np.asarray(steps)
    steps = steps[steps >= 0]
    n_windows = max(1, -(-int(total_steps) // window))
    return np.bincount(np.minimum(steps // window, n_windows - 1).astype(int), minlength=n_windows).tolist()


class OTFRun:
    """One on-the-fly run on rank 0.

    Parameters
    ----------
    config : RunConfig
    labeler : Labeler
        The reference method (on rank 0; wrapped for MPI by :func:`run_otf`).
    progress : bool, optional
        Override ``output.progress``.
    overwrite : bool
        Start over even if the output folder holds a run.
    """

    def __init__(self, config: RunConfig, labeler, *, progress: bool | None = None, overwrite: bool = False):
        self.config = config
        self.labeler = labeler
        self.progress = config.output.progress if progress is None else progress
        self.overwrite = overwrite
        self.folder = Path(config.output.folder)
        self.path = self.folder / RUN_FILE
        self.where = str(config.source) if config.source is not None else "run input"

    # --- the loop ------------------------------------------------------------------------------
    def execute(self) -> RunSummary:
        """Run (or resume) to ``md.steps`` and return the summary.

        Raises
        ------
        UserError
            A mistake in the input (one line); nothing was written.
        RunStopped
            The run stopped at its last checkpoint (status ``stopped``; re-running resumes):
            a halt that could not be labelled, too many failed labels in a row.
        EnvironmentFailure
            Disk full, quota or an unwritable path (one line naming the path; resumable).
        """
        from ..io.lock import RunLock

        starts = self._starting_structures()  # user mistakes before any disk work
        self._check_output_folder()
        with RunLock(self.folder):
            try:
                runlog = self._open_log(len(starts[0]) if len(starts) == 1 else None)
            except OSError as exc:
                raise environment_failure(exc, str(self.path)) or exc
            try:
                return self._execute(runlog, starts)
            except OSError as exc:
                failure = environment_failure(exc, str(self.folder))
                if failure is None:
                    raise
                raise failure from exc

    def _starting_structures(self) -> list:
        cfg = self.config
        return [build_structure(cfg.system, self.where, needs_cell=cfg.md.ensemble == "npt")]

    def _execute(self, runlog: RunLog, starts: list) -> RunSummary:
        """The session inside the lock: status and close whatever happens."""
        status, reason = "failed", ""
        self._learner_of_session = None
        try:
            summary = self._session(runlog, starts)
            status = summary.status
            return summary
        except KeyboardInterrupt:
            status, reason = "interrupted", "interrupted (SIGINT)"
            raise
        except RunStopped as exc:
            status, reason = "stopped", str(exc)  # resumable: re-running continues from the last checkpoint
            raise
        except OSError as exc:
            failure = environment_failure(exc, str(self.folder))
            status, reason = ("stopped", str(failure)) if failure else ("failed", f"{type(exc).__name__}: {exc}")
            raise
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._close(runlog, self._learner_of_session, status, reason)

    def _session(self, runlog: RunLog, starts: list) -> RunSummary:
        cfg = self.config
        start_atoms = starts[0]
        self.policy = self._policy(runlog)
        checkpoint = runlog.read_checkpoint()
        if checkpoint is None:
            learner, atoms, rng = self._fresh(runlog, start_atoms)
            step0, wall0, dyn_state = 0, 0.0, {}
        else:
            learner, atoms, rng = self._resume(runlog, start_atoms, checkpoint)
            step0, wall0, dyn_state = checkpoint.step, checkpoint.wall_time_s, checkpoint.dynamics
        self._learner_of_session = learner
        write_events(runlog, learner.events)
        runlog.flush()
        remaining = cfg.md.steps - step0
        calc = OTFCalculator(learner, self.policy, lookup=self._lookup(runlog))
        atoms.calc = calc
        dyn = make_dynamics(atoms, cfg.md, rng)
        restore_dynamics_state(cfg.md.ensemble, dyn, dyn_state)
        recorder = RunRecorder(runlog, dyn, calc, step_offset=step0, timestep_fs=cfg.md.timestep_fs,
                               trajectory_every=cfg.output.trajectory_every,
                               checkpoint_every=cfg.output.checkpoint_every,
                               flush_every=cfg.output.flush_every, rng=rng,
                               dynamics_state=lambda: dynamics_state(cfg.md.ensemble, dyn),
                               wall_offset=wall0)
        self._on_timeout = lambda message, key: self._abort_on_timeout(runlog, recorder, message, key)
        dyn.attach(recorder, interval=1)
        bar = None
        if self.progress:
            bar = ProgressBar(cfg.md.steps, step0, calc, recorder)
            dyn.attach(bar, interval=1)
        session_start = time.perf_counter()
        try:
            if remaining > 0:
                for _ in dyn.irun(steps=remaining):
                    pass
        finally:
            if bar is not None:
                bar.close()
        session_wall = time.perf_counter() - session_start
        if recorder.checkpoint_step < recorder.step:
            recorder.checkpoint(recorder.step)
        status = "finished" if recorder.step >= cfg.md.steps else "running"
        runlog.set_status(status)
        runlog.flush()
        return self._summary(runlog, learner, calc, status, max(remaining, 0), session_wall)

    def _close(self, runlog: RunLog, learner, status: str, reason: str) -> None:
        """Store what the learner still holds (labels first), the status, and close; a failing
        disk must not hide the error that stopped the run."""
        try:
            if learner is not None and learner.events:
                write_events(runlog, learner.events)
            if status not in ("finished", "running"):
                runlog.set_status(status, reason)
            runlog.close()
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. the disk is full
            log.error("%s: could not finish writing the run file (%s)", self.path, exc)
            try:
                runlog.file.close()
            except Exception:  # noqa: BLE001 - closing a file whose disk failed
                pass

    # --- checks, labelling policy ---------------------------------------------------------------
    def _check_output_folder(self) -> None:
        """``output.folder`` must be a folder (or creatable) and writable: checked before any work."""
        folder = self.folder
        key = f"{self.where}: output.folder"
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{key}: {folder} is a file, not a folder; choose a folder path")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise environment_failure(exc, str(folder)) or EnvironmentFailure(
                f"{folder}: cannot create the output folder ({exc.strerror or exc}); check {key}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise EnvironmentFailure(f"{folder}: the output folder is not writable; check {key} or its permissions")
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(f"{key}: {self.path} exists and is not a run file; remove it or choose another folder")

    def _policy(self, runlog: RunLog) -> LabelPolicy:
        lc = self.config.labeler
        labeler = self.labeler
        interruptible = not (getattr(labeler, "collective", False) and getattr(labeler, "size", 1) > 1)
        return LabelPolicy(labeler, timeout_s=lc.timeout_s, max_energy_deviation=lc.max_energy_deviation,
                           max_consecutive_failures=lc.max_consecutive_failures, interruptible=interruptible,
                           on_hard_timeout=lambda message, key: self._on_timeout(message, key),
                           known_timeouts=runlog.failed_keys("timeout"))

    def _on_timeout(self, message: str, key: str) -> None:  # replaced once the recorder exists
        self._abort_on_timeout(None, None, message, key)

    def _abort_on_timeout(self, runlog: RunLog | None, recorder, message: str, key: str) -> None:
        """Called from the watchdog thread: a label could not be interrupted. Record it, then end
        every rank (the run resumes from its last checkpoint and skips this configuration)."""
        step = -1 if recorder is None else int(recorder.calc.step)
        text = (f"step {step}: {message}; the run stopped at its last checkpoint and this configuration will "
                "not be labelled again; re-run to resume (raise labeler.timeout_s if labels need longer)")
        try:
            runlog = runlog or self._runlog
            runlog.append_failure(step=step, reason="timeout", message=message, key=key)
            runlog.set_status("stopped", text)
            runlog.file.flush()
        except Exception as exc:  # noqa: BLE001 - ending the run matters more than the record
            log.error("could not record the timeout in %s: %s", self.path, exc)
        print(f"otf-statcut run: stopped: {text}", file=sys.stderr, flush=True)
        from ..io.lock import release_all

        release_all()
        comm = getattr(self.labeler, "comm", None)
        if comm is not None and getattr(self.labeler, "size", 1) > 1:
            comm.Abort(HARD_TIMEOUT_EXIT)
        os._exit(HARD_TIMEOUT_EXIT)

    # --- start or resume ---------------------------------------------------------------------
    def _open_log(self, n_atoms: int) -> RunLog:
        cfg = self.config
        if self.path.exists() and not self.overwrite:
            runlog = RunLog.open(self.path)
            try:
                _check_same_run(runlog.config, cfg.to_dict(), self.path)
                for line in runlog.prepare_resume():  # validates before writing; DataError if damaged
                    log.info("%s: %s", self.path, line)
            except (ConfigError, DataError):
                runlog.file.close()  # nothing written: close without flushing
                raise
        else:
            runlog = RunLog.create(self.path, input_text=cfg.text, config=cfg.to_dict(), overwrite=self.overwrite,
                                   n_atoms=n_atoms)
        self._runlog = runlog
        return runlog

    def _learner(self, potential, symbols, sampling=None) -> Learner:
        from ..fit_cycle import element_counts
        from ..uq import make_head

        cfg = self.config
        return Learner(
            potential=potential,
            head_factory=functools.partial(make_head, cfg.head.name, **dict(cfg.head.settings)),
            train_config=cfg.train_config(), retrain_config=cfg.train_config(retrain=True),
            n_sampling=sampling or sampling_size(cfg.cutoffs.n, cfg.md.steps, element_counts(symbols)),
            max_error=cfg.cutoffs.max_error, candidates=cfg.cutoffs.candidates, robust=cfg.cutoffs.robust,
            per_element=cfg.cutoffs.per_element_flag,
            retrain_every=cfg.retrain.every, warm_start=cfg.retrain.warm_start,
            val_fraction=cfg.initial_data.val_fraction, model_dir=self.folder / MODELS_DIR,
        )

    def _initial_learner(self, runlog: RunLog, starts: list, sampling=None) -> Learner:
        """Initial data set (a file, or rattled copies of the starting structures, labelled),
        the first model, head and cutoffs. ``sampling``: N per element as a function of the step
        (default: from the first structure and ``md.steps``)."""
        from ..data import read_frames, species_of
        from ..mlip import NequIPPotential

        cfg = self.config
        init = cfg.initial_data
        if init.file is not None:
            frames = read_frames(init.file)
            if len(frames) < 2:
                raise DataError(f"{self.where}: initial_data.file: {init.file} holds {len(frames)} frame(s); "
                                "need at least 2 (training and validation)")
            splits = _initial_splits(frames, init)
            for frame, split in zip(frames, splits):
                self._store_initial(runlog, frame, split, json.dumps({"file": str(init.file)}))
        else:
            copies = []  # the rattled copies shared out over the distinct starting structures
            for i, start in enumerate(starts):
                count = init.rattled // len(starts) + (i < init.rattled % len(starts))
                copies += rattled_copies(start, count, init.rattle_stdev, init.strain, init.seed + i)
            splits = _initial_splits(copies, init)
            lookup = self._lookup(runlog)
            frames = []
            for copy, split in zip(copies, splits):
                key = _key(copy)
                frame = lookup(key)  # labelled before an interruption: not labelled again
                if frame is None:
                    try:
                        frame = self.policy.label(
                            copy, key=key, expected_energy=LabelPolicy.expected_initial_energy(frames, copy))
                    except LabelingError as exc:
                        runlog.append_failure(step=-1, reason="initial", message=f"{type(exc).__name__}: {exc}",
                                              key=key)
                        raise DataError(
                            f"{self.where}: initial_data: the {self.labeler.name} labeller failed on rattled "
                            f"structure {len(frames) + 1} of {len(copies)} ({exc}); check labeler.settings "
                            "and initial_data.rattle_stdev") from exc
                    self._store_initial(runlog, frame, split, self.labeler.settings())  # safe at once
                frames.append(frame)
        species = sorted(set(species_of(frames)).union(*(s.get_chemical_symbols() for s in starts)))
        train = [f for f, s in zip(frames, splits) if s == 0]
        pretrained = cfg.mlip.model_from  # mlip.model.from: a NequIP model to fine-tune
        if pretrained is None:
            potential = NequIPPotential.build(cfg.model_config(species), train, device=cfg.mlip.device)
        else:
            try:
                potential = NequIPPotential.from_nequip(pretrained, species=species, device=cfg.mlip.device)
            except DataError as exc:
                raise ConfigError(f"{self.where}: mlip.model.from: {exc}") from None
        learner = self._learner(potential, starts[0].get_chemical_symbols(), sampling=sampling)
        learner.extend_initial(frames, splits, record=False)
        learner.model_id = runlog.rows("models") - 1  # a session killed before its first checkpoint
        if pretrained is None:
            learner.fit(step=-1, reason="initial", first=True)  # may have trained models: keep ids unique
        else:  # the first fit fine-tunes the pretrained weights (warm, with mlip.train's settings)
            retrain_config, learner.retrain_config = learner.retrain_config, learner.train_config
            try:
                learner.fit(step=-1, reason="initial", warm_start=True)
            finally:
                learner.retrain_config = retrain_config
        self._compile(learner)
        return learner

    def _fresh(self, runlog: RunLog, start: Any):
        """Initial data set, first model, initial velocities."""
        cfg = self.config
        learner = self._initial_learner(runlog, [start], sampling=None)
        rng = np.random.default_rng(cfg.md.seed)
        atoms = start.copy()
        set_velocities(atoms, cfg.md.temperature_K, rng)
        return learner, atoms, rng

    @staticmethod
    def _store_initial(runlog: RunLog, frame, split: int, labeler) -> None:
        key = _key(frame)
        if not runlog.has_key(key):
            runlog.append_frame(frame, step=-1, reason="initial", split=int(split), labeler=labeler, key=key)
            runlog.flush()

    def _resume(self, runlog: RunLog, start: Any, checkpoint):
        """Data set from the log, model and cutoffs of the checkpoint, MD state, RNG state."""
        learner = self._resume_learner(runlog, checkpoint, [chemical_symbols[z] for z in checkpoint.numbers])
        rng = np.random.default_rng()
        if checkpoint.rng:
            rng.bit_generator.state = checkpoint.rng
        return learner, checkpoint.atoms(), rng

    def _resume_learner(self, runlog: RunLog, checkpoint, symbols, sampling=None) -> Learner:
        """Data set from the log, model, head and cutoffs of the checkpoint, counters; a retrain
        first if one was due."""
        from ..mlip import NequIPPotential
        from ..uq import load_head

        frames = runlog.read_frames()
        models = read_table(self.path, "models")
        rows = np.flatnonzero(models["model"] == checkpoint.model)
        if not rows.size:
            raise DataError(f"{self.path}: the checkpoint refers to model {checkpoint.model}, "
                            "which /models lacks")
        folder = self.folder / str(models["path"][rows[-1]])
        potential = NequIPPotential.load(folder / "potential", device=self.config.mlip.device)
        learner = self._learner(potential, symbols, sampling=sampling)
        learner.head = load_head(folder / "head", potential)
        learner.model_id = checkpoint.model
        learner.cutoffs = _cutoffs_of(self.path, checkpoint.model)
        splits = [1 if f.info["split"] == "val" else 0 for f in frames]
        learner.frames, learner.splits = list(frames), splits
        learner.n_labels = sum(f.info["reason"] != "initial" for f in frames)
        after = len(frames) - checkpoint.dataset_rows  # labels stored after the checkpoint (kept)
        learner.labels_since_retrain = checkpoint.labels_since_retrain + max(after, 0)
        learner.last_fit_size = max(len(frames) - learner.labels_since_retrain, 0)
        log.info("resuming at step %d (model %d, %d frames)", checkpoint.step, checkpoint.model, len(frames))
        if checkpoint.retrain_pending or learner.retrain_due:
            learner.fit(step=checkpoint.step, reason="every")
        self._compile(learner)
        return learner

    def _compile(self, learner: Learner) -> None:
        """``mlip.compile``: compiled inference of the driving model (eager until it is ready;
        recompiled for the new weights after every fit; eager if compiling fails)."""
        mode = self.config.mlip.compile
        if mode != "off":
            learner.potential.enable_compiled(mode, workdir=self.folder / "compiled")

    def _lookup(self, runlog: RunLog):
        cache: dict[str, Any] = {}

        def lookup(key: str):
            if key in cache:
                return cache[key]
            if not runlog.has_key(key):
                return None
            frame = runlog.read_frames([runlog.frame_index(key)])[0]
            cache[key] = frame
            return frame

        return lookup

    def _summary(self, runlog: RunLog, learner: Learner, calc: OTFCalculator, status: str, session_steps: int,
                 session_wall: float) -> RunSummary:
        runlog.flush()
        data = read_table(self.path, "dataset")
        models = read_table(self.path, "models")
        failures = read_table(self.path, "failures")
        steps = data.get("step", np.array([], dtype=int))
        cp = runlog.read_checkpoint()
        last = -1
        return RunSummary(
            path=self.path, status=status, steps=cp.step if cp else 0, total_steps=self.config.md.steps,
            session_steps=session_steps, session_wall_s=session_wall, n_initial=int(np.sum(steps < 0)),
            n_labels=int(np.sum(steps >= 0)), n_models=len(models.get("model", [])),
            n_failures=len(failures.get("step", [])), minimum=float(learner.cutoffs.minimum),
            maximum=float(learner.cutoffs.maximum), cutoffs_text=describe(learner.cutoffs, 4),
            n_retrains=int(np.sum(models["warm_start"])),
            n_learned=int(np.sum(models["warm_start"] & models["learned"])),
            val_force_mae=float(models["val_force_mae"][last]),
            val_force_rmse=float(models["val_force_rmse"][last]),
            val_energy_mae=float(models["val_energy_mae"][last]),
            labels_per_100=labels_per_window(steps, self.config.md.steps),
        )


def run_otf(config: RunConfig, *, labeler=None, comm=None, progress: bool | None = None,
            overwrite: bool = False) -> RunSummary | None:
    """Run on every MPI rank: rank 0 drives and returns the summary, other ranks serve and return None.

    Parameters
    ----------
    config : RunConfig
    labeler : Labeler, optional
        A labeller from Python (e.g. ``ASECalculatorLabeler(MyCalculator())``); default: the
        registry entry ``config.labeler`` built on every rank.
    comm : mpi4py communicator, optional
        Defaults to ``COMM_WORLD`` when mpi4py is importable.
    progress, overwrite
        See :class:`OTFRun`.
    """
    from ..labelers import make_labeler
    from ..labelers.mpi import MPIDrivenLabeler

    if comm is None:
        try:
            from ..labelers.mpi import world_comm

            comm = world_comm()
        except ImportError:  # pragma: no cover - mpi4py is a dependency
            comm = None
    lc = config.labeler
    groups = config.walkers.label_groups if config.walkers is not None else 0
    if groups and labeler is None:  # rank 0 drives, G groups of the other ranks label at once
        return _run_with_label_groups(config, comm, groups, progress=progress, overwrite=overwrite)
    if labeler is None:
        labeler = make_labeler(lc.name, lc.settings, retries=lc.retries, max_force=lc.max_force)
    driven = MPIDrivenLabeler(labeler, comm=comm if comm is not None and comm.Get_size() > 1 else None)
    if not driven.is_root:
        driven.serve()
        return None
    try:
        if config.walkers is not None:
            from .walkers import make_multi_walker_run

            return make_multi_walker_run(config, driven, progress=progress, overwrite=overwrite).execute()
        return OTFRun(config, driven, progress=progress, overwrite=overwrite).execute()
    finally:
        driven.close()


def _run_with_label_groups(config: RunConfig, comm, n_groups: int, *, progress, overwrite) -> RunSummary | None:
    """``walkers.label_groups: G``: every rank builds :class:`~otf_statcut.labelers.groups.LabelGroups`;
    rank 0 runs the walkers, the others serve their group's labels."""
    from ..labelers import make_labeler
    from ..labelers.groups import LabelGroups
    from .walkers import make_multi_walker_run

    lc = config.labeler
    size = comm.Get_size() if comm is not None else 1
    if size > 1 and n_groups > size - 1:
        if comm.Get_rank() == 0:
            raise ConfigError(f"{config.source or 'run input'}: walkers.label_groups = {n_groups} needs at least "
                              f"{n_groups + 1} MPI ranks (rank 0 drives); mpiexec gave {size}")
        return None

    def make(group_comm):
        return make_labeler(lc.name, lc.settings, retries=lc.retries, max_force=lc.max_force, comm=group_comm)

    groups = LabelGroups(make, comm if size > 1 else None, n_groups)
    if not groups.is_driver:
        groups.serve()
        return None
    with groups:
        return make_multi_walker_run(config, groups, progress=progress, overwrite=overwrite).execute()


def _initial_splits(frames, init) -> list[int]:
    """0 (train) / 1 (validation) for the initial frames: stratified (every element and composition
    validated), frames taken in a seeded order, so the split is fixed by the frames and the seed."""
    from ..data.stratified import StratifiedSplitter

    order = np.random.default_rng(init.seed).permutation(len(frames))
    return StratifiedSplitter(init.val_fraction).assign_many(list(frames), order=order)


def _key(atoms) -> str:
    from ..io.runlog import configuration_key

    return configuration_key(atoms)


def _cutoffs_of(path: Path, model: int):
    """The cutoffs recorded last for ``model`` (global or per element, rebuilt from the fits)."""
    from ..io.runlog import read_cutoffs

    cutoffs = read_cutoffs(path, model)
    if cutoffs is None:
        raise DataError(f"{path}: no cutoffs recorded for model {model}")
    return cutoffs


def _check_same_run(stored: dict, current: dict, path: Path) -> None:
    """Refuse to resume a run whose settings differ (except those in ``_MAY_CHANGE``).

    Both sides are resolved settings (every field, defaults included), so a key on one side only
    is a setting one version of the program has and the other has not: it is not a change the
    user made, and does not block a resume across versions."""
    diffs: list[str] = []

    def walk(a, b, prefix: tuple):
        if prefix in _MAY_CHANGE or prefix[:1] in _MAY_CHANGE:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) & set(b)):
                walk(a[k], b[k], prefix + (k,))
        elif _norm(a) != _norm(b):
            diffs.append(f"{'.'.join(prefix)}: {_norm(a)!r} -> {_norm(b)!r}")

    walk(stored, json.loads(json.dumps(current, default=str)), ())
    if diffs:
        raise ConfigError(f"{path} holds a run with other settings ({'; '.join(diffs[:3])}"
                          f"{'; ...' if len(diffs) > 3 else ''}); to resume use the same input, or choose "
                          "another output.folder, or pass --overwrite to start over")


def _norm(value):
    if isinstance(value, tuple):
        return list(value)
    return value
