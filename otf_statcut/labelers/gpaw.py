"""DFT labels with GPAW, on every MPI rank at once.

GPAW is imported only when a :class:`GPAWLabeler` is created; before that import the labeller
sets ``GPAW_MPI_BACKEND=mpi4py`` (unless the user chose a backend) and ``OMP_NUM_THREADS=1``,
and limits the BLAS libraries already loaded to one thread (threaded BLAS under ``mpiexec``
makes GPAW up to 7x slower on few cores), so users never set either.

Under ``mpiexec -n N`` every rank must call :meth:`GPAWLabeler.label` with the same
configuration (GPAW parallelises over GPAW's ``world``): wrap it in
:class:`~otf_statcut.labelers.mpi.MPIDrivenLabeler`, which lets rank 0 drive and the other
ranks serve. Given ``communicator=`` (an mpi4py communicator, e.g. one group of
:class:`~otf_statcut.labelers.groups.LabelGroups`), GPAW runs on that communicator's ranks only.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

from ase import Atoms

from .base import DEFAULT_MAX_FORCE, DEFAULT_RETRIES, Label, Labeler, SCFConvergenceError

__all__ = ["GPAWSettings", "GPAWLabeler"]

SMEARINGS = ("methfessel-paxton", "fermi-dirac", "marzari-vanderbilt")


@dataclass(frozen=True)
class GPAWSettings:
    """Settings of a GPAW single point (defaults: the paper's SI, PW mode for speed).

    Attributes
    ----------
    mode : {"pw", "fd"}
        Plane waves (``ecut``) or finite differences (``h``; the paper used FD, h = 0.18 Å).
    ecut : float
        Plane-wave cut-off, eV (mode "pw").
    h : float
        Grid spacing, Å (mode "fd").
    xc : str
        Exchange-correlation functional (GPAW/libxc name).
    kpt_density : float
        Monkhorst-Pack k-point density, points per Å⁻¹ (ASE convention), used when ``kpts``
        is not given.
    kpts : tuple of 3 int or None
        Explicit Monkhorst-Pack grid; overrides ``kpt_density``.
    gamma : bool
        Gamma-centred k-point grid.
    smearing : {"methfessel-paxton", "fermi-dirac", "marzari-vanderbilt"}
        Occupation smearing.
    width : float
        Smearing width, eV.
    order : int
        Methfessel-Paxton order.
    conv_energy : float
        SCF energy convergence, eV per valence electron.
    conv_density : float
        SCF density convergence (electrons per valence electron).
    conv_forces : float or None
        SCF force convergence, eV/Å (None: not checked; costs extra force evaluations).
    maxiter : int
        SCF iterations before the attempt counts as unconverged.
    spinpol : bool
        Spin-polarised calculation.
    txt : str or None
        GPAW log file (None: no log; "-": stdout of rank 0).
    """

    mode: Literal["pw", "fd"] = "pw"
    ecut: float = 200.0
    h: float = 0.18
    xc: str = "PBE"
    kpt_density: float = 2.0
    kpts: tuple[int, int, int] | None = None
    gamma: bool = False
    smearing: Literal["methfessel-paxton", "fermi-dirac", "marzari-vanderbilt"] = "methfessel-paxton"
    width: float = 0.05
    order: int = 1
    conv_energy: float = 5e-4
    conv_density: float = 1e-4
    conv_forces: float | None = None
    maxiter: int = 333
    spinpol: bool = False
    txt: str | None = None

    def __post_init__(self):
        if self.mode not in ("pw", "fd"):
            raise ValueError(f"mode must be 'pw' or 'fd', got {self.mode!r}")
        if self.smearing not in SMEARINGS:
            raise ValueError(f"smearing must be one of {SMEARINGS}, got {self.smearing!r}")
        for name in ("ecut", "h", "kpt_density", "width", "conv_energy", "conv_density"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {self.maxiter}")
        if self.kpts is not None and (len(self.kpts) != 3 or min(self.kpts) < 1):
            raise ValueError(f"kpts must be three integers >= 1, got {self.kpts!r}")

    def gpaw_parameters(self) -> dict[str, Any]:
        """Keyword arguments for ``gpaw.GPAW``."""
        mode = {"name": "pw", "ecut": self.ecut} if self.mode == "pw" else {"name": "fd"}
        kpts = ({"size": list(self.kpts), "gamma": self.gamma} if self.kpts is not None
                else {"density": self.kpt_density, "gamma": self.gamma})
        occupations = {"name": self.smearing, "width": self.width}
        if self.smearing == "methfessel-paxton":
            occupations["order"] = self.order
        convergence = {"energy": self.conv_energy, "density": self.conv_density}
        if self.conv_forces is not None:
            convergence["forces"] = self.conv_forces
        params = dict(mode=mode, xc=self.xc, kpts=kpts, occupations=occupations,
                      convergence=convergence, maxiter=self.maxiter, spinpol=self.spinpol,
                      txt=self.txt)
        if self.mode == "fd":
            params["h"] = self.h
        return params


def _single_threaded_blas():
    """Limit the BLAS libraries already loaded (NumPy's/SciPy's OpenBLAS) to one thread.

    ``OMP_NUM_THREADS=1`` only reaches libraries loaded after it is set; NumPy is loaded long
    before a labeller is built. Measured on 2 cores with ``mpiexec -n 2``: a 16-atom Li label
    takes 15 s with NumPy's default two BLAS threads per rank, 2 s with one. Returns the
    ``threadpoolctl`` limiter (kept alive by the labeller), or None without threadpoolctl.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # only the environment variable applies then
        return None
    return threadpool_limits(limits=1, user_api="blas")


def _import_gpaw():
    """Import GPAW after fixing its MPI backend and thread count (see module docstring)."""
    os.environ.setdefault("GPAW_MPI_BACKEND", "mpi4py")
    os.environ["OMP_NUM_THREADS"] = "1"
    import gpaw

    if gpaw.GPAW_MPI_BACKEND is None:
        # gpaw's top level can be imported early by ASE's plugin discovery, before the variable
        # was set; its MPI set-up (gpaw.mpi) reads this attribute, so fix it before that.
        gpaw.GPAW_MPI_BACKEND = os.environ["GPAW_MPI_BACKEND"]
    import gpaw.mpi

    return gpaw


def _gpaw_communicator(gpaw, comm: Any):
    """GPAW's communicator object for ``comm`` (None: GPAW's ``world``).

    GPAW calls ``new_communicator``, ``sum``, ``broadcast`` ... on its communicators, so a bare
    mpi4py communicator is wrapped in ``gpaw.mpi4pywrapper.MPI4PYWrapper`` (what GPAW's own
    ``world`` is under ``GPAW_MPI_BACKEND=mpi4py``), with ``world`` as its parent. That is
    local to the communicator's ranks, unlike ``world.new_communicator(ranks)``, which every
    rank of ``world`` must call.
    """
    world = gpaw.mpi.world
    if comm is None:
        return world
    if hasattr(comm, "new_communicator"):  # already a GPAW communicator
        return comm
    from gpaw.mpi4pywrapper import MPI4PYWrapper

    if not isinstance(world, MPI4PYWrapper):
        raise ValueError(
            "GPAW on an mpi4py sub-communicator needs GPAW_MPI_BACKEND=mpi4py (GPAW's MPI backend "
            f"here is {getattr(gpaw, 'GPAW_MPI_BACKEND', None)!r})")
    return MPI4PYWrapper(comm, parent=world)


class GPAWLabeler(Labeler):
    """GPAW single points (energy, forces, stress) with SCF convergence checked.

    Parameters
    ----------
    settings : GPAWSettings or mapping, optional
        The DFT settings (defaults of :class:`GPAWSettings`).
    retries, max_force
        See :class:`~otf_statcut.labelers.base.Labeler`. A retry starts from a fresh calculator.
    communicator : mpi4py communicator, GPAW communicator or None
        The ranks GPAW parallelises over (None: GPAW's ``world``, every rank). An mpi4py
        communicator (e.g. from ``COMM_WORLD.Split``) is wrapped in GPAW's ``MPI4PYWrapper``,
        which needs GPAW's mpi4py backend (the default set here); a GPAW communicator object
        (``gpaw.mpi.world.new_communicator(ranks)``) is used as it is.

    Notes
    -----
    One GPAW calculator is kept between labels, so consecutive MD frames start from the
    previous wave functions. The label energy is GPAW's free energy (consistent with the
    forces), not the energy extrapolated to zero width. An SCF that hits ``maxiter`` raises
    :class:`~otf_statcut.labelers.base.SCFConvergenceError` (after retries).
    """

    name = "gpaw"
    collective = True

    def __init__(self, settings: GPAWSettings | dict | None = None, retries: int = DEFAULT_RETRIES,
                 max_force: float = DEFAULT_MAX_FORCE, communicator: Any = None):
        super().__init__(retries=retries, max_force=max_force)
        if settings is None:
            settings = GPAWSettings()
        elif not isinstance(settings, GPAWSettings):
            settings = GPAWSettings(**settings)
        self.gpaw_settings = settings
        self._gpaw = _import_gpaw()
        self._blas_limit = _single_threaded_blas()
        self.world = _gpaw_communicator(self._gpaw, communicator)
        self.calc = None

    def settings(self) -> dict[str, Any]:
        import gpaw

        out = {"name": self.name, "gpaw_version": gpaw.__version__, "ranks": int(self.world.size)}
        out.update({k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(self.gpaw_settings).items()})
        return out

    def reset(self) -> None:
        self.calc = None

    def _compute(self, atoms: Atoms) -> Label:
        from gpaw import KohnShamConvergenceError

        if self.calc is None:
            self.calc = self._gpaw.GPAW(**self.gpaw_settings.gpaw_parameters(),
                                        communicator=self.world)
        atoms.calc = self.calc
        try:
            energy = atoms.get_potential_energy(force_consistent=True)
            forces = atoms.get_forces()
            stress = atoms.get_stress(voigt=True) if atoms.pbc.all() else None
        except KohnShamConvergenceError as exc:
            self.calc = None  # do not start the next label from unconverged wave functions
            raise SCFConvergenceError(
                f"GPAW SCF not converged within maxiter = {self.gpaw_settings.maxiter}") from exc
        finally:
            atoms.calc = None
        return {"energy": energy, "forces": forces, "stress": stress}

    def close(self) -> None:
        self.calc = None
