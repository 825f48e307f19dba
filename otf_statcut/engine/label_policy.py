"""What the run does with the labeller: a time limit, an energy sanity check, a failure limit.

The labeller contract (:mod:`otf_statcut.labelers.base`) already turns exceptions, unconverged
SCF, NaN and absurd forces into a failed label (with retries). :class:`LabelPolicy` adds what
only the run can judge:

* **Time limit** (``labeler.timeout_s``, for one label with all its attempts). Where the label
  can be interrupted (a labeller on this process alone) an alarm raises :class:`LabelTimeout`
  inside it: a failed label, and the run goes on. Where it cannot (a collective DFT call on
  every MPI rank, where interrupting one rank would leave the others waiting in a collective
  forever; or compiled code that never returns to Python), a watchdog thread waits a grace
  period more (as long again as the limit, at most 30 s) and then calls ``on_hard_timeout``: the run records the failure (with the
  configuration's key) and its status, flushes, and ends every rank (``MPI_Abort`` / exit
  status 3). The run resumes from its last checkpoint, and a configuration that timed out is
  never sent to the labeller again (:attr:`LabelPolicy.known_timeouts`, from ``/failures``).
* **Energy sanity** (``labeler.max_energy_deviation``, eV/atom, default 1). A label whose
  energy per atom differs from the expected one by more than this is a failed label. Expected:
  the model's prediction for the configuration (MD labels), or the median per-atom energy of
  the labels accepted so far (initial labels; the first is the reference). Why 1 eV/atom: the
  model's energy error on its validation data is meV/atom and stays below ~0.3 eV/atom even far
  from its data, while the energy differences MD can reach at fixed composition (melting,
  defects) are ~0.1 eV/atom, so 1 eV/atom is never a physical difference; a wrong SCF state,
  a changed reference (pseudopotential, code) or a unit error is (eV vs Hartree or Ry: a factor
  of 27 or 13 on energies of several eV/atom).
* **Consecutive failures** (``labeler.max_consecutive_failures``, default 5). After that many
  failed labels in a row the run stops (:class:`LabelFailuresError`, status ``stopped``,
  resumable) instead of integrating every uncertain step on forces the model is unsure of.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable

import numpy as np
from ase import Atoms

from ..labelers.base import LabelTimeout, UnphysicalLabelError

__all__ = ["LabelPolicy", "LabelTimeout", "LabelFailuresError", "RunStopped", "HARD_TIMEOUT_EXIT"]

log = logging.getLogger("otf_statcut.engine")

#: Exit status of a run ended by a label that could not be interrupted.
HARD_TIMEOUT_EXIT = 3
#: Seconds the watchdog waits after an alarm before it ends the process.
GRACE_S = 30.0


class RunStopped(RuntimeError):
    """The run stopped at its last checkpoint for a reason worth a resume (status ``stopped``)."""


class LabelFailuresError(RunStopped):
    """Too many failed labels in a row."""


class LabelPolicy:
    """Label through a labeller with a time limit, an energy check and a failure count.

    Parameters
    ----------
    labeler : Labeler
    timeout_s : float or None
        Time limit of one label, s (None: none).
    max_energy_deviation : float
        eV/atom (see the module docstring).
    max_consecutive_failures : int
    interruptible : bool
        Whether an alarm may interrupt the label (False for a collective labeller on several MPI
        ranks): then only the watchdog acts, at ``timeout_s``.
    on_hard_timeout : callable, optional
        ``(message, key) -> None``, called from the watchdog thread when a label cannot be
        interrupted; it must record what it needs and end the process. Without it the watchdog
        only logs.
    known_timeouts : iterable of str
        Configuration keys that timed out before: failed at once, the labeller is not called.
    grace_s : float
        Extra wait of the watchdog after an alarm that did not end the label (at most
        ``timeout_s``).
    """

    def __init__(self, labeler, *, timeout_s: float | None = None, max_energy_deviation: float = 1.0,
                 max_consecutive_failures: int = 5, interruptible: bool = True,
                 on_hard_timeout: Callable[[str, str], None] | None = None,
                 known_timeouts: Iterable[str] = (), grace_s: float = GRACE_S):
        self.labeler = labeler
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.max_energy_deviation = float(max_energy_deviation)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.interruptible = bool(interruptible)
        self.on_hard_timeout = on_hard_timeout
        self.known_timeouts = set(known_timeouts)
        self.grace_s = float(grace_s) if self.timeout_s is None else min(float(grace_s), self.timeout_s)
        self.consecutive_failures = 0
        self.last_failure = ""

    @property
    def name(self) -> str:
        return self.labeler.name

    def settings(self):
        return self.labeler.settings()

    def label(self, atoms: Atoms, *, key: str = "", expected_energy: float | None = None) -> Atoms:
        """Label ``atoms``, or raise :class:`~otf_statcut.labelers.LabelingError` (then call
        :meth:`failed`).

        Parameters
        ----------
        atoms : Atoms
        key : str
            The configuration's key (:func:`~otf_statcut.io.runlog.configuration_key`).
        expected_energy : float, optional
            The energy the run expects for ``atoms``, eV (total, not per atom).
        """
        if key and key in self.known_timeouts:
            raise LabelTimeout("this configuration timed out in an earlier session of the run; not tried again")
        with _Watchdog(self.timeout_s, self.interruptible, self.grace_s,
                       lambda message: self._hard_timeout(message, key)):
            frame = self.labeler.label(atoms)
        if expected_energy is not None:
            self.check_energy(frame, expected_energy)
        self.consecutive_failures = 0
        return frame

    def check_energy(self, frame: Atoms, expected_energy: float) -> None:
        """Raise :class:`UnphysicalLabelError` if the label's energy per atom is off by more
        than ``max_energy_deviation`` from ``expected_energy`` per atom."""
        n = max(len(frame), 1)
        energy = float(frame.calc.results["energy"]) / n
        expected = float(expected_energy) / n
        if math.isfinite(expected) and abs(energy - expected) > self.max_energy_deviation:
            raise UnphysicalLabelError(
                f"energy {energy:.6g} eV/atom is {abs(energy - expected):.3g} eV/atom from the expected "
                f"{expected:.6g} eV/atom (labeler.max_energy_deviation = {self.max_energy_deviation:g} eV/atom)")

    def failed(self, message: str) -> None:
        """Count a failed label; raise :class:`LabelFailuresError` at the limit."""
        self.consecutive_failures += 1
        self.last_failure = message
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise LabelFailuresError(
                f"the {self.labeler.name} labeller failed {self.consecutive_failures} times in a row "
                f"(labeler.max_consecutive_failures = {self.max_consecutive_failures}; last: {message}); "
                "stopped at the last checkpoint: fix the labeller and re-run to resume")

    @staticmethod
    def expected_initial_energy(frames: Iterable[Atoms], atoms: Atoms) -> float | None:
        """Median per-atom energy of accepted labels, times ``len(atoms)`` (None without labels)."""
        per_atom = [float(f.calc.results["energy"]) / len(f) for f in frames]
        return float(np.median(per_atom)) * len(atoms) if per_atom else None

    def _hard_timeout(self, message: str, key: str) -> None:
        log.error("%s", message)
        if self.on_hard_timeout is not None:
            self.on_hard_timeout(message, key)


class _Watchdog:
    """Alarm (when allowed, in the main thread) at ``seconds``; hard action ``grace`` s later
    (at ``seconds`` when no alarm is allowed)."""

    def __init__(self, seconds: float | None, interruptible: bool, grace: float, hard: Callable[[str], None]):
        self.seconds = seconds
        self.soft = interruptible and threading.current_thread() is threading.main_thread()
        self.grace = grace
        self.hard = hard
        self.active = False
        self._done = threading.Event()
        self._previous = None

    def __enter__(self):
        if self.seconds is None:
            return self
        self.active = True
        if self.soft:
            self._previous = signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        limit = self.seconds + (self.grace if self.soft else 0.0)
        threading.Thread(target=self._watch, args=(limit,), daemon=True, name="label-watchdog").start()
        return self

    def __exit__(self, *exc):
        if self.seconds is None:
            return False
        self.active = False
        self._done.set()
        if self.soft:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        return False

    def _alarm(self, signum, frame):
        if self.active:
            self.active = False
            raise LabelTimeout(f"the label ran past labeler.timeout_s = {self.seconds:g} s")

    def _watch(self, limit: float) -> None:
        if not self._done.wait(limit):
            self.hard(f"a label ran past labeler.timeout_s = {self.seconds:g} s and could not be interrupted "
                      f"({'collective MPI labeller' if not self.soft else 'no return to Python'})")
