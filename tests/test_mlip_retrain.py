"""Warm-start retraining: new labels change the model, a warm fit never hands the old weights back,
the history says what happened, and the carried optimiser state survives save/load (or degrades
to a fresh Adam)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from otf_statcut.data import frame_forces
from otf_statcut.errors import ConfigError, DataError
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
from otf_statcut.stats import force_error_magnitudes
from conftest import cu_cells

torch.set_num_threads(1)

TINY = ModelConfig(species=("Cu",), r_max=4.0, num_layers=1, l_max=1, num_features=8, radial_mlp_width=16,
                   seed=3)
COLD = TrainConfig(max_epochs=25, batch_size=2, learning_rate=0.01, patience=25)


@pytest.fixture(scope="module")
def data():
    return {
        "train": cu_cells(6, seed=0, rattle=0.05),
        "val": cu_cells(2, seed=1, rattle=0.05),
        "hot": cu_cells(3, seed=2, rattle=0.1),  # far from the training data: high errors
    }


@pytest.fixture(scope="module")
def trained(data):
    """A cold-trained potential (a module-level 'checkpoint'; tests fit copies of it)."""
    potential = NequIPPotential.build(TINY, data["train"])
    potential.fit(data["train"], data["val"], COLD, warm_start=False)
    assert potential.trained and potential.history.warm_start is False
    return potential


def weights(potential) -> dict:
    return {k: v.detach().clone().to(torch.float64) for k, v in potential.model.state_dict().items()}


def max_change(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if torch.is_floating_point(a[k]) and a[k].numel())


def mean_error(potential, frames) -> float:
    return float(np.mean(np.concatenate(potential.force_errors(frames))))


def test_high_error_frames_improve_after_warm_retrain(trained, data):
    """(a) New labels are used: their error drops under the warm-retrained model (default settings)."""
    before = mean_error(trained, data["hot"])
    assert before > 2 * mean_error(trained, data["train"]), "the 'hot' frames must be out of distribution"
    # the user's set-up: the new frames go to training, the validation frames stay the same
    retrained = trained.copy().fit(data["train"] + data["hot"], data["val"],
                                   TrainConfig(max_epochs=10, batch_size=2, patience=5), warm_start=True)
    after = mean_error(retrained, data["hot"])
    history = retrained.history
    assert history.warm_start and history.weights_changed and history.best_epoch >= 1
    assert history.optimizer_state_carried  # the defaults carry Adam's state from the cold fit
    assert after < 0.8 * before, (before, after)


def test_overshooting_warm_fit_still_returns_changed_weights(trained, data):
    """(b) Validation loss rises after epoch 1: the warm fit returns an epoch >= 1 and says so; the
    old rules (epoch 0 eligible) hand back the starting weights, and say that too."""
    start = weights(trained)
    config = TrainConfig(max_epochs=4, batch_size=2, warm_learning_rate=0.3, learning_rate=0.3, patience=3)
    new_train = data["train"] + data["hot"][:2]

    warm = trained.copy().fit(new_train, data["val"], config, warm_start=True)
    history = warm.history
    # the precondition of the scenario: every epoch is worse on validation than the start
    assert min(e.val_loss for e in history.epochs) > history.initial_val_loss
    assert history.warm_start and history.best_epoch >= 1
    assert history.best_val_loss == pytest.approx(history.epochs[history.best_epoch - 1].val_loss)
    measured = max_change(start, weights(warm))
    assert history.weights_changed and history.max_weight_change > 0
    assert history.max_weight_change == pytest.approx(measured, rel=1e-6)
    assert history.best_val_loss > history.initial_val_loss  # recorded honestly: worse than the start

    # the same fit under the old rules (an untrained potential trains with the cold settings)
    old_rules = trained.copy()
    old_rules.trained = False
    old_rules.fit(new_train, data["val"], config, warm_start=True)
    assert old_rules.history.warm_start is False and old_rules.history.best_epoch == 0
    assert old_rules.history.weights_changed is False and old_rules.history.max_weight_change == 0.0
    assert max_change(start, weights(old_rules)) == 0.0


def test_diverged_warm_fit_hands_back_the_starting_weights(trained, data, monkeypatch):
    """The one exception to 'a warm fit always changes the weights': every epoch non-finite."""
    from otf_statcut.mlip import training

    real = training.evaluate_model
    calls = []

    def nan_after_start(model, batches, config):
        calls.append(1)
        metrics = real(model, batches, config)
        return metrics if len(calls) == 1 else training._Metrics(float("nan"), float("nan"), float("nan"))

    monkeypatch.setattr(training, "evaluate_model", nan_after_start)
    start = weights(trained)
    potential = trained.copy().fit(data["train"], data["val"], TrainConfig(max_epochs=2, batch_size=2))
    history = potential.history
    assert history.warm_start and history.best_epoch == 0 and not history.weights_changed
    assert history.best_val_loss == history.initial_val_loss and max_change(start, weights(potential)) == 0.0


def test_history_fields_and_json(trained, data, tmp_path):
    """(c) The new history fields are filled, serialised, and saved with the model."""
    potential = trained.copy().fit(data["train"] + data["hot"][:1], data["val"],
                                   TrainConfig(max_epochs=3, batch_size=2), warm_start=True)
    history = potential.history
    as_dict = history.to_dict()
    for key in ("warm_start", "max_weight_change", "weights_changed", "initial_val_loss", "best_val_loss",
                "initial_val_forces_rmse", "best_val_forces_rmse", "optimizer_state_carried"):
        assert key in as_dict, key
    assert "optimizer_state" not in as_dict
    assert as_dict["warm_start"] is True and as_dict["weights_changed"] is True
    best = history.epochs[history.best_epoch - 1]
    assert history.best_val_forces_rmse == pytest.approx(best.val_forces_rmse)
    assert history.initial_val_forces_rmse > 0
    potential.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "history.json").read_text())
    assert saved["weights_changed"] is True
    assert saved["max_weight_change"] == pytest.approx(history.max_weight_change)
    loaded = NequIPPotential.load(tmp_path / "m")
    assert loaded.trained
    np.testing.assert_array_equal(loaded.predict(data["val"])[0].forces,
                                  potential.predict(data["val"])[0].forces)


def test_cold_fit_keeps_the_old_rules(data):
    """Cold fits start at ``learning_rate`` with no ramp and may return epoch 0."""
    config = TrainConfig(max_epochs=2, batch_size=2, learning_rate=0.02, warm_learning_rate=0.001,
                         warm_ramp_epochs=5)
    potential = NequIPPotential.build(TINY, data["train"])
    potential.fit(data["train"], data["val"], config, warm_start=False)
    assert [e.learning_rate for e in potential.history.epochs] == [0.02, 0.02]
    assert potential.history.warm_start is False and not potential.history.optimizer_state_carried
    # an untrained potential asked to warm start keeps its weights but trains with the cold settings
    fresh = NequIPPotential.build(TINY, data["train"])
    fresh.fit(data["train"], data["val"], config, warm_start=True)
    assert fresh.history.warm_start is False and fresh.history.epochs[0].learning_rate == 0.02


def test_warm_learning_rate_and_ramp(trained, data):
    config = TrainConfig(max_epochs=4, batch_size=2, learning_rate=0.05, warm_learning_rate=0.003,
                         warm_ramp_epochs=3, patience=1)
    history = trained.copy().fit(data["train"], data["val"], config, warm_start=True).history
    rates = [e.learning_rate for e in history.epochs]
    # 3 optimiser steps per epoch (6 frames, batch 2): the epoch's highest rate is (3 e / 9) * 0.003
    assert rates[:3] == pytest.approx([0.001, 0.002, 0.003])
    assert rates[3] == pytest.approx(0.003)
    # no early stopping during the ramp, even with patience 1
    assert len(history.epochs) >= 3
    # None: warm fits start at learning_rate
    plain = TrainConfig(max_epochs=1, batch_size=2, learning_rate=0.004, warm_learning_rate=None)
    assert trained.copy().fit(data["train"], data["val"], plain).history.epochs[0].learning_rate == 0.004


def _close_states(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not _close_states(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x.cpu(), y.cpu()):
                return False
        elif x != y:
            return False
    return True


def test_carried_optimizer_state_survives_copy_save_and_load(trained, data, tmp_path):
    """(c) With ``warm_carry_optimizer`` the Adam state is kept, copied, saved and reloaded; a
    missing, corrupt or mismatched file degrades to a fresh Adam."""
    carry = TrainConfig(max_epochs=3, batch_size=2)  # warm_carry_optimizer is the default
    assert carry.warm_carry_optimizer
    # the cold fit kept its state (default); a fit without warm_carry_optimizer keeps none
    assert trained.optimizer_state is not None and not trained.history.optimizer_state_carried
    plain = trained.copy().fit(data["train"], data["val"], replace(carry, warm_carry_optimizer=False))
    assert not plain.history.optimizer_state_carried and plain.optimizer_state is None
    plain.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "optimizer.pt").exists()
    assert NequIPPotential.load(tmp_path / "plain").optimizer_state is None

    potential = trained.copy()
    assert _close_states(potential.optimizer_state, trained.optimizer_state)
    assert potential.optimizer_state is not trained.optimizer_state  # a deep copy
    assert trained.copy(seed=9).optimizer_state is None
    potential.fit(data["train"], data["val"], carry, warm_start=True)
    assert potential.history.optimizer_state_carried and potential.optimizer_state is not None

    potential.save(tmp_path / "m")
    assert (tmp_path / "m" / "optimizer.pt").is_file()
    loaded = NequIPPotential.load(tmp_path / "m")
    assert _close_states(loaded.optimizer_state, potential.optimizer_state)
    loaded.fit(data["train"], data["val"], carry, warm_start=True)
    assert loaded.history.optimizer_state_carried

    # the reloaded state is what the fit continues from: same result as the first reload, a
    # different one from a fresh Adam on the same weights
    again = NequIPPotential.load(tmp_path / "m").fit(data["train"], data["val"], carry, warm_start=True)
    np.testing.assert_allclose(again.predict(data["hot"])[0].forces, loaded.predict(data["hot"])[0].forces)
    fresh_adam = NequIPPotential.load(tmp_path / "m")
    fresh_adam.optimizer_state = None
    fresh_adam.fit(data["train"], data["val"], carry, warm_start=True)
    assert not fresh_adam.history.optimizer_state_carried
    assert not np.allclose(fresh_adam.predict(data["hot"])[0].forces, loaded.predict(data["hot"])[0].forces)


def test_optimizer_state_degrades_gracefully(trained, data, tmp_path, caplog):
    carry = TrainConfig(max_epochs=2, batch_size=2, warm_carry_optimizer=True)
    potential = trained.copy().fit(data["train"], data["val"], carry, warm_start=True)
    potential.save(tmp_path / "m")
    (tmp_path / "m" / "optimizer.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        loaded = NequIPPotential.load(tmp_path / "m")
    assert loaded.optimizer_state is None and "optimizer.pt" in caplog.text
    loaded.fit(data["train"], data["val"], carry, warm_start=True)
    assert loaded.history.warm_start and not loaded.history.optimizer_state_carried
    assert loaded.history.weights_changed

    # the state of another architecture is refused when loading
    other = NequIPPotential.build(ModelConfig(species=("Cu",), r_max=4.0, num_layers=1, num_features=4,
                                              radial_mlp_width=8), data["train"])
    other.fit(data["train"], data["val"], TrainConfig(max_epochs=1, batch_size=2), warm_start=False)
    torch.save(other.optimizer_state, tmp_path / "m" / "optimizer.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert NequIPPotential.load(tmp_path / "m").optimizer_state is None
    assert "does not match" in caplog.text

    # a model saved without a state loads with none (and a stale file is removed on save)
    potential.optimizer_state = None
    potential.save(tmp_path / "m")
    assert not (tmp_path / "m" / "optimizer.pt").exists()
    assert NequIPPotential.load(tmp_path / "m").optimizer_state is None


def test_force_errors_helper(trained, data):
    errors = trained.force_errors(data["hot"])
    assert len(errors) == 3 and all(e.shape == (8,) for e in errors)
    predictions = trained.predict(data["hot"], features=False)
    expected = [force_error_magnitudes(p.forces, frame_forces(a)) for p, a in zip(predictions, data["hot"])]
    for got, want in zip(errors, expected):
        np.testing.assert_allclose(got, want)
    assert trained.force_errors(data["hot"][0])[0].shape == (8,)
    unlabelled = data["hot"][0].copy()
    unlabelled.calc = None
    with pytest.raises(DataError, match="force_errors: frame 1"):
        trained.force_errors([data["hot"][0], unlabelled])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"warm_learning_rate": 0}, "warm_learning_rate"),
        ({"warm_learning_rate": True}, "warm_learning_rate"),
        ({"warm_ramp_epochs": -1}, "warm_ramp_epochs"),
        ({"warm_carry_optimizer": 1}, "warm_carry_optimizer"),
    ],
)
def test_warm_fields_are_validated(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**kwargs)
    config = TrainConfig(warm_learning_rate=0.002, warm_ramp_epochs=2, warm_carry_optimizer=True)
    assert TrainConfig.from_dict(config.to_dict()) == config
