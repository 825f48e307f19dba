"""End to end: the replay protocol with tiny real NequIP models on EMT-labelled Cu cells.

Every head runs through ``otf-statcut benchmark``; the stored records are checked against the
protocol's rules (doubling, stop at the first frame above the maximum cutoff, oracle precision =
recall = 1), an interrupted run resumes from its file, ``mpiexec -n 2`` spreads datasets over
ranks into one file, and ``otf-statcut plot`` draws PNGs.
"""

from __future__ import annotations

import csv
import os
import shutil
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
from otf_statcut.cli import main
from otf_statcut.data import labelled_frame
from otf_statcut.engine.decision import Action
from otf_statcut.benchmark.selection import classify_frames
from otf_statcut.io.benchmark_results import BenchmarkResults

pytestmark = pytest.mark.slow

METHODS = ["ensemble", "gp", "distance", "oracle", "random"]


def _cu_frames(n: int = 40, seed: int = 1, spike: int | None = 24):
    """8-atom fcc Cu cells rattled more and more along the sampling order, one frame rattled far more."""
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    frames = []
    for i in range(n):
        atoms = base.copy()
        amplitude = 0.1 if i == spike else 0.01 + 0.05 * i / (n - 1)
        atoms.positions += rng.normal(scale=amplitude, size=atoms.positions.shape)
        atoms.calc = EMT()
        frames.append(labelled_frame(atoms, atoms.get_potential_energy(), atoms.get_forces()))
    return frames


def _write_input(folder: Path, methods, max_iterations: int = 4, datasets=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if datasets is None:
        ase.io.write(folder / "cu.extxyz", _cu_frames())
        datasets = [{"name": "cu", "path": "cu.extxyz"}]
    data = {
        "datasets": datasets,
        "methods": list(methods),
        "protocol": {"seed_frames": 6, "val_fraction": 0.34, "max_iterations": max_iterations,
                     "sweep_points": 12, "seeds": 1},
        "model": {"num_features": 8, "num_layers": 1, "radial_mlp_width": 16, "r_max": 3.5},
        "training": {"max_epochs": 8, "batch_size": 4},
        "heads": {"ensemble": {"n_members": 2}, "gp": {"iterations": 20, "num_inducing": 8}},
    }
    path = folder / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def run_all(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    path = _write_input(folder, METHODS)
    out = folder / "out"
    proc = subprocess.run([sys.executable, "-m", "otf_statcut.cli", "benchmark", str(path), "-o", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_every_method_runs_and_summarises(run_all):
    out, stdout = run_all
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        assert row["status"] in ("converged", "stalled", "exhausted", "max_iterations", "label_budget")
        assert int(row["final_dataset_size"]) >= 6 and int(row["iterations"]) >= 1
        assert row["dft_labels"] == row["final_dataset_size"]
    for method in METHODS:  # one readable line per iteration
        assert f"cu {method:<8} s0  it  0: size    6" in stdout
    assert (out / "benchmark.log").read_text().count(" it  0: ") == len(METHODS)


def test_records_follow_the_protocol(run_all):
    out, _ = run_all
    store = BenchmarkResults(out / "results.h5")
    seeds = set()
    doubled = stopped = 0
    for method in METHODS:
        records = store.completed("cu", method)
        for k, record in enumerate(records):
            data = store.iteration_arrays("cu", method, k)
            labelled, selected = data["labelled"], data["selected"]
            seeds.add(tuple(store.iteration_arrays("cu", method, 0)["labelled"].tolist()))
            assert record.dataset_size == labelled.size == record.n_train + record.n_val
            assert record.n_added == selected.size <= record.dataset_size  # at most doubling
            assert not np.isin(selected, labelled).any()
            if k + 1 < len(records):  # what was selected is what the next model trained on
                following = store.iteration_arrays("cu", method, k + 1)
                assert following["labelled"].tolist() == labelled.tolist() + selected.tolist()
                # frames never change sides; the validation share holds as the data set grows
                assert following["is_val"][:labelled.size].tolist() == data["is_val"].tolist()
            assert data["is_val"].sum() >= int(0.34 * labelled.size + 1e-9)
            # the stop is the first unlabelled frame above the maximum cutoff, and nothing after it is taken
            actions = classify_frames(data["frame_sigma"], record.sigma_minimum, record.sigma_maximum)
            halts = [i for i in np.flatnonzero(actions == Action.HALT) if i not in set(labelled.tolist())]
            assert record.stopped_at == (halts[0] if halts else -1)
            if record.stopped_at >= 0:
                assert np.all(selected <= record.stopped_at)
            if method != "random":  # random draws from the reachable window; the others take uncertain frames
                assert np.all(actions[selected] != Action.TRUST)
            assert record.sigma_maximum >= record.sigma_minimum
            assert data["sweep_f1"].shape == (12, 12)
            doubled += record.n_added == record.dataset_size < record.n_candidates + record.dataset_size
            stopped += record.stopped_at >= 0 and record.n_added > 0
    assert len(seeds) == 1  # every method starts from the same seed frames
    assert doubled and stopped  # the data exercise both the doubling limit and the stop


def test_oracle_precision_and_recall_are_one(run_all):
    out, _ = run_all
    store = BenchmarkResults(out / "results.h5")
    checked = 0
    for method in ("oracle", "random"):
        for record in store.completed("cu", method):
            assert record.sigma_minimum == pytest.approx(record.error_cutoff, rel=1e-12)
            # σ is the error itself: the same family as the error fit (Maxwell, or the documented
            # tail fallback when the KS test rejects the Maxwell), hence the same cutoff
            assert record.sigma_fit == record.error_fit and record.sigma_fit in ("maxwell", "tail")
            if record.n_high_error > 0:
                assert record.precision == 1.0 and record.recall == 1.0 and record.f1 == 1.0
                checked += 1
    assert checked > 0


def test_plot_command_draws_pngs(run_all, tmp_path, capsys):
    out, _ = run_all
    figures = tmp_path / "figures"
    assert main(["plot", str(out / "results.h5"), "-o", str(figures)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.name for p in figures.iterdir())
    expected = {"curves_cu.png", "parity_cu.png", "calibration_cu.png"} | {
        f"{kind}_cu_{m}.png" for m in METHODS for kind in ("sweeps", "distributions")} | {"learning_cu.png",
                                                                                     "elements_cu.png"}
    assert set(names) == expected
    assert len(printed) == len(expected)
    for path in figures.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < path.stat().st_size < 400_000
    assert main(["plot", str(out / "results.h5"), "-o", str(tmp_path / "last"), "--iteration", "last"]) == 0


class Interrupt(Exception):
    pass


def _same(a, b) -> bool:
    """Records equal field by field, NaN equal to NaN (precision is NaN when nothing is high-error)."""
    import dataclasses
    import math

    def norm(r):
        return [None if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(r)]

    return len(a) == len(b) and all(norm(x) == norm(y) for x, y in zip(a, b))


def test_resume_after_interruption(tmp_path):
    path = _write_input(tmp_path, ["oracle", "distance"], max_iterations=4)
    config = load_benchmark_config(path)
    out = tmp_path / "out"

    def stop_after_second(dataset, method, seed, record):
        if method == "distance" and record.iteration == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_benchmark(config, out, observers=[stop_after_second], progress=False)
    store = BenchmarkResults(out / "results.h5")
    before = {m: store.completed("cu", m) for m in ("oracle", "distance")}
    assert len(before["distance"]) == 2 and store.status("cu", "distance")[0] == "running"
    assert store.status("cu", "oracle")[0] != "running"

    seen = []
    summaries = run_benchmark(config, out, observers=[lambda d, m, s, r: seen.append((m, r.iteration))],
                              progress=False)
    after = {m: store.completed("cu", m) for m in ("oracle", "distance")}
    assert _same(after["oracle"], before["oracle"])  # finished: not run again
    assert _same(after["distance"][:2], before["distance"])  # same rows, same wall times: not recomputed
    assert [s.method for s in summaries] == ["oracle", "distance"]
    assert (out / "summary.csv").is_file()

    # the resumed run continues where it stopped and selects what an uninterrupted run selects
    fresh = tmp_path / "fresh"
    run_benchmark(config, fresh, progress=False)
    reference = BenchmarkResults(fresh / "results.h5").completed("cu", "distance")
    assert seen == [("distance", i) for i in range(2, len(reference))]
    assert [r.dataset_size for r in reference] == [r.dataset_size for r in after["distance"]]
    for k in range(len(reference)):
        a = BenchmarkResults(fresh / "results.h5").iteration_arrays("cu", "distance", k)
        b = store.iteration_arrays("cu", "distance", k)
        assert a["labelled"].tolist() == b["labelled"].tolist()
        assert a["selected"].tolist() == b["selected"].tolist()

    # a raised budget continues a finished run; other settings are refused
    more = yaml.safe_load(path.read_text())
    more["protocol"]["max_iterations"] = 5
    path.write_text(yaml.safe_dump(more))
    status = store.status("cu", "distance")[0]
    run_benchmark(load_benchmark_config(path), out, progress=False)
    if status == "max_iterations":
        assert len(store.completed("cu", "distance")) > len(after["distance"])
    more["protocol"]["val_fraction"] = 0.5
    path.write_text(yaml.safe_dump(more))
    assert main(["benchmark", str(path), "-o", str(out), "--no-progress", "-q"]) == 2


@pytest.mark.mpi
def test_datasets_spread_over_two_ranks(tmp_path):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists():
        mpiexec = shutil.which("mpiexec")
    assert mpiexec, "mpiexec not found beside the Python executable nor on PATH"
    ase.io.write(tmp_path / "a.extxyz", _cu_frames(16, seed=2, spike=None))
    ase.io.write(tmp_path / "b.extxyz", _cu_frames(16, seed=3, spike=None))
    path = _write_input(tmp_path, ["oracle"], max_iterations=2,
                        datasets=[{"name": "a", "path": "a.extxyz"}, {"name": "b", "path": "b.extxyz"}])
    command = [str(mpiexec), "-n", "2", sys.executable, "-m", "otf_statcut.cli", "benchmark", str(path),
               "-o", str(tmp_path / "out"), "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[rank 0]" in proc.stdout and "[rank 1]" in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert sorted(r["dataset"] for r in rows) == ["a", "b"]
    with h5py.File(tmp_path / "out" / "results.h5", "r") as f:
        assert f["a/oracle/seed_0/records"].shape[0] >= 1 and f["b/oracle/seed_0/records"].shape[0] >= 1


def test_a_run_that_flags_nothing_while_errors_are_high_is_stalled_not_converged():
    """The issue: 'converged' with hundreds of high-error atoms unflagged. A converged selection
    that leaves more unlabelled sampling atoms above their element's error cutoff than the
    Poisson 99.9 % quantile of ~1 per element is reported as stalled; atoms of frames already in
    the data set do not count (they are labelled)."""
    from ase import Atoms

    from otf_statcut.benchmark.replay import SamplingSet

    from otf_statcut.benchmark.protocol import NextStep, honest, stall_limit, unflagged_high_error

    assert stall_limit(1) == 5 and stall_limit(2) == 8
    frames = [Atoms("BeW", positions=[[0, 0, 0], [2, 0, 0]]) for _ in range(10)]
    sampling = SamplingSet("t", "-", tuple(frames))
    errors = np.zeros(20)
    errors[0::2] = 0.5  # every Be atom above its cutoff 0.3; W atoms (cutoff 0.8) fine
    arrays = {"sampling_errors": errors, "element_symbols": np.array([b"Be", b"W"]),
              "element_error_cutoff": np.array([0.3, 0.8]), "labelled": np.array([0])}
    assert unflagged_high_error(arrays, sampling) == 9  # frame 0 is labelled
    done = NextStep(np.zeros(0, dtype=np.int64), -1, 0, "converged")
    assert honest(done, arrays, sampling).status == "stalled"  # 9 > 8
    assert honest(done, {**arrays, "labelled": np.array([0, 1])}, sampling).status == "converged"  # 8
    one = {"sampling_errors": errors, "element_symbols": np.array([b"all"]),
           "element_error_cutoff": np.array([0.45]), "labelled": np.arange(4)}
    assert unflagged_high_error(one, sampling) == 6 and honest(done, one, sampling).status == "stalled"
    running = NextStep(np.arange(3), -1, 3, "running")
    assert honest(running, arrays, sampling) is running
