"""``otf-statcut cutoffs`` end to end: both input forms, JSON/text/plot output, every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from scipy import stats

from otf_statcut.cli import main
from otf_statcut.stats import fit_best, force_error_magnitudes

REQUIRED_KEYS = {"distribution", "params", "ks_pvalue", "n_values", "n", "cutoff", "candidates"}


@pytest.fixture
def values(tmp_path) -> np.ndarray:
    x = stats.maxwell.rvs(scale=0.05, size=1500, random_state=np.random.default_rng(0))
    np.save(tmp_path / "v.npy", x)
    np.savetxt(tmp_path / "v.txt", x)
    np.savetxt(tmp_path / "v.csv", x, header="error_eV_per_A", comments="")
    return x


def run_json(capsys, *argv) -> dict:
    assert main(["cutoffs", *map(str, argv), "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def frame(symbols, forces, seed=0, with_forces=True) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = Atoms(symbols, positions=rng.uniform(0, 8, (len(symbols), 3)), cell=[8, 8, 8], pbc=True)
    if with_forces:
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=forces)
    return atoms


@pytest.fixture
def force_files(tmp_path):
    """Reference and predicted frames of Li and Mg atoms, with Mg errors three times larger."""
    rng = np.random.default_rng(1)
    symbols = ["Li"] * 30 + ["Mg"] * 20
    refs, preds = [], []
    for i in range(6):
        ref = rng.normal(0, 0.5, (50, 3))
        scale = np.r_[np.full(30, 0.02), np.full(20, 0.06)][:, None]
        refs.append(frame(symbols, ref, seed=i))
        preds.append(frame(symbols, ref + rng.normal(0, 1, (50, 3)) * scale, seed=i))
    ase.io.write(tmp_path / "ref.extxyz", refs)
    ase.io.write(tmp_path / "pred.extxyz", preds)
    errors = force_error_magnitudes([a.get_forces() for a in preds], [a.get_forces() for a in refs])
    return tmp_path / "pred.extxyz", tmp_path / "ref.extxyz", errors, np.array(symbols * 6)


# -- good input -------------------------------------------------------------------------------
def test_json_output_matches_the_library(tmp_path, values, capsys):
    result = run_json(capsys, tmp_path / "v.npy")
    assert REQUIRED_KEYS <= set(result)
    best = fit_best(values)
    assert result["distribution"] == best.best.name
    assert result["params"] == pytest.approx(list(best.best.params))
    assert result["ks_pvalue"] == pytest.approx(best.best.ks_pvalue)
    assert result["n_values"] == result["n"] == values.size  # --n defaults to the number of values
    assert result["cutoff"] == pytest.approx(best.cutoff(values.size))
    assert [c["name"] for c in result["candidates"]] == ["maxwell", "gamma", "gengamma"]
    assert all({"name", "params", "ks_pvalue"} <= set(c) for c in result["candidates"])


def test_txt_and_csv_with_header_read_the_same_values(tmp_path, values, capsys):
    npy = run_json(capsys, tmp_path / "v.npy")
    for name in ("v.txt", "v.csv"):
        other = run_json(capsys, tmp_path / name)
        assert other["n_values"] == values.size
        assert other["cutoff"] == pytest.approx(npy["cutoff"], rel=1e-9)


def test_options_n_candidates_robust(tmp_path, values, capsys):
    result = run_json(capsys, tmp_path / "v.npy", "--n", 100000, "--candidates", "maxwell")
    assert result["n"] == 100000 and result["distribution"] == "maxwell"
    assert [c["name"] for c in result["candidates"]] == ["maxwell"]
    assert result["cutoff"] == pytest.approx(stats.maxwell.isf(1e-5, scale=result["params"][0]))
    robust = run_json(capsys, tmp_path / "v.npy", "--robust", "--candidates", "maxwell,gamma")
    assert robust["robust"] is True and robust["n_trimmed"] >= 0
    assert [c["name"] for c in robust["candidates"]] == ["maxwell", "gamma"]


def test_human_readable_output(tmp_path, values, capsys):
    assert main(["cutoffs", str(tmp_path / "v.npy")]) == 0
    out = capsys.readouterr().out
    assert "best fit" in out and "cutoff" in out and "KS" in out
    for name in ("maxwell", "gamma", "gengamma"):
        assert name in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_plot_writes_a_png(tmp_path, values, capsys):
    out = tmp_path / "fit.png"
    result = run_json(capsys, tmp_path / "v.npy", "--plot", out)
    assert result["plot"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_pred_ref_form_with_per_element(force_files, tmp_path, capsys):
    pred, ref, errors, symbols = force_files
    result = run_json(capsys, "--pred", pred, "--ref", ref, "--per-element", "--plot", tmp_path / "el.png")
    assert result["n_values"] == errors.size == 300
    assert result["cutoff"] == pytest.approx(fit_best(errors).cutoff(errors.size))
    per = result["per_element"]
    assert set(per) == {"Li", "Mg"}
    assert per["Li"]["n_values"] == per["Li"]["n"] == 180 and per["Mg"]["n_values"] == 120
    assert REQUIRED_KEYS <= set(per["Mg"])
    assert per["Mg"]["cutoff"] > 2 * per["Li"]["cutoff"]
    assert (tmp_path / "el.png").is_file()
    # text form lists both elements
    assert main(["cutoffs", "--pred", str(pred), "--ref", str(ref), "--per-element"]) == 0
    out = capsys.readouterr().out
    assert "element Li" in out and "element Mg" in out


def test_rejected_candidates_and_fallback_are_reported(tmp_path, capsys):
    # a floor and a heavy tail: the generalized Gamma sits on its c = -20 bound, the others fail KS
    x = 0.1 * np.exp(np.random.default_rng(0).exponential(0.3, 2000))
    np.save(tmp_path / "sigma.npy", x)
    result = run_json(capsys, tmp_path / "sigma.npy", "--n", 100000)
    best = fit_best(x, n=100000)
    assert result["distribution"] == "tail" and result["fallback"] == best.fallback != ""
    assert result["cutoff"] == pytest.approx(best.cutoff(100000)) and result["passed"] is False
    assert result["ks_threshold"] == 1e-3
    by_name = {c["name"]: c for c in result["candidates"]}
    assert not any(c["credible"] for c in by_name.values())
    assert any("search bound" in r for r in by_name["gengamma"]["rejected"])
    assert {(r["name"], r["rule"]) for r in result["rejections"]} >= {("gengamma", "bound"), ("maxwell", "ks")}
    # --ks-threshold 0 switches the KS rule off: a family wins again, the bound rule still holds
    loose = run_json(capsys, tmp_path / "sigma.npy", "--n", 100000, "--ks-threshold", 0)
    assert loose["distribution"] in ("maxwell", "gamma") and loose["fallback"] == ""
    assert loose["cutoff"] == pytest.approx(fit_best(x, n=100000, ks_threshold=0).cutoff(100000))
    assert main(["cutoffs", str(tmp_path / "sigma.npy"), "--n", "100000"]) == 0
    out = capsys.readouterr().out
    assert "tail (fallback)" in out and "REJECTED" in out and "search bound" in out and "fallback   no credible" in out


# -- bad input: one line on stderr, exit status 2 ---------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bad_inputs(tmp: Path, pred: Path, ref: Path) -> dict[str, tuple[list[str], str]]:
    np.save(tmp / "neg.npy", np.r_[np.linspace(0.1, 1, 20), -0.5])
    np.save(tmp / "two_columns.npy", np.ones((20, 2)))
    np.save(tmp / "empty.npy", np.array([]))
    short = ase.io.read(ref, ":2")
    ase.io.write(tmp / "short.extxyz", short)
    other = ase.io.read(ref, ":")
    other[3] = frame(other[3].get_chemical_symbols()[2:], other[3].get_forces()[2:])
    ase.io.write(tmp / "fewer_atoms.extxyz", other)
    bare = [Atoms(a.symbols, a.positions, cell=a.cell, pbc=True) for a in other]
    ase.io.write(tmp / "no_forces.extxyz", bare)
    return {
        "missing file": ([str(tmp / "absent.npy")], "not found"),
        "NaN": ([str(write(tmp / "nan.txt", "0.1\n0.2\nnan\n" + "0.3\n" * 20))], "NaN"),
        "negative": ([str(tmp / "neg.npy")], "negative"),
        "empty txt": ([str(write(tmp / "empty.txt", ""))], "empty"),
        "empty npy": ([str(tmp / "empty.npy")], "empty"),
        "too few": ([str(write(tmp / "few.csv", "0.1\n0.2\n0.3\n"))], "at least 10"),
        "unknown extension": ([str(write(tmp / "v.dat", "0.1\n"))], "unsupported file type"),
        "not numbers": ([str(write(tmp / "words.txt", "a b\nc d\ne f\n"))], "cannot read numbers"),
        "not an npy": ([str(write(tmp / "fake.npy", "hello"))], "cannot read numbers"),
        "two columns": ([str(tmp / "two_columns.npy")], "single column"),
        "mismatched frames": (["--pred", str(pred), "--ref", str(tmp / "short.extxyz")], "frames"),
        "mismatched atoms": (["--pred", str(pred), "--ref", str(tmp / "fewer_atoms.extxyz")], "frame 3"),
        "missing forces": (["--pred", str(tmp / "no_forces.extxyz"), "--ref", str(ref)], "no forces"),
        "unreadable frames": (["--pred", str(write(tmp / "junk.extxyz", "3\nnot xyz\n")), "--ref", str(ref)],
                              "cannot read frames"),
        "missing pred file": (["--pred", str(tmp / "absent.extxyz"), "--ref", str(ref)], "not found"),
        "pred without ref": (["--pred", str(pred)], "go together"),
        "both forms": ([str(tmp / "neg.npy"), "--pred", str(pred), "--ref", str(ref)], "not both"),
        "neither form": ([], "give a VALUES file"),
        "per-element without frames": ([str(tmp / "neg.npy"), "--per-element"], "--per-element needs"),
        "n too small": ([str(tmp / "neg.npy"), "--n", "1"], "at least 2"),
        "unknown candidate": ([str(tmp / "neg.npy"), "--candidates", "maxwell,weibull"], "weibull"),
        "bad ks threshold": ([str(tmp / "neg.npy"), "--ks-threshold", "2"], "between 0 and 1"),
        "bad plot type": (["--pred", str(pred), "--ref", str(ref), "--plot", str(tmp / "fig.xyz")],
                          "unsupported figure type"),
        "plot folder missing": (["--pred", str(pred), "--ref", str(ref), "--plot", str(tmp / "no" / "f.png")],
                                "does not exist"),
    }


CASES = [
    "missing file", "NaN", "negative", "empty txt", "empty npy", "too few", "unknown extension",
    "not numbers", "not an npy", "two columns", "mismatched frames", "mismatched atoms", "missing forces",
    "unreadable frames", "missing pred file", "pred without ref", "both forms", "neither form",
    "per-element without frames", "n too small", "unknown candidate", "bad ks threshold", "bad plot type",
    "plot folder missing",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_status_2(case, force_files, tmp_path, capsys):
    pred, ref, _, _ = force_files
    argv, expected = bad_inputs(tmp_path, pred, ref)[case]
    assert main(["cutoffs", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("otf-statcut cutoffs: error:")
    assert expected in lines[0]
    assert captured.out == ""


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("otf-statcut")
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    bad = write(tmp_path / "bad.txt", "0.1\n-0.2\n" + "0.3\n" * 20)
    proc = subprocess.run([str(script), "cutoffs", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"otf-statcut cutoffs: error: {bad}: values: 1 negative entries (first at index 1: -0.2); "
        "expected magnitudes >= 0"
    ]
