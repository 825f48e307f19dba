"""Many walkers, one learner (issue 12): the input, batched = one-by-one, a run with labels and
retrains, kill and resume of every walker."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.config import parse_run_config
from otf_statcut.errors import ConfigError
from otf_statcut.io.run_health import audit
from otf_statcut.io.runlog import RunLog, read_dataset, read_table, walker_table
from conftest import small_cu_run

CU = {"builder": {"element": "Cu", "lattice": "fcc", "supercell": [2, 2, 1]}}
CU_VACANCY = {"builder": {"element": "Cu", "lattice": "fcc", "supercell": [2, 2, 1], "vacancies": 1}}


def walkers_input(tmp_path, walkers, **changes):
    data = small_cu_run(**changes)
    data["output"]["folder"] = str(tmp_path / "out")
    data["walkers"] = walkers
    return data


def test_walkers_as_a_product_or_a_list(tmp_path):
    config = parse_run_config(walkers_input(tmp_path, {"product": {"system": [CU, CU_VACANCY],
                                                                   "temperature_K": [300, 600, 900]}}))
    walkers = config.walker_list()
    assert [w.name for w in walkers] == ["w0-300K", "w1-600K", "w2-900K", "w3-300K-vacancy1", "w4-600K-vacancy1",
                                         "w5-900K-vacancy1"]
    assert [w.md.seed for w in walkers] == [3, 4, 5, 6, 7, 8]  # md.seed + index
    assert walkers[4].md.temperature_K == 600 and walkers[4].system.builder.vacancies == 1
    config = parse_run_config(walkers_input(tmp_path, {"list": [{"name": "cold", "temperature_K": 100},
                                                                {"ensemble": "bussi", "steps": 7, "seed": 42}]}))
    cold, other = config.walker_list()
    assert (cold.name, cold.md.temperature_K, cold.md.steps) == ("cold", 100, 30)
    assert (other.md.ensemble, other.md.steps, other.md.seed, other.md.temperature_K) == ("bussi", 7, 42, 800)
    assert parse_run_config(small_cu_run()).walker_list()[0].md == parse_run_config(small_cu_run()).md


@pytest.mark.parametrize("walkers, expected", [
    ({"list": [{"temperature_K": 300}], "product": {"temperature_K": [300]}}, "give exactly one of walkers.list"),
    ({"list": [{"name": "a"}, {"name": "a"}]}, "names ['a'] are used twice"),
    ({"list": [{"tempreature_K": 300}]}, "did you mean 'temperature_K'"),
    ({"product": {"temperature_K": [300, -1]}}, "walkers.product.temperature_K"),
    ({"list": [{"system": {"structure": "missing.xyz"}}]}, "not found"),
])
def test_bad_walker_inputs_are_one_line(tmp_path, walkers, expected):
    with pytest.raises((ConfigError, Exception)) as info:
        parse_run_config(walkers_input(tmp_path, walkers))
    assert expected in str(info.value) and "\n" not in str(info.value)


def _learner():
    from otf_statcut.engine import Learner
    from otf_statcut.labelers import ASECalculatorLabeler
    from otf_statcut.mlip import ModelConfig, TrainConfig

    labeler = ASECalculatorLabeler(EMT())
    frames = []
    for seed in range(4):
        atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 1))
        atoms.rattle(0.08, seed=seed)
        frames.append(labeler.label(atoms))
    learner = Learner.from_frames(
        frames, n=1000, head="ensemble", head_settings={"n_members": 2, "train_config": {"max_epochs": 3}},
        model=ModelConfig(species=("Cu",), num_features=8, num_layers=1, radial_mlp_width=8, r_max=4.0),
        train=TrainConfig(max_epochs=3, batch_size=2), val_fraction=0.5)
    learner.cutoffs = dataclasses.replace(learner.cutoffs, minimum=np.inf, maximum=np.inf)  # trust every step
    return learner, labeler


@pytest.mark.slow
def test_batched_walkers_equal_the_same_walkers_one_by_one(tmp_path):
    """Same seeds, same model: every walker's trajectory batched equals it evaluated alone, to
    round-off (the batch is one NequIP graph of all walkers)."""
    from otf_statcut.engine.label_policy import LabelPolicy
    from otf_statcut.engine.walkers import MultiWalkerDriver, MultiWalkerRun, start_walkers
    from otf_statcut.engine.system import build_structure

    learner, labeler = _learner()
    data = walkers_input(tmp_path, {"product": {"system": [CU, CU_VACANCY], "temperature_K": [300, 900]}},
                         **{"md.steps": 12})
    config = parse_run_config(data)
    final = {}
    for batched in (True, False):
        run = MultiWalkerRun(config, labeler)
        run.policy = LabelPolicy(labeler)
        starts = [build_structure(w.system, "test") for w in config.walker_list()]
        runlog = RunLog.create(tmp_path / f"run_{batched}.h5")
        walkers = start_walkers(config, starts)
        driver = MultiWalkerDriver(run, runlog, learner, walkers, [{}] * len(walkers), batched=batched)
        driver.run_all()
        runlog.close()
        final[batched] = [w.dyn.atoms.positions.copy() for w in walkers]
        sizes = driver.evaluator.batch_sizes
        assert (max(sizes) == 4) if batched else (max(sizes) == 1)
        assert all(w.step == 12 for w in walkers)
    for a, b in zip(final[True], final[False]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert not np.allclose(final[True][0], final[True][1][:len(final[True][0])])  # walkers differ


@pytest.mark.slow
def test_a_walkers_run_labels_retrains_and_logs_every_walker(tmp_path):
    from otf_statcut.engine.run import run_otf

    data = walkers_input(tmp_path, {"list": [{"temperature_K": 300}, {"temperature_K": 900, "ensemble": "bussi"},
                                             {"system": CU_VACANCY, "steps": 10}]}, **{"md.steps": 20})
    summary = run_otf(parse_run_config(data), comm=None)
    assert summary.status == "finished" and len(summary.walkers) == 3
    path = tmp_path / "out" / "run.h5"
    for i, steps in enumerate((20, 20, 10)):
        traj = read_table(path, walker_table(i), columns=("step", "sigma"))
        np.testing.assert_array_equal(traj["step"], np.arange(steps + 1))
    frames = read_dataset(path)
    walkers = {f.info["walker"] for f in frames if f.info["reason"] != "initial"}
    assert walkers and walkers <= {0, 1, 2}
    assert summary.n_retrains >= 1 and audit(path) == []
    assert sum(w["labels"] for w in summary.walkers) == summary.n_labels
    assert summary.batches[1] > summary.batches[0]  # evaluations were batched
    assert any("walkers: 3" in line for line in summary.lines())
    from otf_statcut.plots.run_report import plot_run  # the report shows the walkers side by side

    written = {p.name for p in plot_run(path, tmp_path / "figures")}
    assert {"run_walkers.png", "run_sigma_w0-300K.png", "run_cutoffs.png"} <= written


@pytest.mark.slow
def test_kill_and_resume_of_every_walker(tmp_path):
    data = walkers_input(tmp_path, {"list": [{"temperature_K": 300}, {"temperature_K": 900},
                                             {"system": CU_VACANCY}]}, **{"md.steps": 60})
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "otf_statcut.cli", "run", str(tmp_path / "w.yaml"), "--no-progress"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    path = tmp_path / "out" / "run.h5"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            with RunLog.open(path, "r") as log:
                cp = log.read_checkpoint()
                if cp is not None and min(w["step"] for w in cp.walkers) >= 10:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = [w["step"] for w in cp.walkers]
                    keys = [f.info["key"] for f in log.read_frames()]
                    break
        except Exception:  # noqa: BLE001 - the file may be mid-creation
            continue
    proc.wait()
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert audit(path) == []
    after = [f.info["key"] for f in read_dataset(path)]
    assert after[:len(keys)] == keys and len(set(after)) == len(after)
    for i in range(3):
        np.testing.assert_array_equal(read_table(path, walker_table(i), columns=("step",))["step"], np.arange(61))


@pytest.mark.slow
@pytest.mark.mpi
def test_label_groups_label_different_walkers_at_once_under_mpiexec(tmp_path):
    """``mpiexec -n 3``, ``label_groups: 2``: rank 0 drives four walkers, two groups of one rank
    label with EMT; labels of the same step from different walkers run at the same time."""
    from test_engine_gpaw_mpi import mpiexec

    data = walkers_input(tmp_path, {"product": {"temperature_K": [600, 900], "system": [CU, CU_VACANCY]},
                                    "label_groups": 2}, **{"md.steps": 15})
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run([mpiexec(), "-n", "3", sys.executable, "-m", "otf_statcut.cli", "run",
                           str(tmp_path / "w.yaml"), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("walkers: 4") == 1  # rank 0 alone prints
    path = tmp_path / "out" / "run.h5"
    assert audit(path) == []
    data = read_table(path, "dataset", columns=("step", "walker"))
    md = data["step"] >= 0
    assert len(set(data["walker"][md])) >= 2
    steps, counts = np.unique(data["step"][md], return_counts=True)
    assert counts.max() >= 2  # some step had labels of several walkers: dispatched to both groups
    bad = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "otf_statcut.cli", "run",
                          str(tmp_path / "w.yaml"), "--no-progress", "--output", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "needs at least 3 MPI ranks" in bad.stderr
