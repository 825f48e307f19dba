"""Run files that no kill can make unresumable: torn checkpoints, torn frames, torn tables, damage
reported on one line, export of a damaged file, and a campaign of SIGKILLs of the write cycle."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.cli import main
from otf_statcut.errors import DataError
from otf_statcut.io.checkpoint import Checkpoint
from otf_statcut.io.runlog import RunLog, read_dataset, read_table
from otf_statcut.labelers import ASECalculatorLabeler

LABELER = ASECalculatorLabeler(EMT())


def frame(seed: int):
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=seed)
    return LABELER.label(atoms)


def traj_row(step: int, atoms):
    n = len(atoms)
    return {"step": step, "time_fs": float(step), "positions": atoms.positions, "cell": atoms.cell[:],
            "numbers": atoms.numbers, "energy": -1.0, "forces": np.zeros((n, 3)), "stress": None,
            "sigma": np.zeros(n), "max_sigma": 0.1, "decision": 0, "source": 0, "temperature_K": 300.0,
            "model": 0, "wall_time_s": 0.0}


def checkpoint(step: int, atoms) -> Checkpoint:
    return Checkpoint(step=step, time_fs=float(step), positions=atoms.positions, momenta=np.full((len(atoms), 3), step),
                      cell=atoms.cell[:], numbers=atoms.numbers, pbc=atoms.pbc, model=0,
                      rng=np.random.default_rng(step).bit_generator.state)


def small_run(path, n_frames=4, n_steps=6, checkpoint_at=3):
    """A run file: frames, trajectory rows and a checkpoint at ``checkpoint_at`` (rows after it)."""
    atoms = frame(0)
    with RunLog.create(path, n_atoms=len(atoms)) as log:
        for i in range(n_frames):
            log.append_frame(frame(i), step=i, reason="label", split=i % 2)
        for step in range(n_steps):
            log.append_trajectory(traj_row(step, atoms))
            if step == checkpoint_at:
                log.write_checkpoint(checkpoint(step, atoms))
        log.flush()
    return atoms


def test_torn_checkpoint_slot_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "run.h5"
    atoms = frame(0)
    with RunLog.create(path, n_atoms=len(atoms)) as log:
        log.write_checkpoint(checkpoint(1, atoms))
        log.write_checkpoint(checkpoint(2, atoms))
    with h5py.File(path, "a") as f:  # a torn write: bytes of the latest slot without its digest
        slot = int(f["checkpoint/pointer"][()])
        f[f"checkpoint/slot_{slot}/momenta"][0, 0] = 123.0
    with RunLog.open(path) as log:
        assert log.read_checkpoint().step == 1  # the previous, intact one
        notes = log.prepare_resume()
        assert any("fails its checksum" in n for n in notes)


def test_both_slots_torn_is_damage_reported_on_one_line_and_export_still_works(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path)
    with RunLog.open(path) as log:  # a second checkpoint fills the other slot
        log.write_checkpoint(checkpoint(4, frame(0)))
    with h5py.File(path, "a") as f:
        for s in (0, 1):
            f[f"checkpoint/slot_{s}/positions"][0, 0] += 1.0
    before = (tmp_path / "run.h5").read_bytes()
    with pytest.raises(DataError) as info:
        RunLog.open(path)  # refused before it is opened for writing
    message = str(info.value)
    assert "\n" not in message and "damaged" in message and "slot 0" in message and "slot 1" in message
    assert "Recoverable: 4 labelled frame(s) of 4" in message and "otf-statcut export" in message
    assert (tmp_path / "run.h5").read_bytes() == before  # nothing was written
    assert main(["export", str(path), str(tmp_path / "data.extxyz")]) == 0
    import ase.io

    assert len(ase.io.read(tmp_path / "data.extxyz", ":")) == 4


def test_torn_frame_after_the_checkpoint_is_dropped_before_it_is_damage(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path)  # checkpoint counts 4 frames
    with RunLog.open(path) as log:
        log.append_frame(frame(10), step=5, reason="label", split=0)  # a label after the checkpoint
        log.append_frame(frame(11), step=6, reason="label", split=0)
    with h5py.File(path, "a") as f:  # frame 4's forces never reached the disk
        lo = int(f["dataset/offset"][4])
        f["dataset/forces"][lo:lo + 4] = 0.0
    assert len(read_dataset(path)) == 4  # readers see the intact prefix
    with RunLog.open(path) as log:
        notes = log.prepare_resume()
        assert any("torn frame" in n for n in notes)
        assert log.rows("dataset") == 4 and log.rows("trajectory") == 4  # back to the checkpoint
    with h5py.File(path, "a") as f:  # now a frame the checkpoint counts
        f["dataset/energy"][1] += 1.0
    with pytest.raises(DataError, match=r"labelled frames 1\.\.3 \(saved before the checkpoint\) fail"):
        RunLog.open(path)


def test_torn_append_with_unequal_columns_is_repaired(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path, checkpoint_at=5)
    with h5py.File(path, "a") as f:  # a kill between the columns of one failure row
        f["failures/step"].resize(1, axis=0)
        f["failures/reason"].resize(1, axis=0)
        f["trajectory/energy"].resize(7, axis=0)  # and one trajectory column a row ahead
    assert len(read_table(path, "trajectory")["step"]) == 6
    assert all(len(v) == 0 for v in read_table(path, "failures").values())
    with RunLog.open(path) as log:
        log.prepare_resume()
        assert log.rows("failures") == 0 and log.rows("trajectory") == 6
        log.append_failure(step=7, reason="label", message="x")
    assert list(read_table(path, "failures")["step"]) == [7]


def test_a_kill_during_creation_leaves_no_run_file(tmp_path):
    script = tmp_path / "create.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        import h5py
        from otf_statcut.io import runlog
        real = h5py.File
        def dying(name, mode="r", *a, **k):  # die while the skeleton is being written
            f = real(name, mode, *a, **k)
            if str(name).endswith(".partial"):
                f.create_group("half")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return f
        runlog.h5py.File = dying
        runlog.RunLog.create(sys.argv[1], n_atoms=4)
    """))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run.h5")], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run.h5").exists() and (tmp_path / "run.h5.partial").exists()
    RunLog.create(tmp_path / "run.h5", n_atoms=4).close()  # a new start overwrites the partial file
    assert not (tmp_path / "run.h5.partial").exists()


WRITE_CYCLE = textwrap.dedent("""
    import sys
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from otf_statcut.io.checkpoint import Checkpoint
    from otf_statcut.io.runlog import RunLog, configuration_key
    from otf_statcut.labelers import ASECalculatorLabeler
    path = sys.argv[1]
    labeler = ASECalculatorLabeler(EMT())
    base = bulk("Cu", cubic=True).repeat(2)
    try:
        log = RunLog.open(path)
        log.prepare_resume()
        cp = log.read_checkpoint()
        step = cp.step + 1 if cp else 0
    except Exception:
        log = RunLog.create(path, n_atoms=len(base), overwrite=True)
        step = 0
    while True:  # the run's write cycle, as fast as it goes: rows, labels, checkpoints, flushes
        atoms = base.copy()
        atoms.rattle(0.02, seed=step)
        row = dict(step=step, time_fs=float(step), positions=atoms.positions, cell=atoms.cell[:],
                   numbers=atoms.numbers, energy=0.0, forces=np.zeros((len(atoms), 3)), stress=None,
                   sigma=np.zeros(len(atoms)), max_sigma=0.0, decision=0, source=0, temperature_K=0.0,
                   model=0, wall_time_s=0.0)
        log.append_trajectory(row)
        if step % 3 == 0 and not log.has_key(configuration_key(atoms)):  # as the engine does
            log.append_frame(labeler.label(atoms), step=step, reason="label", split=0)
        if step % 7 == 0:
            log.append_failure(step=step, reason="label", message="x" * 500)
        if step % 2 == 0:
            log.write_checkpoint(Checkpoint(step=step, time_fs=float(step), positions=atoms.positions,
                                            momenta=np.zeros((len(atoms), 3)), cell=atoms.cell[:],
                                            numbers=atoms.numbers, pbc=atoms.pbc, model=0,
                                            rng={"state": step}, dynamics={"eta": [float(step)] * 50}))
        else:
            log.flush()
        step += 1
""")


@pytest.mark.slow
def test_sigkills_of_the_write_cycle_never_leave_an_unresumable_file(tmp_path):
    """30 SIGKILLs at random moments of the run log's write cycle (appends, checkpoints, flushes):
    after each, the file opens, resumes, keeps every frame the checkpoint counts, and continues."""
    script = tmp_path / "cycle.py"
    script.write_text(WRITE_CYCLE)
    path = tmp_path / "run.h5"
    rng = random.Random(7)
    committed: list[str] = []  # keys of the frames the last checkpoint counts
    for kill in range(30):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stderr=subprocess.PIPE)
        time.sleep(1.2 + rng.random() * 0.8)  # imports take ~1 s; then kill at a random moment
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        with RunLog.open(path) as log:
            assert log.health.resumable, log.health.message()
            cp = log.read_checkpoint()
            log.prepare_resume()
            keys = [f.info["key"] for f in log.read_frames()]
            assert keys[:len(committed)] == committed  # nothing committed is ever lost
            assert len(set(keys)) == len(keys)
            steps = log.file["trajectory/step"][:]
            np.testing.assert_array_equal(steps, np.arange(len(steps)))  # contiguous
            if cp is not None:
                assert len(steps) == cp.trajectory_rows and steps[-1] == cp.step
                committed = keys[:cp.dataset_rows]
    assert len(committed) > 10
