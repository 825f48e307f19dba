"""The run lock on an output folder: real files, real processes, real races (no mocks)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otf_statcut.errors import UserError
from otf_statcut.io.lock import PARTIAL_WAIT_S, RunLock, RunLockedError, _proc_start, read_lock

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()

pytestmark = pytest.mark.timeout(60)

#: Takes the lock on argv[1], says HELD, and holds it until killed.
HOLDER = """
import sys, time
from otf_statcut.io.lock import RunLock
RunLock(sys.argv[1], heartbeat_s=0.2).acquire()
print("HELD", flush=True)
time.sleep(120)
"""

#: Says READY, waits for the file argv[2], tries the lock on argv[1] once, says WON or REFUSED,
#: and (if it won) holds the lock until the file argv[3] appears.
RACER = """
import logging, pathlib, sys, time
from otf_statcut.io.lock import RunLock, RunLockedError
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
folder, go, stop = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
lock = RunLock(folder, heartbeat_s=0.5)
print("READY", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    lock.acquire()
except RunLockedError as exc:
    print("REFUSED", exc, flush=True)
    sys.exit(0)
print("WON", flush=True)
t0 = time.monotonic()
while not stop.exists() and time.monotonic() - t0 < 30:
    time.sleep(0.01)
lock.release()
"""


def spawn(code: str, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_lock(path: Path, record: dict | None = None, *, raw: bytes | None = None, age_s: float = 0.0):
    """Write a lock file as another process would have left it, with its mtime ``age_s`` ago."""
    path.write_bytes(raw if raw is not None else json.dumps(record).encode())
    if age_s:
        when = time.time() - age_s
        os.utime(path, (when, when))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def foreign(host="node7.invalid", pid=4242, token="foreign-token") -> dict:
    return {"pid": pid, "host": host, "started": "2026-11-30T09:00:00+00:00", "proc_start": 99,
            "user": "someone", "command": "otf-statcut run other.yaml", "token": token}


def takeovers(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "otf_statcut.engine" and r.levelno == logging.WARNING and "taking over" in r.getMessage()]


# --------------------------------------------------------------------------------------------
# One process
# --------------------------------------------------------------------------------------------


def test_acquire_release_and_record(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.path == tmp_path / "run.lock"
    assert not lock.held and lock.holder is None and read_lock(tmp_path) is None
    assert lock.acquire() is lock
    assert lock.held
    record = json.loads(lock.path.read_text())
    assert record["pid"] == os.getpid()
    assert record["host"] == HOST
    assert record["token"] == lock.token
    assert record["started"].endswith("+00:00") and len(record["started"]) == 25
    assert record["user"] and len(record["command"]) <= 200
    if Path("/proc/self/stat").exists():
        assert record["proc_start"] == _proc_start(os.getpid())
    assert lock.holder["token"] == lock.token and lock.holder["state"] == "live"

    lock.acquire()  # idempotent on the same object
    assert json.loads(lock.path.read_text())["token"] == lock.token

    lock.release()
    assert not lock.path.exists() and not lock.held
    lock.release()  # idempotent
    # No temporary, aside or guard files are left behind.
    assert list(tmp_path.iterdir()) == []


def test_context_manager_and_custom_name(tmp_path):
    with RunLock(tmp_path, name="other.lock") as lock:
        assert lock.held and (tmp_path / "other.lock").is_file()
        assert read_lock(tmp_path, "other.lock")["pid"] == os.getpid()
    assert not (tmp_path / "other.lock").exists()
    with RunLock(tmp_path, name="other.lock"):  # free again for a new object
        pass


def test_second_object_in_same_process_is_refused(tmp_path):
    first = RunLock(tmp_path).acquire()
    second = RunLock(tmp_path)
    with pytest.raises(RunLockedError) as info:
        second.acquire()
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message
    assert f"pid {os.getpid()} on host {HOST}" in message
    assert str(first.path) in message and message.startswith(f"{tmp_path}: ")
    assert info.value.holder["token"] == first.token and info.value.path == first.path
    assert not second.held
    second.release()  # releasing a lock never held leaves the holder's file alone
    assert json.loads(first.path.read_text())["token"] == first.token
    first.release()
    second.acquire()
    second.release()


@pytest.mark.parametrize("bad", ["missing", "file"])
def test_folder_missing_or_not_a_directory(tmp_path, bad):
    target = tmp_path / "out"
    if bad == "file":
        target.write_text("x")
    with pytest.raises(UserError) as info:
        RunLock(target).acquire()
    message = str(info.value)
    assert str(target) in message and "\n" not in message
    assert ("not a directory" if bad == "file" else "No such file") in message


def test_folder_not_writable(tmp_path):
    # sysfs refuses new files even to root (a chmod'ed folder would not stop root, who runs CI here)
    with pytest.raises(UserError, match="Permission denied") as info:
        RunLock("/sys").acquire()
    assert "/sys" in str(info.value) and "\n" not in str(info.value)


def test_settings_are_checked(tmp_path):
    with pytest.raises(UserError, match="stale_after_s"):
        RunLock(tmp_path, heartbeat_s=10, stale_after_s=5)
    with pytest.raises(UserError, match="heartbeat_s"):
        RunLock(tmp_path, heartbeat_s=0)
    with pytest.raises(UserError, match="file name"):
        RunLock(tmp_path, name="a/b")


def test_heartbeat_touches_the_lock_file_and_stops_on_release(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.2, stale_after_s=5).acquire()
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    time.sleep(0.7)
    assert lock.path.stat().st_mtime > time.time() - 5
    assert read_lock(tmp_path)["heartbeat_age_s"] < 5
    beats = [t for t in threading.enumerate() if t.name.startswith("run-lock-heartbeat")]
    assert len(beats) == 1
    lock.release()
    assert not beats[0].is_alive()


def test_release_never_removes_a_foreign_lock(tmp_path, caplog):
    lock = RunLock(tmp_path, heartbeat_s=0.1, stale_after_s=5).acquire()
    # Another process replaced the lock file (e.g. took it over after judging it stale).
    replacement = tmp_path / "replacement"
    write_lock(replacement, foreign())
    os.replace(replacement, lock.path)
    old = time.time() - 50
    os.utime(lock.path, (old, old))
    with caplog.at_level(logging.WARNING, logger="otf_statcut.engine"):
        time.sleep(0.4)
    # The heartbeat noticed and left the foreign file alone, and so does release.
    assert abs(lock.path.stat().st_mtime - old) < 1
    assert any("removed or replaced" in r.getMessage() for r in caplog.records)
    lock.release()
    assert json.loads(lock.path.read_text())["token"] == "foreign-token"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]


# --------------------------------------------------------------------------------------------
# Stale or live locks of others
# --------------------------------------------------------------------------------------------


def test_foreign_host_lock_stale_by_heartbeat(tmp_path, caplog):
    path = tmp_path / "run.lock"
    write_lock(path, foreign(), age_s=30)
    with pytest.raises(RunLockedError) as info:
        RunLock(tmp_path, stale_after_s=300).acquire()
    message = str(info.value)
    assert "pid 4242 on host node7.invalid" in message and "heartbeat 30 s ago" in message
    assert "started 2026-11-30T09:00:00+00:00" in message and str(path) in message
    assert read_lock(tmp_path)["state"] == "live"

    write_lock(path, foreign(), age_s=1000)
    assert read_lock(tmp_path)["stale"] is True
    with caplog.at_level(logging.WARNING, logger="otf_statcut.engine"):
        lock = RunLock(tmp_path, stale_after_s=300).acquire()
    assert json.loads(path.read_text())["token"] == lock.token
    [warning] = takeovers(caplog)
    assert "pid 4242 on host node7.invalid" in warning and "no heartbeat" in warning
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_same_host_dead_pid_is_stale_even_with_fresh_mtime(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path / "run.lock", foreign(host=HOST, pid=pid))
    with caplog.at_level(logging.WARNING, logger="otf_statcut.engine"):
        with RunLock(tmp_path):
            pass
    [warning] = takeovers(caplog)
    assert f"pid {pid} on host {HOST}" in warning


@pytest.mark.skipif(_proc_start(os.getpid()) is None, reason="no /proc/<pid>/stat here")
def test_pid_reuse_guard(tmp_path, caplog):
    path = tmp_path / "run.lock"
    mine = _proc_start(os.getpid())
    # Our own pid, but another start time: a dead run whose pid this process now has.
    write_lock(path, foreign(host=HOST, pid=os.getpid(), token="old") | {"proc_start": mine + 12345})
    with caplog.at_level(logging.WARNING, logger="otf_statcut.engine"):
        lock = RunLock(tmp_path).acquire()
    [warning] = takeovers(caplog)
    assert "belongs to another process" in warning
    lock.release()
    # Our own pid with our own start time: alive, so refused.
    write_lock(path, foreign(host=HOST, pid=os.getpid(), token="other") | {"proc_start": mine})
    with pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()
    assert json.loads(path.read_text())["token"] == "other"


@pytest.mark.parametrize("raw", [b"", b'{"pid": 12', b"[1, 2]", b'{"pid": 12, "host": "x"}'])
def test_unreadable_lock_file_stale_when_old(tmp_path, caplog, raw):
    path = tmp_path / "run.lock"
    write_lock(path, raw=raw, age_s=60)
    info = read_lock(tmp_path)
    assert info["valid"] is False and info["stale"] is True and info["error"]
    with caplog.at_level(logging.WARNING, logger="otf_statcut.engine"):
        lock = RunLock(tmp_path).acquire()
    [warning] = takeovers(caplog)
    assert "unreadable lock file" in warning
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()


def test_young_empty_lock_file_is_waited_for_then_refused(tmp_path):
    path = tmp_path / "run.lock"
    write_lock(path, raw=b"")
    assert read_lock(tmp_path)["state"] == "partial"
    t0 = time.monotonic()
    with pytest.raises(RunLockedError, match="being written or is damaged"):
        RunLock(tmp_path).acquire()
    assert time.monotonic() - t0 >= PARTIAL_WAIT_S * 0.9
    assert path.read_bytes() == b""


def test_young_empty_lock_file_completed_while_waiting(tmp_path):
    # A writer that creates the file first and fills it a moment later (no hard links).
    path = tmp_path / "run.lock"
    write_lock(path, raw=b"")
    timer = threading.Timer(0.3, lambda: path.write_text(json.dumps(foreign(host="node8.invalid"))))
    timer.start()
    try:
        with pytest.raises(RunLockedError, match="pid 4242 on host node8.invalid"):
            RunLock(tmp_path).acquire()
    finally:
        timer.join()


# --------------------------------------------------------------------------------------------
# Other processes
# --------------------------------------------------------------------------------------------


def test_live_subprocess_refuses_then_sigkill_makes_it_stale(tmp_path, caplog):
    proc = spawn(HOLDER, tmp_path)
    try:
        assert proc.stdout.readline().strip() == "HELD", proc.stderr.read()
        info = read_lock(tmp_path)
        assert info["pid"] == proc.pid and info["state"] == "live"
        with pytest.raises(RunLockedError) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {proc.pid} on host {HOST}" in message and "another otf-statcut run" in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert read_lock(tmp_path)["stale"] is True  # the killed process left its lock file
    with caplog.at_level(logging.WARNING, logger="otf_statcut.engine"):
        lock = RunLock(tmp_path).acquire()
    [warning] = takeovers(caplog)
    assert f"pid {proc.pid}" in warning and "no longer running" in warning
    lock.release()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stale", ["dead_pid", "foreign_host", "empty"])
def test_racing_to_break_a_stale_lock_exactly_one_wins(tmp_path, stale):
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "run.lock"
    if stale == "dead_pid":
        write_lock(path, foreign(host=HOST, pid=dead_pid()))
    elif stale == "foreign_host":
        write_lock(path, foreign(), age_s=1000)
    else:
        write_lock(path, raw=b"", age_s=60)
    go, stop = tmp_path / "go", tmp_path / "stop"
    racers = [spawn(RACER, folder, go, stop) for _ in range(4)]
    try:
        for proc in racers:
            assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        go.touch()
        results = [proc.stdout.readline().strip() for proc in racers]
        winners = [proc for proc, line in zip(racers, results) if line == "WON"]
        assert len(winners) == 1, results
        assert all(line.startswith("REFUSED") for line in results if line != "WON"), results
        assert json.loads(path.read_text())["pid"] == winners[0].pid
        # Losers were refused by the winner's live lock, naming it.
        assert all(f"pid {winners[0].pid} on host {HOST}" in line for line in results if line != "WON")
    finally:
        stop.touch()
        errors = []
        for proc in racers:
            try:
                proc.wait(timeout=20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            errors.append(proc.stderr.read())
            proc.stdout.close()
            proc.stderr.close()
    assert all(proc.returncode == 0 for proc in racers), errors
    # The stale lock was broken exactly once, and everything was cleaned up.
    assert sum(text.count("taking over the stale run lock") for text in errors) == 1, errors
    assert list(folder.iterdir()) == []
