"""Bad benchmark inputs: each gets a one-line error through ``otf_statcut.cli.main`` (exit 2),
before any model is trained."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from otf_statcut.benchmark.config import load_benchmark_config
from otf_statcut.cli import main
from otf_statcut.data import labelled_frame
from otf_statcut.errors import ConfigError


def _frames(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.6, cubic=True)
    out = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        out.append(labelled_frame(atoms, atoms.get_potential_energy(), atoms.get_forces(),
                                  info={"group": "md"}))
    return out


@pytest.fixture
def folder(tmp_path) -> Path:
    ase.io.write(tmp_path / "good.extxyz", _frames())
    return tmp_path


def _input(folder: Path, **changes) -> Path:
    data = {"datasets": [{"name": "cu", "path": "good.extxyz"}], "methods": ["oracle"],
            "protocol": {"max_iterations": 1}}
    data.update(changes)
    path = folder / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _fails(capsys, path: Path, *fragments: str) -> str:
    code = main(["benchmark", str(path), "-o", str(path.parent / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("otf-statcut benchmark: error: ")
    assert "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not (path.parent / "out").exists()  # nothing written for a bad input
    return err


def test_good_input_parses(folder):
    dataset = {"name": "cu", "path": "good.extxyz", "select": {"group": "md"}, "count": 5}
    path = _input(folder, datasets=[dataset],
                  model={"num_features": 8}, training={"max_epochs": 3}, heads={"ensemble": {"n_members": 2}},
                  methods=["ensemble", "oracle"])
    config = load_benchmark_config(path)
    assert config.datasets[0].path == (folder / "good.extxyz").resolve()
    assert config.datasets[0].select == (("group", ("md",)),)
    assert config.methods == ("ensemble", "oracle")
    assert config.model_config(("Cu",)).num_features == 8
    assert config.training.max_epochs == 3
    # budgets and the method list do not change the fingerprint (a raised budget resumes)
    other = load_benchmark_config(_input(folder, protocol={"max_iterations": 9}, methods=["gp"]))
    assert other.fingerprint() == load_benchmark_config(_input(folder)).fingerprint()
    changed = load_benchmark_config(_input(folder, protocol={"val_fraction": 0.5}))
    assert changed.fingerprint() != other.fingerprint()


def test_seeds_parse(folder):
    assert load_benchmark_config(_input(folder)).protocol.seeds == (0, 1, 2, 3, 4)  # default: 5 seeds
    config = load_benchmark_config(_input(folder, protocol={"seeds": 3}))
    assert config.protocol.seeds == (0, 1, 2) and config.protocol.seed == 0
    config = load_benchmark_config(_input(folder, protocol={"seeds": [4, 1]}))
    assert config.protocol.seeds == (4, 1) and config.protocol.seed == 4
    assert config.settings()["protocol"]["seeds"] == [4, 1] and "seed" not in config.settings()["protocol"]
    # the seeds are not part of the fingerprint: adding a seed continues a results file
    assert config.fingerprint() == load_benchmark_config(_input(folder, protocol={"seeds": 1})).fingerprint()


def test_for_seed_shifts_every_seed(folder):
    path = _input(folder, methods=["ensemble", "gp", "oracle"], model={"num_features": 8, "seed": 2},
                  heads={"gp": {"iterations": 5},
                         "ensemble": {"n_members": 2, "train_config": {"max_epochs": 3}}})
    config = load_benchmark_config(path)
    same = config.for_seed(0)
    assert same.model_config(("Cu",)).seed == 2 and same.training.seed == 0
    assert same.head_settings("gp") == {"iterations": 5, "seed": 0}
    run = config.for_seed(3)
    assert run.protocol.seed == 3 and run.protocol.seeds == config.protocol.seeds
    assert run.model_config(("Cu",)).seed == 2 + 3000 and run.training.seed == 3000
    assert run.head_settings("gp") == {"iterations": 5, "seed": 3000}
    assert run.head_settings("ensemble")["train_config"] == {"max_epochs": 3, "seed": 3000}
    assert config.head_settings("ensemble")["train_config"] == {"max_epochs": 3}  # the input is untouched
    assert config.model_config(("Cu",)).seed == 2


def test_dataset_files_formula_and_stride(folder):
    ase.io.write(folder / "more.extxyz", _frames(6, seed=1))
    dataset = {"name": "cu", "path": ["good.extxyz", "more.extxyz"], "formula": "Cu4", "first": 1,
               "stride": 3, "count": 3}
    config = load_benchmark_config(_input(folder, datasets=[dataset]))
    spec = config.datasets[0]
    assert spec.paths == ((folder / "good.extxyz").resolve(), (folder / "more.extxyz").resolve())
    assert spec.formula == ("Cu4",) and spec.stride == 3
    from otf_statcut.benchmark import load_sampling_set

    sampling = load_sampling_set(spec)
    joined = _frames() + _frames(6, seed=1)  # 14 frames; 1::3 -> 1, 4, 7, 10, 13; count 3 -> 1, 4, 7
    assert len(sampling) == 3
    for got, index in zip(sampling.frames, (1, 4, 7)):
        assert np.allclose(got.positions, joined[index].positions)
    assert "more.extxyz" in sampling.path


def test_missing_dataset(folder, capsys):
    path = _input(folder, datasets=[{"name": "cu", "path": "nowhere.extxyz"}])
    _fails(capsys, path, "datasets[0].path", "nowhere.extxyz", "not found")


def test_frames_without_forces(folder, capsys):
    frames = _frames(4)
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy())
    ase.io.write(folder / "noforces.extxyz", frames)
    path = _input(folder, datasets=[{"name": "cu", "path": "noforces.extxyz"}])
    _fails(capsys, path, "noforces.extxyz", "frame 0", "forces")


def test_unknown_method(folder, capsys):
    _fails(capsys, _input(folder, methods=["oracle", "magic"]), "methods[1]", "'magic'", "ensemble")
    _fails(capsys, _input(folder, methods=["oracle", "oracle"]), "methods", "distinct")


def test_empty_file(folder, capsys):
    (folder / "empty.extxyz").write_text("")
    _fails(capsys, _input(folder, datasets=[{"name": "cu", "path": "empty.extxyz"}]), "empty.extxyz")


def test_empty_after_select(folder, capsys):
    path = _input(folder, datasets=[{"name": "cu", "path": "good.extxyz", "select": {"group": "nothing"}}])
    _fails(capsys, path, "good.extxyz", "group", "nothing")
    path = _input(folder, datasets=[{"name": "cu", "path": "good.extxyz", "formula": "Be36W12"}])
    _fails(capsys, path, "good.extxyz", "formula", "Be36W12", "formulas there: Cu4")


def test_missing_second_file(folder, capsys):
    path = _input(folder, datasets=[{"name": "cu", "path": ["good.extxyz", "gone.extxyz"]}])
    _fails(capsys, path, "datasets[0].path[1]", "gone.extxyz", "not found")


def test_too_few_frames_for_seed(folder, capsys):
    path = _input(folder, datasets=[{"name": "cu", "path": "good.extxyz", "count": 3}])
    _fails(capsys, path, "3 frame(s)", "seed_frames")


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"colour": "red"}, ("unknown key colour",)),
        ({"protocl": {}}, ("unknown key protocl", "did you mean 'protocol'")),
        ({"methods": []}, ("methods",)),
        ({"protocol": {"val_fraction": 1.5}}, ("protocol.val_fraction", "1.5", "(0, 1)")),
        ({"protocol": {"seed_frames": 1}}, ("protocol.seed_frames",)),
        ({"protocol": {"candidates": ["weibull"]}}, ("protocol.candidates", "gengamma")),
        ({"protocol": {"frobnicate": 1}}, ("protocol.frobnicate",)),
        ({"protocol": {"max_labels": 1}}, ("protocol.max_labels", ">= 2")),
        ({"protocol": {"warm_start": "yes"}}, ("protocol.warm_start", "true or false")),
        ({"model": {"species": ["Cu"]}}, ("model.species",)),
        ({"model": {"num_layers": 0}}, ("model", "num_layers")),
        ({"model": {"num_feature": 8}}, ("model.num_feature", "num_features")),
        ({"training": {"max_epochs": "many"}}, ("training", "max_epochs")),
        ({"heads": {"gp": {"wrong": 1}}}, ("heads.gp", "wrong")),
        ({"heads": {"oracle": {"seed": 1}}}, ("heads.oracle",)),
        ({"datasets": [{"name": "cu"}]}, ("datasets[0].path",)),
        ({"datasets": [{"name": "cu", "path": "good.extxyz"}, {"name": "cu", "path": "good.extxyz"}]},
         ("datasets[1].name", "another dataset")),
        ({"datasets": [{"name": "a b", "path": "good.extxyz"}]}, ("datasets[0].name",)),
        ({"threads": 0}, ("threads",)),
        ({"protocol": {"seeds": 0}}, ("protocol.seeds", "count k >= 1")),
        ({"protocol": {"seeds": -2}}, ("protocol.seeds",)),
        ({"protocol": {"seeds": []}}, ("protocol.seeds", "non-empty list")),
        ({"protocol": {"seeds": [1, 1]}}, ("protocol.seeds", "distinct")),
        ({"protocol": {"seeds": [0, -1]}}, ("protocol.seeds", ">= 0")),
        ({"protocol": {"seeds": "five"}}, ("protocol.seeds", "'five'")),
        ({"protocol": {"seeds": 2.5}}, ("protocol.seeds",)),
        ({"protocol": {"seeds": True}}, ("protocol.seeds",)),
        ({"protocol": {"seeds": [0, "1"]}}, ("protocol.seeds",)),
        ({"protocol": {"seed": 3}}, ("protocol.seed is no longer read", "protocol.seeds", "[3]")),
        ({"datasets": [{"name": "cu", "path": "good.extxyz", "stride": 0}]}, ("datasets[0].stride", ">= 1")),
        ({"datasets": [{"name": "cu", "path": "good.extxyz", "formula": "cu4"}]}, ("datasets[0].formula",)),
        ({"datasets": [{"name": "cu", "path": []}]}, ("datasets[0].path",)),
    ],
)
def test_bad_values(folder, capsys, changes, fragments):
    err = _fails(capsys, _input(folder, **changes), *fragments)
    assert "input.yaml" in err


def test_not_yaml_and_missing_input(folder, capsys):
    bad = folder / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    _fails(capsys, bad, "bad.yaml", "YAML")
    _fails(capsys, folder / "absent.yaml", "absent.yaml", "not found")
    with pytest.raises(ConfigError, match="the file is empty"):
        (folder / "blank.yaml").write_text("")
        load_benchmark_config(folder / "blank.yaml")


def test_plot_refuses_other_files(folder, capsys):
    (folder / "x.h5").write_text("no")
    assert main(["plot", str(folder / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otf-statcut plot: error: ") and "x.h5" in err and "\n" not in err
    assert main(["plot", str(folder / "missing.h5")]) == 2
    assert "not found" in capsys.readouterr().err
