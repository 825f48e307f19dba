"""The benchmark HDF5 writer: layout, completed iterations, orphan groups, summaries, refusals."""

from __future__ import annotations

import csv
import dataclasses

import h5py
import numpy as np
import pytest

from otf_statcut.errors import UserError
from otf_statcut.io.benchmark_results import (
    ITERATION_ARRAYS,
    SCHEMA,
    SCHEMA_VERSION,
    BenchmarkResults,
    IterationRecord,
    MethodSummary,
    record_columns,
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
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS)
    store.append_iteration("d1", "oracle", _record(1, size=7), _arrays(), FITS)
    records = store.completed("d1", "oracle")
    assert [r.iteration for r in records] == [0, 1]
    assert records[1].dataset_size == 7 and records[0].error_fit == "maxwell"
    assert np.isnan(records[0].precision)
    data = store.iteration_arrays("d1", "oracle", -1)
    assert data["iteration"] == 1 and data["fits"]["sigma_fit"]["name"] == "gamma"
    assert data["sampling_errors"].dtype == np.float32 and data["labelled"].tolist() == [0, 2]
    assert store.status("d1", "oracle") == ("running", "")
    assert store.status("d1", "gp") == ("new", "")
    with h5py.File(store.path, "r") as f:  # readable with plain h5py
        assert f.attrs["schema"] == SCHEMA and f.attrs["schema_version"] == SCHEMA_VERSION
        assert f["d1/oracle/records"].shape == (2,)
        assert f["d1/frame_sizes"][()].tolist() == [3, 3, 3, 3]
        assert "sweep_f1" in f["d1/oracle/iterations/1"]
    info = store.dataset_info("d1")
    assert info["n_atoms"] == 12 and info["species"] == ["Cu"]
    assert [c[0] for c in record_columns()][:3] == ["iteration", "dataset_size", "n_train"]


def test_out_of_order_iteration_refused(store):
    with pytest.raises(ValueError, match="iteration 1"):
        store.append_iteration("d1", "oracle", _record(1), _arrays(), FITS)
    with pytest.raises(ValueError, match="missing"):
        store.append_iteration("d1", "oracle", _record(0), {"labelled": np.zeros(1)}, FITS)


def test_orphan_iteration_is_ignored_and_replaced(store):
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS)
    with h5py.File(store.path, "a") as f:  # an interrupted write: arrays of iteration 1, no row
        f["d1/oracle/iterations"].create_group("1").create_dataset("labelled", data=[9, 9, 9])
    assert len(store.completed("d1", "oracle")) == 1
    store.append_iteration("d1", "oracle", _record(1), _arrays(), FITS)
    assert store.iteration_arrays("d1", "oracle", 1)["labelled"].tolist() == [0, 2]


def test_finish_summary_and_reopen(store, tmp_path):
    store.append_iteration("d1", "oracle", _record(0), _arrays(), FITS)
    assert store.summary("d1", "oracle") is None
    summary = MethodSummary("d1", "oracle", "converged", 1, 5, 5, 0.1, 0.2, 0.3, 1.0, 1.0, 1.0, 0.5, 0.3, 0.3,
                            0.9, 12.0)
    store.finish(summary, "no candidates")
    assert store.status("d1", "oracle") == ("converged", "no candidates")
    assert store.summary("d1", "oracle") == summary
    store.reopen("d1", "oracle")
    assert store.status("d1", "oracle")[0] == "running"
    path = write_summary_csv(tmp_path / "summary.csv", [summary])
    rows = list(csv.DictReader(open(path)))
    assert rows[0]["method"] == "oracle" and rows[0]["final_dataset_size"] == "5"
    with pytest.raises(ValueError, match="final status"):
        store.finish(dataclasses.replace(summary, status="running"), "")


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
