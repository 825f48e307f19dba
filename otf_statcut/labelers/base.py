"""The labeller contract: Atoms in, labelled Atoms out, or an exception. Never garbage.

A :class:`Labeler` turns a configuration into a *labelled frame*: a copy of the Atoms with a
:class:`~ase.calculators.singlepoint.SinglePointCalculator` holding the reference energy, forces
and (when the method gives it) stress. Subclasses implement only :meth:`Labeler._compute`; the
base class owns the retry policy and the sanity checks, so every labeller fails the same way:

* an exception from the method, an unconverged SCF, NaN/inf values or forces above
  ``max_force`` are *failed attempts*;
* a failed attempt is logged (``logging``, logger ``otf_statcut.labelers``) and retried up to
  ``retries`` more times (the calculator is reset before each retry);
* when every attempt failed, :class:`LabelingError` (a subclass of ASE's
  :class:`~ase.calculators.calculator.CalculationFailed`) is raised. Callers catch it and do
  not add the frame to any data set.

Energies are force-consistent: when a method reports a ``free_energy`` (smearing), that is
the energy of the label, because the forces are its derivative. Units: eV, eV/Å, eV/Å³.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.calculators.singlepoint import SinglePointCalculator

from ..errors import OTFStatcutError

__all__ = [
    "Label",
    "Labeler",
    "LabelingError",
    "UnphysicalLabelError",
    "SCFConvergenceError",
    "LabelTimeout",
    "DEFAULT_RETRIES",
    "DEFAULT_MAX_FORCE",
]

log = logging.getLogger("otf_statcut.labelers")

#: Extra attempts after a failed one.
DEFAULT_RETRIES = 1
#: Largest force component magnitude (eV/Å) accepted from a labeller; beyond it a label is absurd.
DEFAULT_MAX_FORCE = 100.0


class LabelingError(CalculationFailed, OTFStatcutError):
    """A configuration could not be labelled (after all retries). The frame must be dropped.

    Attributes
    ----------
    attempts : list of str
        One line per failed attempt, oldest first.
    """

    def __init__(self, message: str, attempts: list[str] | None = None):
        super().__init__(message)
        self.attempts = list(attempts or [])


class UnphysicalLabelError(LabelingError):
    """The method returned NaN/inf values, wrong shapes, or forces above the allowed maximum."""


class SCFConvergenceError(LabelingError):
    """The self-consistent field did not converge."""


class LabelTimeout(LabelingError):
    """A label ran past its time limit (``labeler.timeout_s``); not retried."""


# A plain record of one labelled result, before it becomes Atoms.
Label = dict  # keys: "energy" (float), "forces" (n, 3), optional "stress" (6,) Voigt, ASE sign


class Labeler:
    """Base class: ``label(atoms) -> Atoms`` with retries and checks.

    Parameters
    ----------
    retries : int
        Extra attempts after a failed one (0: try once).
    max_force : float
        Largest accepted force magnitude on any atom, eV/Å.

    Notes
    -----
    Subclasses set :attr:`name`, implement :meth:`_compute` and :meth:`settings`, and may
    override :meth:`reset` (called before a retry). :attr:`collective` is True for labellers
    that must be called on every MPI rank at once (GPAW); see
    :class:`otf_statcut.labelers.mpi.MPIDrivenLabeler`.
    """

    name: str = "labeler"
    collective: bool = False

    def __init__(self, retries: int = DEFAULT_RETRIES, max_force: float = DEFAULT_MAX_FORCE):
        if int(retries) < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not max_force > 0:
            raise ValueError(f"max_force must be > 0 eV/Å, got {max_force}")
        self.retries = int(retries)
        self.max_force = float(max_force)
        self.n_calls = 0
        self.n_failed_attempts = 0

    # --- to implement -------------------------------------------------------------------
    def _compute(self, atoms: Atoms) -> Label:
        """Compute energy (eV), forces (eV/Å) and optionally stress (eV/Å³) of ``atoms``."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable description of the method, stored with every labelled frame."""
        return {"name": self.name}

    def reset(self) -> None:
        """Forget cached state before a retry (e.g. a calculator's wave functions)."""

    def close(self) -> None:
        """Release resources (files, processes)."""

    # --- the contract -------------------------------------------------------------------
    def label(self, atoms: Atoms) -> Atoms:
        """Label one configuration.

        Parameters
        ----------
        atoms : Atoms
            Configuration to label; not modified.

        Returns
        -------
        Atoms
            A copy of ``atoms`` (numbers, positions, cell, pbc, momenta, info; no constraints)
            with a SinglePointCalculator (energy, free_energy, forces, [stress]).
            ``info["label_wall_time"]`` (s) and ``info["label_attempts"]`` are set.

        Raises
        ------
        LabelingError
            When every attempt failed (subclass :class:`UnphysicalLabelError` or
            :class:`SCFConvergenceError` when the last failure was of that kind).
        """
        self.n_calls += 1
        failures: list[str] = []
        last: Exception | None = None
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            if attempt:
                self.reset()
            work = _bare_copy(atoms)
            error: Exception | None = None
            try:
                result = self._compute(work)
                result = self.check(result, len(atoms))
            except LabelTimeout:
                raise  # the time limit covers every attempt: no retry
            except Exception as exc:  # any failure of the method is a failed attempt
                error = exc
            if not self._agree(error is None) and error is None:
                error = LabelingError("the attempt failed on another MPI rank")
            if error is not None:
                last = error
                self.n_failed_attempts += 1
                line = f"attempt {attempt + 1}/{self.retries + 1}: {type(error).__name__}: {error}"
                failures.append(line)
                log.warning("%s labeller failed (%s)", self.name, line)
                continue
            labelled = _bare_copy(atoms)
            labelled.calc = SinglePointCalculator(
                labelled,
                energy=result["energy"],
                free_energy=result["energy"],
                forces=result["forces"],
                stress=result.get("stress"),
            )
            labelled.info["label_wall_time"] = time.perf_counter() - start
            labelled.info["label_attempts"] = attempt + 1
            return labelled
        cls = type(last) if isinstance(last, LabelingError) else LabelingError
        raise cls(
            f"{self.name} labeller failed {len(failures)} time(s) on {atoms.get_chemical_formula()}: "
            + failures[-1],
            attempts=failures,
        ) from last

    def check(self, result: Mapping[str, Any], n_atoms: int) -> Label:
        """Validate a raw result; return it with NumPy arrays. Raises UnphysicalLabelError."""
        try:
            energy = float(result["energy"])
            forces = np.array(result["forces"], dtype=float)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnphysicalLabelError(f"result lacks a usable energy/forces: {exc}") from exc
        if not math.isfinite(energy):
            raise UnphysicalLabelError(f"energy is {energy}")
        if forces.shape != (n_atoms, 3):
            raise UnphysicalLabelError(f"forces have shape {forces.shape}, expected {(n_atoms, 3)}")
        if not np.isfinite(forces).all():
            raise UnphysicalLabelError("forces contain NaN or inf")
        fmax = float(np.linalg.norm(forces, axis=1).max()) if n_atoms else 0.0
        if fmax > self.max_force:
            raise UnphysicalLabelError(
                f"largest force {fmax:.3g} eV/Å exceeds max_force = {self.max_force:g} eV/Å")
        out: Label = {"energy": energy, "forces": forces}
        stress = result.get("stress")
        if stress is not None:
            stress = np.array(stress, dtype=float)
            if stress.shape == (3, 3):
                stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            if stress.shape != (6,) or not np.isfinite(stress).all():
                raise UnphysicalLabelError(f"stress is not 6 finite Voigt components: {stress}")
            out["stress"] = stress
        return out

    @staticmethod
    def _agree(ok: bool) -> bool:
        """Combine an attempt's success over MPI ranks (identity here; see labelers.mpi)."""
        return ok

    def __call__(self, atoms: Atoms) -> Atoms:
        return self.label(atoms)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _bare_copy(atoms: Atoms) -> Atoms:
    """Positions, numbers, cell, pbc (and momenta, info); no calculator, no constraints."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if atoms.has("momenta"):
        out.set_momenta(atoms.get_momenta(), apply_constraint=False)
    out.info.update({k: v for k, v in atoms.info.items() if not k.startswith("label_")})
    return out
