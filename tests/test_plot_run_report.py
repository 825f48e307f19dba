"""``otf-statcut plot RUN.h5``: the run report drawn from a run file (built row by row with
RunLog, and from a real small on-the-fly run), its edge cases and the CLI dispatch."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otf_statcut.cli import main
from otf_statcut.errors import DataError
from otf_statcut.io.runlog import RunLog, read_table
from otf_statcut.plots.run_report import (
    FIGURES,
    HALT,
    LABEL,
    TRUST,
    cutoffs_figure,
    decisions_figure,
    load_run,
    plot_run,
    sigma_figure,
    thermo_figure,
    validation_figure,
)
from otf_statcut.stats import statistical_cutoffs
from otf_statcut.stats.element_cutoffs import ElementCutoffs

PNG = b"\x89PNG\r\n\x1a\n"
DT_FS = 2.0
STEPS = 40
LABEL_STEPS = (5, 12, 20, 31)
HALT_STEPS = (25,)
FAIL_STEPS = (33,)
#: model id -> (step trained at, reason, learned, minimum, maximum, error cutoff)
MODELS = {0: (-1, "initial", True, 0.10, 0.50, 0.20), 1: (12, "every", True, 0.12, 0.45, 0.21),
          2: (25, "halt", False, 0.15, 0.40, 0.22), 3: (31, "every", True, 0.14, 0.42, 0.19)}
#: per-element runs: each element's cutoffs are the global ones times this factor
FACTOR = {"Au": 1.5, "Cu": 1.0}


@pytest.fixture(scope="module")
def base_cutoffs():
    e = 0.1 * np.linalg.norm(np.random.default_rng(1).normal(size=(400, 3)), axis=1)
    return statistical_cutoffs(e, e * 1.1, n=500)


def _cutoffset(base, scale, minimum, maximum, error):
    return dataclasses.replace(base, minimum=minimum * scale, maximum=maximum * scale,
                               error_cutoff=error * scale)


def _frame(numbers, rng):
    atoms = Atoms(numbers=numbers, positions=rng.random((len(numbers), 3)) * 4.0, cell=np.eye(3) * 4.0,
                  pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=rng.normal(size=(len(numbers), 3)))
    return atoms


def make_run(path, base, *, rows=STEPS, per_element=False, npt=False, models=tuple(MODELS), labels=True,
             failures=True):
    """A run file written row by row as the engine does, with known decisions, labels, models,
    cutoffs (global or per element) and failures."""
    rng = np.random.default_rng(7)
    numbers = np.array([79, 79, 29, 29, 29, 29] if per_element else [29] * 6)
    config = {"md": {"ensemble": "npt" if npt else "langevin", "timestep_fs": DT_FS, "temperature_K": 500.0,
                     "pressure_GPa": 1.0}}
    with RunLog.create(path, input_text="md: {}\n", config=config) as log:
        for step in range(rows):
            sigma = rng.random(len(numbers)) * 0.3
            decision = LABEL if step in LABEL_STEPS else HALT if step in HALT_STEPS else TRUST
            cell = np.eye(3) * (4.0 + 0.01 * step) if npt else np.eye(3) * 4.0
            log.append_trajectory({
                "step": step, "time_fs": step * DT_FS, "positions": rng.random((len(numbers), 3)),
                "cell": cell,
                "numbers": numbers, "energy": -1.0, "forces": np.zeros((len(numbers), 3)), "stress": None,
                "sigma": sigma, "max_sigma": float(sigma.astype(np.float32).max()), "decision": decision,
                "source": int(decision != TRUST), "temperature_K": 450.0 + step, "model": 0,
                "wall_time_s": 0.1 * step})
        for _ in range(3):
            log.append_frame(_frame(numbers, rng), step=-1, reason="initial", split=0)
        if labels:
            for step in sorted(LABEL_STEPS + HALT_STEPS):
                reason = "halt" if step in HALT_STEPS else "label"
                log.append_frame(_frame(numbers, rng), step=step, reason=reason, split=step % 2,
                                 max_sigma=0.2)
        for k, model in enumerate(models):
            step, reason, learned, lo, hi, err = MODELS[model]
            log.append_model({
                "model": model, "step": step, "reason": reason, "warm_start": step >= 0, "n_train": 3 + 2 * k,
                "n_val": 2 + k, "epochs": 5, "train_time_s": 1.0, "head_time_s": 0.5,
                "val_force_mae": 0.2 - 0.02 * k, "val_force_rmse": 0.3 - 0.02 * k,
                "val_energy_mae": 0.004 - 0.0005 * k, "head_nll": 0.0, "best_epoch": 3,
                "max_weight_change": 0.1, "n_new": 2, "new_error_before": 0.3, "new_error_after": 0.2,
                "learned": learned, "problem": "" if learned else "no epoch improved",
                "path": f"models/{model:04d}"})
            if per_element:
                by = {e: _cutoffset(base, f, lo, hi, err) for e, f in FACTOR.items()}
                cut = ElementCutoffs(by_element=by, pooled_cutoffs=_cutoffset(base, 1.2, lo, hi, err),
                                     pooled=("Au",))
            else:
                cut = _cutoffset(base, 1.0, lo, hi, err)
            log.append_cutoffs(model=model, step=step, cutoffs=cut)
        if failures:
            for step in FAIL_STEPS:
                log.append_failure(step=step, reason="label", message="SCF did not converge")
        log.flush()
    return path


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, base_cutoffs):
    return make_run(tmp_path_factory.mktemp("run") / "run.h5", base_cutoffs)


@pytest.fixture(scope="module")
def element_run_file(tmp_path_factory, base_cutoffs):
    return make_run(tmp_path_factory.mktemp("elements") / "run.h5", base_cutoffs, per_element=True, npt=True)


def lines(fig, label=None):
    found = [line for ax in fig.axes for line in ax.get_lines()]
    return found if label is None else [line for line in found if line.get_label() == label]


def line(fig, label, ax=None):
    found = [ln for ln in (ax.get_lines() if ax is not None else lines(fig)) if ln.get_label() == label]
    assert len(found) == 1, f"{label!r}: {[ln.get_label() for ln in lines(fig)]}"
    return found[0]


def scatter(ax, prefix):
    found = [c for c in ax.collections if c.get_label().startswith(prefix)]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def notes(fig) -> str:
    return " | ".join(t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "absent")


def bar_counts(ax, width):
    """Total events and per-window rates of each bar series, by series name."""
    out = {}
    for c in ax.containers:
        heights = np.array([p.get_height() for p in c.patches])
        out[c.get_label().split(" (")[0]] = (heights.sum() * width, heights)
    return out


def window_width(ax) -> float:
    xmin, xmax = ax.get_xlim()
    return (xmax - xmin) / len(ax.containers[0].patches)


def is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


# --- every panel --------------------------------------------------------------------------------
def test_decision_codes_match_the_engine():
    from otf_statcut.engine.decision import Action

    assert (TRUST, LABEL, HALT) == (int(Action.TRUST), int(Action.LABEL), int(Action.HALT))


def test_plot_run_writes_every_figure_as_png(run_file, tmp_path):
    written = plot_run(run_file, tmp_path / "fig")
    assert [p.name for p in written] == [f"{name}.png" for name in FIGURES]
    assert all(is_png(p) for p in written)


def test_sigma_figure_draws_max_sigma_cutoff_steps_and_decisions(run_file):
    run = load_run(run_file)
    traj, cut = read_table(run_file, "trajectory"), read_table(run_file, "cutoffs")
    fig = sigma_figure(run)
    ax = fig.axes[0]
    sigma = line(fig, "max σ")
    np.testing.assert_allclose(sigma.get_xdata(), traj["time_fs"] / 1000.0)
    np.testing.assert_allclose(sigma.get_ydata(), traj["max_sigma"])
    refit_ps = np.array([max(MODELS[m][0], 0) * DT_FS / 1000.0 for m in MODELS])
    end_ps = (STEPS - 1) * DT_FS / 1000.0
    for label, column, index in (("minimum cutoff", "minimum", 3), ("maximum cutoff", "maximum", 4)):
        step_fn = line(fig, label)
        assert step_fn.get_drawstyle() == "steps-post"
        np.testing.assert_allclose(step_fn.get_ydata()[:-1], cut[column])
        np.testing.assert_allclose(step_fn.get_ydata()[:-1], [MODELS[m][index] for m in MODELS])
        np.testing.assert_allclose(step_fn.get_xdata(), np.append(refit_ps, end_ps))
    labels, halts = scatter(ax, "label"), scatter(ax, "halt")
    rows = np.isin(traj["step"], LABEL_STEPS)
    np.testing.assert_allclose(labels.get_offsets(),
                               np.c_[traj["time_fs"][rows] / 1000, traj["max_sigma"][rows]])
    assert len(halts.get_offsets()) == len(HALT_STEPS)
    assert notes(fig) == ""


def test_decisions_figure_counts_decisions_labels_and_failures_per_ps(run_file):
    run = load_run(run_file)
    fig = decisions_figure(run)
    a, b = fig.axes[:2]
    xmin = a.get_xlim()[0]
    width = window_width(a)
    assert len(a.containers[0].patches) == STEPS // 5
    decisions = bar_counts(a, width)
    assert decisions["label"][0] == pytest.approx(len(LABEL_STEPS))
    assert decisions["halt"][0] == pytest.approx(len(HALT_STEPS))
    # the window holding step 25 has one halt: a rate of 1 / window width (ps)
    window = int((25 * DT_FS / 1000 - xmin) // width)
    assert decisions["halt"][1][window] == pytest.approx(1.0 / width)
    stored = bar_counts(b, width)
    assert stored["label"][0] == pytest.approx(len(LABEL_STEPS))
    assert stored["halt"][0] == pytest.approx(len(HALT_STEPS))
    assert stored["failed"][0] == pytest.approx(len(FAIL_STEPS))
    assert "plus 3 initial" in b.get_title()
    assert f"{STEPS - 5} of {STEPS}" in a.get_title()


def test_cutoffs_figure_is_the_refit_table(run_file):
    cut = read_table(run_file, "cutoffs")
    fig = cutoffs_figure(load_run(run_file))
    for ax, column in zip(fig.axes, ("minimum", "maximum", "error_cutoff")):
        drawn = line(fig, "all", ax)
        np.testing.assert_array_equal(drawn.get_xdata(), cut["step"])
        np.testing.assert_allclose(drawn.get_ydata(), cut[column])
    assert len(lines(fig, "pooled")) == 0


def test_validation_figure_plots_errors_sizes_and_failed_retrains(run_file):
    models = read_table(run_file, "models")
    fig = validation_figure(load_run(run_file))
    a, b = fig.axes
    np.testing.assert_array_equal(line(fig, "force MAE").get_xdata(), models["model"])
    np.testing.assert_allclose(line(fig, "force MAE").get_ydata(), models["val_force_mae"])
    np.testing.assert_allclose(line(fig, "force RMSE").get_ydata(), models["val_force_rmse"])
    np.testing.assert_allclose(line(fig, "energy MAE").get_ydata(), 1000 * models["val_energy_mae"])
    sizes = [t.get_text() for t in a.texts if t.get_gid() != "absent"]
    assert sizes == [f"{n}/{v}" for n, v in zip(models["n_train"], models["n_val"])]
    for ax in (a, b):
        failed = scatter(ax, "did not learn")
        assert failed.get_offsets()[:, 0].tolist() == [2]  # the one retrain with learned False
    assert "a single model" not in notes(fig)


def test_thermo_figure_temperature_and_no_volume_without_npt(run_file):
    traj = read_table(run_file, "trajectory")
    fig = thermo_figure(load_run(run_file))
    assert len(fig.axes) == 1
    np.testing.assert_allclose(line(fig, "kinetic temperature").get_ydata(), traj["temperature_K"])
    assert lines(fig, "cell volume") == []
    assert line(fig, "target 500 K").get_ydata()[0] == 500.0


# --- per element, NPT ---------------------------------------------------------------------------
def test_per_element_cutoffs_one_line_per_element(element_run_file):
    traj, cut = read_table(element_run_file, "trajectory"), read_table(element_run_file, "cutoffs")
    run = load_run(element_run_file)
    fig = sigma_figure(run)
    symbols = np.array(["Au", "Au", "Cu", "Cu", "Cu", "Cu"])
    for element in ("Au", "Cu"):
        np.testing.assert_allclose(line(fig, f"max σ {element}").get_ydata(),
                                   traj["sigma"][:, symbols == element].max(axis=1), rtol=1e-6)
        rows = cut["element"] == element
        for column, index in (("minimum", 3), ("maximum", 4)):
            drawn = line(fig, f"{element} {column}")
            np.testing.assert_allclose(drawn.get_ydata()[:-1], cut[column][rows])
            np.testing.assert_allclose(drawn.get_ydata()[:-1],
                                       [MODELS[m][index] * FACTOR[element] for m in MODELS])
    assert lines(fig, "max σ") == [] and lines(fig, "minimum cutoff") == []
    assert not any("pooled" in ln.get_label() for ln in lines(fig))
    history = cutoffs_figure(run)
    for ax, column in zip(history.axes, ("minimum", "maximum", "error_cutoff")):
        for element in ("Au", "Cu", "pooled"):
            np.testing.assert_allclose(line(history, element, ax).get_ydata(),
                                       cut[column][cut["element"] == element])


def test_npt_run_draws_the_cell_volume(element_run_file):
    traj = read_table(element_run_file, "trajectory")
    fig = thermo_figure(load_run(element_run_file))
    assert len(fig.axes) == 2
    volume = line(fig, "cell volume")
    np.testing.assert_allclose(volume.get_ydata(), np.abs(np.linalg.det(traj["cell"])))
    assert volume.get_ydata()[-1] > volume.get_ydata()[0]
    assert "1 GPa" in fig.axes[1].get_title()


# --- edge runs ----------------------------------------------------------------------------------
def test_empty_run_file_draws_every_figure_and_says_what_is_absent(tmp_path):
    path = tmp_path / "run.h5"
    RunLog.create(path, config={"md": {"ensemble": "npt"}}).close()  # no row in any table
    written = plot_run(path)
    assert [p.parent for p in written] == [tmp_path / "figures"] * len(FIGURES)
    assert all(is_png(p) for p in written)
    run = load_run(path)
    sigma, decisions = notes(sigma_figure(run)), notes(decisions_figure(run))
    assert "no trajectory rows yet" in sigma and "no cutoffs recorded" in sigma
    assert "no labels during MD" in decisions and "no failed labels" in decisions
    assert "no cutoff refits recorded" in notes(cutoffs_figure(run))
    assert "no models recorded" in notes(validation_figure(run))
    assert notes(thermo_figure(run)).count("no trajectory rows yet") == 2


def test_single_model_no_labels_no_failures(tmp_path, base_cutoffs):
    path = make_run(tmp_path / "run.h5", base_cutoffs, rows=7, models=(0,), labels=False, failures=False)
    run = load_run(path)
    assert "a single model" in notes(validation_figure(run))
    fig = decisions_figure(run)
    assert "no labels during MD; no failed labels" in notes(fig)
    step_fn = line(sigma_figure(run), "minimum cutoff")
    np.testing.assert_allclose(step_fn.get_xdata(), [0.0, 6 * DT_FS / 1000])
    np.testing.assert_allclose(step_fn.get_ydata(), [MODELS[0][3]] * 2)
    assert "one refit only" in notes(cutoffs_figure(run))
    assert all(is_png(p) for p in plot_run(path, tmp_path / "figs"))


def test_single_trajectory_row(tmp_path, base_cutoffs):
    path = make_run(tmp_path / "run.h5", base_cutoffs, rows=1, models=(0,), labels=False)
    written = plot_run(path, tmp_path / "figs", fmt="svg")
    assert [p.suffix for p in written] == [".svg"] * len(FIGURES)
    assert all(p.read_text().lstrip().startswith("<?xml") for p in written)


def test_unreadable_run_files_are_one_line_data_errors(tmp_path, run_file):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(run_file.read_bytes()[:2000])
    for path in (truncated, tmp_path / "missing.h5"):
        with pytest.raises(DataError) as info:
            load_run(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(run_file.read_bytes())
    with h5py.File(broken, "a") as f:
        del f["models/val_force_mae"]
    with pytest.raises(DataError, match="lacks column.*val_force_mae"):
        load_run(broken)


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_plots_a_run_file(run_file, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(run_file), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"{name}.png") for name in FIGURES]
    assert all(is_png(out / f"{name}.png") for name in FIGURES)


def test_cli_refuses_other_hdf5_files_and_benchmark_options(run_file, tmp_path, capsys):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = "something/else"
        f["x"] = np.arange(3)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    for path, fragment in ((other, "'something/else'"), (plain, "None")):
        assert main(["plot", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("otf-statcut plot: error: ") and "\n" not in err
        assert str(path) in err and fragment in err and "neither a run file" in err
    assert not (tmp_path / "figures").exists()
    assert main(["plot", str(run_file), "-o", str(tmp_path / "f"), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "run file" in err and err.count("\n") == 1


# --- a real run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from conftest import small_cu_run
    from otf_statcut.config import load_run_config
    from otf_statcut.engine.run import run_otf

    folder = tmp_path_factory.mktemp("real")
    (folder / "input.yaml").write_text(yaml.safe_dump(small_cu_run(**{"md.steps": 20})))
    return run_otf(load_run_config(folder / "input.yaml"), comm=None).path


@pytest.mark.slow
def test_report_of_a_real_run(real_run, capsys):
    assert main(["plot", str(real_run)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(real_run.parent / "figures" / f"{name}.png") for name in FIGURES]
    run = load_run(real_run)
    traj, cut, models = run.trajectory, run.cutoffs, run.models
    fig = sigma_figure(run)
    np.testing.assert_allclose(line(fig, "max σ").get_ydata(), traj["max_sigma"])
    np.testing.assert_allclose(line(fig, "minimum cutoff").get_ydata()[:-1], cut["minimum"])
    n_label = int((traj["decision"] == LABEL).sum())
    assert len(scatter(fig.axes[0], "label").get_offsets()) == n_label
    np.testing.assert_allclose(line(validation_figure(run), "force MAE").get_ydata(), models["val_force_mae"])
    b = decisions_figure(run).axes[1]
    stored = bar_counts(b, window_width(b))
    during_md = run.dataset["step"] >= 0
    assert during_md.any(), "the small run's low cutoffs select some steps"
    for reason in ("label", "halt"):
        assert stored[reason][0] == pytest.approx(int((run.dataset["reason"][during_md] == reason).sum()))


def test_cli_sends_benchmark_files_to_the_benchmark_figures(tmp_path, monkeypatch, capsys):
    import otf_statcut.plots.benchmark as benchmark
    from otf_statcut.io.benchmark_results import SCHEMA

    calls = []

    def fake(path, outdir, *, iteration, fmt, seed):
        calls.append((path, outdir, iteration, fmt, seed))
        return [tmp_path / "learning_cu.png"]

    monkeypatch.setattr(benchmark, "plot_benchmark", fake)
    results = tmp_path / "results.h5"
    with h5py.File(results, "w") as f:
        f.attrs["schema"] = SCHEMA
    assert main(["plot", str(results)]) == 0
    assert main(["plot", str(results), "-o", "o", "--iteration", "2", "--seed", "1", "--format", "pdf"]) == 0
    assert calls == [(str(results), None, "first", "png", None), (str(results), "o", 2, "pdf", 1)]
    assert capsys.readouterr().out.split() == [str(tmp_path / "learning_cu.png")] * 2
    assert main(["plot", str(results), "--iteration", "middle"]) == 2
    assert "--iteration 'middle'" in capsys.readouterr().err


def test_unwritable_figure_folder_is_a_one_line_error(run_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["plot", str(run_file), "-o", str(blocker / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker / "figs") in err and "cannot write" in err
