"""Observers attached to the ASE dynamics: the run recorder (HDF5 + checkpoints) and the progress bar.

Both follow ASE's observer contract (``dyn.attach(observer, interval)``; called after each
step with the atoms at the new positions and the calculator's results for them) and do as
little as possible: the recorder copies what happened into the run log, the progress bar
prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from ..io.runlog import Checkpoint, RunLog, configuration_key
from .calculator import OTFCalculator
from .decision import Action

__all__ = ["RunRecorder", "ProgressBar", "write_events"]


def write_events(log: RunLog, events: list) -> bool:
    """Move a learner's pending events (frames, models, cutoffs, failures) into the run log.

    ``events`` is emptied. A frame whose configuration is already in the data set is skipped,
    so no configuration is stored twice. Returns True if a frame or a model was written.
    """
    changed = False
    pending, events[:] = list(events), []
    for kind, *payload in pending:
        if kind == "frame":
            frame, meta = payload
            key = configuration_key(frame)
            if log.has_key(key):
                continue
            log.append_frame(frame, key=key, **meta)
            changed = True
        elif kind == "model":
            log.append_model(payload[0])
            changed = True
        elif kind == "cutoffs":
            cutoffs, meta = payload
            log.append_cutoffs(cutoffs=cutoffs, **meta)
        elif kind == "failure":
            log.append_failure(**payload[0])
    return changed


class RunRecorder:
    """Write each step to the run log, drain the learner's events, checkpoint, flush.

    Parameters
    ----------
    log : RunLog
        The open run log.
    dyn : MolecularDynamics
        The dynamics (its ``nsteps`` counts steps of this session).
    calc : OTFCalculator
        The calculator attached to ``dyn.atoms``.
    step_offset : int
        MD steps done before this session (resume).
    timestep_fs : float
        For the ``time_fs`` column.
    trajectory_every, checkpoint_every : int
        A trajectory row is written every ``trajectory_every`` steps and at every labelled step;
        a checkpoint every ``checkpoint_every`` steps and after every step that added a label or
        a model (so the data set never holds labels past the last checkpoint's knowledge).
    flush_every : int
        Flush the file every this many steps (1: every step); a step with a label, a model or a
        checkpoint is always flushed at once. Trajectory rows not yet flushed when a run is
        killed are rows after its last checkpoint, which a resumed run recomputes anyway.
    rng : numpy.random.Generator or None
        The dynamics' random numbers (state kept in checkpoints).
    dynamics_state : callable or None
        ``() -> dict``: the integrator's extra state for checkpoints.
    wall_offset : float
        Wall time of earlier sessions, s.
    """

    def __init__(self, log: RunLog, dyn, calc: OTFCalculator, *, step_offset: int = 0,
                 timestep_fs: float = 1.0,
                 trajectory_every: int = 1, checkpoint_every: int = 10, flush_every: int = 1,
                 rng: np.random.Generator | None = None,
                 dynamics_state: Callable[[], dict] | None = None, wall_offset: float = 0.0):
        self.log = log
        self.dyn = dyn
        self.calc = calc
        self.learner = calc.learner
        self.step_offset = int(step_offset)
        self.timestep_fs = float(timestep_fs)
        self.trajectory_every = int(trajectory_every)
        self.checkpoint_every = int(checkpoint_every)
        self.flush_every = int(flush_every)
        self.rng = rng
        self.dynamics_state = dynamics_state
        self.wall_offset = float(wall_offset)
        self.started = time.perf_counter()
        self.last_step = self._last_written_step()
        self.checkpoint_step = -1
        calc.step = self.step_offset
        calc.external_steps = True  # this recorder counts the steps

    @property
    def step(self) -> int:
        """MD step of the current state (``step_offset + dyn.nsteps``)."""
        return self.step_offset + int(self.dyn.nsteps)

    def __call__(self) -> None:
        step = self.step
        changed = self.drain()
        decision = self.calc.decision
        labelled = decision is not None and decision.action is not Action.TRUST
        if step > self.last_step and (step % self.trajectory_every == 0 or labelled or changed):
            self.write_step(step)
        checkpoint = step > self.checkpoint_step and (changed or step % self.checkpoint_every == 0)
        if checkpoint:
            self.checkpoint(step)
        if changed or checkpoint or step % self.flush_every == 0:
            self.log.flush()
        self.calc.step = step + 1

    def drain(self) -> bool:
        """Write the learner's pending events (frames, models, cutoffs, failures); True if any
        frame or model was written."""
        return write_events(self.log, self.learner.events)

    def write_step(self, step: int) -> None:
        atoms, calc = self.dyn.atoms, self.calc
        results = calc.results
        decision = calc.decision
        sigma = results.get("sigma")
        self.log.append_trajectory({
            "step": step, "time_fs": step * self.timestep_fs, "positions": atoms.positions,
            "momenta": atoms.get_momenta(), "cell": atoms.cell[:],
            "numbers": atoms.numbers, "energy": results["energy"], "forces": results["forces"],
            "stress": results.get("stress"),
            "sigma": sigma if sigma is not None else np.full(len(atoms), np.nan),
            "max_sigma": decision.max_sigma if decision is not None else np.nan,
            "decision": int(decision.action) if decision is not None else -1, "source": calc.source,
            "temperature_K": atoms.get_temperature(), "model": self.learner.model_id,
            "wall_time_s": self.wall_time(),
        })
        self.last_step = step

    def checkpoint(self, step: int) -> None:
        atoms = self.dyn.atoms
        self.log.write_checkpoint(Checkpoint(
            step=step, time_fs=step * self.timestep_fs, positions=atoms.positions.copy(),
            momenta=atoms.get_momenta(), cell=atoms.cell[:].copy(), numbers=atoms.numbers.copy(),
            pbc=atoms.pbc.copy(), model=self.learner.model_id, n_labels=self.learner.n_labels,
            labels_since_retrain=self.learner.labels_since_retrain, retrain_pending=self.learner.retrain_due,
            rng=self.rng.bit_generator.state if self.rng is not None else {},
            dynamics=self.dynamics_state() if self.dynamics_state is not None else {},
            wall_time_s=self.wall_time(),
        ))
        self.checkpoint_step = step

    def wall_time(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def _last_written_step(self) -> int:
        rows = self.log.rows("trajectory")
        return int(self.log.file["trajectory/step"][rows - 1]) if rows else -1


class ProgressBar:
    """tqdm progress bar: step, steps/s, labels so far, current cutoffs (stderr, rank 0).

    Parameters
    ----------
    total : int
        Steps of the whole run.
    initial : int
        Steps already done (resume).
    calc : OTFCalculator
    recorder : RunRecorder
        For the current step.
    """

    def __init__(self, total: int, initial: int, calc: OTFCalculator, recorder: RunRecorder, file=None):
        from tqdm.auto import tqdm

        self.calc = calc
        self.recorder = recorder
        self.bar = tqdm(total=total, initial=initial, unit="step", file=file or sys.stderr,
                        dynamic_ncols=True, mininterval=0.5, desc="otf-statcut run")
        self.done = initial

    def __call__(self) -> None:
        step = self.recorder.step
        if step > self.done:
            self.bar.update(step - self.done)
            self.done = step
        from ..stats.element_cutoffs import describe

        self.bar.set_postfix_str(
            f"labels {self.calc.learner.n_labels} | model {self.calc.learner.model_id} | "
            f"{describe(self.calc.learner.cutoffs)} eV/Å", refresh=False)

    def close(self) -> None:
        self.bar.close()
