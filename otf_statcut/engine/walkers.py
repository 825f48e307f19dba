"""Many walkers, one learner: batched, lock-step on-the-fly MD of several states at once.

A run input with a ``walkers`` section (:class:`~otf_statcut.config.WalkersConfig`) drives K MD
walkers - structures × temperatures × pressures × ensembles - that share one data set, one model,
one uncertainty head and one set of cutoffs. Design:

* **One thread per walker, each running its own ASE dynamics** (any ASE integrator: the force
  call stays inside ``dyn.step()`` where ASE puts it). Each walker's calculator
  (:class:`WalkerCalculator`, an :class:`~otf_statcut.engine.calculator.OTFCalculator`) hands its
  configuration to a :class:`BatchEvaluator`, which waits until every walker that is still
  computing its step has asked, then evaluates NequIP and the head on all of them in **one
  batched call** and hands each walker its result. The decision (trust / label / halt) is then
  each walker's own, against the shared cutoffs.
* **Lock-step**: after each step every walker waits at a :class:`StepBarrier`; the last one to
  arrive writes the rows and, when due, one checkpoint of all walkers. Why lock-step rather
  than letting walkers run ahead while one waits for a label: the checkpoint is then a
  consistent snapshot of every walker and the model; labels join the data set, and retrains
  happen, in the same order whatever the timing of the labels, so a run is reproducible from its
  seeds; and a walker never moves on with a model that another walker's label has already shown
  to be wrong for a while. The cost - walkers wait for the slowest label of a step - is what
  parallel **label groups** recover: configurations of different walkers flagged in the same
  step are labelled at the same time on different groups of MPI ranks
  (``walkers.label_groups``; see :mod:`otf_statcut.labelers.groups`).
* **Retraining**: a walker whose label makes a retrain due (or whose step is a halt) retrains
  at once, holding the learner lock, before its step continues; the other walkers' evaluations
  wait for the new model (they can finish labels already under way). With label groups, several
  labels of one step may arrive before the retrain; they all join it.
* **Logs and resume**: one run file; ``/walkers/<i>/trajectory`` per walker, the data set's
  ``walker`` column, the walkers' names in ``/walkers`` (attribute ``names``); the checkpoint
  holds every walker (:class:`~otf_statcut.io.checkpoint.Checkpoint` ``walkers``). A kill
  resumes every walker from the same checkpoint.
* **Convergence**: per walker the labels per ps; a walker that went ``converged_after_fs`` of
  simulated time without a label is reported converged, and stops early with
  ``stop_converged``.

Time limits: walker threads cannot take signals, so a label past ``labeler.timeout_s`` ends the
run resumably (the watchdog path of :mod:`otf_statcut.engine.label_policy`) instead of being
interrupted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..io.checkpoint import Checkpoint
from ..io.runlog import RunLog, configuration_key, read_table, walker_table
from .calculator import OTFCalculator
from .decision import Action
from .dynamics import dynamics_state, make_dynamics, restore_dynamics_state, set_velocities
from .observers import write_events

__all__ = ["BatchEvaluator", "StepBarrier", "WalkerCalculator", "WalkerState", "walker_report"]

log = logging.getLogger("otf_statcut.engine")

_RUNNING, _WAITING, _IDLE = "running", "waiting", "idle"


class RunAborted(RuntimeError):
    """Another walker failed: this one stops too."""


class BatchEvaluator:
    """NequIP + head on the configurations of every walker that asks, in one batched call.

    A walker thread calls :meth:`evaluate`; the call returns when the batch holding its
    configuration has been evaluated. A batch is evaluated when every registered walker is
    either waiting for its result or idle (labelling, at the step barrier, finished), by the
    thread that completes that condition.

    Parameters
    ----------
    learner : Learner
        Its ``potential`` and ``head`` are used under ``lock``.
    lock : threading.RLock
        The learner lock (held by fits, by batches and by whoever reads the learner's events).
    batched : bool
        False: each configuration on its own (the one-by-one reference of the tests and the
        benchmark).
    """

    def __init__(self, learner, lock, batched: bool = True):
        self.learner = learner
        self.lock = lock
        self.batched = batched
        self.cond = threading.Condition()
        self.states: dict[int, str] = {}
        self.requests: dict[int, object] = {}
        self.results: dict[int, object] = {}
        self.aborted: BaseException | None = None
        self.n_batches = 0
        self.n_evaluations = 0
        self.batch_sizes: list[int] = []

    def register(self, walker: int) -> None:
        with self.cond:
            self.states[walker] = _RUNNING

    def set_state(self, walker: int, state: str) -> None:
        with self.cond:
            self.states[walker] = state
            self.cond.notify_all()

    def abort(self, exc: BaseException) -> None:
        with self.cond:
            self.aborted = exc
            self.cond.notify_all()

    def evaluate(self, walker: int, atoms):
        """``(prediction, sigma)`` of ``atoms`` for ``walker`` (blocks until its batch ran)."""
        with self.cond:
            self.requests[walker] = atoms
            self.states[walker] = _WAITING
            self.cond.notify_all()
            while walker not in self.results:
                if self.aborted is not None:
                    raise RunAborted(f"another walker stopped the run ({self.aborted})")
                if self.requests and all(s != _RUNNING for s in self.states.values()):
                    self._run(sorted(self.requests) if self.batched else [min(self.requests)])
                else:
                    self.cond.wait(timeout=1.0)
            self.states[walker] = _RUNNING
            result = self.results.pop(walker)
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self, walkers: list[int]) -> None:
        frames = [self.requests.pop(w) for w in walkers]
        try:
            with self.lock:
                predictions = self.learner.potential.predict(frames, batch_size=len(frames))
                sigmas = self.learner.head.predict(frames, predictions)
            for w, p, s in zip(walkers, predictions, sigmas):
                self.results[w] = (p, np.asarray(s, dtype=float))
        except BaseException as exc:  # noqa: BLE001 - handed to every walker of the batch
            for w in walkers:
                self.results[w] = exc
        self.n_batches += 1
        self.n_evaluations += len(walkers)
        self.batch_sizes.append(len(walkers))
        self.cond.notify_all()


class StepBarrier:
    """Lock-step: every active walker waits here after each step; the last to arrive runs
    ``on_step`` (rows, checkpoint) before all go on. A finished walker :meth:`leave` s."""

    def __init__(self, on_step):
        self.on_step = on_step
        self.cond = threading.Condition()
        self.active: set[int] = set()
        self.arrived: set[int] = set()
        self.generation = 0
        self.aborted: BaseException | None = None

    def join(self, walker: int) -> None:
        with self.cond:
            self.active.add(walker)

    def wait(self, walker: int) -> None:
        with self.cond:
            self.arrived.add(walker)
            generation = self.generation
            if self.arrived >= self.active:
                self._release()
                return
            while self.generation == generation:
                if self.aborted is not None:
                    raise RunAborted(f"another walker stopped the run ({self.aborted})")
                self.cond.wait(timeout=1.0)

    def leave(self, walker: int) -> None:
        with self.cond:
            self.active.discard(walker)
            self.arrived.discard(walker)
            if self.active and self.arrived >= self.active:
                self._release()
            self.cond.notify_all()

    def abort(self, exc: BaseException) -> None:
        with self.cond:
            self.aborted = exc
            self.cond.notify_all()

    def _release(self) -> None:
        try:
            self.on_step()
        finally:
            self.arrived.clear()
            self.generation += 1
            self.cond.notify_all()


class WalkerCalculator(OTFCalculator):
    """The on-the-fly calculator of one walker: evaluates through the :class:`BatchEvaluator`
    and labels with the evaluator told that this walker is busy (others batch meanwhile)."""

    def __init__(self, learner, labeler, evaluator: BatchEvaluator, walker: int, *, lookup=None):
        super().__init__(learner, labeler, lookup=lookup)
        self.evaluator = evaluator
        self.walker = walker
        self.external_steps = True
        self.learner_lock = evaluator.lock

    def evaluate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        Calculator.calculate(self, atoms, properties, system_changes)
        prediction, sigma = self.evaluator.evaluate(self.walker, self.atoms.copy())
        self.prediction = prediction
        self.results = {"energy": prediction.energy, "free_energy": prediction.energy,
                        "forces": prediction.forces, "features": prediction.features, "sigma": sigma}
        if prediction.stress is not None:
            self.results["stress"] = prediction.stress

    def _reference(self, reason, decision):
        self.evaluator.set_state(self.walker, _IDLE)  # the others evaluate while this one labels
        try:
            return super()._reference(reason, decision)
        finally:
            self.evaluator.set_state(self.walker, _RUNNING)


@dataclass
class WalkerState:
    """One walker of a run: its settings, atoms, dynamics and counters."""

    index: int
    name: str
    md: object
    atoms: object
    rng: np.random.Generator
    calc: WalkerCalculator | None = None
    dyn: object = None
    step_offset: int = 0
    last_written: int = -1
    last_label_step: int | None = None
    labels: int = 0
    stopped_early: bool = False

    @property
    def step(self) -> int:
        return self.step_offset + (int(self.dyn.nsteps) if self.dyn is not None else 0)

    @property
    def done(self) -> bool:
        return self.step >= self.md.steps or self.stopped_early

    def converged(self, after_fs: float) -> bool:
        """No label in the last ``after_fs`` of simulated time (and at least that much run)."""
        since = self.step - (self.last_label_step if self.last_label_step is not None else 0)
        return since * self.md.timestep_fs >= after_fs


def walker_report(path, names: list[str], steps: list[int], timesteps: list[float], after_fs: float) -> list[dict]:
    """Per walker: steps, labels, labels per ps, the last label's step, converged or not."""
    data = read_table(path, "dataset", columns=("step", "walker", "offset"))
    out = []
    for i, name in enumerate(names):
        mine = data["step"][(data["walker"] == i) & (data["step"] >= 0)] if "walker" in data else np.zeros(0)
        ps = steps[i] * timesteps[i] / 1000.0
        last = int(mine.max()) if mine.size else None
        since_fs = (steps[i] - (last if last is not None else 0)) * timesteps[i]
        out.append({"walker": i, "name": name, "steps": int(steps[i]), "labels": int(mine.size),
                    "labels_per_ps": float(mine.size / ps) if ps > 0 else float("nan"),
                    "last_label_step": last, "converged": bool(since_fs >= after_fs)})
    return out


class MultiWalkerDriver:
    """Runs the walkers of one session: threads, evaluator, barrier, rows and checkpoints.

    Parameters
    ----------
    run : OTFRun
        The run (config, policy, folder).
    runlog : RunLog
    learner : Learner
    walkers : list of WalkerState
        With ``atoms`` (momenta set) and ``step_offset`` (resume); calculators and dynamics are
        built here.
    dyn_states : list of dict
        Integrator state per walker from the checkpoint (empty on a fresh start).
    wall_offset : float
    batched : bool
    """

    def __init__(self, run, runlog: RunLog, learner, walkers: list[WalkerState], dyn_states: list[dict],
                 wall_offset: float = 0.0, batched: bool = True):
        self.run = run
        self.cfg = run.config
        self.runlog = runlog
        self.learner = learner
        self.walkers = walkers
        self.lock = threading.RLock()
        self.evaluator = BatchEvaluator(learner, self.lock, batched=batched)
        self.barrier = StepBarrier(self._on_step)
        self.wall_offset = float(wall_offset)
        self.started = time.perf_counter()
        self.rounds = 0
        self.checkpoint_round = -1
        self.error: BaseException | None = None
        lookup = run._lookup(runlog)
        locked_lookup = self._locked(lookup)
        for w, state in zip(walkers, dyn_states):
            w.calc = WalkerCalculator(learner, run.policy, self.evaluator, w.index, lookup=locked_lookup)
            w.calc.step = w.step_offset
            w.atoms.calc = w.calc
            w.dyn = make_dynamics(w.atoms, w.md, w.rng)
            restore_dynamics_state(w.md.ensemble, w.dyn, state)
            rows = runlog.rows(walker_table(w.index))
            w.last_written = int(runlog.file[walker_table(w.index)]["step"][rows - 1]) if rows else -1
            w.dyn.attach(self._observer(w), interval=1)

    def _locked(self, lookup):
        def locked(key):
            with self.lock:
                return lookup(key)
        return locked

    # --- the session -----------------------------------------------------------------------------
    def run_all(self) -> None:
        """Run every walker to its ``md.steps`` (or until converged with ``stop_converged``)."""
        threads = []
        for w in self.walkers:
            if w.done:
                continue
            self.evaluator.register(w.index)
            self.barrier.join(w.index)
            threads.append(threading.Thread(target=self._walker, args=(w,), name=f"walker-{w.name}", daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error

    def _walker(self, w: WalkerState) -> None:
        try:
            for _ in w.dyn.irun(steps=w.md.steps - w.step_offset):
                if self.error is not None:
                    break
                settings = self.cfg.walkers
                if settings.stop_converged and w.step > 0 and w.converged(settings.converged_after_fs):
                    w.stopped_early = True
                    log.info("walker %s converged at step %d: stopping it", w.name, w.step)
                    break
        except BaseException as exc:  # noqa: BLE001 - stop every walker, re-raised by run_all
            if self.error is None and not isinstance(exc, RunAborted):
                self.error = exc
            self.evaluator.abort(exc)
            self.barrier.abort(exc)
        finally:
            self.evaluator.set_state(w.index, _IDLE)
            self.barrier.leave(w.index)

    def _observer(self, w: WalkerState):
        def observe():
            self.evaluator.set_state(w.index, _IDLE)
            self.barrier.wait(w.index)
            self.evaluator.set_state(w.index, _RUNNING)
            w.calc.step = w.step + 1
        return observe

    # --- at the barrier (one thread, every other walker waiting) -------------------------------------
    def _on_step(self) -> None:
        with self.lock:
            changed = write_events(self.runlog, self.learner.events)
        for w in self.walkers:
            decision = w.calc.decision
            labelled = decision is not None and decision.action is not Action.TRUST
            if labelled:
                w.last_label_step = w.step
            if w.step > w.last_written and (w.step % self.cfg.output.trajectory_every == 0 or labelled or changed):
                self._write_row(w)
        due = changed or self.rounds % self.cfg.output.checkpoint_every == 0
        if due and self.rounds > self.checkpoint_round:
            self.checkpoint()
        elif changed or self.rounds % self.cfg.output.flush_every == 0:
            self.runlog.flush()
        self.rounds += 1

    def _write_row(self, w: WalkerState) -> None:
        atoms, calc = w.dyn.atoms, w.calc
        results, decision = calc.results, calc.decision
        self.runlog.append_trajectory({
            "step": w.step, "time_fs": w.step * w.md.timestep_fs, "positions": atoms.positions,
            "momenta": atoms.get_momenta(), "cell": atoms.cell[:], "numbers": atoms.numbers,
            "energy": results["energy"], "forces": results["forces"], "stress": results.get("stress"),
            "sigma": results.get("sigma", np.full(len(atoms), np.nan)),
            "max_sigma": decision.max_sigma if decision is not None else np.nan,
            "decision": int(decision.action) if decision is not None else -1, "source": calc.source,
            "temperature_K": atoms.get_temperature(), "model": self.learner.model_id,
            "wall_time_s": self.wall_time(),
        }, table=walker_table(w.index))
        w.last_written = w.step

    def checkpoint(self) -> None:
        """One checkpoint of every walker (all are between steps: called at the barrier or at the end)."""
        parts = [w.dyn.atoms for w in self.walkers]
        self.runlog.write_checkpoint(Checkpoint(
            step=min(w.step for w in self.walkers), time_fs=0.0,
            positions=np.concatenate([a.positions for a in parts]),
            momenta=np.concatenate([a.get_momenta() for a in parts]),
            cell=np.asarray(parts[0].cell[:]), numbers=np.concatenate([a.numbers for a in parts]),
            pbc=np.asarray(parts[0].pbc), model=self.learner.model_id, n_labels=self.learner.n_labels,
            labels_since_retrain=self.learner.labels_since_retrain, retrain_pending=self.learner.retrain_due,
            wall_time_s=self.wall_time(),
            walkers=[{"index": w.index, "name": w.name, "step": w.step, "time_fs": w.step * w.md.timestep_fs,
                      "n_atoms": len(w.dyn.atoms), "cell": np.asarray(w.dyn.atoms.cell[:]).tolist(),
                      "pbc": np.asarray(w.dyn.atoms.pbc).tolist(), "rng": w.rng.bit_generator.state,
                      "dynamics": dynamics_state(w.md.ensemble, w.dyn), "stopped_early": w.stopped_early,
                      "last_label_step": w.last_label_step}
                     for w in self.walkers],
        ))
        self.checkpoint_round = self.rounds

    def wall_time(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started


def start_walkers(config, starts, seeds_from=None) -> list[WalkerState]:
    """Fresh walkers: each its structure with Maxwell–Boltzmann momenta from its own seed."""
    out = []
    for walker, start in zip(config.walker_list(), starts):
        rng = np.random.default_rng(walker.md.seed)
        atoms = start.copy()
        set_velocities(atoms, walker.md.temperature_K, rng)
        out.append(WalkerState(index=walker.index, name=walker.name, md=walker.md, atoms=atoms, rng=rng))
    return out


def resume_walkers(config, checkpoint: Checkpoint) -> tuple[list[WalkerState], list[dict]]:
    """Walkers at the checkpoint: atoms, momenta, steps, random-number and integrator state."""
    out, dyn = [], []
    atoms = checkpoint.walker_atoms()
    for walker, state, a in zip(config.walker_list(), checkpoint.walkers, atoms):
        rng = np.random.default_rng()
        if state.get("rng"):
            rng.bit_generator.state = state["rng"]
        w = WalkerState(index=walker.index, name=walker.name, md=walker.md, atoms=a, rng=rng,
                        step_offset=int(state["step"]), stopped_early=bool(state.get("stopped_early", False)),
                        last_label_step=state.get("last_label_step"))
        out.append(w)
        dyn.append(state.get("dynamics", {}))
    return out, dyn


class _SerialLabeler:
    """One label at a time through a labeller shared by walker threads (every MPI rank labels
    together: ``walkers.label_groups: 0``); attributes are the labeller's."""

    def __init__(self, inner):
        self._inner = inner
        self._lock = threading.Lock()

    def label(self, atoms):
        with self._lock:
            return self._inner.label(atoms)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _distinct(structures) -> list:
    seen, out = set(), []
    for atoms in structures:
        key = configuration_key(atoms)
        if key not in seen:
            seen.add(key)
            out.append(atoms)
    return out


def make_multi_walker_run(config, labeler, **kwargs):
    """The run of a ``walkers`` input (:class:`MultiWalkerRun`)."""
    return MultiWalkerRun(config, labeler, **kwargs)


from .run import OTFRun, RunSummary, labels_per_window  # noqa: E402 - run.py builds this class on demand


class MultiWalkerRun(OTFRun):
    """``otf-statcut run`` of an input with ``walkers``: K walkers, one learner (module docstring)."""

    batched = True

    def __init__(self, config, labeler, **kwargs):
        # label groups take concurrent labels; one labeller shared by the threads takes one at a time
        super().__init__(config, labeler if hasattr(labeler, "submit") else _SerialLabeler(labeler), **kwargs)
        self.walker_specs = config.walker_list()

    def _starting_structures(self) -> list:
        from .system import build_structure

        return [build_structure(w.system, f"{self.where}: walker {w.name}", needs_cell=w.md.ensemble == "npt")
                for w in self.walker_specs]

    def _sampling(self, starts):
        """N per element: every walker's atoms over its steps (policy ``cutoffs.n``)."""
        from ..fit_cycle import element_counts
        from .learner import sampling_size

        counts: dict[str, int] = {}
        for w, atoms in zip(self.walker_specs, starts):
            for element, c in element_counts(atoms.get_chemical_symbols()).items():
                counts[element] = counts.get(element, 0) + c * w.md.steps
        steps = max(w.md.steps for w in self.walker_specs)
        per_step = {k: max(1, round(v / steps)) for k, v in counts.items()}
        return sampling_size(self.config.cutoffs.n, steps, per_step)

    def _session(self, runlog: RunLog, starts: list) -> RunSummary:
        import json

        from ..errors import DataError

        cfg = self.config
        self.policy = self._policy(runlog)
        sampling = self._sampling(starts)
        checkpoint = runlog.read_checkpoint()
        names = [w.name for w in self.walker_specs]
        if checkpoint is None:
            if "walkers" not in runlog.file:
                runlog.file.create_group("walkers").attrs["names"] = json.dumps(names)
            learner = self._initial_learner(runlog, _distinct(starts), sampling=sampling)
            walkers, dyn_states, wall0 = start_walkers(cfg, starts), [{}] * len(starts), 0.0
        else:
            if len(checkpoint.walkers) != len(self.walker_specs):
                raise DataError(f"{self.path}: the checkpoint holds {len(checkpoint.walkers)} walkers, the input "
                                f"{len(self.walker_specs)}")
            symbols = [s for a in starts for s in a.get_chemical_symbols()]
            learner = self._resume_learner(runlog, checkpoint, symbols, sampling=sampling)
            walkers, dyn_states = resume_walkers(cfg, checkpoint)
            wall0 = checkpoint.wall_time_s
        self._learner_of_session = learner
        write_events(runlog, learner.events)
        runlog.flush()
        driver = MultiWalkerDriver(self, runlog, learner, walkers, dyn_states, wall_offset=wall0,
                                   batched=self.batched)
        self.driver = driver
        self._on_timeout = lambda message, key: self._abort_on_timeout(runlog, None, message, key)
        steps0 = [w.step for w in walkers]
        session_start = time.perf_counter()
        driver.run_all()
        session_wall = time.perf_counter() - session_start
        with driver.lock:
            write_events(runlog, learner.events)
        driver.checkpoint()
        status = "finished" if all(w.done for w in walkers) else "running"
        runlog.set_status(status)
        runlog.flush()
        session_steps = sum(w.step - s for w, s in zip(walkers, steps0))
        summary = self._summary(runlog, learner, walkers[0].calc, status, session_steps, session_wall)
        summary.steps = min(w.step for w in walkers)
        summary.total_steps = max(w.md.steps for w in walkers)
        data = read_table(self.path, "dataset", columns=("step", "walker", "offset"))
        summary.labels_per_100 = labels_per_window(data["step"], summary.total_steps)
        summary.walkers = walker_report(self.path, names, [w.step for w in walkers],
                                        [w.md.timestep_fs for w in walkers], cfg.walkers.converged_after_fs)
        for row, w in zip(summary.walkers, walkers):
            row["stopped_early"] = w.stopped_early
        summary.batches = (driver.evaluator.n_batches, driver.evaluator.n_evaluations)
        return summary
