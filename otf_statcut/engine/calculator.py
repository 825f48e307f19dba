"""The on-the-fly ASE calculator: NequIP + uncertainty head + labeller, deciding at every call.

:class:`OTFCalculator` is the potential's own ASE calculator
(:class:`~otf_statcut.mlip.PotentialCalculator`, a subclass of NequIP's ``NequIPCalculator``)
with two additions: ``save_extra_outputs`` puts the per-atom uncertainty ``sigma`` (eV/Å) into
``self.results`` (so ASE's ``check_state`` discards it with the other results when an atom
moves), and ``calculate`` ends with the decision of :func:`~otf_statcut.engine.decision.decide`:

* **trust** (max σ below the minimum cutoff): the MLIP energy, forces and stress are the result;
* **label** (between the cutoffs): the configuration is labelled by the reference method, the
  reference energy/forces/stress are the result of this call, and the frame joins the data set;
  after ``retrain_every`` new labels the learner retrains (head and cutoffs refitted);
* **halt** (above the maximum cutoff, the 1 eV/Å bound on the uncertainty scale): the model is
  not trusted at all. The configuration is labelled and the learner retrains *at once*, before
  the call returns; the result of this call is the reference label (not the new model's
  prediction), so the trajectory never moves on forces the old model was unsure of, and the next
  step is screened by the new model and cutoffs.

Because the result of a call is what the dynamics integrates, a labelled step is integrated on
reference forces. ``sigma`` in the results is always the screening σ of the model that made the
decision.

Failures: a label that fails after the labeller's retries, runs past its time limit or has an
absurd energy (:class:`~otf_statcut.engine.label_policy.LabelPolicy`) is recorded (``failure``
event) and never enters the data set. For **label** the MLIP result is kept for that step (the
model was only mildly unsure); for **halt** there is no trustworthy result, and
:class:`HaltError` is raised, which stops the run at the last checkpoint (re-running resumes).
After ``labeler.max_consecutive_failures`` failed labels in a row the run stops the same way.

ASE conventions. Every advertised property is in :attr:`results` after every call (a labelled
step keeps the MLIP's stress when the labeller gives none). A configuration is labelled at most
once however often the dynamics evaluates it: the labels of this session are remembered by
configuration key, and a configuration that differs from the last labelled one only by a
homogeneous rescaling of the cell (same fractional coordinates, cell within 1 %: what a
Berendsen-type barostat does between the end of one step and the forces of the next) reuses that
label - its forces differ from the rescaled configuration's by far less than any label's own
noise, since the rescaling per step is ~1e-4. σ travels with the atoms: each call puts it into
the caller's ``atoms.arrays["sigma"]`` (written by extxyz and every format that writes per-atom
arrays) and ``max_sigma`` and ``otf_decision`` into ``atoms.info`` (kept by extxyz and ASE's
``.traj``; ASE's ``.traj`` and database writers drop extra per-atom arrays, so per-atom σ needs
extxyz or the run file there). Steps are counted under any ASE dynamics: in
``otf-statcut run`` the recorder sets :attr:`step`; attached from Python, the calculator finds
the dynamics that calls it and counts its steps (``nsteps``). The calculator pickles when its
labeller does, without the run's lookup and watchdog callback (per run, rebuilt by the run).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from ase.calculators.calculator import all_changes

from ..io.runlog import configuration_key
from ..labelers.base import LabelingError
from ..mlip import PotentialCalculator
from .decision import Action, Decision, decide
from .label_policy import LabelPolicy, RunStopped

__all__ = ["OTFCalculator", "HaltError", "SOURCE_MLIP", "SOURCE_REFERENCE"]

log = logging.getLogger("otf_statcut.engine")

#: What a step's result came from (stored in the trajectory's ``source`` column).
SOURCE_MLIP, SOURCE_REFERENCE = 0, 1


class HaltError(RunStopped):
    """A configuration above the maximum cutoff could not be labelled: nothing can be trusted."""


class OTFCalculator(PotentialCalculator):
    """On-the-fly calculator: energy, free_energy, forces, stress, features, and per-atom ``sigma``.

    Parameters
    ----------
    learner : Learner
        Potential, head, cutoffs and data set; fitted (``learner.cutoffs`` set).
    labeler : Labeler or LabelPolicy
        Reference method (any :class:`~otf_statcut.labelers.Labeler`), or a
        :class:`~otf_statcut.engine.label_policy.LabelPolicy` around one (time limit, energy
        check, failure limit); a plain labeller gets a policy with no time limit.
    lookup : callable, optional
        ``key -> labelled Atoms or None``: labels already in the run's data set by
        :func:`~otf_statcut.io.runlog.configuration_key`, so a configuration is never labelled
        (nor stored) twice, e.g. when a resumed run revisits a labelled step.
    device : str, optional
        Torch device; by default the potential's own (where ``mlip.device`` put it).

    Attributes
    ----------
    step : int
        MD step of the configuration of the last call (the run's recorder keeps it current;
        otherwise counted from the dynamics that calls the calculator).
    external_steps : bool
        True when someone else (the run's recorder) sets :attr:`step`.
    decision : Decision or None
        Decision of the last call.
    source : int
        ``SOURCE_MLIP`` or ``SOURCE_REFERENCE`` for the last call.
    n_calls, n_labels, n_failures : int
        Counters (calls to ``calculate``, labels made by this calculator, failed labels).
    """

    # No per-atom "energies": a labelled step has none (the label's energy is not a sum of the
    # MLIP's per-atom terms), and a property present on some steps only would make ASE call
    # calculate() again - and label the same configuration twice - when asked for it.
    implemented_properties = [p for p in PotentialCalculator.implemented_properties if p != "energies"] + ["sigma"]

    #: Labels of this session remembered by configuration key (re-evaluations reuse them).
    MEMORY = 16
    #: Relative cell change within which a rescaled copy of the last label reuses it.
    RESCALE_TOLERANCE = 0.01

    def __init__(self, learner, labeler, *, lookup: Callable[[str], object] | None = None,
                 device: str | None = None):
        super().__init__(learner.potential, device=device)
        self.learner = learner
        self.policy = labeler if isinstance(labeler, LabelPolicy) else LabelPolicy(labeler)
        self.lookup = lookup
        self.step = 0
        self.walker: int | None = None  # index of the walker this calculator serves (many walkers)
        self.learner_lock = contextlib.nullcontext()  # many walkers: the learner's lock
        self.external_steps = False
        self.decision: Decision | None = None
        self.source = SOURCE_MLIP
        self.n_calls = 0
        self.n_labels = 0
        self.n_failures = 0
        self.n_reused = 0
        self._labeler_settings = None
        self._memory: OrderedDict[str, object] = OrderedDict()
        self._dyn = None
        self._dyn_offset = 0

    @property
    def labeler(self):
        """The labeller (inside the policy)."""
        return self.policy.labeler

    def save_extra_outputs(self, out) -> None:
        """Add the per-atom σ of the configuration (same model evaluation, no second pass)."""
        self.results["sigma"] = self.learner.sigma(self.atoms, self.prediction)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.evaluate(atoms, properties, system_changes)
        self.results.pop("energies", None)  # not advertised (see implemented_properties)
        self.n_calls += 1
        if not self.external_steps:
            self.step = self._dynamics_step()
        decision = decide(self.results["sigma"], self.learner.cutoffs, self.atoms.get_chemical_symbols())
        self.decision = decision
        if atoms is not None:  # σ travels with the caller's atoms through ASE writes (extxyz, ...)
            atoms.arrays["sigma"] = self.results["sigma"].copy()
            atoms.info.update(max_sigma=float(decision.max_sigma), otf_decision=int(decision.action))
        self.source = SOURCE_MLIP
        if decision.action is Action.TRUST:
            return
        halt = decision.action is Action.HALT
        reason = "halt" if halt else "label"
        frame, new = self._reference(reason, decision)
        if frame is None:
            if halt:
                raise HaltError(
                    f"step {self.step}: σ of atom(s) {list(decision.above_maximum)[:5]} (max {decision.max_sigma:.3g} "
                    "eV/Å) above the maximum cutoff and the configuration could not be labelled; "
                    "stopping at the last checkpoint")
            return  # a failed label between the cutoffs: the MLIP result stands for this step
        self._use(frame)
        with self.learner_lock:
            if new and (halt or self.learner.retrain_due):
                self.learner.fit(step=self.step, reason="halt" if halt else "every")

    def evaluate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """The MLIP and the head on this configuration: fills :attr:`results` (with ``sigma``) and
        :attr:`prediction`. One NequIP call here; a walker of a many-walker run evaluates in a
        batch with the other walkers instead (:mod:`otf_statcut.engine.walkers`)."""
        PotentialCalculator.calculate(self, atoms, properties, system_changes)

    # --- pickling ------------------------------------------------------------------------------
    def __getstate__(self):
        try:
            pickle.dumps(self.policy.labeler)
        except Exception as exc:
            raise TypeError(
                f"OTFCalculator cannot be pickled: its {self.policy.name} labeller cannot "
                f"({type(exc).__name__}: {exc}); pickle atoms.copy() (no calculator) or the learner "
                "(calc.learner) instead") from None
        state = self.__dict__.copy()
        state["lookup"] = None  # reads the run file of one run
        state["_dyn"] = None
        state["learner_lock"] = contextlib.nullcontext()
        policy = LabelPolicy.__new__(LabelPolicy)
        policy.__dict__.update(self.policy.__dict__, on_hard_timeout=None)
        state["policy"] = policy
        return state

    # --- helpers ---------------------------------------------------------------------------
    def _reference(self, reason: str, decision: Decision):
        """The reference label of ``self.atoms`` and whether it is new: a label remembered or in
        the data set is reused, a rescaled copy of the last label reuses it, else a new label
        (None when it failed)."""
        key = configuration_key(self.atoms)
        known = self._memory.get(key)
        if known is None and self.lookup is not None:
            known = self.lookup(key)
        if known is not None:
            with self.learner_lock:
                self.learner.count_reused_label()
            self._remember(key, known)
            return known, False
        rescaled = self._rescaled_copy_of_last()
        if rescaled is not None:
            self.n_reused += 1
            return rescaled, False
        try:
            frame = self.policy.label(self.atoms, key=key, expected_energy=float(self.results["energy"]))
        except LabelingError as exc:
            self.n_failures += 1
            log.warning("step %s: %s label failed: %s", self.step, reason, exc)
            with self.learner_lock:
                self.learner.events.append(
                    ("failure", {"step": int(self.step), "reason": reason, "message": f"{type(exc).__name__}: {exc}",
                                 "key": key}))
            self.policy.failed(str(exc))  # raises LabelFailuresError at the limit
            return None, False
        self.n_labels += 1
        with self.learner_lock:
            self.learner.add(frame, step=self.step, reason=reason, max_sigma=decision.max_sigma,
                             labeler=self._settings(), walker=self.walker)
        self._remember(key, frame)
        return frame, True

    def _use(self, frame) -> None:
        """The label's energy, forces (and stress: the MLIP's stays when the label has none)."""
        ref = frame.calc.results
        self.results["energy"] = float(ref["energy"])
        self.results["free_energy"] = float(ref.get("free_energy", ref["energy"]))
        self.results["forces"] = ref["forces"].copy()
        if "stress" in ref:
            self.results["stress"] = ref["stress"].copy()
        self.source = SOURCE_REFERENCE

    def _remember(self, key: str, frame) -> None:
        self._memory[key] = frame
        self._memory.move_to_end(key)
        while len(self._memory) > self.MEMORY:
            self._memory.popitem(last=False)

    def _rescaled_copy_of_last(self):
        """The last label if ``self.atoms`` is it with the cell rescaled (same fractional
        coordinates, cell within :attr:`RESCALE_TOLERANCE`), else None."""
        if not self._memory:
            return None
        last = next(reversed(self._memory.values()))
        atoms = self.atoms
        if len(last) != len(atoms) or not np.array_equal(last.numbers, atoms.numbers) \
                or not np.array_equal(last.pbc, atoms.pbc) or not atoms.pbc.all():
            return None
        cell, old = np.asarray(atoms.cell[:]), np.asarray(last.cell[:])
        if np.array_equal(cell, old) or np.abs(cell - old).max() > self.RESCALE_TOLERANCE * np.abs(old).max():
            return None
        if not np.allclose(atoms.get_scaled_positions(wrap=False), last.get_scaled_positions(wrap=False),
                           rtol=0, atol=1e-9):
            return None
        return last

    def _dynamics_step(self) -> int:
        """Step of the ASE dynamics calling this calculator (``nsteps``, +1 inside its ``step``),
        continuing the count of earlier dynamics; :attr:`step` when no dynamics is calling."""
        dyn, inside = _calling_dynamics()
        if dyn is None:
            return self.step
        if dyn is not self._dyn:
            self._dyn = dyn
            self._dyn_offset = self.step - int(dyn.nsteps)  # a new dynamics continues the count
        return self._dyn_offset + int(dyn.nsteps) + (1 if inside else 0)

    def _settings(self):
        if self._labeler_settings is None:
            self._labeler_settings = self.policy.settings()
        return self._labeler_settings


#: Methods of an ASE dynamics that evaluate the current configuration, not the next one.
_OUTSIDE_STEP = frozenset({"irun", "run", "__init__", "log", "call_observers", "todict", "initialize",
                           "_refresh_properties"})


def _calling_dynamics():
    """The ASE dynamics (``ase.optimize.optimize.BaseDynamics``: MD and optimisers) up the call
    stack, and whether the call comes from inside its ``step`` (then it evaluates the
    configuration of step nsteps + 1)."""
    try:
        from ase.optimize.optimize import BaseDynamics as Dynamics
    except ImportError:  # ASE < 3.23
        from ase.optimize.optimize import Dynamics

    frame = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            break
        obj = frame.f_locals.get("self")
        if isinstance(obj, Dynamics):
            return obj, frame.f_code.co_name not in _OUTSIDE_STEP
        frame = frame.f_back
    return None, False

