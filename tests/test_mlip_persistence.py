"""Save/load of a NequIPPotential directory: identical predictions, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.morse import MorsePotential

from otf_statcut.data import labelled_frame
from otf_statcut.errors import DataError
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig

torch.set_num_threads(1)


def frames(n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        atoms.calc = MorsePotential(epsilon=0.1, r0=3.0, rho0=4.0, rcut1=4.0, rcut2=5.0)
        labels = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        out.append(labelled_frame(atoms, *labels))
    return out


@pytest.fixture(scope="module")
def trained():
    data = frames()
    potential = NequIPPotential.build(ModelConfig(species=("Li",), num_features=16, seed=5), data[:4])
    return potential.fit(data[:4], data[4:], TrainConfig(max_epochs=3)), data


def test_save_load_gives_identical_predictions(trained, tmp_path):
    potential, data = trained
    potential.save(tmp_path / "model")
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["history.json", "optimizer.pt", "potential.json", "weights.pt"]
    loaded = NequIPPotential.load(tmp_path / "model", species=["Li"])
    assert loaded.config == potential.config and loaded.statistics == potential.statistics
    for a, b in zip(potential.predict(data), loaded.predict(data)):
        assert a.energy == b.energy
        for x, y in ((a.forces, b.forces), (a.stress, b.stress), (a.features, b.features)):
            np.testing.assert_array_equal(x, y)
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert history["best_epoch"] == potential.history.best_epoch


def test_loaded_model_differs_from_a_fresh_one(trained, tmp_path):
    """Guards against a load that silently keeps freshly initialised weights."""
    potential, data = trained
    potential.save(tmp_path / "model")
    loaded = NequIPPotential.load(tmp_path / "model")
    fresh = NequIPPotential(potential.config, potential.statistics)
    assert not np.allclose(loaded.predict(data[0])[0].forces, fresh.predict(data[0])[0].forces)


def test_other_species_refused(trained, tmp_path):
    potential, _ = trained
    potential.save(tmp_path / "model")
    with pytest.raises(DataError, match=r"species \['Li'\], expected \['Li', 'Mg'\]"):
        NequIPPotential.load(tmp_path / "model", species=["Mg", "Li"])
    with pytest.raises(DataError, match="expected"):
        NequIPPotential.load(tmp_path / "model", species=("Na",))


def test_missing_and_corrupt_directories(trained, tmp_path):
    potential, _ = trained
    with pytest.raises(DataError, match="not found"):
        NequIPPotential.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="potential.json: missing"):
        NequIPPotential.load(tmp_path / "empty")

    model = potential.save(tmp_path / "model")
    (model / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="weights.pt: cannot load weights"):
        NequIPPotential.load(model)

    model = potential.save(tmp_path / "model2")
    (model / "potential.json").write_text("{ truncated")
    with pytest.raises(DataError, match="potential.json: unreadable JSON"):
        NequIPPotential.load(model)

    model = potential.save(tmp_path / "model3")
    meta = json.loads((model / "potential.json").read_text())
    meta["format"] = "something-else"
    (model / "potential.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format"):
        NequIPPotential.load(model)

    model = potential.save(tmp_path / "model4")
    meta = json.loads((model / "potential.json").read_text())
    meta["model_config"]["num_features"] = 8  # weights no longer fit the architecture
    (model / "potential.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="do not match"):
        NequIPPotential.load(model)


def test_weights_file_is_plain_tensors(trained, tmp_path):
    """The weights load under torch.load(weights_only=True): no pickled objects."""
    potential, _ = trained
    potential.save(tmp_path / "model")
    state = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_copy_and_reseed(trained):
    potential, data = trained
    same = potential.copy()
    np.testing.assert_array_equal(same.predict(data[0])[0].forces, potential.predict(data[0])[0].forces)
    before = potential.predict(data[0])[0].forces
    with torch.no_grad():  # changing the copy's weights leaves the original alone
        for parameter in same.model.parameters():
            parameter.mul_(1.5)
    assert not np.allclose(same.predict(data[0])[0].forces, before)
    np.testing.assert_array_equal(potential.predict(data[0])[0].forces, before)
    other = potential.copy(seed=99)
    assert other.config.seed == 99 and other.statistics == potential.statistics
