"""Resume after ``kill -9``: the run continues from its last checkpoint, no labelled frame is lost
or stored twice, and the trajectory has every step exactly once."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml

from otf_statcut.io.checkpoint import read_checkpoint
from otf_statcut.io.runlog import RunLog, read_dataset, read_table
from conftest import small_cu_run

pytestmark = pytest.mark.slow

CONFIG = small_cu_run(**{"md.steps": 120, "cutoffs.n": 40, "output.checkpoint_every": 7})


def snapshot(path):
    """Checkpoint step and data-set size of a file being written (None while unreadable)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            cp, _ = read_checkpoint(f["checkpoint"])
            if cp is None:
                return None
            return cp.step, int(np.sum(f["dataset/step"][:] >= 0))
    except (OSError, KeyError, ValueError):
        return None


def test_resume_after_kill_9_keeps_every_label_once(tmp_path):
    config = copy.deepcopy(CONFIG)
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(config))
    run_file = tmp_path / "out" / "run.h5"
    cmd = [sys.executable, "-m", "otf_statcut.cli", "run", "input.yaml"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    state = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = snapshot(run_file) if run_file.exists() else None
            if state is not None and state[0] >= 30 and state[1] >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the kill: " + proc.stderr.read().decode()[-2000:]
        time.sleep(0.37)  # land somewhere inside a step
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = read_dataset(run_file)
    traj_before = read_table(run_file, "trajectory")
    with RunLog.open(run_file, "r") as log:
        killed_at = log.read_checkpoint().step
        assert log.status == "running"
    assert 30 <= killed_at < 120

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MD steps: 120/120" in done.stdout

    after = read_dataset(run_file)
    keys_before = [f.info["key"] for f in before]
    keys_after = [f.info["key"] for f in after]
    assert keys_after[: len(keys_before)] == keys_before  # nothing lost, order kept
    assert len(set(keys_after)) == len(keys_after)  # nothing stored twice
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
    traj = read_table(run_file, "trajectory")
    np.testing.assert_array_equal(traj["step"], np.arange(121))  # every step exactly once
    keep = traj_before["step"] <= killed_at  # rows up to the checkpoint are kept as they were
    np.testing.assert_array_equal(traj["positions"][: keep.sum()], traj_before["positions"][keep])
    with RunLog.open(run_file, "r") as log:
        assert log.status == "finished" and log.read_checkpoint().step == 120
    models = read_table(run_file, "models")
    np.testing.assert_array_equal(models["model"], np.arange(len(models["model"])))
