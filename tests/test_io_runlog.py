"""The run's HDF5 log: append, flush, reopen, checkpoint, survive kill -9, plain-h5py reading, export."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import ase.io
import h5py
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.errors import DataError
from otf_statcut.io.runlog import (
    SCHEMA,
    SCHEMA_VERSION,
    Checkpoint,
    RunLog,
    configuration_key,
    export_extxyz,
    read_dataset,
    read_table,
    read_trajectory,
)
from otf_statcut.labelers import ASECalculatorLabeler
from otf_statcut.stats import statistical_cutoffs


def labelled(n_rep=1, seed=0, stress=True):
    atoms = bulk("Cu", cubic=True).repeat(n_rep)
    atoms.rattle(0.05, seed=seed)
    return ASECalculatorLabeler(EMT(), stress=stress).label(atoms)


def traj_row(step, atoms, rng):
    n = len(atoms)
    return {"step": step, "time_fs": step * 2.0, "positions": atoms.positions, "cell": atoms.cell[:],
            "momenta": rng.normal(size=(len(atoms), 3)),
            "numbers": atoms.numbers, "energy": -1.0 * step, "forces": rng.normal(size=(n, 3)),
            "stress": None if step % 2 else rng.normal(size=6), "sigma": rng.random(n),
            "max_sigma": 0.5, "decision": step % 3, "source": int(step % 3 > 0),
            "temperature_K": 300.0 + step,
            "model": 0, "wall_time_s": 0.1 * step}


def test_create_append_and_read_with_plain_h5py(tmp_path):
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    small, big = labelled(1, 1), labelled(2, 2, stress=False)
    with RunLog.create(path, input_text="md: {steps: 3}\n", config={"md": {"steps": 3}}) as log:
        for step in range(3):
            assert log.append_trajectory(traj_row(step, small, rng)) == step
        assert log.append_frame(small, step=-1, reason="initial", split=0, labeler={"name": "emt"}) == 0
        assert log.append_frame(big, step=2, reason="label", split=1, max_sigma=0.3, labeler="{}") == 1
        log.append_model({"model": 0, "step": 0, "reason": "initial", "warm_start": False, "n_train": 1,
                          "n_val": 1, "epochs": 5, "train_time_s": 1.5, "head_time_s": 0.5,
                          "val_force_mae": 0.1, "val_force_rmse": 0.2, "val_energy_mae": 0.01,
                          "head_nll": -1.0, "best_epoch": 4, "max_weight_change": 0.01, "n_new": 0,
                          "new_error_before": float("nan"), "new_error_after": float("nan"),
                          "learned": True, "problem": "", "path": "models/0000"})
        e = 0.1 * np.linalg.norm(np.random.default_rng(1).normal(size=(500, 3)), axis=1)  # Maxwell
        cut = statistical_cutoffs(e, e * 1.1, n=1000)
        log.append_cutoffs(model=0, step=0, cutoffs=cut)
        log.append_failure(step=1, reason="label", message="SCF did not converge")
        log.flush()
    with h5py.File(path, "r") as f:  # plain h5py, no project code
        assert f.attrs["schema"] == SCHEMA and f.attrs["schema_version"] == SCHEMA_VERSION
        assert json.loads(f.attrs["config"]) == {"md": {"steps": 3}}
        assert "numpy" in json.loads(f.attrs["versions"])
        assert f["trajectory/positions"].shape == (3, len(small), 3)
        np.testing.assert_array_equal(f["trajectory/step"][:], [0, 1, 2])
        assert np.isnan(f["trajectory/stress"][1]).all() and not np.isnan(f["trajectory/stress"][0]).any()
        assert list(f["dataset/n_atoms"][:]) == [len(small), len(big)]
        assert f["dataset/positions"].shape == (len(small) + len(big), 3)
        assert list([b.decode() for b in f["dataset/reason"][:]]) == ["initial", "label"]
        assert f["cutoffs/minimum"][0] == pytest.approx(cut.minimum)
        assert json.loads(f["cutoffs/error_fit"][0])["name"] == "maxwell"
        assert f["failures/message"][0] == b"SCF did not converge"
        assert f["models/path"][0].decode() == "models/0000"
    frames = read_dataset(path)
    np.testing.assert_allclose(frames[0].get_forces(), small.get_forces())
    np.testing.assert_allclose(frames[0].get_stress(), small.get_stress())
    assert frames[1].get_potential_energy() == pytest.approx(big.get_potential_energy())
    assert "stress" not in frames[1].calc.results
    assert frames[1].info["split"] == "val" and frames[1].info["step"] == 2
    assert frames[0].info["key"] == configuration_key(small)
    assert read_table(path, "models")["reason"][0] == "initial"


def test_reopen_appends_and_checkpoint_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    atoms = labelled(1)
    with RunLog.create(path) as log:
        for step in range(5):
            log.append_trajectory(traj_row(step, atoms, rng))
        cp = Checkpoint(step=3, time_fs=6.0, positions=atoms.positions, momenta=rng.normal(size=(4, 3)),
                        cell=atoms.cell[:], numbers=atoms.numbers, pbc=atoms.pbc, model=2, n_labels=7,
                        labels_since_retrain=1, retrain_pending=True,
                        rng=np.random.default_rng(5).bit_generator.state, dynamics={"eta": np.zeros(3)})
        log.write_checkpoint(cp)
        log.write_checkpoint(cp)  # overwriting is allowed
    with RunLog.open(path) as log:
        back = log.read_checkpoint()
        assert back.step == 3 and back.model == 2 and back.retrain_pending and back.trajectory_rows == 5
        np.testing.assert_array_equal(back.momenta, cp.momenta)
        gen = np.random.default_rng()
        gen.bit_generator.state = back.rng
        assert gen.random() == np.random.default_rng(5).random()
        assert back.dynamics == {"eta": [0.0, 0.0, 0.0]}
        assert back.atoms().get_momenta() == pytest.approx(cp.momenta)
        notes = log.prepare_resume()  # back to the checkpoint: the trajectory row after it goes
        assert log.rows("trajectory") == 5 and notes == []
        cp.step = 4
        log.write_checkpoint(cp)
        log.append_trajectory(traj_row(5, atoms, rng))
        log.flush()
    with RunLog.open(path) as log:
        assert log.read_checkpoint().trajectory_rows == 5
        assert any("/trajectory: 1 row(s)" in line for line in log.prepare_resume())
        assert log.rows("trajectory") == 5
        log.append_trajectory(traj_row(5, atoms, rng))
        frame = labelled(1, seed=9)
        assert not log.has_key(configuration_key(frame))
        log.append_frame(frame, step=4, reason="halt", split=0)
        assert log.has_key(configuration_key(frame)) and log.frame_index(configuration_key(frame)) == 0
    steps = read_table(path, "trajectory")["step"]
    np.testing.assert_array_equal(steps, [0, 1, 2, 3, 4, 5])


def test_open_refuses_foreign_files_and_create_refuses_overwrite(tmp_path):
    path = tmp_path / "run.h5"
    RunLog.create(path).close()
    with pytest.raises(DataError, match="exists already"):
        RunLog.create(path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["schema"] = "something"
    with pytest.raises(DataError, match="not an otf-statcut run file"):
        RunLog.open(tmp_path / "other.h5")
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DataError, match="schema_version 99"):
        RunLog.open(path)
    with pytest.raises(DataError, match="not found"):
        RunLog.open(tmp_path / "absent.h5")
    with RunLog.create(tmp_path / "x.h5") as log, pytest.raises(ValueError, match="reason"):
        log.append_frame(labelled(1), step=0, reason="because", split=0)


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from otf_statcut.io.runlog import RunLog
    from otf_statcut.labelers import ASECalculatorLabeler
    log = RunLog.create(sys.argv[1])
    labeler = ASECalculatorLabeler(EMT())
    atoms = bulk("Cu", cubic=True)
    for step in range(int(sys.argv[2])):
        atoms.rattle(0.01, seed=step)
        frame = labeler.label(atoms)
        log.append_trajectory(dict(step=step, time_fs=float(step), positions=atoms.positions,
                                   cell=atoms.cell[:],
                                   numbers=atoms.numbers, energy=frame.get_potential_energy(),
                                   forces=frame.get_forces(), stress=None, sigma=np.zeros(4), max_sigma=0.0,
                                   decision=1, source=1, temperature_K=0.0, model=0, wall_time_s=0.0))
        log.append_frame(frame, step=step, reason="label", split=0)
        log.flush()
    # unflushed rows, then an abrupt death: they may be lost, the flushed ones must not be
    log.append_frame(labeler.label(atoms), step=999, reason="label", split=0)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_flushed_rows_survive_kill_9(tmp_path):
    path = tmp_path / "run.h5"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.run([sys.executable, str(script), str(path), "25"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with h5py.File(path, "r") as f:
        steps = f["dataset/step"][:]
        assert list(steps[:25]) == list(range(25))
        assert f["trajectory/step"].shape[0] == 25
    with RunLog.open(path) as log:  # and it can be appended to again
        log.append_frame(labelled(1), step=25, reason="label", split=0)
    assert len(read_dataset(path)) in (26, 27)


def test_export_extxyz_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    a, b = labelled(1, 1), labelled(2, 2)
    with RunLog.create(path) as log:
        log.append_frame(a, step=-1, reason="initial", split=0)
        log.append_frame(b, step=5, reason="label", split=1, max_sigma=0.2)
        log.append_trajectory(traj_row(0, a, rng))
        log.append_trajectory(traj_row(1, a, rng))
    n_data, n_traj = export_extxyz(path, tmp_path / "data.extxyz", tmp_path / "traj.extxyz")
    assert (n_data, n_traj) == (2, 2)
    back = ase.io.read(tmp_path / "data.extxyz", ":")
    np.testing.assert_allclose(back[1].get_forces(), b.get_forces(), atol=1e-7)
    assert back[1].get_potential_energy() == pytest.approx(b.get_potential_energy())
    np.testing.assert_allclose(back[0].get_stress(), a.get_stress(), atol=1e-12)
    assert back[1].info["reason"] == "label" and back[1].info["step"] == 5
    traj = ase.io.read(tmp_path / "traj.extxyz", ":")
    frames, table = read_trajectory(path)
    np.testing.assert_allclose(traj[1].get_forces(), table["forces"][1], atol=1e-7)
    np.testing.assert_allclose(traj[1].arrays["sigma"], table["sigma"][1], rtol=1e-6)
    # the exported trajectory keeps the momenta: velocities and temperature read back
    np.testing.assert_allclose(traj[1].get_momenta(), table["momenta"][1], atol=1e-7)
    assert frames[1].get_temperature() > 0
    assert traj[1].get_temperature() == pytest.approx(frames[1].get_temperature(), rel=1e-6)


def test_per_element_cutoffs_are_one_row_per_element_and_read_back(tmp_path):
    """A per-element refit is stored as rows (one per element + the pooled fit) and rebuilt as
    ElementCutoffs; a later global refit of another model reads back as a CutoffSet."""
    from otf_statcut.io.runlog import read_cutoffs
    from otf_statcut.stats.element_cutoffs import ElementCutoffs, fit_cutoffs

    rng = np.random.default_rng(0)
    symbols = np.array(["Li"] * 400 + ["Al"] * 400)
    errors = np.linalg.norm(rng.normal(size=(800, 3)), axis=1) * np.repeat([0.05, 0.13], 400)
    per = fit_cutoffs(errors, errors * 1.2, symbols, {"Li": 5000, "Al": 3000})
    assert isinstance(per, ElementCutoffs) and per.elements == ("Al", "Li")
    path = tmp_path / "run.h5"
    with RunLog.create(path, input_text="", config={}) as log:
        assert log.append_cutoffs(model=0, step=-1, cutoffs=per) == 0
        glob = fit_cutoffs(errors, errors, symbols, {"Li": 5000, "Al": 3000}, per_element=False)
        assert log.append_cutoffs(model=1, step=7, cutoffs=glob) == 1
        log.flush()
    table = read_table(path, "cutoffs")
    assert list(table["element"]) == ["Al", "Li", "pooled", "all"]
    back = read_cutoffs(path, 0)
    assert isinstance(back, ElementCutoffs)
    for symbol in ("Al", "Li"):
        assert back.by_element[symbol].minimum == pytest.approx(per.by_element[symbol].minimum)
        assert back.by_element[symbol].n == per.by_element[symbol].n
    assert back.by_element["Al"].error_cutoff > back.by_element["Li"].error_cutoff  # Al errors are larger
    assert read_cutoffs(path, 1).minimum == pytest.approx(glob.minimum)
    assert read_cutoffs(path, 5) is None
