"""Physics of the NequIP potential: forces and stress are energy derivatives, symmetries hold,
and predict returns float64 whatever the model precision.

Small generated bcc-Li cells labelled with a Morse potential; the models are untrained (random
weights give a non-trivial, smooth energy surface, which is all these identities need).

Tolerances
----------
float64 model: central differences with step h have truncation error ~ h^2 |E'''|/6 ~ 1e-9 eV/Å
at h = 1e-4 Å, and round-off ~ 1e-16 |E| / h ~ 1e-11; we allow 1e-8 eV/Å (measured 1e-10) and,
for strain steps of 1e-5, 1e-9 eV/Å³ (measured 3e-12).
float32 model: the per-atom readout runs in float32 (relative round-off 6e-8 on |E_i| ~ 0.3 eV,
~1e-7 eV on the 16-atom total), so differences need a larger step: h = 1e-3 Å gives noise
~ 1e-7 / 2e-3 = 5e-5 eV/Å, allowed 2e-4 eV/Å (measured 6e-6); strain 1e-4 over V ~ 330 Å³ gives
~ 1.5e-6 eV/Å³, allowed 1e-5 (measured 2e-7). Forces of the untrained models are ~1e-2 eV/Å and
stresses ~5e-4 eV/Å³, so a sign or scale error fails either way.
Symmetry checks compare analytic outputs: 1e-9 (float64), 1e-4 relative (float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.morse import MorsePotential
from scipy.spatial.transform import Rotation

from otf_statcut.data import labelled_frame
from otf_statcut.errors import DataError
from otf_statcut.mlip import ModelConfig, NequIPPotential, PotentialCalculator, Prediction

torch.set_num_threads(1)


def li_cells(n: int, seed: int = 0, rattle: float = 0.08, strain: float = 0.02):
    """``n`` rattled, slightly sheared 16-atom bcc Li cells labelled with a Morse potential."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
        deform = np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell @ deform, scale_atoms=True)
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        atoms.calc = MorsePotential(epsilon=0.1, r0=3.0, rho0=4.0, rcut1=4.0, rcut2=5.0)
        labels = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(labelled_frame(atoms, *labels))
    return frames


@pytest.fixture(scope="module")
def frames():
    return li_cells(6)


@pytest.fixture(scope="module", params=["float64", "float32"])
def potential(request, frames):
    return NequIPPotential.build(ModelConfig(species=("Li",), model_dtype=request.param, seed=3), frames)


def tolerance(potential, tight, loose):
    return tight if potential.config.model_dtype == "float64" else loose


def probe(frames):
    """An unlabelled copy of a frame to move around."""
    atoms = frames[0].copy()
    atoms.calc = None
    return atoms


def test_prediction_types_and_shapes(potential, frames):
    predictions = potential.predict(frames[:3])
    assert len(predictions) == 3
    for atoms, p in zip(frames, predictions):
        assert isinstance(p, Prediction) and isinstance(p.energy, float)
        assert p.forces.shape == (len(atoms), 3) and p.forces.dtype == np.float64
        assert p.stress.shape == (6,) and p.stress.dtype == np.float64
        assert p.features.shape == (len(atoms), potential.config.num_features)
        assert p.features.dtype == np.float64
        assert np.all(np.isfinite(p.features)) and np.ptp(p.features) > 0
    assert potential.predict(frames[:1], stress=False, features=False)[0].stress is None
    assert potential.predict(frames[:1], stress=False, features=False)[0].features is None


def test_caller_default_dtype_neither_matters_nor_changes(potential, frames):
    """A float32 default (e.g. set by gpytorch code) does not alter predictions, and predict
    leaves the caller's default dtype as it was."""
    reference = potential.predict(frames[:2])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        again = potential.predict(frames[:2])
        atoms = probe(frames)
        atoms.calc = potential.calculator()
        energy = atoms.get_potential_energy()
        assert torch.get_default_dtype() == torch.float32
    finally:
        torch.set_default_dtype(previous)
    for a, b in zip(reference, again):
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)
    assert energy == pytest.approx(reference[0].energy, rel=1e-12)


def test_batched_prediction_matches_single(potential, frames):
    batched = potential.predict(frames, batch_size=4)
    single = [potential.predict(atoms)[0] for atoms in frames]
    tol = tolerance(potential, 1e-10, 1e-5)
    for b, s in zip(batched, single):
        assert b.energy == pytest.approx(s.energy, abs=tol * len(s.forces))
        np.testing.assert_allclose(b.forces, s.forces, atol=tol)
        np.testing.assert_allclose(b.stress, s.stress, atol=tol)
        np.testing.assert_allclose(b.features, s.features, atol=tol)


def test_forces_are_minus_energy_gradient(potential, frames):
    atoms = probe(frames)
    atoms.calc = potential.calculator()
    analytic = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=tolerance(potential, 1e-4, 1e-3))
    assert np.abs(analytic).max() > 5e-3  # a non-trivial check
    np.testing.assert_allclose(analytic, numeric, atol=tolerance(potential, 1e-8, 2e-4))


def test_stress_is_strain_derivative(potential, frames):
    atoms = probe(frames)
    atoms.calc = potential.calculator()
    analytic = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=tolerance(potential, 1e-5, 1e-4))
    assert np.abs(analytic).max() > 1e-4
    np.testing.assert_allclose(analytic, numeric, atol=tolerance(potential, 1e-9, 1e-5))


def test_rotation_equivariance(potential, frames):
    rotation = Rotation.random(random_state=7).as_matrix()
    atoms = probe(frames)
    turned = atoms.copy()
    turned.set_cell(atoms.cell @ rotation.T, scale_atoms=False)
    turned.positions = atoms.positions @ rotation.T
    p, q = potential.predict([atoms, turned])
    tol = tolerance(potential, 1e-9, 1e-4)
    assert q.energy == pytest.approx(p.energy, rel=tol)
    np.testing.assert_allclose(q.forces, p.forces @ rotation.T, atol=tol * np.abs(p.forces).max())
    from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

    rotated_stress = full_3x3_to_voigt_6_stress(rotation @ voigt_6_to_full_3x3_stress(p.stress) @ rotation.T)
    np.testing.assert_allclose(q.stress, rotated_stress, atol=tol * np.abs(p.stress).max())
    np.testing.assert_allclose(q.features, p.features, atol=tol * np.abs(p.features).max())


def test_permutation_and_translation_invariance(potential, frames):
    atoms = probe(frames)
    order = np.random.default_rng(1).permutation(len(atoms))
    permuted = atoms[order]
    shifted = atoms.copy()
    shifted.positions += np.array([0.7, -1.3, 2.1])
    p, q, r = potential.predict([atoms, permuted, shifted])
    tol = tolerance(potential, 1e-9, 1e-4)
    assert q.energy == pytest.approx(p.energy, rel=tol)
    assert r.energy == pytest.approx(p.energy, rel=tol)
    np.testing.assert_allclose(q.forces, p.forces[order], atol=tol)
    np.testing.assert_allclose(q.features, p.features[order], atol=tol * np.abs(p.features).max())
    np.testing.assert_allclose(r.features, p.features, atol=tol * np.abs(p.features).max())


def test_features_are_the_readout_input(potential, frames):
    """The latent features are what the per-atom energy readout sees: a linear readout of them
    (plus per-type scale/shift) gives back the per-atom energies the calculator reports."""
    atoms = probe(frames)
    calc = potential.calculator()
    atoms.calc = calc
    per_atom = atoms.get_potential_energies()
    features = calc.get_property("features", atoms)
    design = np.hstack([features, np.ones((len(atoms), 1))])
    coeffs, *_ = np.linalg.lstsq(design, per_atom, rcond=None)
    np.testing.assert_allclose(design @ coeffs, per_atom, atol=tolerance(potential, 1e-8, 1e-5))
    assert per_atom.sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-9)


def test_calculator_semantics(potential, frames):
    atoms = probe(frames)
    calc = potential.calculator()
    atoms.calc = calc
    prediction = potential.predict(atoms)[0]
    assert atoms.get_potential_energy() == pytest.approx(prediction.energy, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), prediction.forces, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), prediction.stress, atol=1e-12)
    assert isinstance(atoms.get_potential_energy(), float)
    assert calc.prediction is not None and calc.prediction.features.shape[0] == len(atoms)
    first = atoms.get_forces().copy()
    atoms.positions[0] += [0.05, 0.0, 0.0]
    assert not np.allclose(atoms.get_forces(), first)  # results invalidated when atoms move
    assert "energy" in calc.results and calc.results["features"].dtype == np.float64


def test_calculator_without_cell_has_no_stress(potential, frames):
    atoms = probe(frames)[:8]
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    atoms.calc = potential.calculator()
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (8, 3)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    assert potential.predict(atoms)[0].stress is None


def test_calculator_hook_sees_raw_output(potential, frames):
    seen = {}

    class Hooked(PotentialCalculator):
        implemented_properties = PotentialCalculator.implemented_properties + ["latent_norm"]

        def save_extra_outputs(self, out):
            seen["keys"] = set(out)
            latent = out["node_features"].detach().double().numpy()
            self.results["latent_norm"] = np.linalg.norm(latent, axis=1)

    atoms = probe(frames)
    atoms.calc = Hooked(potential)
    norms = atoms.calc.get_property("latent_norm", atoms)
    assert {"node_features", "total_energy", "forces"} <= seen["keys"]
    np.testing.assert_allclose(norms, np.linalg.norm(atoms.calc.prediction.features, axis=1), rtol=1e-6)


def test_unknown_element_is_refused(potential, frames):
    atoms = probe(frames)
    atoms[0].symbol = "Mg"
    with pytest.raises(DataError, match="Mg"):
        potential.predict(atoms)
    atoms.calc = potential.calculator()
    with pytest.raises(DataError, match="Mg"):
        atoms.get_potential_energy()


def test_same_seed_same_model(frames):
    config = ModelConfig(species=("Li",), seed=11)
    a = NequIPPotential.build(config, frames).predict(frames[0])[0]
    b = NequIPPotential.build(config, frames).predict(frames[0])[0]
    c = NequIPPotential.build(ModelConfig(species=("Li",), seed=12), frames).predict(frames[0])[0]
    assert a.energy == b.energy and np.array_equal(a.forces, b.forces)
    assert not np.allclose(a.forces, c.forces)
