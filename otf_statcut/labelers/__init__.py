"""Labellers: turn a configuration (ASE Atoms) into a labelled frame, or raise.

* :class:`Labeler` — the base contract (``label(atoms) -> Atoms`` with a SinglePointCalculator,
  retries, NaN/absurd-force checks); failures raise :class:`LabelingError`, a subclass of
  ASE's ``CalculationFailed``.
* :class:`ASECalculatorLabeler` — any ASE calculator from Python.
* :class:`~otf_statcut.labelers.gpaw.GPAWLabeler` — DFT with GPAW on every MPI rank
  (imported from its own module, so that importing this package does not import GPAW).
* :func:`make_labeler` — the fixed registry used by YAML inputs
  (``gpaw``, ``emt``, ``lj``, ``morse``, ``lammps-snap``); nothing named in a config is imported.
* :class:`~otf_statcut.labelers.mpi.MPIDrivenLabeler` — rank 0 drives, the other ranks serve.
"""

from .ase_calculator import ASECalculatorLabeler
from .base import (
    DEFAULT_MAX_FORCE,
    DEFAULT_RETRIES,
    Labeler,
    LabelingError,
    LabelTimeout,
    SCFConvergenceError,
    UnphysicalLabelError,
)
from .registry import LABELERS, make_labeler, settings_class

__all__ = [
    "ASECalculatorLabeler",
    "DEFAULT_MAX_FORCE",
    "DEFAULT_RETRIES",
    "LABELERS",
    "Labeler",
    "LabelingError",
    "LabelTimeout",
    "SCFConvergenceError",
    "UnphysicalLabelError",
    "make_labeler",
    "settings_class",
]
