"""Device plumbing of the NequIP potential: where the weights live, where fit/predict/the
calculator run, what save/load do with devices, and how a GPU request fails without one.

The first group runs everywhere (CPU). The tests marked ``needs_cuda`` compare a CUDA run with a
CPU run of the same weights; they are skipped only when torch sees no CUDA GPU.

Tolerances (CUDA vs CPU, same weights): NequIP turns TF32 off, so both run IEEE float32 (or
float64) arithmetic and differ only in summation order. For the float32 model: round-off
~ 1e-7 relative on per-atom energies ~ 1 eV summed over 16 atoms gives ~ 1e-6 eV; forces are sums
of ~ 50 edge terms ~ 0.1 eV/Å, ~ 1e-6 eV/Å; we allow 1e-4 eV (energy), 1e-4 eV/Å (forces),
1e-5 eV/Å³ (stress), 1e-4 relative (features). For float64, 1e-9 throughout.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.morse import MorsePotential

from otf_statcut.data import labelled_frame
from otf_statcut.errors import ConfigError, UserError
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig, resolve_device

torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

SMALL = ModelConfig(species=("Li",), num_features=16, radial_mlp_width=32, seed=2)


def li_cells(n: int, seed: int):
    """Rattled, strained 16-atom bcc Li cells labelled with a Morse potential."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
        atoms.set_cell(atoms.cell @ (np.eye(3) + 0.02 * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        atoms.calc = MorsePotential(epsilon=0.1, r0=3.0, rho0=4.0, rcut1=4.0, rcut2=5.0)
        labels = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(labelled_frame(atoms, *labels))
    return frames


@pytest.fixture(scope="module")
def data():
    return {"train": li_cells(6, seed=0), "val": li_cells(3, seed=1)}


@pytest.fixture(scope="module")
def trained(data):
    """A CPU potential after a short fit (weights away from their initial values)."""
    potential = NequIPPotential.build(SMALL, data["train"], device="cpu")
    return potential.fit(data["train"], data["val"], TrainConfig(max_epochs=2, batch_size=3))


def model_devices(potential) -> set[torch.device]:
    return {t.device for t in [*potential.model.parameters(), *potential.model.buffers()]}


def assert_same_predictions(a, b, rtol=0.0, atol=0.0):
    """Energies, forces, stresses and features of two prediction lists agree."""
    assert len(a) == len(b)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p.energy, q.energy, rtol=rtol, atol=atol)
        for x, y in ((p.forces, q.forces), (p.stress, q.stress), (p.features, q.features)):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def assert_float64_numpy(predictions):
    for p in predictions:
        assert isinstance(p.energy, float)
        for array in (p.forces, p.stress, p.features):
            assert isinstance(array, np.ndarray) and array.dtype == np.float64


# --- runs everywhere ------------------------------------------------------------------------


@pytest.mark.parametrize("request_", ["cpu", " CPU ", None, torch.device("cpu")])
def test_cpu_requests_resolve_to_cpu(request_):
    assert resolve_device(request_) == torch.device("cpu")


def test_auto_is_cuda_only_when_available():
    expected = torch.device("cuda", torch.cuda.current_device()) if HAS_CUDA else torch.device("cpu")
    assert resolve_device("auto") == expected


@pytest.mark.parametrize("bad", ["gpu", "mps", "cuda:x", "", 3])
def test_unknown_device_names_refused(bad):
    with pytest.raises(ConfigError, match=r"expected 'cpu', 'cuda', 'cuda:N' \(a GPU index\) or 'auto'"):
        resolve_device(bad)


def test_unusable_gpu_refused_clearly(data, trained, tmp_path):
    """Without CUDA, 'cuda' is refused by every entry point; with it, a GPU index that does not exist."""
    if HAS_CUDA:
        bad, message = f"cuda:{torch.cuda.device_count()}", "CUDA device\\(s\\) are visible"
    else:
        bad, message = "cuda", r"device 'cuda' requested but torch.cuda.is_available\(\) is False"
    folder = trained.save(tmp_path / "model")
    for attempt in (
        lambda: resolve_device(bad),
        lambda: NequIPPotential.build(SMALL, data["train"], device=bad),
        lambda: NequIPPotential.load(folder, device=bad),
        lambda: NequIPPotential(trained.config, trained.statistics, device=bad),
        lambda: trained.calculator(device=bad),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            attempt()
        assert isinstance(info.value, UserError)  # the CLI reports it on one line
    with pytest.raises(ConfigError, match=message):
        trained.copy().to(bad)
    assert trained.device == torch.device("cpu")  # a refused request leaves the potential alone


def test_explicit_cpu_and_auto_builds(data, trained):
    explicit = NequIPPotential.build(SMALL, data["train"], device="cpu")
    default = NequIPPotential.build(SMALL, data["train"])
    auto = NequIPPotential.build(SMALL, data["train"], device="auto")
    assert explicit.device == default.device == torch.device("cpu")
    assert auto.device == resolve_device("auto")
    assert model_devices(explicit) == {torch.device("cpu")} and model_devices(auto) == {auto.device}
    assert "device='cpu'" in repr(explicit)
    # the initial weights are drawn on the CPU from the seed: the same on every device
    for a, b in zip(explicit.model.state_dict().values(), auto.model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=0)
    predictions = explicit.predict(data["val"], batch_size=2)
    assert_float64_numpy(predictions)
    assert_same_predictions(predictions, default.predict(data["val"], batch_size=2))


def test_save_then_load_on_another_device_request(trained, data, tmp_path):
    """Saved weights are CPU tensors; loading with any CPU request gives identical predictions."""
    folder = trained.save(tmp_path / "model")
    state = torch.load(folder / "weights.pt", weights_only=True)  # no map_location: must be CPU already
    assert {v.device for v in state.values()} == {torch.device("cpu")}
    expected = trained.predict(data["val"])
    for request_ in ("cpu", None, torch.device("cpu")):
        loaded = NequIPPotential.load(folder, species=["Li"], device=request_)
        assert loaded.device == torch.device("cpu")
        assert_same_predictions(loaded.predict(data["val"]), expected)
    auto = NequIPPotential.load(folder, device="auto")
    assert auto.device == resolve_device("auto") and model_devices(auto) == {auto.device}


def test_copy_keeps_the_device_and_to_returns_self(trained, data):
    clone, reseeded = trained.copy(), trained.copy(seed=11)
    assert clone.device == reseeded.device == trained.device
    assert model_devices(clone) == model_devices(reseeded) == {trained.device}
    assert clone.to("cpu") is clone and clone.device == torch.device("cpu")
    assert_same_predictions(clone.predict(data["val"]), trained.predict(data["val"]))


def test_calculator_follows_the_potential_device(trained, data):
    atoms = data["val"][0].copy()
    calc = trained.calculator()
    assert calc.device == trained.device
    explicit = trained.calculator(device="cpu")
    assert explicit.device == torch.device("cpu")
    atoms.calc = calc
    prediction = trained.predict(atoms)[0]
    assert atoms.get_potential_energy() == pytest.approx(prediction.energy, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), prediction.forces, atol=1e-10)
    assert calc.results["forces"].dtype == np.float64


def test_fit_leaves_the_callers_graphs_on_their_device(trained, data):
    """train_model copies graphs to the model's device; the converter's graphs stay on the CPU."""
    from nequip.data import AtomicDataDict

    from otf_statcut.mlip.graphs import float64_default
    from otf_statcut.mlip.training import train_model

    potential = trained.copy()
    graphs = potential.converter.labelled_graphs(data["train"])
    before = {k: v.clone() for k, v in graphs[0].items()}
    with float64_default():
        history = train_model(potential.model, graphs, [], TrainConfig(max_epochs=1, batch_size=4))
    assert history.monitored == "train" and len(history.epochs) == 1
    assert graphs[0][AtomicDataDict.POSITIONS_KEY].device == torch.device("cpu")
    for key, value in before.items():
        torch.testing.assert_close(graphs[0][key], value, equal_nan=True)


# --- needs a CUDA GPU ---------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("model_dtype, tol", [("float32", 1e-4), ("float64", 1e-9)])
def test_cuda_and_cpu_predictions_agree(data, trained, tmp_path, model_dtype, tol):
    """Same weights on CUDA and CPU: predict, the calculator and a CPU load of a CUDA save agree."""
    config = dataclasses.replace(SMALL, model_dtype=model_dtype)
    cpu = NequIPPotential.build(config, data["train"], device="cpu")
    gpu = cpu.copy().to("cuda")
    assert gpu.device.type == "cuda" and model_devices(gpu) == {gpu.device}
    on_gpu = gpu.predict(data["val"], batch_size=2)
    assert_float64_numpy(on_gpu)
    assert_same_predictions(on_gpu, cpu.predict(data["val"]), rtol=tol, atol=tol)

    atoms = data["val"][0].copy()
    atoms.calc = gpu.calculator()
    np.testing.assert_allclose(atoms.get_forces(), on_gpu[0].forces, rtol=tol, atol=tol)
    assert isinstance(atoms.get_stress(), np.ndarray)

    folder = gpu.save(tmp_path / "from_gpu")
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert {v.device for v in state.values()} == {torch.device("cpu")}
    back = NequIPPotential.load(folder, device="cpu")
    assert_same_predictions(back.predict(data["val"]), cpu.predict(data["val"]))  # weights bit-identical


@needs_cuda
def test_short_fit_on_cuda_lowers_the_loss(data):
    potential = NequIPPotential.build(SMALL, data["train"], device="cuda")
    config = TrainConfig(max_epochs=6, batch_size=3, learning_rate=0.02, patience=50)
    potential.fit(data["train"], data["val"], config)
    history = potential.history
    assert history.best_val_loss < 0.5 * history.initial_val_loss  # CPU, same settings: 0.2
    assert model_devices(potential) == {potential.device} and potential.device.type == "cuda"
    # a cold restart rebuilds the model on the same device
    potential.fit(data["train"], data["val"], TrainConfig(max_epochs=1), warm_start=False)
    assert model_devices(potential) == {potential.device}
    assert potential.copy(seed=4).device == potential.device
    with pytest.raises(ConfigError, match="differs from the potential's device"):
        potential.calculator(device="cpu")
