"""The run input schema: defaults, paths, and one-line errors naming file, key, value, allowed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from otf_statcut.config import RunConfig, load_run_config, parse_run_config
from otf_statcut.errors import ConfigError, DataError
from otf_statcut.labelers.gpaw import GPAWSettings
from otf_statcut.labelers.registry import LJSettings

ROOT = Path(__file__).resolve().parents[1]
LI = {"system": {"builder": {"element": "Li"}}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.yaml"
    path.write_text(text)
    return path


def error_of(data, exc=ConfigError) -> str:
    with pytest.raises(exc) as info:
        parse_run_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_dataclass_defaults():
    config = parse_run_config(LI)
    assert isinstance(config, RunConfig)
    assert config.md.ensemble == "langevin" and config.md.temperature_K == 300.0
    assert config.labeler.name == "gpaw" and config.labeler.settings == GPAWSettings()
    assert config.cutoffs.max_error == 1.0 and config.cutoffs.n == "run"
    assert config.cutoffs.candidates == ("maxwell", "gamma", "gengamma")
    assert config.retrain.every == 10 and config.retrain.warm_start is True
    assert config.head.name == "ensemble"
    assert config.system.builder.supercell == (2, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.md.steps = 5  # type: ignore[misc]


def test_quickstart_input_is_valid():
    config = load_run_config(ROOT / "inputs" / "quickstart.yaml")
    assert config.system.builder.element == "Li" and config.system.builder.lattice == "bcc"
    assert config.md.ensemble == "langevin" and config.md.temperature_K == 600
    assert config.labeler.name == "gpaw" and config.labeler.settings.mode == "pw"
    assert config.labeler.settings.ecut == 200
    assert config.output.folder.is_absolute()
    assert "quickstart" in config.text


def test_paths_resolve_against_the_input_folder(tmp_path):
    (tmp_path / "start.extxyz").write_text(
        '1\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\nLi 0 0 0\n')
    path = write(tmp_path, "system: {structure: start.extxyz}\noutput: {folder: out}\n")
    config = load_run_config(path)
    assert config.system.structure == (tmp_path / "start.extxyz").resolve()
    assert config.output.folder == (tmp_path / "out").resolve()
    # no folder given: the default sits beside the input, too
    assert load_run_config(write(tmp_path, "system: {structure: start.extxyz}\n")).output.folder == \
        (tmp_path / "otf-run").resolve()


def test_settings_convert_and_round_trip_to_json():
    config = parse_run_config({
        **LI,
        "md": {"temperature_K": 600, "steps": 20},  # int -> float where a float is expected
        "labeler": {"name": "lj", "settings": {"epsilon": 0.3, "sigma": "2.5e0"}},
        "cutoffs": {"candidates": "gamma", "n": 5000, "max_error": float("inf")},
        "mlip": {"model": {"num_features": 8}, "train": {"max_epochs": 5}},
        "retrain": {"train": {"max_epochs": 2}},
    })
    assert isinstance(config.md.temperature_K, float)
    assert config.labeler.settings == LJSettings(epsilon=0.3, sigma=2.5)
    assert config.cutoffs.candidates == ("gamma",) and config.cutoffs.n == 5000
    assert config.cutoffs.max_error == float("inf")
    data = json.loads(config.to_json())
    assert data["labeler"]["settings"]["sigma"] == 2.5 and data["mlip"]["model"] == {"num_features": 8}
    assert config.model_config(("Li",)).num_features == 8
    assert config.train_config().max_epochs == 5 and config.train_config(retrain=True).max_epochs == 2


@pytest.mark.parametrize(
    "data, expected",
    [
        ({**LI, "md": {"temprature_K": 3}}, "unknown key md.temprature_K; did you mean 'temperature_K'?"),
        ({"sytem": {}}, "unknown key sytem; did you mean 'system'?"),
        ({**LI, "md": {"temperature_K": -3}},
         "md.temperature_K = -3 is invalid; expected a temperature > 0 (K)"),
        ({**LI, "md": {"steps": 1.5}}, "md.steps = 1.5 is invalid; expected an integer"),
        ({**LI, "md": {"ensemble": "langevine"}}, "did you mean 'langevin'?"),
        ({"system": {"builder": {"element": "Li", "supercell": [2, 2]}}},
         "system.builder.supercell = [2, 2] is invalid; expected a list of 3 integers"),
        ({"system": {"builder": {"lattice": "bcc"}}}, "missing key system.builder.element"),
        ({"system": {"builder": {"element": "Xx"}}}, "system.builder.element = 'Xx'"),
        ({"system": {}}, "give exactly one of system.structure"),
        ({"md": {}}, "missing section 'system'"),
        ({**LI, "labeler": {"name": "vasp"}}, "labeler.name = 'vasp' is invalid; expected one of gpaw, emt"),
        ({**LI, "labeler": {"settings": {"ecutt": 200}}},
         "unknown key labeler.settings.ecutt; did you mean 'ecut'?"),
        ({**LI, "labeler": {"settings": {"mode": "lcao"}}}, "labeler.settings.mode = 'lcao'"),
        ({**LI, "labeler": {"settings": {"ecut": -1}}}, "labeler.settings: ecut must be > 0"),
        ({**LI, "labeler": {"name": "lj", "settings": {"ecut": 200}}}, "unknown key labeler.settings.ecut"),
        ({**LI, "mlip": {"model": {"num_feature": 3}}}, "unknown key mlip.model.num_feature; did you mean"),
        ({**LI, "mlip": {"model": {"species": ["Li"]}}}, "mlip.model.species is not allowed"),
        ({**LI, "mlip": {"model": {"num_features": 0}}}, "mlip.model: num_features=0"),
        ({**LI, "retrain": {"train": {"max_epochs": "ten"}}}, "retrain.train.max_epochs = 'ten'"),
        ({**LI, "head": {"name": "dist"}}, "head.name = 'dist' is invalid"),
        ({**LI, "head": {"name": "oracle"}}, "the oracle needs the reference forces"),
        ({**LI, "head": {"name": "distance", "settings": {"max_iters": 3}}}, "did you mean 'max_iter'?"),
        ({**LI, "cutoffs": {"n": "all"}}, "cutoffs.n = 'all' is invalid"),
        ({**LI, "cutoffs": {"candidates": ["maxwel"]}}, "cutoffs.candidates"),
        ({**LI, "initial_data": {"val_fraction": 1.0}}, "initial_data.val_fraction = 1.0"),
        ({**LI, "output": {"folder": 3}}, "output.folder = 3 is invalid"),
        ({**LI, "md": [1, 2]}, "md = [1, 2] is invalid; expected a mapping"),
        ([1, 2], "(top level) = [1, 2] is invalid"),
        # numbers must be finite where infinity means nothing (NaN dynamics, then a hang)
        ({**LI, "md": {"friction": float("inf")}}, "md.friction = inf is invalid; expected a friction > 0"),
        ({**LI, "md": {"timestep_fs": float("nan")}}, "md.timestep_fs = nan is invalid; expected a number"),
        ({**LI, "cutoffs": {"max_error": float("nan")}}, "cutoffs.max_error = nan is invalid"),
        ({**LI, "cutoffs": {"per_element": "yes"}}, "cutoffs.per_element = 'yes' is invalid; expected auto"),
    ],
)
def test_bad_inputs_name_the_key(data, expected):
    assert expected in error_of(data)


def test_infinite_max_error_means_no_maximum():
    assert parse_run_config({**LI, "cutoffs": {"max_error": float("inf")}}).cutoffs.max_error == float("inf")


def test_duplicate_keys_and_non_utf8_files_are_one_line_errors(tmp_path):
    path = write(tmp_path, "system:\n  builder: {element: Li}\nmd:\n  steps: 5\nmd:\n  steps: 50\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert "\n" not in message and "key 'md' appears twice" in message and "lines 3 and 5" in message
    path.write_bytes(b"system:\n  builder: {element: Li}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_run_config(path)


def test_missing_files_are_data_errors(tmp_path):
    assert "system.structure: file" in error_of({"system": {"structure": "nope.xyz"}}, DataError)
    assert "initial_data.file" in error_of({**LI, "initial_data": {"file": "nope.xyz"}}, DataError)
    with pytest.raises(DataError, match="not found"):
        load_run_config(tmp_path / "absent.yaml")


def test_yaml_problems_name_the_file_and_line(tmp_path):
    path = write(tmp_path, "system:\n  builder: {element: Li\nmd: [\n")
    with pytest.raises(ConfigError, match=r"input.yaml: not valid YAML at line \d+"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="file is empty"):
        load_run_config(write(tmp_path, ""))
    bad = write(tmp_path, "system: {builder: {element: Li}}\nmd: {steps: 0}\n")
    message = str(pytest.raises(ConfigError, load_run_config, bad).value)
    assert message.startswith(str(tmp_path / "input.yaml") + ": md.steps = 0")


def test_yaml_tags_are_not_executed(tmp_path):
    path = write(tmp_path, "system: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(path)


def test_mlip_device_defaults_to_cpu_and_unavailable_cuda_is_a_one_line_error():
    import torch

    assert parse_run_config(LI).mlip.device == "cpu"
    assert parse_run_config({**LI, "mlip": {"device": "auto"}}).mlip.device == "auto"
    message = error_of({**LI, "mlip": {"device": "gpu"}})
    assert "mlip.device" in message and "'gpu'" in message and "cuda" in message
    if not torch.cuda.is_available():
        assert "mlip.device" in error_of({**LI, "mlip": {"device": "cuda"}})
    else:
        assert parse_run_config({**LI, "mlip": {"device": "cuda"}}).mlip.device == "cuda"


def test_mlip_compile_modes():
    assert parse_run_config({**LI, "mlip": {"compile": "background"}}).mlip.compile == "background"
    assert parse_run_config(LI).mlip.compile == "off"
    with pytest.raises(ConfigError, match="mlip.compile = 'fast' is invalid"):
        parse_run_config({**LI, "mlip": {"compile": "fast"}})
