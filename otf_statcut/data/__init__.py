"""Labelled configurations: read/write (extxyz, ASE db; more via :func:`register_format`), splits,
and per-atom views of the labels.

A labelled frame is an :class:`ase.Atoms` with a
:class:`~ase.calculators.singlepoint.SinglePointCalculator` holding energy (eV), forces (eV/Å)
and optionally stress (eV/Å³, Voigt, ASE sign).
"""

from .files import read_frames, register_format, supported_suffixes, write_frames
from .frames import (
    frame_energy,
    frame_forces,
    frame_stress,
    frame_symbols,
    has_stress,
    labelled_frame,
    species_of,
    stack_forces,
    stack_symbols,
    validate_frame,
)
from .split import train_val_split

__all__ = [
    "read_frames",
    "write_frames",
    "register_format",
    "supported_suffixes",
    "labelled_frame",
    "validate_frame",
    "has_stress",
    "frame_energy",
    "frame_forces",
    "frame_stress",
    "frame_symbols",
    "species_of",
    "stack_forces",
    "stack_symbols",
    "train_val_split",
]
