"""The benchmark HDF5 writer: layout (one group per dataset/method/seed), completed iterations,
orphan groups, summaries and CSVs, refusals (including files of the schema before seeds)."""

from __future__ import annotations

import csv
import dataclasses

import h5py
import numpy as np
import pytest

from otf_statcut.errors import UserError
from otf_statcut.benchmark.metrics import seed_statistics
from otf_statcut.io.benchmark_results import (
    ITERATION_ARRAYS,
    SCHEMA,
    SCHEMA_VERSION,
    BenchmarkResults,
    IterationRecord,
    MethodSummary,
    record_columns,
    write_seed_statistics_csv,
    write_summary_csv,
)


def _record(i: int, size: int = 5) -> IterationRecord:
    values = {}
    for f in dataclasses.fields(IterationRecord):
        dtype = f.metadata["dtype"]
        values[f.name] = "maxwell" if dtype.startswith("S") else (i if dtype.startswith("i") else 0.5 + i)
    values.update(iteration=i, dataset_size=size, precision=float("nan"))
    return IterationRecord(**values)


def _arrays(n_frames: int = 4, n_atoms: int = 12) -> dict:
    rng = np.random.default_rng(0)
    out = {
        "labelled": np.array([0, 2]),
        "is_val": np.array([False, True]),
        "selected": np.array([3]),
        "frame_sigma": rng.random(n_frames),
        "frame_error": rng.random(n_frames),
        "sampling_errors": rng.random(n_atoms),
        "sampling_sigma": rng.random(n_atoms),
        "val_errors": rng.random(3),
        "val_sigma": rng.random(3),
        "sweep_error_cutoffs": np.linspace(0, 1, 5),
        "sweep_sigma_cutoffs": np.linspace(0, 1, 5),
        "sweep_precision": rng.random((5, 5)),
        "sweep_recall": rng.random((5, 5)),
        "sweep_f1": rng.random((5, 5)),
    }
    assert set(out) == set(ITERATION_ARRAYS)
    return out


FITS = {"error_fit": {"name": "maxwell", "params": [0.1]},
        "sigma_fit": {"name": "gamma", "params": [2.0, 0.05]}}


@pytest.fixture
def store(tmp_path):
    s = BenchmarkResults(tmp_path / "out" / "results.h5")
    settings = {"a": 1, "b": {"c": 2}}
    assert s.initialise(input_text="datasets: []", settings=settings, fingerprint="abc") is False
    s.write_dataset("d1", path="x.extxyz", frame_sizes=[3, 3, 3, 3], species=["Cu"])
    return s


def test_layout_and_round_trip(store):
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS, seed=0)
    store.append_iteration("d1", "oracle", _record(1, size=7), _arrays(), FITS, seed=0)
    extra = dict(_arrays(), frame_severity=np.array([0.5, 1.0000001, 2.5, 0.1]), custom=np.arange(3))
    store.append_iteration("d1", "oracle", _record(0, size=6), extra, FITS, seed=3)
    records = store.completed("d1", "oracle")  # seed 0 by default
    assert [r.iteration for r in records] == [0, 1]
    assert records[1].dataset_size == 7 and records[0].error_fit == "maxwell"
    assert np.isnan(records[0].precision)
    assert [r.dataset_size for r in store.completed("d1", "oracle", seed=3)] == [6]
    data = store.iteration_arrays("d1", "oracle", -1)
    assert data["iteration"] == 1 and data["seed"] == 0 and data["fits"]["sigma_fit"]["name"] == "gamma"
    assert data["sampling_errors"].dtype == np.float32 and data["labelled"].tolist() == [0, 2]
    other = store.iteration_arrays("d1", "oracle", 0, seed=3)
    assert other["frame_severity"].dtype == np.float64 and other["frame_severity"][1] == 1.0000001  # exact
    assert other["custom"].tolist() == [0, 1, 2] and "frame_severity" not in data
    assert store.status("d1", "oracle") == ("running", "")
    assert store.status("d1", "oracle", seed=1) == ("new", "")
    assert store.status("d1", "gp") == ("new", "")
    assert store.seeds("d1", "oracle") == [0, 3] and store.seeds("d1", "gp") == []
    assert store.runs() == [("d1", "oracle", 0), ("d1", "oracle", 3)]
    with h5py.File(store.path, "r") as f:  # readable with plain h5py
        assert f.attrs["schema"] == SCHEMA and f.attrs["schema_version"] == SCHEMA_VERSION == 2
        assert f["d1/oracle/seed_0/records"].shape == (2,)
        assert f["d1/oracle/seed_3/records"].shape == (1,)
        assert f["d1/oracle/seed_3"].attrs["seed"] == 3
        assert list(f["d1/oracle"].keys()) == ["seed_0", "seed_3"]
        assert f["d1/frame_sizes"][()].tolist() == [3, 3, 3, 3]
        assert "sweep_f1" in f["d1/oracle/seed_0/iterations/1"]
    info = store.dataset_info("d1")
    assert info["n_atoms"] == 12 and info["species"] == ["Cu"]
    assert [c[0] for c in record_columns()][:3] == ["iteration", "dataset_size", "n_train"]


def test_out_of_order_iteration_refused(store):
    with pytest.raises(ValueError, match="iteration 1"):
        store.append_iteration("d1", "oracle", _record(1), _arrays(), FITS, seed=0)
    with pytest.raises(ValueError, match="missing"):
        store.append_iteration("d1", "oracle", _record(0), {"labelled": np.zeros(1)}, FITS, seed=0)
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS, seed=0)
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS, seed=1)  # another run: from 0


def test_orphan_iteration_is_ignored_and_replaced(store):
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS, seed=2)
    with h5py.File(store.path, "a") as f:  # an interrupted write: arrays of iteration 1, no row
        f["d1/oracle/seed_2/iterations"].create_group("1").create_dataset("labelled", data=[9, 9, 9])
    assert len(store.completed("d1", "oracle", seed=2)) == 1
    store.append_iteration("d1", "oracle", _record(1), _arrays(), FITS, seed=2)
    assert store.iteration_arrays("d1", "oracle", 1, seed=2)["labelled"].tolist() == [0, 2]


def _summary(method="oracle", seed=0, **changes) -> MethodSummary:
    summary = MethodSummary("d1", method, seed, "converged", 1, 5, 5, 0.1, 0.2, 0.3, 1.0, 1.0, 1.0, 0.5, 0.3,
                            0.3, 0.9, 12.0)
    return dataclasses.replace(summary, **changes)


def test_finish_summary_and_reopen(store, tmp_path):
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS, seed=1)
    assert store.summary("d1", "oracle", seed=1) is None
    summary = _summary(seed=1)
    store.finish(summary, "no candidates")
    assert store.status("d1", "oracle", seed=1) == ("converged", "no candidates")
    assert store.status("d1", "oracle", seed=0) == ("new", "")
    assert store.summary("d1", "oracle", seed=1) == summary
    assert store.summary("d1", "oracle", seed=0) is None
    store.reopen("d1", "oracle", seed=1)
    assert store.status("d1", "oracle", seed=1)[0] == "running"
    path = write_summary_csv(tmp_path / "summary.csv", [summary])
    rows = list(csv.DictReader(open(path)))
    assert rows[0]["method"] == "oracle" and rows[0]["seed"] == "1" and rows[0]["final_dataset_size"] == "5"
    with pytest.raises(ValueError, match="final status"):
        store.finish(dataclasses.replace(summary, status="running"), "")


def test_summary_csvs(tmp_path):
    runs = [_summary("oracle", 0, dft_labels=10, final_mean_error_sampling=0.10),
            _summary("oracle", 1, dft_labels=12, final_mean_error_sampling=0.20),
            _summary("random", 0, dft_labels=40, final_mean_error_sampling=0.105, status="max_iterations"),
            _summary("random", 1, dft_labels=40, final_mean_error_sampling=0.5, status="max_iterations")]
    curves = {("d1", "oracle", 0): ([5, 10], [0.3, 0.1]), ("d1", "oracle", 1): ([5, 12], [0.4, 0.2]),
              ("d1", "random", 0): ([5, 10, 20, 40], [0.4, 0.2, 0.105, 0.105]),
              ("d1", "random", 1): ([5, 10, 20, 40], [0.6, 0.6, 0.5, 0.5])}
    rows, per_run = seed_statistics(runs, curves)
    write_summary_csv(tmp_path / "summary.csv", runs, per_run)
    table = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["method"], r["seed"]) for r in table] == [("oracle", "0"), ("oracle", "1"), ("random", "0"),
                                                         ("random", "1")]
    assert float(table[2]["oracle_target"]) == pytest.approx(0.11)
    assert table[2]["labels_to_oracle"] == "20" and table[3]["labels_to_oracle"] == "nan"
    write_seed_statistics_csv(tmp_path / "summary_mean.csv", rows)
    mean = {r["method"]: r for r in csv.DictReader(open(tmp_path / "summary_mean.csv"))}
    assert float(mean["oracle"]["dft_labels_mean"]) == 11 and float(mean["oracle"]["dft_labels_sd"]) == \
        pytest.approx(np.sqrt(2), rel=1e-5)
    assert (mean["random"]["labels_to_oracle_reached"], mean["random"]["labels_to_oracle_runs"]) == ("1", "2")
    assert mean["random"]["statuses"] == "max_iterations:2" and mean["random"]["seeds"] == "0 1"


def test_schema_version_1_refused(tmp_path):
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:  # a results file written before seeds
        f.attrs["schema"] = SCHEMA
        f.attrs["schema_version"] = 1
    with pytest.raises(UserError, match="schema_version 1") as info:
        BenchmarkResults(old).check()
    message = str(info.value)
    assert "\n" not in message and "--restart" in message and "seed_<s>" in message
    with pytest.raises(UserError, match="schema_version 1"):
        BenchmarkResults(old).initialise(input_text="", settings={}, fingerprint="abc")


def test_resume_checks_fingerprint_and_dataset(store):
    assert store.initialise(input_text="", settings={"a": 1, "b": {"c": 2}}, fingerprint="abc") is True
    with pytest.raises(UserError, match=r"b\.c") as info:
        store.initialise(input_text="", settings={"a": 1, "b": {"c": 3}}, fingerprint="xyz")
    assert "--restart" in str(info.value)
    store.write_dataset("d1", path="x.extxyz", frame_sizes=[3, 3, 3, 3], species=["Cu"])  # same: fine
    with pytest.raises(UserError, match="d1"):
        store.write_dataset("d1", path="y.extxyz", frame_sizes=[3, 3, 3], species=["Cu"])


def test_foreign_files_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        BenchmarkResults(tmp_path / "none.h5").check()
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = "something-else"
    with pytest.raises(UserError, match="schema"):
        BenchmarkResults(other).check()
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(UserError, match="HDF5"):
        BenchmarkResults(text).check()
