"""Labels in parallel over MPI: rank 0 drives, the other ranks label in groups, concurrently.

Under ``mpiexec -n N`` every rank builds the same :class:`LabelGroups`. Rank 0 is the *driver*:
it runs the MD walkers and the MLIP and never labels. Ranks ``1 .. N-1`` are split into
``n_groups`` *label groups* of contiguous ranks (sizes differ by at most one; see
:func:`group_ranks`). Each group has its own communicator (``comm.Split``) and builds its own
labeller on it with ``make(group_comm)``; a collective labeller (GPAW) runs on every rank of its
group, any other labeller (EMT, LAMMPS on ``COMM_SELF`` ...) on the group's first rank (its
*leader*) alone. Different groups label different configurations at the same time::

    groups = LabelGroups(lambda comm: make_labeler("gpaw", settings, comm=comm), COMM_WORLD, 2)
    if groups.is_driver:
        with groups:                              # stop() on exit releases the serving ranks
            futures = [groups.submit(atoms) for atoms in frames]   # from any thread
            labelled = [f.result() for f in futures]               # or LabelingError raised
    else:
        groups.serve()                            # returns after the driver's stop()

The driver side is thread-safe: walker threads call :meth:`LabelGroups.submit`, which copies
the configuration and queues it, and get a :class:`concurrent.futures.Future`. One *dispatcher*
thread on rank 0 makes every MPI call after construction (walker threads only touch a queue and
the futures), so MPI needs ``MPI_THREAD_SERIALIZED``, not ``MPI_THREAD_MULTIPLE``. It sends a
request (numbers, positions, cell, pbc; pickled, point to point) to the leader of the
lowest-numbered free group, keeps requests queued while every group is busy, and polls for
results with non-blocking probes, sleeping :data:`POLL_INTERVAL` between polls when nothing
happened, so it does not take a core from the MLIP. Idle serving ranks poll the same way.

A leader broadcasts each request in its group, every rank of the group calls the labeller
(retry attempts are agreed over the group, as in :mod:`otf_statcut.labelers.mpi`), and the
leader sends back energy, forces, stress and the label's ``label_wall_time``/``label_attempts``,
or the error: its class name and message, which the driver raises again as the same
:class:`~otf_statcut.labelers.base.LabelingError` subclass (``LabelingError`` for any other
class). A group survives a failed label and serves the next request.

With one rank (``comm`` None or of size 1) nothing is split: ``make(None)`` builds the labeller
on rank 0, and one worker thread labels the submitted configurations one at a time, so
:meth:`~LabelGroups.submit` still returns a future.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from . import base
from .base import Labeler, LabelingError, _bare_copy

__all__ = ["LabelGroups", "LabelGroupsError", "group_ranks", "POLL_INTERVAL"]

log = logging.getLogger("otf_statcut.labelers")

#: Seconds the dispatcher and idle serving ranks sleep between polls.
POLL_INTERVAL = 0.0015
#: Seconds the dispatcher blocks on the submit queue when no label is in flight.
_IDLE_WAIT = 0.05

# message tags (driver <-> group leaders, on the LabelGroups communicator)
_TAG_REQUEST, _TAG_RESULT, _TAG_READY = 7101, 7102, 7103
# group header commands (leader -> rest of its group)
_STOP, _LABEL = 0, 1

#: Error classes a group's failure is raised again as, by name; any other: LabelingError.
_ERRORS = {cls.__name__: cls for cls in (base.LabelingError, base.UnphysicalLabelError,
                                         base.SCFConvergenceError, base.LabelTimeout)}


class LabelGroupsError(RuntimeError):
    """The label groups cannot work: a group could not build its labeller, or MPI failed."""


def group_ranks(size: int, n_groups: int) -> list[list[int]]:
    """Ranks of each label group: ``1 .. size-1`` in ``n_groups`` contiguous blocks.

    The first ``(size - 1) % n_groups`` groups have one rank more than the others.

    >>> group_ranks(6, 2)
    [[1, 2, 3], [4, 5]]

    Raises
    ------
    ValueError
        When there are fewer serving ranks (``size - 1``) than groups, or ``n_groups < 1``.
    """
    size, n_groups = int(size), int(n_groups)
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    serving = size - 1
    if n_groups > serving:
        raise ValueError(
            f"n_groups = {n_groups} label groups need at least {n_groups + 1} MPI ranks (rank 0 "
            f"drives and does not label), but there are {size}; run under mpiexec -n "
            f"{n_groups + 1} or more, or ask for at most {max(serving, 0)} group(s)")
    base_size, extra = divmod(serving, n_groups)
    out, start = [], 1
    for g in range(n_groups):
        n = base_size + (1 if g < extra else 0)
        out.append(list(range(start, start + n)))
        start += n
    return out


class LabelGroups:
    """Label configurations on groups of MPI ranks, several at once (see the module docstring).

    Parameters
    ----------
    make : callable(comm or None) -> Labeler
        Builds the labeller of a group from the group's mpi4py communicator (called on every
        rank of the group), or from None with one rank. E.g.
        ``lambda comm: make_labeler("gpaw", settings, comm=comm)``.
    comm : mpi4py communicator or None
        The ranks taking part (every rank of it constructs this object). None or one rank:
        label on rank 0 in a worker thread.
    n_groups : int
        Number of label groups, at most ``comm.size - 1`` (ignored with one rank).
    poll_interval : float
        Seconds between polls of an idle serving rank and of the dispatcher.

    Attributes
    ----------
    is_driver : bool
        True on rank 0, which submits; the other ranks call :meth:`serve`.
    group : int or None
        This rank's group (None on the driver).
    ranks : list of list of int
        The ranks of each group, on ``comm``.
    labeler : Labeler or None
        This rank's labeller (None on the driver under MPI).

    Raises
    ------
    ValueError
        ``n_groups`` larger than the number of serving ranks (on every rank).
    LabelGroupsError
        On the driver: a group failed to build its labeller (every rank is released first).
    """

    def __init__(self, make: Callable[[Any], Labeler], comm: Any = None, n_groups: int = 1, *,
                 poll_interval: float = POLL_INTERVAL):
        self.poll_interval = float(poll_interval)
        self.comm = comm
        self.rank = 0 if comm is None else int(comm.Get_rank())
        self.size = 1 if comm is None else int(comm.Get_size())
        self._stopped = False
        self._lock = threading.Lock()
        self._n_busy = 0
        self._n_done = 0
        self.labeler: Labeler | None = None
        self.group: int | None = None
        self.group_comm = None
        self._settings: list[dict] = []
        self._names: list[str] = []
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._broken = False
        if self.size == 1:
            self.ranks = [[0]]
            self.is_driver = True
            self.labeler = make(None)
            self._settings = [self.labeler.settings()]
            self._names = [self.labeler.name]
            self._worker_queue: queue.Queue = queue.Queue()
            self._thread = threading.Thread(target=self._work_locally, name="label-worker", daemon=True)
            self._thread.start()
            return
        from mpi4py import MPI

        self._MPI = MPI
        self.ranks = group_ranks(self.size, n_groups)
        self.is_driver = self.rank == 0
        color = MPI.UNDEFINED
        for g, members in enumerate(self.ranks):
            if self.rank in members:
                self.group, color = g, g
        # collective over comm: rank 0 joins with UNDEFINED and gets COMM_NULL
        group_comm = comm.Split(color, self.rank)
        if self.is_driver:
            if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
                log.warning("MPI provides thread level %d < MPI_THREAD_SERIALIZED; LabelGroups' "
                            "dispatcher thread makes MPI calls", MPI.Query_thread())
            self._start_driver()
        else:
            self.group_comm = group_comm
            self._build(make)

    # --- properties ---------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.ranks)

    @property
    def n_busy(self) -> int:
        """Groups labelling now (driver)."""
        return self._n_busy

    @property
    def n_done(self) -> int:
        """Labels finished so far, failed ones included (driver)."""
        return self._n_done

    @property
    def leaders(self) -> list[int]:
        return [members[0] for members in self.ranks]

    @property
    def name(self) -> str:
        return self._names[0] if self._names else "labeler"

    def settings(self) -> dict[str, Any]:
        """The labeller's settings as group 0 reports them (on the driver); see :meth:`group_settings`."""
        if self._settings:
            return dict(self._settings[0])
        return self.labeler.settings() if self.labeler is not None else {}

    def group_settings(self) -> list[dict[str, Any]]:
        """Each group's labeller settings (driver), e.g. GPAW's ``ranks`` per group."""
        return [dict(s) for s in self._settings]

    # --- driver -------------------------------------------------------------------------
    def submit(self, atoms: Atoms) -> Future:
        """Queue ``atoms`` for a label (driver, any thread); the configuration is copied now.

        Returns
        -------
        concurrent.futures.Future
            ``result(timeout=None)`` gives the labelled copy (a SinglePointCalculator with
            energy, free_energy, forces, [stress]; ``info["label_wall_time"]``,
            ``info["label_attempts"]``, ``info["label_group"]``) or raises the
            :class:`~otf_statcut.labelers.base.LabelingError` the group raised.
            A label still queued when :meth:`stop` is called is cancelled.
        """
        if not self.is_driver:
            raise RuntimeError("LabelGroups.submit is called on rank 0; other ranks call serve()")
        future: Future = Future()
        frame = _bare_copy(atoms)
        with self._lock:
            if self._stopped:
                raise RuntimeError("LabelGroups.submit after stop()")
            if self._failure is not None:
                raise LabelGroupsError(f"the label dispatcher failed: {self._failure!r}")
            (self._worker_queue if self.size == 1 else self._queue).put((future, frame))
        return future

    def label(self, atoms: Atoms, timeout: float | None = None) -> Atoms:
        """Submit and wait (driver): the :class:`~otf_statcut.labelers.base.Labeler` contract.

        Past ``timeout`` seconds raises :class:`~otf_statcut.labelers.base.LabelTimeout`; a
        label already running goes on in its group, which is busy until it ends (the result
        is dropped), a queued one is cancelled.
        """
        future = self.submit(atoms)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise base.LabelTimeout(f"{self.name} label waited more than {timeout:g} s") from None

    __call__ = label

    def stop(self, timeout: float | None = None) -> None:
        """Release the serving ranks (driver; idempotent; a no-op on serving ranks).

        Labels still queued are cancelled; labels in flight finish and their futures are set.
        Returns when every serving rank was told to stop and no label is in flight, or after
        ``timeout`` seconds (a group that hangs keeps its label; the dispatcher thread is a
        daemon).
        """
        if not self.is_driver:
            return
        with self._lock:
            if self._stopped:
                first = False
            else:
                self._stopped, first = True, True
        if first:
            if self.size == 1:
                while True:  # queued, not started: cancelled
                    try:
                        item = self._worker_queue.get_nowait()
                    except queue.Empty:
                        break
                    item[0].cancel()
                self._worker_queue.put(None)
            else:
                self._queue.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        """:meth:`stop` (driver), then close this rank's labeller."""
        self.stop()
        if self.labeler is not None:
            self.labeler.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _work_locally(self) -> None:
        """One rank: label submitted configurations one at a time."""
        while True:
            item = self._worker_queue.get()
            if item is None:
                break
            future, frame = item
            if not future.set_running_or_notify_cancel():
                continue
            self._n_busy = 1
            try:
                labelled = self.labeler.label(frame)
                labelled.info["label_group"] = 0
                future.set_result(labelled)
            except BaseException as exc:  # the future carries it to the caller
                future.set_exception(exc)
            finally:
                self._n_busy = 0
                self._n_done += 1
        # stopped: cancel what was still queued
        while True:
            try:
                item = self._worker_queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()

    def _start_driver(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, args=(ready,), name="label-dispatcher",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            self._thread.join()
            self._stopped = True
            raise LabelGroupsError(str(self._failure)) from self._failure
        ref = weakref.ref(self)
        # a driver that forgets stop() must not leave the serving ranks waiting forever
        atexit.register(lambda: ref() is not None and ref().stop(timeout=30.0))

    def _dispatch(self, ready: threading.Event) -> None:
        """The dispatcher thread: every MPI call of the driver after the split."""
        comm, MPI = self.comm, self._MPI
        leaders = self.leaders
        try:
            errors = self._handshake()
        except BaseException as exc:  # pragma: no cover - MPI failure
            self._failure = exc
            ready.set()
            return
        if errors:
            for leader in leaders:
                comm.send((_STOP,), dest=leader, tag=_TAG_REQUEST)
            self._failure = LabelGroupsError("could not build the labeller: " + "; ".join(errors))
            ready.set()
            return
        ready.set()
        pending: collections.deque = collections.deque()
        busy: dict[int, tuple[int, Future, Atoms]] = {}
        job_ids = itertools.count()
        stopping = False
        try:
            while True:
                active = False
                # 1. new submissions (block briefly only when nothing is in flight)
                wait = not busy and not pending and not stopping
                while True:
                    try:
                        item = self._queue.get(timeout=_IDLE_WAIT) if wait else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    wait = False
                    active = True
                    if item is None:
                        stopping = True
                        while pending:  # queued, never sent: cancelled
                            pending.popleft()[0].cancel()
                        for leader in leaders:  # a busy leader reads it after its label
                            comm.send((_STOP,), dest=leader, tag=_TAG_REQUEST)
                    elif stopping:
                        item[0].cancel()
                    else:
                        pending.append(item)
                # 2. results
                for g in list(busy):
                    if comm.Iprobe(source=leaders[g], tag=_TAG_RESULT):
                        job, payload = comm.recv(source=leaders[g], tag=_TAG_RESULT)
                        job_id, future, frame = busy.pop(g)
                        self._n_busy = len(busy)
                        self._n_done += 1
                        active = True
                        if job != job_id:  # pragma: no cover - protocol error
                            raise LabelGroupsError(f"group {g} answered job {job}, expected {job_id}")
                        _resolve(future, frame, payload, g)
                # 3. send queued requests to free groups, lowest group first
                while pending and len(busy) < len(leaders) and not stopping:
                    future, frame = pending.popleft()
                    if not future.set_running_or_notify_cancel():
                        continue
                    g = min(set(range(len(leaders))) - set(busy))
                    job_id = next(job_ids)
                    comm.send((_LABEL, job_id, _pack(frame)), dest=leaders[g], tag=_TAG_REQUEST)
                    busy[g] = (job_id, future, frame)
                    self._n_busy = len(busy)
                    active = True
                if stopping and not busy:
                    return
                if busy and not active:
                    time.sleep(self.poll_interval)
        except BaseException as exc:  # pragma: no cover - MPI failure: fail every waiting future
            log.exception("label dispatcher failed")
            self._failure = exc
            for _, future, _ in busy.values():
                if not future.done():
                    future.set_exception(LabelGroupsError(f"label dispatcher failed: {exc!r}"))
            for future, _ in pending:
                future.cancel()

    def _handshake(self) -> list[str]:
        """Receive each group's ready message (settings or build error); return the errors."""
        comm = self.comm
        errors, self._settings, self._names = [], [None] * self.n_groups, [None] * self.n_groups
        waiting = set(range(self.n_groups))
        while waiting:
            got = False
            for g in sorted(waiting):
                if comm.Iprobe(source=self.leaders[g], tag=_TAG_READY):
                    msg = comm.recv(source=self.leaders[g], tag=_TAG_READY)
                    waiting.discard(g)
                    got = True
                    if msg["ok"]:
                        self._settings[g], self._names[g] = msg["settings"], msg["name"]
                    else:
                        errors.append(f"group {g} (ranks {self.ranks[g]}): {msg['error']}")
            if not got:
                time.sleep(self.poll_interval)
        return errors

    # --- serving ranks ------------------------------------------------------------------
    def _build(self, make) -> None:
        """Build this group's labeller; the group agrees on success; the leader reports it."""
        MPI, gcomm = self._MPI, self.group_comm
        error = None
        try:
            self.labeler = make(gcomm)
            if not isinstance(self.labeler, Labeler):
                raise TypeError(f"make(comm) returned {self.labeler!r}, not a Labeler")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.labeler = None
        errors = [e for e in gcomm.allgather(error) if e is not None]
        self._broken = bool(errors)
        labeler = self.labeler
        if not self._broken and labeler.collective and gcomm.Get_size() > 1:
            labeler._agree = lambda ok: bool(gcomm.allreduce(bool(ok), op=MPI.LAND))
        if gcomm.Get_rank() == 0:
            if self._broken:
                msg = {"ok": False, "error": errors[0]}
            else:
                msg = {"ok": True, "name": labeler.name, "settings": labeler.settings()}
            self.comm.send(msg, dest=0, tag=_TAG_READY)

    def serve(self) -> int:
        """Label what the driver sends until it calls :meth:`stop` (ranks other than 0).

        Returns
        -------
        int
            Labels this rank took part in (failed ones included).
        """
        if self.is_driver:
            raise RuntimeError("serve() is for ranks other than 0")
        gcomm = self.group_comm
        together = (not self._broken and self.labeler.collective and gcomm.Get_size() > 1)
        served = 0
        if gcomm.Get_rank() != 0:  # follow the leader
            while self._group_header() == _LABEL:
                self._label(_unpack(gcomm.bcast(None, root=0)))
                served += 1
            return served
        while True:
            while not self.comm.Iprobe(source=0, tag=_TAG_REQUEST):
                time.sleep(self.poll_interval)
            msg = self.comm.recv(source=0, tag=_TAG_REQUEST)
            if msg[0] == _STOP:
                if gcomm.Get_size() > 1:
                    self._group_header(_STOP)
                return served
            _, job_id, data = msg
            if together:
                self._group_header(_LABEL)
                gcomm.bcast(data, root=0)
            payload = self._label(_unpack(data))
            self.comm.send((job_id, payload), dest=0, tag=_TAG_RESULT)
            served += 1

    def _label(self, atoms: Atoms) -> dict:
        """Label on this rank; a plain message for the driver: the result or the error."""
        if self._broken:
            return {"ok": False, "type": "LabelGroupsError",
                    "message": "this label group could not build its labeller", "attempts": []}
        try:
            labelled = self.labeler.label(atoms)
        except Exception as exc:  # reported to the driver; the group serves on
            return {"ok": False, "type": type(exc).__name__, "message": str(exc),
                    "attempts": list(getattr(exc, "attempts", []))}
        calc = labelled.calc
        stress = calc.results.get("stress")
        return {"ok": True, "energy": float(calc.results["energy"]),
                "forces": np.asarray(calc.results["forces"], dtype=float),
                "stress": None if stress is None else np.asarray(stress, dtype=float),
                "label_wall_time": float(labelled.info["label_wall_time"]),
                "label_attempts": int(labelled.info["label_attempts"])}

    def _group_header(self, command: int | None = None) -> int:
        """Leader: broadcast ``command`` in the group; others: poll for it (sleeping)."""
        buf = np.array([-1 if command is None else command], dtype=np.int64)
        request = self.group_comm.Ibcast(buf, root=0)
        while not request.Test():
            time.sleep(self.poll_interval)
        return int(buf[0])


def _resolve(future: Future, frame: Atoms, payload: dict, group: int) -> None:
    """Set the future from a group's answer: the labelled frame, or the error raised again."""
    if payload["ok"]:
        frame.calc = SinglePointCalculator(frame, energy=payload["energy"], free_energy=payload["energy"],
                                           forces=payload["forces"], stress=payload["stress"])
        frame.info["label_wall_time"] = payload["label_wall_time"]
        frame.info["label_attempts"] = payload["label_attempts"]
        frame.info["label_group"] = group
        future.set_result(frame)
        return
    cls = _ERRORS.get(payload["type"], LabelingError)
    message = payload["message"] if cls.__name__ == payload["type"] else (
        f"{payload['type']}: {payload['message']}")
    error = cls(message, attempts=payload.get("attempts"))
    error.group = group
    future.set_exception(error)


def _pack(atoms: Atoms) -> dict:
    return {"numbers": np.asarray(atoms.numbers), "positions": np.asarray(atoms.positions, dtype=float),
            "cell": np.asarray(atoms.cell[:], dtype=float), "pbc": np.asarray(atoms.pbc, dtype=bool)}


def _unpack(data: dict) -> Atoms:
    return Atoms(numbers=data["numbers"], positions=data["positions"], cell=data["cell"], pbc=data["pbc"])
