"""A lock of the program's own on a run's output folder: one writer per ``output.folder``.

HDF5's own file locking is often switched off on cluster file systems (``HDF5_USE_FILE_LOCKING=FALSE``
on NFS and Lustre), and then two runs started on the same folder both open ``run.h5`` for writing
and corrupt it. :class:`RunLock` does not rely on ``flock``/``fcntl`` locks at all (these are the
ones such file systems lack); it relies only on operations that are atomic on every POSIX file
system, NFS included: creating a hard link (``link(2)`` fails with ``EEXIST`` when the name is
taken), exclusive creation (``O_CREAT | O_EXCL``) and ``rename(2)``.

Design
------
Taking the lock
    The record (JSON: pid, host, start time, the pid's start time from ``/proc/<pid>/stat``,
    user, command line, and a random token of the lock object) is written to a temporary file in
    the same folder, flushed with ``fsync``, and then hard-linked to ``run.lock``. The lock file
    therefore appears with its whole content at once: a reader never sees a half-written lock
    file as valid. (On NFS a lost reply can make ``link`` report an error although it worked; the
    link count of the temporary file tells.) Where hard links are not supported the lock file is
    created with ``O_CREAT | O_EXCL`` and then written and flushed; readers wait briefly for such
    a file, and a lock file that is empty or unreadable :data:`PARTIAL_GRACE_S` seconds after its
    last change counts as stale.
Heartbeat
    While the lock is held, a daemon thread sets the lock file's modification time every
    ``heartbeat_s`` seconds. It stops on :meth:`RunLock.release`, and also (with an error in the
    log) if the lock file was removed or replaced under it: it never touches someone else's lock.
Stale locks
    A lock is stale when its holder is gone. On the same machine (same host name, and the same
    boot id and pid namespace when both are known) the record's pid is checked directly: stale if
    no such process exists, if it is a zombie, or if its start time differs from the recorded one
    (the pid now belongs to another process). A process that exists but belongs to another user
    (``PermissionError``) is alive. For a holder on another host the pid means nothing here, so
    the heartbeat decides: stale once the lock file has not been touched for ``stale_after_s``
    seconds. Ages are measured against the file system's clock (the modification time of a file
    this process has just written), so a clock skew between the compute nodes does not matter.
Breaking a stale lock
    The process that finds a stale lock first takes a short-lived guard file (``run.lock.break``,
    exclusive creation), renames the lock file aside to a unique name, checks that what it moved
    is the very record it judged stale (same token, or for an unreadable file the same inode,
    size and modification time), and removes it; if it moved something else (a new lock taken in
    the meantime), it links it back. It then retries the exclusive creation like everyone else.
    Several processes breaking the same stale lock at once therefore cannot both win: exactly one
    link succeeds, and the others then see a live lock. A warning names the stale holder.
Several writers in one process
    Each :class:`RunLock` object has its own token. Acquiring again with the same object is a
    no-op; a second object on the same folder sees a live lock (its own pid, alive) and is
    refused, as a second writer must be.
Releasing
    :meth:`RunLock.release` removes the lock file only if it still holds this object's token,
    using the same rename-aside-and-check as above: it never removes someone else's lock. A
    process forked from the holder does not release its parent's lock. Locks still held at
    interpreter exit are released by an :mod:`atexit` hook; a process killed outright leaves its
    lock file behind, and the next run finds it stale.

Only the standard library is used, so the CLI can read a lock (:func:`read_lock`) cheaply.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import errno
import functools
import json
import logging
import os
import random
import socket
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import UserError

log = logging.getLogger("otf_statcut.engine")

#: Default name of the lock file inside the output folder.
LOCK_NAME = "run.lock"
#: An empty, partial or unreadable lock file is stale this many seconds after its last change.
PARTIAL_GRACE_S = 5.0
#: How long :meth:`RunLock.acquire` waits for a young unreadable lock file to become readable.
PARTIAL_WAIT_S = 1.0
#: A guard file (taken while a stale lock is broken) older than this was left by a crashed process.
GUARD_STALE_S = 10.0
#: Attempts of :meth:`RunLock.acquire` before it gives up on a lock file that keeps changing.
MAX_ATTEMPTS = 1000
#: Length at which the recorded command line is cut.
COMMAND_CHARS = 200
#: Largest lock file read (a lock record is a few hundred bytes).
MAX_RECORD_BYTES = 65536

_PROGRAM = "otf-statcut"


class RunLockedError(UserError):
    """Another live writer holds the output folder.

    Attributes
    ----------
    path : pathlib.Path
        The lock file.
    holder : dict or None
        The holder's record as read from the lock file (``None`` when it could not be read).
    """

    def __init__(self, message: str, *, path: Path, holder: dict | None = None):
        super().__init__(message)
        self.path = path
        self.holder = holder


# --------------------------------------------------------------------------------------------
# Facts about processes and this machine
# --------------------------------------------------------------------------------------------


def _utc_iso(seconds: float | None = None) -> str:
    """UTC time as ISO 8601 to the second, e.g. ``2026-11-30T09:00:00+00:00``."""
    when = _dt.datetime.now(_dt.timezone.utc) if seconds is None else \
        _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
    return when.isoformat(timespec="seconds")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot, field 22) of ``pid`` from ``/proc``.

    ``None`` where ``/proc/<pid>/stat`` cannot be read (no such process, or no ``/proc``).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
    fields = data[data.rfind(b")") + 1:].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        return None


def _proc_start(pid: int) -> int | None:
    found = _proc_stat(pid)
    return None if found is None else found[1]


@functools.cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


@functools.cache
def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no login name, no passwd entry (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def _command_line() -> str:
    text = " ".join(sys.argv) if sys.argv else sys.executable
    return text if len(text) <= COMMAND_CHARS else text[:COMMAND_CHARS - 3] + "..."


def _same_machine(record: dict) -> bool:
    """Whether the record's pid can be checked here (same host, boot and pid namespace)."""
    if record.get("host") != socket.gethostname():
        return False
    for key, mine in (("boot_id", _boot_id()), ("pid_ns", _pid_namespace())):
        theirs = record.get(key)
        if theirs is not None and mine is not None and theirs != mine:
            return False
    return True


def _process_alive(pid: int, recorded_start: int | None) -> tuple[bool, str]:
    """Whether ``pid`` is the live process that wrote the record, with the reason in words."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"process {pid} is no longer running"
    except PermissionError:
        pass  # it exists and belongs to another user: alive
    except OSError as exc:  # cannot tell: count it as alive, never break a lock on a doubt
        return True, f"process {pid} could not be checked ({exc.strerror})"
    found = _proc_stat(pid)
    if found is not None:
        state, start = found
        if state in ("Z", "X"):
            return False, f"process {pid} has exited (zombie)"
        if recorded_start is not None and start != recorded_start:
            return False, (f"pid {pid} now belongs to another process (start time {start}, "
                           f"recorded {recorded_start})")
    return True, f"process {pid} is running"


# --------------------------------------------------------------------------------------------
# Reading lock files
# --------------------------------------------------------------------------------------------


class _Seen:
    """What a read of a lock (or guard) file found."""

    __slots__ = ("record", "error", "ident", "mtime")

    def __init__(self, record: dict | None, error: str, ident: tuple, mtime: float):
        self.record = record  # the valid record, or None
        self.error = error  # why the record is not valid ("" when it is)
        self.ident = ident  # what identifies this very file: its token, else inode/size/mtime
        self.mtime = mtime


def _parse(data: bytes) -> tuple[dict | None, str]:
    if not data:
        return None, "empty file"
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "not complete JSON"
    if not isinstance(record, dict):
        return None, "not a lock record"
    pid, host, token = record.get("pid"), record.get("host"), record.get("token")
    if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0):
        return None, "no valid pid"
    if not (isinstance(host, str) and host and isinstance(token, str) and token):
        return None, "no host or token"
    start = record.get("proc_start")
    if start is not None and not (isinstance(start, int) and not isinstance(start, bool)):
        record["proc_start"] = None
    return record, ""


def _read(path: Path) -> _Seen | None:
    """Read a lock file; ``None`` when there is none. Raises ``OSError`` when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        chunks, size = [], 0
        while size <= MAX_RECORD_BYTES:
            chunk = os.read(fd, MAX_RECORD_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    record, error = (None, "too large for a lock record") if size > MAX_RECORD_BYTES else _parse(data)
    token = None
    if record is not None:
        token = record["token"]
    elif data:  # a guard file holds only a token
        try:
            loose = json.loads(data.decode("utf-8"))
            token = loose.get("token") if isinstance(loose, dict) else None
        except (UnicodeDecodeError, ValueError):
            pass
    ident = ("token", token) if isinstance(token, str) and token else \
        ("file", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return _Seen(record, error, ident, st.st_mtime)


def _judge(seen: _Seen, now: float, stale_after_s: float) -> tuple[str, str]:
    """``("live" | "stale" | "partial", reason)`` for a lock file read at file-system time ``now``."""
    age = max(0.0, now - seen.mtime)
    if seen.record is None:
        if age > PARTIAL_GRACE_S:
            return "stale", f"unreadable lock file ({seen.error}), last changed {age:.0f} s ago"
        return "partial", f"{seen.error}, last changed {age:.1f} s ago"
    record = seen.record
    if _same_machine(record):
        alive, reason = _process_alive(record["pid"], record.get("proc_start"))
        return ("live" if alive else "stale"), reason
    if age > stale_after_s:
        return "stale", (f"no heartbeat for {age:.0f} s from host {record['host']} "
                         f"(stale after {stale_after_s:g} s)")
    return "live", f"heartbeat {age:.0f} s ago from host {record['host']}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _describe(record: dict, age: float) -> str:
    """``pid 1234 on host node7, started ..., heartbeat 12 s ago`` for messages."""
    return (f"pid {record['pid']} on host {_one_line(record['host'])}, "
            f"started {_one_line(record.get('started', '?'))}, heartbeat {max(0.0, age):.0f} s ago")


def read_lock(folder: str | os.PathLike, name: str = LOCK_NAME, *,
              stale_after_s: float = 300.0) -> dict | None:
    """The lock record of an output folder, for reports (e.g. by the CLI); ``None`` when unlocked.

    Parameters
    ----------
    folder : str or path-like
        The run's output folder.
    name : str, optional
        File name of the lock inside ``folder``.
    stale_after_s : float, optional
        Heartbeat age after which a holder on another host counts as gone.

    Returns
    -------
    dict or None
        ``None`` when there is no lock file. Otherwise the record's fields (``pid``, ``host``,
        ``started``, ``proc_start``, ``user``, ``command``, ``token``, ...; absent when the file
        is unreadable) plus ``path`` (str), ``valid`` (bool), ``error`` (why it is not valid, or
        ``""``), ``heartbeat`` (UTC ISO time of the last heartbeat), ``heartbeat_age_s`` (float),
        ``state`` (``"live"``, ``"stale"``, or ``"partial"`` for a young unreadable file),
        ``stale`` (bool) and ``reason`` (the verdict in words).
    """
    path = Path(folder) / name
    try:
        seen = _read(path)
    except OSError as exc:
        return {"path": str(path), "valid": False, "error": f"cannot read: {exc.strerror}",
                "state": "live", "stale": False, "reason": "unreadable, counted as held"}
    if seen is None:
        return None
    now = time.time()
    state, reason = _judge(seen, now, stale_after_s)
    info = dict(seen.record) if seen.record is not None else {}
    info.update(path=str(path), valid=seen.record is not None, error=seen.error,
                heartbeat=_utc_iso(seen.mtime), heartbeat_age_s=max(0.0, now - seen.mtime),
                state=state, stale=state == "stale", reason=reason)
    return info


# --------------------------------------------------------------------------------------------
# Removing a file only if it is the one we mean
# --------------------------------------------------------------------------------------------


def _remove_if_same(path: Path, ident: tuple) -> bool:
    """Remove ``path`` only if it is the file identified by ``ident``; ``True`` if removed.

    The file is first renamed aside (atomic: of two processes only one moves a given file), then
    checked; a file that turns out to be another one is linked back into place.
    """
    try:
        current = _read(path)
    except OSError:
        current = None
    if current is None or current.ident != ident:
        return False
    aside = path.with_name(f".{path.name}.aside.{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        try:
            seen = _read(aside)
        except OSError:
            seen = None
        if seen is not None and seen.ident == ident:
            return True
        try:
            os.link(aside, path)  # fails, rather than overwrite, if the name was taken meanwhile
        except FileExistsError:
            log.error("%s was replaced while being checked; the file moved aside is lost", path)
        except OSError:  # no hard links here: put it back unless the name was taken meanwhile
            if not os.path.lexists(path):
                os.rename(aside, path)
        return False
    finally:
        try:
            os.unlink(aside)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------

#: Locks held by this process, released at interpreter exit.
_HELD: set[RunLock] = set()


@atexit.register
def release_all() -> None:
    """Release every lock this process holds (at interpreter exit, and before ``os._exit``)."""
    for lock in list(_HELD):
        try:
            lock.release()
        except Exception:
            pass


def _heartbeat(path: Path, ident: tuple[int, int], period: float, stop: threading.Event) -> None:
    """Touch ``path`` every ``period`` seconds until ``stop`` is set or the file is not ours."""
    while not stop.wait(period):
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) != ident:
                raise FileNotFoundError
            os.utime(path)
        except FileNotFoundError:
            log.error("the run lock %s was removed or replaced by another process; "
                      "this run no longer holds its output folder", path)
            return
        except OSError as exc:  # a passing file-system error: try again next time
            log.warning("cannot update the heartbeat of the run lock %s: %s", path, exc.strerror)


class RunLock:
    """Exclusive lock of one run on its output folder, independent of HDF5 file locking.

    Parameters
    ----------
    folder : str or path-like
        The output folder; it must exist and be writable.
    name : str, optional
        File name of the lock inside ``folder``.
    heartbeat_s : float, optional
        Seconds between two touches of the lock file while it is held.
    stale_after_s : float, optional
        A lock held from another host whose heartbeat is older than this counts as abandoned.
        Must exceed ``heartbeat_s`` (by a good margin: file-system caches delay what other nodes
        see).

    Notes
    -----
    Use as a context manager (``with RunLock(folder): ...``) or call :meth:`acquire` and
    :meth:`release`. Both are idempotent; the lock is not counted, so a nested ``with`` on the
    same object releases it at the inner exit. See the module docstring for the design.

    Examples
    --------
    >>> with RunLock(output_folder) as lock:   # doctest: +SKIP
    ...     run()
    """

    def __init__(self, folder: str | os.PathLike, *, name: str = LOCK_NAME, heartbeat_s: float = 30.0,
                 stale_after_s: float = 300.0):
        if not name or os.sep in name or name in (".", ".."):
            raise UserError(f"invalid run lock file name {name!r}: expected a plain file name")
        if not heartbeat_s > 0:
            raise UserError(f"run lock heartbeat_s must be > 0, got {heartbeat_s!r}")
        if not stale_after_s > heartbeat_s:
            raise UserError(f"run lock stale_after_s ({stale_after_s!r}) must exceed heartbeat_s "
                            f"({heartbeat_s!r})")
        self._folder = Path(folder)
        self._path = self._folder / name
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s)
        self._token = uuid.uuid4().hex
        self._mutex = threading.Lock()
        self._owner_pid: int | None = None  # pid that holds the lock through this object
        self._record: dict | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- properties -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The lock file (``folder / name``)."""
        return self._path

    @property
    def folder(self) -> Path:
        """The locked output folder."""
        return self._folder

    @property
    def token(self) -> str:
        """Random token of this lock object, written into the lock file."""
        return self._token

    @property
    def held(self) -> bool:
        """Whether this object holds the lock in this process."""
        return self._owner_pid is not None and self._owner_pid == os.getpid()

    @property
    def holder(self) -> dict | None:
        """The current holder's record (see :func:`read_lock`), or ``None`` when unlocked.

        This is this object's own record while it holds the lock.
        """
        return read_lock(self._folder, self._path.name, stale_after_s=self.stale_after_s)

    def __repr__(self) -> str:
        return f"RunLock({str(self._folder)!r}, name={self._path.name!r}, held={self.held})"

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    # -- acquire --------------------------------------------------------------------------

    def acquire(self) -> RunLock:
        """Take the lock, breaking a stale one; a no-op if this object already holds it.

        Returns
        -------
        RunLock
            ``self``.

        Raises
        ------
        RunLockedError
            Another live process (or another lock object in this process) holds the folder.
        UserError
            The folder does not exist, is not a directory, or the lock file cannot be written.
        """
        with self._mutex:
            if self.held:
                return self
            self._owner_pid = None  # a copy of the object in a forked child holds nothing
            self._check_folder()
            record = self._new_record()
            data = (json.dumps(record, indent=1) + "\n").encode("utf-8")
            tmp = self._folder / f".{self._path.name}.{self._token}.{os.getpid()}.tmp"
            fs_clock = self._write_tmp(tmp, data)
            try:
                ident = self._take(tmp, data, fs_clock)
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            self._record = record
            self._owner_pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=_heartbeat, args=(self._path, ident, self.heartbeat_s, self._stop),
                name=f"run-lock-heartbeat:{self._path}", daemon=True)
            self._thread.start()
            _HELD.add(self)
            return self

    def _check_folder(self) -> None:
        try:
            st = os.stat(self._folder)
        except OSError as exc:
            raise UserError(f"{self._folder}: cannot lock the output folder: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{self._folder}: cannot lock the output folder: not a directory")

    def _new_record(self) -> dict:
        pid = os.getpid()
        return {"program": _PROGRAM, "pid": pid, "host": socket.gethostname(), "started": _utc_iso(),
                "proc_start": _proc_start(pid), "boot_id": _boot_id(), "pid_ns": _pid_namespace(),
                "user": _user(), "command": _command_line(), "token": self._token}

    def _write_tmp(self, tmp: Path, data: bytes):
        """Write and flush the temporary record; return a clock reading file-system time."""
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
                fs_time = os.fstat(fd).st_mtime
            finally:
                os.close(fd)
        except OSError as exc:
            raise UserError(f"{self._folder}: cannot write the run lock file there: {exc.strerror}") \
                from None
        mono = time.monotonic()
        return lambda: fs_time + (time.monotonic() - mono)

    def _link(self, tmp: Path, data: bytes) -> bool:
        """Put the lock file in place atomically; ``False`` if the name is taken."""
        try:
            os.link(tmp, self._path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            try:  # NFS: the link may have been made although its reply was lost
                if os.stat(tmp).st_nlink == 2:
                    return True
            except OSError:
                pass
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                                 errno.ENOSYS, errno.EXDEV):
                raise UserError(f"{self._folder}: cannot create the run lock file {self._path}: "
                                f"{exc.strerror}") from None
        # No hard links on this file system: exclusive creation, then write and flush.
        try:
            fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise UserError(f"{self._folder}: cannot create the run lock file {self._path}: "
                            f"{exc.strerror}") from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _take(self, tmp: Path, data: bytes, fs_clock) -> tuple[int, int]:
        """The acquire loop; returns ``(st_dev, st_ino)`` of the lock file taken."""
        partial_since: float | None = None
        # A crashed breaker's guard file blocks breaking for up to GUARD_STALE_S: wait that long.
        deadline = time.monotonic() + GUARD_STALE_S + 5.0
        for _ in range(MAX_ATTEMPTS):
            if time.monotonic() > deadline:
                break
            if self._link(tmp, data):
                st = os.stat(self._path)
                return st.st_dev, st.st_ino
            try:
                seen = _read(self._path)
            except OSError as exc:
                raise RunLockedError(
                    f"{self._folder}: the run lock file {self._path} exists but cannot be read "
                    f"({exc.strerror}); remove it if no otf-statcut run uses this output folder",
                    path=self._path) from None
            if seen is None:  # released meanwhile
                continue
            state, reason = _judge(seen, fs_clock(), self.stale_after_s)
            if state == "partial":
                partial_since = time.monotonic() if partial_since is None else partial_since
                if time.monotonic() - partial_since < PARTIAL_WAIT_S:
                    time.sleep(0.05)
                    continue
                raise RunLockedError(
                    f"{self._folder}: the run lock file {self._path} is being written or is damaged "
                    f"({reason}); it counts as stale {PARTIAL_GRACE_S:g} s after its last change, "
                    f"try again then", path=self._path)
            partial_since = None
            if state == "live":
                raise self._locked_error(seen, fs_clock())
            broken = self._break(seen, fs_clock)
            if broken is True:
                holder = (_describe(seen.record, fs_clock() - seen.mtime) if seen.record is not None
                          else "unknown holder")
                log.warning("%s: taking over the stale run lock %s (%s; %s)", self._folder, self._path,
                            holder, reason)
            elif broken is None:  # another process is breaking it: give it time
                time.sleep(random.uniform(0.01, 0.05))
        raise RunLockedError(f"{self._folder}: could not take the run lock {self._path}: it kept "
                             f"changing, or {self._path.name}.break stayed in place, for too long; "
                             f"try again", path=self._path)

    def _locked_error(self, seen: _Seen, now: float) -> RunLockedError:
        record = seen.record
        who = ("another run lock object in this same process" if record["pid"] == os.getpid()
               and record.get("host") == socket.gethostname() else "another otf-statcut run")
        return RunLockedError(
            f"{self._folder}: {who} holds this output folder ({_describe(record, now - seen.mtime)}; "
            f"lock file {self._path}); wait for it to end, choose another output.folder, "
            f"or remove the lock file if that run is gone", path=self._path, holder=dict(record))

    def _break(self, seen: _Seen, fs_clock) -> bool | None:
        """Remove the stale lock file ``seen`` under the guard file.

        Returns ``True`` if this call removed it, ``False`` if it was already gone or replaced,
        ``None`` if another process holds the guard.
        """
        guard = self._path.with_name(self._path.name + ".break")
        guard_ident = ("token", self._token)
        for _ in range(2):
            try:
                fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = _read(guard)
                except OSError:
                    return None
                if other is None:
                    continue
                if fs_clock() - other.mtime > GUARD_STALE_S:  # left by a crashed process
                    _remove_if_same(guard, other.ident)
                    continue
                return None
            except OSError as exc:
                raise UserError(f"{self._folder}: cannot create {guard}: {exc.strerror}") from None
            try:
                try:
                    os.write(fd, json.dumps({"token": self._token, "pid": os.getpid()}).encode())
                finally:
                    os.close(fd)
                return _remove_if_same(self._path, seen.ident)
            finally:
                _remove_if_same(guard, guard_ident)
        return None

    # -- release --------------------------------------------------------------------------

    def release(self) -> None:
        """Give the lock up: stop the heartbeat and remove the lock file if it is still ours.

        Idempotent. A lock file that no longer holds this object's token (replaced by another
        process) is left alone; so is the lock of a parent process in a forked child.
        """
        with self._mutex:
            owner = self._owner_pid
            self._owner_pid = None
            if self._stop is not None:
                self._stop.set()
            thread, self._thread, self._stop = self._thread, None, None
            _HELD.discard(self)
            if owner is None or owner != os.getpid():
                return
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5.0)
            try:
                _remove_if_same(self._path, ("token", self._token))
            except OSError as exc:
                log.warning("cannot remove the run lock %s: %s", self._path, exc.strerror)
