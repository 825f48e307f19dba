"""Seeds in the benchmark: the over-seeds statistics on hand-made runs with known answers, and the
runner's (dataset, method, seed) runs: one group per seed, seed-dependent seed frames, resume per
run, a seed added later. The fast runner tests replace the model fit of an iteration by seeded
random σ (the protocol around it is the real one); one slow test trains real tiny models."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.benchmark import load_benchmark_config, run_benchmark
from otf_statcut.benchmark.metrics import (
    frame_counts,
    labels_to_reach,
    mean_sd,
    oracle_targets,
    seed_statistics,
)
from otf_statcut.benchmark.protocol import _Run, next_step
from otf_statcut.data import labelled_frame
from otf_statcut.io.benchmark_results import (
    ITERATION_ARRAYS,
    BenchmarkResults,
    IterationRecord,
    MethodSummary,
)


# ------------------------------------------------------------------------------ statistics
def _summary(method: str, seed: int, labels: int, error: float, val: float = 0.1, iterations: int = 3,
             status: str = "converged") -> MethodSummary:
    return MethodSummary("d", method, seed, status, iterations, labels, labels, 0.0, val, error, 1.0, 1.0,
                         1.0, 1.0, 0.1, 0.1, 0.2, 1.0)


def test_labels_to_reach_and_mean_sd():
    assert labels_to_reach([5, 10, 20], [0.3, 0.11, 0.1], 0.11) == 10  # <= counts
    assert labels_to_reach([5, 10, 20], [0.3, 0.2, 0.11], 0.11) == 20  # the first iteration at or below
    assert math.isnan(labels_to_reach([], [], 0.1))
    assert math.isnan(labels_to_reach([5, 10], [0.3, 0.2], 0.11))
    assert math.isnan(labels_to_reach([5, 10], [0.3, 0.2], float("nan")))
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    m, sd = mean_sd([4.0, float("nan")])
    assert m == 4.0 and math.isnan(sd)  # one finite value: no sd
    assert all(math.isnan(x) for x in mean_sd([]))
    assert oracle_targets({("d", "oracle", 0): 0.1, ("d", "gp", 0): 0.5}) == {("d", 0): pytest.approx(0.11)}


def test_seed_statistics_known_answers():
    # oracle final sampling errors 0.10 (seed 0), 0.20 (seed 1), 0.30 (seed 2): targets 0.11, 0.22, 0.33
    summaries = [
        _summary("oracle", 0, 10, 0.10, val=0.2), _summary("oracle", 1, 12, 0.20, val=0.4),
        _summary("oracle", 2, 14, 0.30, val=0.6, iterations=4),
        _summary("gp", 0, 20, 0.105), _summary("gp", 1, 40, 0.50, status="max_iterations"),
        _summary("gp", 2, 30, 0.25),
        _summary("random", 0, 50, 0.2, status="max_iterations"),  # seed 1 and 2 of random not finished
    ]
    curves = {
        ("d", "oracle", 0): ([5, 10], [0.3, 0.10]),
        ("d", "oracle", 1): ([5, 12], [0.5, 0.20]),
        ("d", "oracle", 2): ([5, 8, 14], [0.5, 0.32, 0.30]),  # 0.32 <= 0.33: reached at 8 labels
        ("d", "gp", 0): ([5, 10, 20], [0.3, 0.12, 0.105]),  # 0.105 <= 0.11: at 20 labels
        ("d", "gp", 1): ([5, 10, 20, 40], [0.6, 0.5, 0.5, 0.5]),  # never <= 0.22
        ("d", "gp", 2): ([5, 10, 30], [0.4, 0.33, 0.25]),  # 0.33 <= 0.33: at 10 labels
        ("d", "random", 0): ([5, 50], [0.3, 0.2]),  # never <= 0.11
    }
    rows, per_run = seed_statistics(summaries, curves)
    by = {r.method: r for r in rows}
    assert [r.method for r in rows] == ["oracle", "gp", "random"]
    oracle, gp, rnd = by["oracle"], by["gp"], by["random"]
    assert oracle.n_seeds == 3 and oracle.seeds == "0 1 2" and oracle.statuses == "converged:3"
    assert oracle.dft_labels_mean == 12 and oracle.dft_labels_sd == pytest.approx(2.0)
    assert oracle.iterations_mean == pytest.approx(10 / 3)
    assert oracle.iterations_sd == pytest.approx(math.sqrt(1 / 3))
    assert oracle.final_mean_error_sampling_mean == pytest.approx(0.2)
    assert oracle.final_mean_error_sampling_sd == pytest.approx(0.1)
    assert oracle.final_mean_error_val_mean == pytest.approx(0.4)
    assert oracle.final_mean_error_val_sd == pytest.approx(0.2)
    assert (oracle.labels_to_oracle_reached, oracle.labels_to_oracle_runs) == (3, 3)
    assert oracle.labels_to_oracle_mean == pytest.approx((10 + 12 + 8) / 3)  # seed 0: 0.3 > 0.11, then 10
    assert per_run[("d", "oracle", 0)] == (pytest.approx(0.11), 10.0)
    assert per_run[("d", "oracle", 1)][1] == 12.0  # 0.5 > 0.22, then 0.20
    assert per_run[("d", "oracle", 2)][1] == 8.0
    assert gp.statuses == "converged:2 max_iterations:1"
    assert gp.dft_labels_mean == 30 and gp.dft_labels_sd == pytest.approx(10.0)
    assert (gp.labels_to_oracle_reached, gp.labels_to_oracle_runs) == (2, 3)
    assert gp.labels_to_oracle_mean == 15 and gp.labels_to_oracle_sd == pytest.approx(math.sqrt(50))
    assert math.isnan(per_run[("d", "gp", 1)][1])
    assert rnd.n_seeds == 1 and math.isnan(rnd.dft_labels_sd)  # one seed: no sd
    assert (rnd.labels_to_oracle_reached, rnd.labels_to_oracle_runs) == (0, 1)
    assert math.isnan(rnd.labels_to_oracle_mean)

    # without the oracle of a seed there is no target for that seed
    without = [s for s in summaries if not (s.method == "oracle" and s.seed == 1)]
    rows, per_run = seed_statistics(without, curves)
    gp = {r.method: r for r in rows}["gp"]
    assert (gp.labels_to_oracle_reached, gp.labels_to_oracle_runs) == (2, 2)
    assert math.isnan(per_run[("d", "gp", 1)][0])


def test_seed_table_prints_reached_counts():
    from otf_statcut.commands.benchmark import seed_table

    rows, _ = seed_statistics([_summary("oracle", 0, 10, 0.1), _summary("oracle", 1, 14, 0.1),
                               _summary("random", 0, 40, 0.5), _summary("random", 1, 40, 0.5)],
                              {("d", "oracle", 0): ([10], [0.1]), ("d", "oracle", 1): ([14], [0.1]),
                               ("d", "random", 0): ([40], [0.5]), ("d", "random", 1): ([40], [0.5])})
    text = seed_table(rows)
    assert "12.0 ± 2.8" in text and "(2/2)" in text and "not reached (0/2)" in text


# ------------------------------------------------------------------------------ runner, no training
def _frames(n: int = 24, seed: int = 0, repeat: int = 1):
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((repeat, 1, 1))
    out = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        out.append(labelled_frame(atoms, atoms.get_potential_energy(), atoms.get_forces()))
    return out


def _fake_iteration(self, iteration, labelled, is_val):
    """An iteration with seeded random σ in place of the trained model and head."""
    n_frames = len(self.sampling)
    rng = np.random.default_rng([self.protocol.seed, iteration, len(labelled)])
    frame_sigma = rng.uniform(0.0, 0.9, n_frames)  # never above the maximum 1.0
    step = next_step(self.method, iteration, frame_sigma, 0.4, 1.0, labelled, self.protocol)
    flags = [bool(v) if v is not None else k % 3 == 0 for k, v in enumerate(is_val)]
    between, above = frame_counts(frame_sigma, 0.4, 1.0, labelled)
    values = {}
    for f in dataclasses.fields(IterationRecord):
        dtype = f.metadata["dtype"]
        values[f.name] = "maxwell" if dtype.startswith("S") else (0 if dtype.startswith("i") else 0.5)
    values.update(iteration=iteration, dataset_size=len(labelled), n_added=int(step.selected.size),
                  n_candidates=step.n_candidates, stopped_at=step.stopped_at, n_between=between,
                  n_above=above,
                  mean_error_sampling=1.0 / len(labelled), sigma_minimum=0.4, sigma_maximum=1.0)
    n_atoms = self.sampling.n_atoms
    arrays = {name: np.zeros(3) for name in ITERATION_ARRAYS}
    arrays.update(labelled=np.asarray(labelled), is_val=np.asarray(flags), selected=step.selected,
                  frame_sigma=frame_sigma, frame_error=frame_sigma, sampling_errors=np.zeros(n_atoms),
                  sampling_sigma=np.zeros(n_atoms), sweep_precision=np.zeros((3, 3)),
                  sweep_recall=np.zeros((3, 3)), sweep_f1=np.zeros((3, 3)))
    return IterationRecord(**values), arrays, {"cutoffs": {"minimum": 0.4, "maximum": 1.0}}, step


def _input(folder: Path, seeds, methods=("oracle", "random"), max_iterations: int = 3) -> Path:
    if not (folder / "cu.extxyz").exists():
        ase.io.write(folder / "cu.extxyz", _frames())
    data = {"datasets": [{"name": "cu", "path": "cu.extxyz"}], "methods": list(methods),
            "protocol": {"seed_frames": 4, "seeds": seeds, "max_iterations": max_iterations,
                         "warm_start": False}}
    path = folder / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Interrupt(Exception):
    pass


def test_runs_per_seed_resume_and_added_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(_Run, "iteration", _fake_iteration)
    config = load_benchmark_config(_input(tmp_path, [0, 1]))
    out = tmp_path / "out"

    def stop(dataset, method, seed, record):
        if (method, seed, record.iteration) == ("random", 1, 1):
            raise Interrupt

    with pytest.raises(Interrupt):
        run_benchmark(config, out, observers=[stop], progress=False)
    store = BenchmarkResults(out / "results.h5")
    assert store.status("cu", "random", seed=1)[0] == "running"
    assert len(store.completed("cu", "random", seed=1)) == 2
    for m, s in (("oracle", 0), ("random", 0), ("oracle", 1)):  # seed by seed: these ran first
        assert store.status("cu", m, seed=s)[0] == "max_iterations"

    seen = []
    summaries = run_benchmark(config, out, observers=[lambda d, m, s, r: seen.append((m, s, r.iteration))],
                              progress=False)
    assert seen == [("random", 1, 2)]  # only the interrupted run continues, after its last iteration
    assert [(x.method, x.seed) for x in summaries] == [("oracle", 0), ("oracle", 1), ("random", 0),
                                                       ("random", 1)]

    # one group per run; seed frames differ between seeds, equal between methods of a seed
    first = {(m, s): tuple(store.iteration_arrays("cu", m, 0, seed=s)["labelled"].tolist())
             for m in ("oracle", "random") for s in (0, 1)}
    assert first[("oracle", 0)] == first[("random", 0)] and first[("oracle", 1)] == first[("random", 1)]
    assert first[("oracle", 0)] != first[("oracle", 1)]
    with h5py.File(out / "results.h5", "r") as f:
        assert sorted(f["cu/oracle"].keys()) == ["seed_0", "seed_1"]
        assert f["cu/random/seed_1/records"].shape == (3,)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("oracle", "0"), ("oracle", "1"), ("random", "0"),
                                                         ("random", "1")]
    assert {"oracle_target", "labels_to_oracle"} <= set(rows[0])
    mean = list(csv.DictReader(open(out / "summary_mean.csv")))
    assert [(r["method"], r["n_seeds"], r["seeds"]) for r in mean] == [("oracle", "2", "0 1"),
                                                                       ("random", "2", "0 1")]

    # a finished benchmark does nothing; a seed added later runs that seed only (same results file)
    seen.clear()
    run_benchmark(config, out, observers=[lambda d, m, s, r: seen.append((m, s))], progress=False)
    assert seen == []
    more = load_benchmark_config(_input(tmp_path, 3))
    run_benchmark(more, out, observers=[lambda d, m, s, r: seen.append((m, s))], progress=False)
    assert set(seen) == {("oracle", 2), ("random", 2)}
    assert store.seeds("cu", "random") == [0, 1, 2]
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 6


def test_run_config_follows_the_seed(tmp_path):
    config = load_benchmark_config(_input(tmp_path, 2, methods=("gp",)))
    from otf_statcut.benchmark import load_sampling_set

    sampling = load_sampling_set(config.datasets[0])
    store = BenchmarkResults(tmp_path / "r.h5")
    runs = [_Run(sampling, "gp", config, store, tmp_path / "ck", seed) for seed in (0, 1)]
    assert [r.protocol.seed for r in runs] == [0, 1]
    assert [r.config.model_config(sampling.species).seed for r in runs] == [0, 1000]
    assert [r.config.training.seed for r in runs] == [0, 1000]
    assert [r.new_head().settings["seed"] for r in runs] == [0, 1000]
    assert [r.checkpoints.name for r in runs] == ["seed_0", "seed_1"]


# ------------------------------------------------------------------------------ real training
@pytest.mark.slow
def test_two_seeds_end_to_end(tmp_path):
    """Tiny NequIP models, oracle and random, 2 seeds: two seed groups with other seed frames and
    other models, the tables and the learning figure."""
    ase.io.write(tmp_path / "cu.extxyz", _frames(20, seed=3, repeat=2))
    data = {"datasets": [{"name": "cu", "path": "cu.extxyz"}], "methods": ["oracle", "random"],
            "protocol": {"seed_frames": 6, "val_fraction": 0.34, "max_iterations": 2, "sweep_points": 8,
                         "seeds": 2},
            "model": {"num_features": 8, "num_layers": 1, "radial_mlp_width": 16, "r_max": 3.5},
            "training": {"max_epochs": 4, "batch_size": 4}}
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "otf_statcut.cli", "benchmark", str(tmp_path / "input.yaml"),
                           "-o", str(out), "--no-progress"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "labels to 1.1×oracle" in proc.stdout and "cu oracle   s1  it  0" in proc.stdout
    store = BenchmarkResults(out / "results.h5")
    assert store.seeds("cu", "oracle") == store.seeds("cu", "random") == [0, 1]
    a, b = (store.iteration_arrays("cu", "oracle", 0, seed=s) for s in (0, 1))
    assert a["labelled"].tolist() != b["labelled"].tolist()
    assert not np.array_equal(a["sampling_errors"], b["sampling_errors"])
    assert (out / "checkpoints" / "cu" / "oracle" / "seed_1").is_dir()
    from otf_statcut.plots.benchmark import plot_benchmark

    written = {p.name for p in plot_benchmark(out / "results.h5", tmp_path / "fig", seed=1)}
    assert {"learning_cu.png", "curves_cu.png"} <= written
