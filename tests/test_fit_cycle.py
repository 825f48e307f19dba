"""The one fit cycle (train → head → calibration → cutoffs) shared by run and benchmark: it
records whether a retrain learned from the new frames, and says so when it did not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from otf_statcut.fit_cycle import CutoffSettings, RetrainCheck, fit_cycle, force_errors
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
from otf_statcut.stats.element_cutoffs import ElementCutoffs
from otf_statcut.uq import make_head

MODEL = dict(num_features=8, num_layers=1, l_max=1, radial_mlp_width=8, r_max=4.0)


def _frames(n: int, stdev: float, seed: int, symbols: str | None = None):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        if symbols:
            atoms.symbols = symbols
        atoms.positions += rng.normal(0.0, stdev, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def trained():
    train, val = _frames(6, 0.05, 0), _frames(3, 0.05, 1)
    potential = NequIPPotential.build(ModelConfig(species=("Cu",), **MODEL), train)
    head = make_head("distance")
    cycle = fit_cycle(potential, head, train, val, train_config=TrainConfig(max_epochs=30, batch_size=3),
                      warm_start=False, n={"Cu": 5000})
    return potential, head, train, val, cycle


def test_first_cycle_fits_head_and_cutoffs(trained):
    _, _, train, val, cycle = trained
    assert cycle.cutoffs is not None and cycle.cutoffs.minimum > 0 and cycle.cutoffs.n == 5000
    assert cycle.val_errors.size == sum(len(f) for f in val) == cycle.val_sigma.size
    assert not cycle.retrain.warm_start and cycle.retrain.weights_changed
    assert math.isnan(cycle.retrain.new_error_before)  # no new frames in a first fit


def test_high_error_frames_once_added_have_a_lower_error_after_the_warm_retrain(trained):
    potential, head, train, val, _ = trained
    potential = potential.copy()
    hot = _frames(4, 0.15, 7)  # larger displacements than anything in training: high error
    before = float(np.concatenate(force_errors(hot, potential.predict(hot, stress=False, features=False))).mean())
    cycle = fit_cycle(potential, head, train + hot[:3], val + hot[3:],
                      train_config=TrainConfig(max_epochs=15, batch_size=3), warm_start=True,
                      n={"Cu": 5000}, new_frames=hot)
    check = cycle.retrain
    assert check.warm_start and check.n_new == 4
    assert check.new_error_before == pytest.approx(before)
    assert check.new_error_after < check.new_error_before
    assert check.weights_changed and check.learned and check.problem() == ""


def test_a_retrain_that_changes_nothing_is_detected(trained):
    """A step far below float32 resolution leaves every weight as it was: the check must say so."""
    potential, head, train, val, _ = trained
    potential = potential.copy()
    config = TrainConfig(max_epochs=1, learning_rate=1e-30, warm_learning_rate=1e-30)
    cycle = fit_cycle(potential, head, train, val, train_config=config, warm_start=True, n={"Cu": 5000},
                      new_frames=val[:1])
    assert cycle.retrain.max_weight_change == 0.0
    assert not cycle.retrain.learned
    assert "unchanged" in cycle.retrain.problem()


def test_problem_names_a_retrain_that_did_not_help():
    check = RetrainCheck(warm_start=True, epochs=3, best_epoch=1, stop_reason="max_epochs", seconds=1.0,
                         max_weight_change=1e-3, n_new=2, new_error_before=0.10, new_error_after=0.12)
    assert not check.learned and "did not lower the error on its 2 new frames" in check.problem()
    assert check.to_dict()["learned"] is False


def test_two_elements_get_per_element_cutoffs_by_default():
    train = _frames(5, 0.05, 3, "CuAuCuAuCuAuCuAu")
    val = _frames(3, 0.05, 4, "CuAuCuAuCuAuCuAu")
    potential = NequIPPotential.build(ModelConfig(species=("Au", "Cu"), **MODEL), train)
    cycle = fit_cycle(potential, make_head("distance"), train, val,
                      train_config=TrainConfig(max_epochs=5, batch_size=3), warm_start=False,
                      n={"Cu": 4000, "Au": 4000})
    assert isinstance(cycle.cutoffs, ElementCutoffs) and cycle.cutoffs.elements == ("Au", "Cu")
    glob = fit_cycle(potential, make_head("distance"), train, val,
                     train_config=TrainConfig(max_epochs=2, batch_size=3), warm_start=True,
                     n={"Cu": 4000, "Au": 4000}, settings=CutoffSettings(per_element=False))
    assert not isinstance(glob.cutoffs, ElementCutoffs) and glob.cutoffs.n == 8000
