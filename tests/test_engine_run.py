"""End-to-end on-the-fly runs with a fast real labeller (ASE's EMT on copper): the decision at
every step, labels and retraining, HALT, NPT with stress, labeller failures, the CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from ase.calculators.calculator import CalculationFailed, all_changes
from ase.calculators.emt import EMT
from ase.data import chemical_symbols

from otf_statcut.cli import main
from otf_statcut.config import load_run_config
from otf_statcut.engine.calculator import SOURCE_REFERENCE
from otf_statcut.engine.decision import Action
from otf_statcut.engine.run import run_otf
from otf_statcut.io.runlog import RunLog, read_dataset, read_table
from otf_statcut.labelers import ASECalculatorLabeler
from conftest import small_cu_run

pytestmark = pytest.mark.slow



def write_config(tmp_path, **changes):
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(small_cu_run(**changes)))
    return path


def emt_reference(frame):
    ref = frame.copy()
    ref.calc = EMT()
    return ref.get_potential_energy(), ref.get_forces(), ref.get_stress()


def test_langevin_run_labels_retrains_and_logs(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "MD steps: 30/30" in out and "labels:" in out
    run_file = tmp_path / "out" / "run.h5"
    traj = read_table(run_file, "trajectory")
    np.testing.assert_array_equal(traj["step"], np.arange(31))  # every step once, 0 = start
    assert traj["sigma"].shape == (31, 16) and np.isfinite(traj["sigma"]).all()
    np.testing.assert_allclose(traj["max_sigma"], traj["sigma"].max(axis=1), rtol=1e-6)

    frames = read_dataset(run_file)
    initial = [f for f in frames if f.info["reason"] == "initial"]
    labelled = [f for f in frames if f.info["reason"] != "initial"]
    assert len(initial) == 4 and len(labelled) >= 3, "the low cutoff (n = 20) must select some steps"
    assert len({f.info["key"] for f in frames}) == len(frames)  # no configuration stored twice
    # every labelled step used the reference forces, every other step the MLIP's
    label_steps = {f.info["step"] for f in labelled}
    for i, step in enumerate(traj["step"]):
        assert (traj["source"][i] == SOURCE_REFERENCE) == (step in label_steps)
        assert (traj["decision"][i] != Action.TRUST) == (step in label_steps)
    for frame in labelled[:3]:
        energy, forces, stress = emt_reference(frame)
        row = int(np.flatnonzero(traj["step"] == frame.info["step"])[0])
        np.testing.assert_allclose(traj["forces"][row], forces, atol=1e-10)
        np.testing.assert_allclose(frame.get_forces(), forces, atol=1e-10)
        assert frame.get_potential_energy() == pytest.approx(energy)
        assert frame.info["max_sigma"] == pytest.approx(traj["max_sigma"][row])
        assert '"name": "emt"' in frame.info["labeler"]
    # retraining: after every 3 new labels, with head and cutoffs refitted each time
    models = read_table(run_file, "models")
    cutoffs = read_table(run_file, "cutoffs")
    expected, counter = [], 0  # replay the policy: retrain after 3 labels, or at once after a halt
    for step in sorted(label_steps):
        counter += 1
        halt = traj["decision"][np.flatnonzero(traj["step"] == step)[0]] == Action.HALT
        if halt or counter >= 3:
            expected.append((step, "halt" if halt else "every"))
            counter = 0
    assert models["reason"][0] == "initial" and models["step"][0] == -1
    assert list(zip(models["step"][1:].tolist(), models["reason"][1:].tolist())) == expected
    np.testing.assert_array_equal(cutoffs["model"], models["model"])
    assert (cutoffs["n"] == 20).all() and (cutoffs["minimum"] <= cutoffs["maximum"]).all()
    assert set(cutoffs["element"]) == {"all"}  # one element: global cutoffs
    # every retrain learned from its labels: weights changed, error on the new frames went down
    retrains = models["step"] >= 0
    assert retrains.any() and models["warm_start"][retrains].all()
    assert (models["max_weight_change"][retrains] > 0).all() and (models["n_new"][retrains] >= 1).all()
    assert np.mean(models["new_error_after"][retrains] < models["new_error_before"][retrains]) >= 0.5
    for rel in models["path"]:
        assert (tmp_path / "out" / rel / "potential" / "weights.pt").is_file()
    with RunLog.open(run_file, "r") as log:
        assert log.status == "finished" and log.read_checkpoint().step == 30
        assert "md:" in log.input_text
    with h5py.File(run_file, "r") as f:  # plain h5py
        assert f["status"][()] == b"finished"
    # export: the data set as extxyz
    assert main(["export", str(tmp_path / "out"), str(tmp_path / "data.extxyz"),
                 "--trajectory", str(tmp_path / "traj.extxyz")]) == 0
    import ase.io

    assert len(ase.io.read(tmp_path / "data.extxyz", ":")) == len(frames)
    exported = ase.io.read(tmp_path / "traj.extxyz", ":")  # momenta kept: the temperature reads back
    np.testing.assert_allclose([a.get_temperature() for a in exported], traj["temperature_K"], rtol=1e-6)
    np.testing.assert_allclose(exported[-1].arrays["sigma"], traj["sigma"][-1], rtol=1e-6)


def test_halt_labels_and_retrains_before_the_step_continues(tmp_path):
    # max_error far below the model's errors: the maximum cutoff is clamped to the minimum, so
    # every uncertain step is a maximum-cutoff event.
    config = load_run_config(write_config(tmp_path, **{"cutoffs.max_error": 1e-4, "md.steps": 12}))
    summary = run_otf(config, comm=None)
    traj = read_table(summary.path, "trajectory")
    models = read_table(summary.path, "models")
    halts = traj["step"][traj["decision"] == Action.HALT]
    assert len(halts) >= 1
    assert set(traj["decision"]) <= {Action.TRUST, Action.HALT}
    halt_models = models["step"][models["reason"] == "halt"]
    np.testing.assert_array_equal(np.sort(halt_models), np.sort(halts))  # one retrain per halt, at once
    # the step after a halt is screened by the new model
    for step in halts:
        after = np.flatnonzero(traj["step"] == step + 1)
        if after.size:
            assert traj["model"][after[0]] > traj["model"][np.flatnonzero(traj["step"] == step)[0]]
    assert (traj["source"][traj["decision"] == Action.HALT] == SOURCE_REFERENCE).all()


def test_npt_run_uses_stress_and_changes_the_cell(tmp_path):
    config = load_run_config(write_config(tmp_path, **{"md.ensemble": "npt", "md.pressure_GPa": 2.0,
                                                       "md.taup_fs": 100.0, "md.taut_fs": 40.0,
                                                       "md.steps": 25, "initial_data.strain": 0.03}))
    summary = run_otf(config, comm=None)
    traj = read_table(summary.path, "trajectory")
    volumes = np.abs(np.linalg.det(traj["cell"]))
    assert np.ptp(volumes) > 1e-3 * volumes[0], "the barostat must move the cell"
    assert np.isfinite(traj["stress"]).all()
    frames = read_dataset(summary.path)
    for frame in frames:  # every label carries the reference stress
        _, _, stress = emt_reference(frame)
        np.testing.assert_allclose(frame.get_stress(), stress, atol=1e-10)
    labelled_rows = traj["source"] == SOURCE_REFERENCE
    if labelled_rows.any():  # labelled steps integrate the reference stress too
        row = int(np.flatnonzero(labelled_rows)[0])
        step = traj["step"][row]
        frame = next(f for f in frames if f.info["step"] == step)
        np.testing.assert_allclose(traj["stress"][row], frame.get_stress(), atol=1e-10)


class FlakyEMT(EMT):
    """EMT that fails on a pattern of calls: raises, or returns NaN forces (real failure sources)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls > 6 and self.calls % 3 == 0:
            raise CalculationFailed("injected SCF failure")
        if self.calls > 6 and self.calls % 3 == 1:
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)


def test_failed_labels_never_enter_the_data_set(tmp_path):
    # No maximum cutoff: this test is about failed labels between the cutoffs (a failed label
    # above the maximum stops the run by design, see test_halt_...).
    config = load_run_config(write_config(tmp_path, **{"md.steps": 20, "labeler.retries": 0,
                                                       "cutoffs.max_error": float("inf")}))
    labeler = ASECalculatorLabeler(FlakyEMT(), name="flaky-emt", retries=0)
    summary = run_otf(config, labeler=labeler, comm=None)
    failures = read_table(summary.path, "failures")
    traj = read_table(summary.path, "trajectory")
    frames = read_dataset(summary.path)
    assert len(failures["step"]) >= 1
    assert all(np.isfinite(f.get_forces()).all() for f in frames)
    assert np.isfinite(traj["forces"]).all()
    stored = {f.info["step"] for f in frames}
    for step, message in zip(failures["step"], failures["message"]):
        assert step not in stored  # a failed label is not in the data set ...
        row = int(np.flatnonzero(traj["step"] == step)[0])
        assert traj["source"][row] != SOURCE_REFERENCE  # ... and the step kept the MLIP result
        assert "flaky-emt labeller failed" in message
    assert summary.n_failures == len(failures["step"])


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"md.temprature_K": 300}, "unknown key md.temprature_K; did you mean 'temperature_K'?"),
        ({"md.ensemble": "nvt"}, "md.ensemble = 'nvt' is invalid"),
        ({"labeler.name": "vasp"}, "labeler.name = 'vasp' is invalid"),
        ({"initial_data.file": "missing.extxyz", "initial_data.rattled": None}, "initial_data"),
        ({"system.structure": "nope.xyz"}, "system.structure"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, changes, expected):
    changes = {k: v for k, v in changes.items() if v is not None}
    data_path = write_config(tmp_path, **changes)
    if "initial_data.file" in changes:
        text = yaml.safe_load(data_path.read_text())
        text["initial_data"].pop("rattled")
        data_path.write_text(yaml.safe_dump(text))
    assert main(["run", str(data_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("otf-statcut run: error: ") and expected in err


def test_resume_refuses_other_settings_and_export_refuses_foreign_files(tmp_path, capsys):
    path = write_config(tmp_path, **{"md.steps": 3})
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(write_config(tmp_path, **{"md.steps": 3, "md.temperature_K": 500}))]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings (md.temperature_K: 800.0 -> 500.0)" in err
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    assert main(["export", str(tmp_path / "x.h5"), str(tmp_path / "o.extxyz")]) == 2
    assert "run file" in capsys.readouterr().err


def test_two_element_run_judges_each_atom_by_its_elements_cutoffs(tmp_path):
    """Cu–Au (EMT): per-element cutoffs by default, one /cutoffs row per element (+ the pooled
    fit) at every refit, N per element = steps × that element's atoms, validation holding both
    elements, and every recorded decision reproduced from the stored σ and per-element cutoffs."""
    import ase.io
    from ase.build import bulk

    from otf_statcut.engine.decision import decide
    from otf_statcut.io.runlog import read_cutoffs

    cell = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 2, 1)
    cell.symbols[::4] = "Au"  # 12 Cu + 4 Au
    ase.io.write(tmp_path / "cuau.extxyz", cell)
    data = small_cu_run(**{"md.steps": 24, "cutoffs.n": "run"})
    data["system"] = {"structure": str(tmp_path / "cuau.extxyz")}
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run_otf(load_run_config(path), comm=None)
    cutoffs = read_table(summary.path, "cutoffs")
    models = read_table(summary.path, "models")
    for refit in np.unique(cutoffs["refit"]):
        rows = cutoffs["refit"] == refit
        assert sorted(cutoffs["element"][rows]) == ["Au", "Cu", "pooled"]
        n = dict(zip(cutoffs["element"][rows], cutoffs["n"][rows]))
        assert n == {"Au": 24 * 4, "Cu": 24 * 12, "pooled": 24 * 16}
    frames = read_dataset(summary.path)
    val = [f for f in frames if f.info["split"] == "val"]
    assert {"Au", "Cu"} <= set(np.concatenate([f.get_chemical_symbols() for f in val]))
    traj = read_table(summary.path, "trajectory")
    symbols = [chemical_symbols[z] for z in traj["numbers"]]
    for i in range(len(traj["step"])):
        cut = read_cutoffs(summary.path, int(traj["model"][i]))
        assert int(decide(traj["sigma"][i].astype(float), cut, symbols).action) == traj["decision"][i]
    assert len(models["model"]) >= 1


@pytest.mark.parametrize(
    "change, expected",
    [
        ("nan", "atom 3 has a non-finite position"),
        ("close", "atoms 0 and 1 are 0.1 Å apart"),
        ("dummy", "atom 2 is not a chemical element"),
        ("npt-no-cell", "md.ensemble npt needs a periodic 3-D cell"),
    ],
)
def test_bad_starting_structures_name_the_cause(tmp_path, capsys, change, expected):
    """Issue 10: NaN positions, atoms 0.1 Å apart and a dummy element were blamed on the rattled
    copies or the labeller; NPT without a cell failed later. Each is one line naming the cause."""
    import ase.io
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    data = small_cu_run()
    if change == "nan":
        atoms.positions[3] = np.nan
    elif change == "close":
        atoms.positions[1] = atoms.positions[0] + [0.1, 0.0, 0.0]
    elif change == "dummy":
        atoms.numbers[2] = 0
    else:
        atoms.pbc = False
        atoms.cell = None
        data["md"] = {**data["md"], "ensemble": "npt"}
    ase.io.write(tmp_path / "start.extxyz", atoms)
    data["system"] = {"structure": str(tmp_path / "start.extxyz")}
    data["output"] = {**data["output"], "folder": str(tmp_path / "out")}
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
