"""The starting structure of a run and the rattled copies that seed its data set."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..errors import ConfigError, DataError

__all__ = ["build_structure", "rattled_copies"]


def build_structure(system, where: str = "run input") -> Atoms:
    """The starting structure from ``system.structure`` (first frame) or ``system.builder``.

    Parameters
    ----------
    system : SystemConfig
    where : str
        Name of the input, for error messages.

    Raises
    ------
    DataError
        The structure file cannot be read.
    ConfigError
        ASE cannot build the requested crystal (e.g. no reference lattice constant).
    """
    if system.structure is not None:
        import ase.io

        try:
            atoms = ase.io.read(system.structure, index=0, parallel=False)
        except Exception as exc:  # ASE raises many types for unreadable files
            raise DataError(f"{where}: system.structure: cannot read {system.structure} ({exc})") from exc
        atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    else:
        atoms = _bulk(system.builder, where)
    if len(atoms) == 0:
        raise DataError(f"{where}: system: the starting structure has no atoms")
    return atoms


def _bulk(b, where: str) -> Atoms:
    from ase.build import bulk

    kwargs = {"a": b.a} if b.a is not None else {}
    if b.c is not None:
        kwargs["c"] = b.c
    if b.lattice == "hcp":
        kwargs["orthorhombic"] = b.cubic
    else:
        kwargs["cubic"] = b.cubic
    try:
        cell = bulk(b.element, b.lattice, **kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"{where}: system.builder: ASE cannot build {b.lattice} {b.element} with "
                          f"{kwargs or 'reference lattice constants'} ({exc}); "
                          "give system.builder.a") from None
    atoms = cell.repeat(b.supercell)
    if b.vacancies:
        if b.vacancies >= len(atoms):
            raise ConfigError(f"{where}: system.builder.vacancies = {b.vacancies} is invalid; expected fewer "
                              f"than the {len(atoms)} atoms of the supercell")
        rng = np.random.default_rng(b.seed)
        del atoms[sorted(rng.choice(len(atoms), size=b.vacancies, replace=False).tolist())]
    return atoms


def rattled_copies(atoms: Atoms, count: int, stdev: float, strain: float = 0.0, seed: int = 0) -> list[Atoms]:
    """``count`` copies of ``atoms`` with Gaussian displacements (``stdev`` Å) and, if ``strain``,
    an isotropic scaling of the cell by a uniform factor in ``1 ± strain``. Seeded: the same
    arguments give the same copies (so a restarted run finds labels it made before)."""
    rng = np.random.default_rng(seed)
    copies = []
    for _ in range(int(count)):
        copy = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        if strain:
            copy.set_cell(copy.cell * rng.uniform(1 - strain, 1 + strain), scale_atoms=True)
        copy.positions = copy.positions + rng.normal(scale=stdev, size=copy.positions.shape)
        copies.append(copy)
    return copies
