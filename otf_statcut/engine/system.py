"""The starting structure of a run and the rattled copies that seed its data set."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..errors import ConfigError, DataError

__all__ = ["build_structure", "rattled_copies"]


#: Two atoms closer than this (Å) make a starting structure no DFT code or MLIP should see.
MIN_DISTANCE = 0.5


def check_structure(atoms: Atoms, where: str, *, needs_cell: bool = False) -> None:
    """Refuse a starting structure that cannot be simulated, naming the cause.

    Raises
    ------
    DataError
        Positions not finite, an atom that is no element (ASE's dummy ``X``), two atoms closer
        than :data:`MIN_DISTANCE`, or no 3-D cell where the dynamics needs one (NPT).
    """
    from ase.geometry import get_distances

    if not np.isfinite(atoms.positions).all():
        bad = int(np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))[0])
        raise DataError(f"{where}: system: atom {bad} has a non-finite position ({atoms.positions[bad]})")
    if (atoms.numbers <= 0).any():
        bad = int(np.flatnonzero(atoms.numbers <= 0)[0])
        raise DataError(f"{where}: system: atom {bad} is not a chemical element (dummy 'X'); "
                        "give every atom a real element")
    if needs_cell and (not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-6):
        raise DataError(f"{where}: system: md.ensemble npt needs a periodic 3-D cell; the structure has "
                        f"pbc {atoms.pbc.tolist()} and cell volume {abs(atoms.cell.volume):.3g} Å³")
    if len(atoms) > 1:
        cell = atoms.cell if atoms.pbc.any() else None
        _, d = get_distances(atoms.positions, cell=cell, pbc=atoms.pbc if cell is not None else None)
        d[np.diag_indices_from(d)] = np.inf
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        if d[i, j] < MIN_DISTANCE:
            raise DataError(f"{where}: system: atoms {min(i, j)} and {max(i, j)} are {d[i, j]:.3g} Å apart "
                            f"(minimum {MIN_DISTANCE} Å); fix the starting structure")


def build_structure(system, where: str = "run input", *, needs_cell: bool = False) -> Atoms:
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
    check_structure(atoms, where, needs_cell=needs_cell)
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
