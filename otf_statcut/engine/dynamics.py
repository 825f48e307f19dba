"""ASE dynamics for a run: one small table of constructors, and the state a checkpoint keeps.

Every integrator is built with a serial communicator (``ase.parallel.DummyMPI``): under
``mpiexec`` only rank 0 runs the MD, while the other ranks wait for labelling work, so ASE must
not broadcast over ``world`` (it would wait forever for ranks that are not there). Random
numbers come from one ``numpy.random.Generator`` on rank 0, whose state the checkpoint stores.

==================  =====================================================  ==================
``md.ensemble``     ASE class                                              uses
==================  =====================================================  ==================
``langevin``        :class:`ase.md.langevin.Langevin`                      friction, rng
``npt``             :class:`ase.md.nose_hoover_chain.IsotropicMTKNPT`      taut, taup, stress
``velocity_verlet`` :class:`ase.md.verlet.VelocityVerlet`                  --
``bussi``           :class:`ase.md.bussi.Bussi`                            taut, rng
``nose_hoover``     :class:`ase.md.nose_hoover_chain.NoseHooverChainNVT`   taut
==================  =====================================================  ==================
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics
from ase.parallel import DummyMPI

__all__ = ["ENSEMBLE_BUILDERS", "make_dynamics", "dynamics_state", "restore_dynamics_state", "set_velocities"]


def _langevin(atoms, md, rng, comm):
    from ase.md.langevin import Langevin

    return Langevin(atoms, timestep=md.timestep_fs * units.fs, temperature_K=md.temperature_K,
                    friction=md.friction / units.fs, fixcm=False, rng=rng, comm=comm)


def _npt(atoms, md, rng, comm):
    from ase.md.nose_hoover_chain import IsotropicMTKNPT

    return IsotropicMTKNPT(atoms, timestep=md.timestep_fs * units.fs, temperature_K=md.temperature_K,
                           pressure_au=md.pressure_GPa * units.GPa, tdamp=md.taut_fs * units.fs,
                           pdamp=md.taup_fs * units.fs, comm=comm)


def _velocity_verlet(atoms, md, rng, comm):
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=md.timestep_fs * units.fs, comm=comm)


def _bussi(atoms, md, rng, comm):
    from ase.md.bussi import Bussi

    return Bussi(atoms, timestep=md.timestep_fs * units.fs, temperature_K=md.temperature_K,
                 taut=md.taut_fs * units.fs, rng=rng, comm=comm)


def _nose_hoover(atoms, md, rng, comm):
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    return NoseHooverChainNVT(atoms, timestep=md.timestep_fs * units.fs, temperature_K=md.temperature_K,
                              tdamp=md.taut_fs * units.fs, comm=comm)


#: ``md.ensemble`` -> constructor ``(atoms, md_config, rng, comm) -> MolecularDynamics``.
ENSEMBLE_BUILDERS: dict[str, Callable[..., MolecularDynamics]] = {
    "langevin": _langevin,
    "npt": _npt,
    "velocity_verlet": _velocity_verlet,
    "bussi": _bussi,
    "nose_hoover": _nose_hoover,
}

# Internal integrator variables a checkpoint keeps, per ensemble: (owner path, attribute).
_STATE = {
    "npt": (("_thermostat", "_eta"), ("_thermostat", "_p_eta"), ("_barostat", "_xi"), ("_barostat", "_p_xi"),
            ("", "_p_eps")),
    "nose_hoover": (("_thermostat", "_eta"), ("_thermostat", "_p_eta")),
    "bussi": (("", "transferred_energy"),),
}


def make_dynamics(atoms: Atoms, md, rng: np.random.Generator) -> MolecularDynamics:
    """Build the integrator named by ``md.ensemble`` (see the table above) for ``atoms``.

    Parameters
    ----------
    atoms : Atoms
        With a calculator and momenta already set.
    md : MDConfig
        ``ensemble``, ``timestep_fs``, ``temperature_K``, ``pressure_GPa``, ``friction`` (1/fs),
        ``taut_fs``, ``taup_fs``.
    rng : numpy.random.Generator
        Source of the thermostat's random numbers.
    """
    try:
        build = ENSEMBLE_BUILDERS[md.ensemble]
    except KeyError:
        raise ValueError(f"unknown ensemble {md.ensemble!r}; known: {', '.join(ENSEMBLE_BUILDERS)}") from None
    return build(atoms, md, rng, DummyMPI())


def set_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` with zero total momentum (serial)."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng, comm=DummyMPI())
    Stationary(atoms)


def dynamics_state(ensemble: str, dyn: MolecularDynamics) -> dict[str, Any]:
    """The integrator's internal variables worth keeping in a checkpoint (JSON-ready)."""
    out = {}
    for owner, name in _STATE.get(ensemble, ()):
        obj = getattr(dyn, owner) if owner else dyn
        value = getattr(obj, name)
        out[f"{owner}.{name}"] = np.asarray(value).tolist()
    return out


def restore_dynamics_state(ensemble: str, dyn: MolecularDynamics, state: dict[str, Any]) -> None:
    """Put back what :func:`dynamics_state` saved (missing entries are left at their start values).

    For ``npt`` the reference cell of the volume variable is the checkpoint's cell, so the
    volume coordinate restarts at 0 and only its momentum is restored.
    """
    for owner, name in _STATE.get(ensemble, ()):
        key = f"{owner}.{name}"
        if key not in state:
            continue
        obj = getattr(dyn, owner) if owner else dyn
        current = getattr(obj, name)
        value = np.asarray(state[key], dtype=float)
        setattr(obj, name, float(value) if np.ndim(current) == 0 else value.reshape(np.shape(current)))
