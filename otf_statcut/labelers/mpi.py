"""Rank 0 drives, every other rank serves: collective labellers (GPAW) under ``mpiexec``.

Under ``mpiexec -n N`` every rank runs the same program. Rank 0 runs the MD and the MLIP; when
it needs a label it broadcasts the configuration, and all ranks call the labeller together.
The other ranks sit in :meth:`MPIDrivenLabeler.serve` until rank 0 calls
:meth:`MPIDrivenLabeler.stop`. While waiting they poll a non-blocking broadcast and sleep, so
an idle rank does not burn a core that rank 0's MLIP could use.

Every attempt of a label ends with an agreement (logical AND over the ranks), so the retry
loop stays in step on all ranks even if one rank alone saw a failure.

With one rank, or with a labeller that is not collective (it runs on rank 0 only, e.g. LAMMPS
on ``COMM_SELF``), this wrapper just calls the labeller.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ase import Atoms

from .base import Labeler, LabelingError

__all__ = ["MPIDrivenLabeler", "world_comm"]

_STOP, _LABEL = 0, 1
#: Seconds an idle serving rank sleeps between polls.
POLL_INTERVAL = 0.002


def world_comm():
    """mpi4py's ``COMM_WORLD`` (imports mpi4py, which initialises MPI)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


class MPIDrivenLabeler(Labeler):
    """Wrap a labeller so that rank 0 drives it and the other ranks follow.

    Parameters
    ----------
    inner : Labeler
        The labeller; constructed on every rank with the same settings.
    comm : mpi4py communicator or None
        Defaults to ``COMM_WORLD`` when ``inner.collective`` is true, otherwise no communication.
        A labeller that is not collective, given a communicator, runs on rank 0 alone while the
        other ranks wait in :meth:`serve` for :meth:`stop`.

    Notes
    -----
    On rank 0 use :meth:`label` as any labeller, and call :meth:`stop` once at the end (also
    after an exception; the object is a context manager that does it). On other ranks call
    :meth:`serve`, which returns after :meth:`stop`.
    """

    def __init__(self, inner: Labeler, comm: Any = None):
        super().__init__(retries=inner.retries, max_force=inner.max_force)
        self.inner = inner
        self.name = inner.name
        self.collective = inner.collective
        if comm is None and inner.collective:
            comm = world_comm()
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._stopped = False
        if self._parallel and self.collective:
            from mpi4py import MPI

            inner._agree = lambda ok: bool(comm.allreduce(bool(ok), op=MPI.LAND))

    @property
    def _parallel(self) -> bool:
        return self.comm is not None and self.size > 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    def label(self, atoms: Atoms) -> Atoms:
        """Label on all ranks (call on rank 0 only)."""
        if not self.is_root:
            raise RuntimeError("MPIDrivenLabeler.label is called on rank 0; other ranks call serve()")
        if self._parallel and self.collective:
            self._send_header(_LABEL)
            self.comm.bcast(_pack(atoms), root=0)
        self.n_calls += 1
        return self.inner.label(atoms)

    def serve(self) -> int:
        """Follow rank 0's commands until :meth:`stop`; returns the number of labels served."""
        if self.is_root:
            raise RuntimeError("serve() is for ranks other than 0")
        served = 0
        while True:
            command = self._receive_header()
            if command == _STOP:
                return served
            atoms = _unpack(self.comm.bcast(None, root=0))
            try:
                self.inner.label(atoms)
            except LabelingError:  # rank 0 raises the same error and handles it
                pass
            served += 1

    def stop(self) -> None:
        """Release the serving ranks (rank 0; idempotent)."""
        if self.is_root and self._parallel and not self._stopped:
            self._send_header(_STOP)
        self._stopped = True

    def close(self) -> None:
        self.stop()
        self.inner.close()

    # --- messages ----------------------------------------------------------------------
    def _send_header(self, command: int) -> None:
        buf = np.array([command], dtype=np.int64)
        self.comm.Ibcast(buf, root=0).Wait()

    def _receive_header(self) -> int:
        buf = np.zeros(1, dtype=np.int64)
        request = self.comm.Ibcast(buf, root=0)
        while not request.Test():
            time.sleep(POLL_INTERVAL)
        return int(buf[0])


def _pack(atoms: Atoms) -> dict:
    return {"numbers": np.asarray(atoms.numbers), "positions": np.asarray(atoms.positions),
            "cell": np.asarray(atoms.cell[:]), "pbc": np.asarray(atoms.pbc)}


def _unpack(data: dict) -> Atoms:
    return Atoms(numbers=data["numbers"], positions=data["positions"], cell=data["cell"],
                 pbc=data["pbc"])
