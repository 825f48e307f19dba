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

Failures: a label that fails after the labeller's retries is recorded (``failure`` event) and
never enters the data set. For **label** the MLIP result is kept for that step (the model was
only mildly unsure); for **halt** there is no trustworthy result, and :class:`HaltError` is
raised, which stops the run at the last checkpoint (re-running resumes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ase.calculators.calculator import all_changes

from ..io.runlog import configuration_key
from ..labelers.base import LabelingError
from ..mlip import PotentialCalculator
from .decision import Action, Decision, decide

__all__ = ["OTFCalculator", "HaltError", "SOURCE_MLIP", "SOURCE_REFERENCE"]

log = logging.getLogger("otf_statcut.engine")

#: What a step's result came from (stored in the trajectory's ``source`` column).
SOURCE_MLIP, SOURCE_REFERENCE = 0, 1


class HaltError(RuntimeError):
    """A configuration above the maximum cutoff could not be labelled: nothing can be trusted."""


class OTFCalculator(PotentialCalculator):
    """On-the-fly calculator: energy, free_energy, forces, stress, features, and per-atom ``sigma``.

    Parameters
    ----------
    learner : Learner
        Potential, head, cutoffs and data set; fitted (``learner.cutoffs`` set).
    labeler : Labeler
        Reference method (any :class:`~otf_statcut.labelers.Labeler`).
    lookup : callable, optional
        ``key -> labelled Atoms or None``: labels already in the run's data set by
        :func:`~otf_statcut.io.runlog.configuration_key`, so a configuration is never labelled
        (nor stored) twice, e.g. when a resumed run revisits a labelled step.
    device : str, optional
        Torch device; by default the potential's own (where ``mlip.device`` put it).

    Attributes
    ----------
    step : int
        MD step of the next call (the run's recorder keeps it current).
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

    def __init__(self, learner, labeler, *, lookup: Callable[[str], object] | None = None,
                 device: str | None = None):
        super().__init__(learner.potential, device=device)
        self.learner = learner
        self.labeler = labeler
        self.lookup = lookup
        self.step = 0
        self.decision: Decision | None = None
        self.source = SOURCE_MLIP
        self.n_calls = 0
        self.n_labels = 0
        self.n_failures = 0
        self._labeler_settings = None

    def save_extra_outputs(self, out) -> None:
        """Add the per-atom σ of the configuration (same model evaluation, no second pass)."""
        self.results["sigma"] = self.learner.sigma(self.atoms, self.prediction)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results.pop("energies", None)  # not advertised (see implemented_properties)
        self.n_calls += 1
        decision = decide(self.results["sigma"], self.learner.cutoffs, self.atoms.get_chemical_symbols())
        self.decision = decision
        self.source = SOURCE_MLIP
        if decision.action is Action.TRUST:
            return
        halt = decision.action is Action.HALT
        reason = "halt" if halt else "label"
        frame = self._reference(reason, decision)
        if frame is None:
            if halt:
                raise HaltError(
                    f"step {self.step}: σ of atom(s) {list(decision.above_maximum)[:5]} (max {decision.max_sigma:.3g} "
                    "eV/Å) above the maximum cutoff and the configuration could not be labelled; "
                    "stopping at the last checkpoint")
            return  # a failed label between the cutoffs: the MLIP result stands for this step
        self._use(frame)
        if halt or self.learner.retrain_due:
            self.learner.fit(step=self.step, reason="halt" if halt else "every")

    # --- helpers ---------------------------------------------------------------------------
    def _reference(self, reason: str, decision: Decision):
        """The reference label of ``self.atoms``: from the data set if already there, else new."""
        key = configuration_key(self.atoms)
        known = self.lookup(key) if self.lookup is not None else None
        if known is not None:
            self.learner.count_reused_label()
            return known
        try:
            frame = self.labeler.label(self.atoms)
        except LabelingError as exc:
            self.n_failures += 1
            log.warning("step %s: %s label failed: %s", self.step, reason, exc)
            self.learner.events.append(
                ("failure", {"step": int(self.step), "reason": reason, "message": str(exc)}))
            return None
        self.n_labels += 1
        self.learner.add(frame, step=self.step, reason=reason, max_sigma=decision.max_sigma,
                         labeler=self._settings())
        return frame

    def _use(self, frame) -> None:
        ref = frame.calc.results
        self.results["energy"] = float(ref["energy"])
        self.results["free_energy"] = float(ref.get("free_energy", ref["energy"]))
        self.results["forces"] = ref["forces"].copy()
        if "stress" in ref:
            self.results["stress"] = ref["stress"].copy()
        self.source = SOURCE_REFERENCE

    def _settings(self):
        if self._labeler_settings is None:
            self._labeler_settings = self.labeler.settings()
        return self._labeler_settings

