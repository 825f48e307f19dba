"""OTFCalculator as an ASE calculator: σ lives in results (recomputed when an atom moves), and
each decision gives the right result: MLIP (trust), reference (label), reference + retrain (halt)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.engine import Learner, OTFCalculator
from otf_statcut.engine.calculator import SOURCE_MLIP, SOURCE_REFERENCE
from otf_statcut.engine.decision import Action
from otf_statcut.labelers import ASECalculatorLabeler
from otf_statcut.mlip import ModelConfig, TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 2, 1))
    labeler = ASECalculatorLabeler(EMT, name="emt")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(4):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=0.08, size=copy.positions.shape)
        frames.append(labeler.label(copy))
    learner = Learner.from_frames(
        frames, n=1000, head="ensemble",
        head_settings={"n_members": 2, "train_config": {"max_epochs": 4, "batch_size": 2}},
        model=ModelConfig(species=("Cu",), num_features=8, num_layers=1, radial_mlp_width=8, r_max=4.0),
        train=TrainConfig(max_epochs=4, batch_size=2), retrain=TrainConfig(max_epochs=2, batch_size=2),
        val_fraction=0.5, retrain_every=2)
    work = atoms.copy()
    work.positions += rng.normal(scale=0.1, size=work.positions.shape)
    return learner, labeler, work


def with_cutoffs(learner, minimum, maximum):
    learner.cutoffs = dataclasses.replace(learner.cutoffs, minimum=minimum, maximum=maximum)


def emt_forces(atoms):
    ref = atoms.copy()
    ref.calc = EMT()
    return ref.get_forces()


def test_sigma_is_a_result_and_is_recomputed_when_an_atom_moves(setup):
    learner, labeler, atoms = setup
    with_cutoffs(learner, np.inf, np.inf)
    atoms = atoms.copy()
    calc = OTFCalculator(learner, labeler)
    atoms.calc = calc
    sigma = calc.get_property("sigma", atoms)
    assert sigma.shape == (len(atoms),) and (sigma > 0).all()
    assert calc.get_property("sigma", atoms) is not calc.results["sigma"]  # ASE hands out copies
    assert calc.n_calls == 1
    atoms.positions[3, 0] += 0.2
    moved = calc.get_property("sigma", atoms)
    assert calc.n_calls == 2 and not np.allclose(moved, sigma)
    # trusted: exactly the potential's own prediction
    plain = atoms.copy()
    plain.calc = learner.potential.calculator()
    np.testing.assert_allclose(atoms.get_forces(), plain.get_forces())
    np.testing.assert_allclose(atoms.get_stress(), plain.get_stress())
    assert calc.decision.action is Action.TRUST and calc.source == SOURCE_MLIP
    assert labeler.n_calls == 4  # only the initial frames were labelled


def test_label_uses_the_reference_and_retrains_after_k_labels(setup):
    learner, labeler, atoms = setup
    with_cutoffs(learner, 0.0, np.inf)  # every configuration is uncertain, none beyond the maximum
    atoms = atoms.copy()
    atoms.calc = calc = OTFCalculator(learner, labeler)
    model, n_frames = learner.model_id, len(learner.frames)
    forces = atoms.get_forces()
    assert calc.decision.action is Action.LABEL and calc.source == SOURCE_REFERENCE
    np.testing.assert_allclose(forces, emt_forces(atoms), atol=1e-12)
    assert len(learner.frames) == n_frames + 1 and learner.model_id == model  # 1 label < every = 2
    atoms.positions[0, 1] += 0.05
    atoms.get_forces()
    assert learner.model_id == model + 1  # the second label triggered a retrain (head and cutoffs refitted)
    kinds = [e[0] for e in learner.events]
    assert kinds[-2:] == ["cutoffs", "model"] and learner.events[-1][1]["reason"] == "every"


def test_halt_retrains_at_once_and_keeps_the_reference_result(setup):
    learner, labeler, atoms = setup
    learner.retrain_every = 100
    with_cutoffs(learner, 0.0, 0.0)  # everything beyond the maximum
    atoms = atoms.copy()
    atoms.positions[5] += 0.3
    atoms.calc = calc = OTFCalculator(learner, labeler)
    model = learner.model_id
    forces = atoms.get_forces()
    assert calc.decision.action is Action.HALT
    assert learner.model_id == model + 1 and learner.events[-1][1]["reason"] == "halt"
    np.testing.assert_allclose(forces, emt_forces(atoms), atol=1e-12)  # not the new model's forces
    assert np.isfinite(learner.cutoffs.minimum)  # new cutoffs from the refit
    # a configuration already labelled is reused, never labelled twice
    calls = labeler.n_calls
    lookup = {}
    for frame in learner.frames:
        from otf_statcut.io.runlog import configuration_key

        lookup[configuration_key(frame)] = frame
    again = atoms.copy()
    with_cutoffs(learner, 0.0, np.inf)
    again.calc = OTFCalculator(learner, labeler, lookup=lookup.get)
    np.testing.assert_allclose(again.get_forces(), forces, atol=1e-12)
    assert labeler.n_calls == calls


def test_warm_retrain_continues_the_ensemble_members_and_cold_retrain_starts_new_ones(setup):
    learner, _, _ = setup
    head = learner.head
    assert head.members_, "the ensemble has members besides the driving potential"
    members = [id(m) for m in head.members_]
    weights = [next(m.model.parameters()).detach().clone() for m in head.members_]
    learner.fit(step=10, reason="every", warm_start=True)
    assert learner.head is head, "a warm retrain refits the same head"
    assert [id(m) for m in learner.head.members_] == members, "members continue, not rebuilt"
    moved = [not np.allclose(w.numpy(), next(m.model.parameters()).detach().numpy())
             for w, m in zip(weights, learner.head.members_)]
    assert any(moved), "the warm retrain trained the members further"
    learner.fit(step=11, reason="every", warm_start=False)
    assert learner.head is not head, "a cold retrain starts from a new head"


def test_per_atom_energies_are_not_advertised_and_never_relabel(setup):
    """Issue 10: after a labelled step get_potential_energies() labelled the same configuration
    again and then raised. Every advertised property is present on every step; asking for one
    that is not advertised raises at once, without a new evaluation or label."""
    from ase.calculators.calculator import PropertyNotImplementedError

    learner, labeler, atoms = setup
    with_cutoffs(learner, 0.0, np.inf)  # every step is labelled
    atoms = atoms.copy()
    calc = OTFCalculator(learner, labeler)
    atoms.calc = calc
    atoms.get_forces()
    size, calls, labels = len(learner.frames), calc.n_calls, labeler.n_calls
    assert "energies" not in calc.implemented_properties
    assert set(calc.results) >= {"energy", "forces", "sigma"} and "energies" not in calc.results
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energies()
    assert (len(learner.frames), calc.n_calls, labeler.n_calls) == (size, calls, labels)
    for name in calc.implemented_properties:
        if name != "stress" or atoms.pbc.all():
            calc.get_property(name, atoms)  # present: no new evaluation
    assert calc.n_calls == calls
