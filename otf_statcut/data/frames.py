"""Labelled frames: one configuration plus its reference energy, forces and (optionally) stress.

A labelled frame is a plain :class:`ase.Atoms` whose calculator is a
:class:`~ase.calculators.singlepoint.SinglePointCalculator` holding the reference results
(energy in eV, forces in eV/Å, stress in eV/Å³ as a Voigt 6-vector in ASE's sign convention).
The calculator stops answering as soon as the atoms move, so a stale label can never be read
back by mistake.

The per-atom helpers here read labels without touching the calculator protocol (they never
trigger a calculation) and raise :class:`~otf_statcut.errors.DataError` naming the frame when a
label is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otf_statcut.errors import DataError

__all__ = [
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
]


def labelled_frame(
    atoms: Atoms,
    energy: float,
    forces: np.ndarray,
    stress: np.ndarray | None = None,
    info: Mapping[str, Any] | None = None,
) -> Atoms:
    """Return a copy of ``atoms`` labelled with reference results.

    Parameters
    ----------
    atoms : ase.Atoms
        The configuration; it is copied, never modified, and its calculator is not kept.
    energy : float
        Total energy in eV.
    forces : array_like, shape (n_atoms, 3)
        Forces in eV/Å.
    stress : array_like, shape (6,) or (3, 3), optional
        Stress in eV/Å³, ASE sign convention (Voigt order xx, yy, zz, yz, xz, xy); a 3x3 tensor
        is converted to Voigt form.
    info : mapping, optional
        Entries merged into the copy's ``info`` (e.g. ``{"group": "AIMD-NVT"}``).

    Returns
    -------
    ase.Atoms
        The labelled copy, with a :class:`SinglePointCalculator` attached.

    Raises
    ------
    DataError
        If a label has the wrong shape or is not finite.
    """
    frame = Atoms(
        numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        cell=atoms.get_cell(),
        pbc=atoms.get_pbc(),
        info=dict(atoms.info),
    )
    if info:
        frame.info.update(info)
    energy_value = float(energy)
    forces_array = np.array(forces, dtype=np.float64)
    if forces_array.shape != (len(frame), 3):
        raise DataError(f"forces must have shape ({len(frame)}, 3), got {forces_array.shape}")
    results: dict[str, Any] = {"energy": energy_value, "forces": forces_array}
    if stress is not None:
        results["stress"] = _voigt(np.array(stress, dtype=np.float64))
    for key, value in results.items():
        if not np.all(np.isfinite(value)):
            raise DataError(f"{key} label is not finite")
    results["free_energy"] = energy_value
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


def _voigt(stress: np.ndarray) -> np.ndarray:
    if stress.shape == (6,):
        return stress
    if stress.shape == (3, 3):
        return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    raise DataError(f"stress must have shape (6,) or (3, 3), got {stress.shape}")


def _results(atoms: Atoms, where: str) -> dict:
    calc = atoms.calc
    if calc is None or not hasattr(calc, "results"):
        raise DataError(f"{where}: no labels (the frame has no SinglePointCalculator with results)")
    return calc.results


def validate_frame(atoms: Atoms, where: str = "frame") -> None:
    """Check that ``atoms`` carries a finite energy and forces of the right shape.

    Parameters
    ----------
    atoms : ase.Atoms
        The frame to check.
    where : str
        How to name the frame in an error message, e.g. ``"data.extxyz: frame 3"``.

    Raises
    ------
    DataError
        If energy or forces are missing, misshapen or not finite, or a stress is present but
        not a finite 6-vector.
    """
    results = _results(atoms, where)
    if results.get("energy") is None:
        raise DataError(f"{where}: missing energy label")
    if results.get("forces") is None:
        raise DataError(f"{where}: missing forces label")
    forces = np.asarray(results["forces"])
    if forces.shape != (len(atoms), 3):
        raise DataError(f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    if not np.isfinite(results["energy"]) or not np.all(np.isfinite(forces)):
        raise DataError(f"{where}: energy or forces are not finite")
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress)
        if stress.shape not in ((6,), (3, 3)) or not np.all(np.isfinite(stress)):
            raise DataError(f"{where}: stress must be a finite (6,) Voigt vector, got shape {stress.shape}")


def has_stress(atoms: Atoms) -> bool:
    """Whether the frame carries a stress label."""
    calc = atoms.calc
    return calc is not None and getattr(calc, "results", {}).get("stress") is not None


def frame_energy(atoms: Atoms) -> float:
    """Reference total energy (eV) of a labelled frame."""
    value = _results(atoms, "frame").get("energy")
    if value is None:
        raise DataError("frame: missing energy label")
    return float(value)


def frame_forces(atoms: Atoms) -> np.ndarray:
    """Reference forces (eV/Å), float64 array of shape (n_atoms, 3), a copy."""
    value = _results(atoms, "frame").get("forces")
    if value is None:
        raise DataError("frame: missing forces label")
    return np.array(value, dtype=np.float64)


def frame_stress(atoms: Atoms) -> np.ndarray | None:
    """Reference stress (eV/Å³, Voigt, ASE sign) of a labelled frame, or None if unlabelled."""
    value = _results(atoms, "frame").get("stress")
    if value is None:
        return None
    return _voigt(np.array(value, dtype=np.float64))


def frame_symbols(atoms: Atoms) -> list[str]:
    """Chemical symbols of the atoms, in order."""
    return atoms.get_chemical_symbols()


def species_of(frames: Sequence[Atoms]) -> tuple[str, ...]:
    """Sorted tuple of the distinct chemical symbols found in ``frames``."""
    return tuple(sorted({s for atoms in frames for s in atoms.get_chemical_symbols()}))


def stack_forces(frames: Sequence[Atoms]) -> np.ndarray:
    """Reference forces of all atoms of all frames, concatenated: shape (sum n_atoms, 3)."""
    if not frames:
        return np.zeros((0, 3))
    return np.concatenate([frame_forces(atoms) for atoms in frames], axis=0)


def stack_symbols(frames: Sequence[Atoms]) -> np.ndarray:
    """Chemical symbols of all atoms of all frames, concatenated (same order as :func:`stack_forces`)."""
    return np.array([s for atoms in frames for s in atoms.get_chemical_symbols()], dtype=object)
