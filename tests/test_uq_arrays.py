"""Array-level pieces of the uncertainty heads, on synthetic data (no NequIP involved)."""

from __future__ import annotations

import gpytorch
import numpy as np
import pytest
import scipy.stats
import torch

from otf_statcut.errors import ConfigError, DataError
from otf_statcut.stats import maxwell_nll
from otf_statcut.uq import ElementGP, LatentDistance, NearestNeighbourIndex, ensemble_spread, make_head
from otf_statcut.uq.base import maxwell_scale
from otf_statcut.uq.distance import fit_distance_weights
from otf_statcut.uq.sparse_gp import MAXWELL_LOG_MEAN, resolve_strategy


def maxwell_errors(scales: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Error magnitudes |Δf| of 3-D Gaussian force errors with per-atom std ``scales``."""
    return np.linalg.norm(rng.normal(size=(len(scales), 3)), axis=1) * scales


# --------------------------------------------------------------------------- Maxwell scale
def test_maxwell_scale_matches_scipy_fit():
    rng = np.random.default_rng(2)
    e = scipy.stats.maxwell.rvs(scale=0.07, size=2000, random_state=rng)
    _, scale = scipy.stats.maxwell.fit(e, floc=0)
    assert maxwell_scale(e) == pytest.approx(scale, rel=1e-4)


# --------------------------------------------------------------------------- ensemble spread
def test_ensemble_spread_formula_and_rotation_invariance():
    rng = np.random.default_rng(3)
    forces = rng.normal(size=(4, 10, 3))
    mean = forces.mean(axis=0)
    expected = np.sqrt(np.sum(np.sum((forces - mean) ** 2, axis=0) / 4, axis=1))
    np.testing.assert_allclose(ensemble_spread(forces), expected, rtol=1e-12)
    rotation = scipy.stats.special_ortho_group.rvs(3, random_state=4)
    np.testing.assert_allclose(ensemble_spread(forces @ rotation.T), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="n_members >= 2"):
        ensemble_spread(forces[:1])


# --------------------------------------------------------------------------- nearest neighbours
@pytest.mark.parametrize(("method", "block"), [("kdtree", 0), ("brute", 7), ("brute", 1000), ("brute", 1 << 24)])
def test_nearest_neighbour_matches_numpy(method, block):
    rng = np.random.default_rng(5)
    reference, query = rng.normal(size=(300, 8)), rng.normal(size=(50, 8))
    expected = np.argmin(((query[:, None, :] - reference[None]) ** 2).sum(-1), axis=1)
    index = NearestNeighbourIndex(reference, method=method, block_elements=block or 1 << 24)
    np.testing.assert_array_equal(index.query(query), expected)
    np.testing.assert_allclose(index.differences(query), np.abs(query - reference[expected]))
    np.testing.assert_array_equal(index.differences(reference[:5]), 0.0)


# --------------------------------------------------------------------------- latent distance
def synthetic_distance_problem(seed=6, n_train=2000, n_val=1500, dim=6):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, dim))
    val = rng.normal(size=(n_val, dim)) * np.where(np.arange(n_val) < n_val // 2, 1.0, 1.6)[:, None]
    nearest = train[np.argmin(((val[:, None] - train[None]) ** 2).sum(-1), axis=1)]
    d = np.abs(val - nearest)
    true_sigma = 0.02 + 0.05 * d[:, 0] + 0.02 * d[:, 1]
    return train, val, maxwell_errors(true_sigma, rng), true_sigma


def test_distance_weights_recover_truth_and_lower_nll():
    train, val, errors, true_sigma = synthetic_distance_problem()
    numbers = np.full(len(val), 3)
    model = LatentDistance().fit_reference(train, np.full(len(train), 3))
    nll_unweighted = maxwell_nll(errors, model.sigma(val, numbers))
    model.fit_weights(val, numbers, errors)
    sigma = model.sigma(val, numbers)
    assert maxwell_nll(errors, sigma) < nll_unweighted
    assert maxwell_nll(errors, sigma) <= maxwell_nll(errors, true_sigma) + 1e-9  # MLE beats truth in-sample
    assert model.sigma0_[3] == pytest.approx(0.02, abs=0.01)
    w = model.weights_[3]
    assert np.all(w >= 0)
    assert w[0] == pytest.approx(0.05, rel=0.35) and w[1] == pytest.approx(0.02, rel=0.6)
    assert np.all(w[2:] < 0.01)
    assert np.corrcoef(sigma, true_sigma)[0, 1] > 0.9


def test_distance_far_points_are_more_uncertain_and_training_points_get_sigma0():
    train, val, errors, _ = synthetic_distance_problem()
    model = LatentDistance().fit_reference(train, np.full(len(train), 3))
    model.fit_weights(val, np.full(len(val), 3), errors)
    near = model.sigma(train[:100], np.full(100, 3))
    np.testing.assert_allclose(near, model.sigma0_[3])
    far = model.sigma(train[:100] + 3.0, np.full(100, 3))
    assert far.min() > near.max()


def test_distance_is_per_element_and_refuses_unknown_elements():
    rng = np.random.default_rng(7)
    train = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 5.0])
    numbers = np.repeat([3, 12], 200)
    model = LatentDistance().fit_reference(train, numbers)
    query = train[[0, 250]] + 0.01
    # the Mg atom's nearest neighbour must be searched among Mg vectors only
    d = model.differences(query[[0]], np.array([12]))
    assert d.sum() > 10
    np.testing.assert_allclose(model.differences(query, np.array([3, 12])).sum(axis=1), 0.04, atol=1e-9)
    with pytest.raises(DataError, match="element O"):
        model.differences(query, np.array([3, 8]))


def test_distance_state_round_trip():
    train, val, errors, _ = synthetic_distance_problem(n_train=300, n_val=200)
    model = LatentDistance().fit_reference(train, np.full(300, 3)).fit_weights(val, np.full(200, 3), errors)
    clone = LatentDistance().set_state(model.state())
    np.testing.assert_array_equal(clone.sigma(val, np.full(200, 3)), model.sigma(val, np.full(200, 3)))


def test_distance_search_methods_agree_and_unknown_method_is_refused():
    train, val, errors, _ = synthetic_distance_problem(n_train=500, n_val=300)
    numbers = np.full(300, 3)
    tree = LatentDistance(search="kdtree").fit_reference(train, np.full(500, 3)).fit_weights(val, numbers, errors)
    brute = LatentDistance(search="brute").fit_reference(train, np.full(500, 3)).fit_weights(val, numbers, errors)
    np.testing.assert_allclose(tree.sigma(val, numbers), brute.sigma(val, numbers), rtol=1e-6)
    with pytest.raises(ConfigError, match="'search'"):
        make_head("distance", search="ball")


def test_fit_distance_weights_checks_shapes():
    with pytest.raises(DataError, match="differences"):
        fit_distance_weights(np.ones((3, 2)), np.ones(4))


# --------------------------------------------------------------------------- sparse GP
def synthetic_gp_problem(seed=8, n=1200, dim=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    scale = 0.05 * np.exp(0.6 * x[:, 0])
    return x, maxwell_errors(scale, rng), scale


@pytest.fixture(scope="module")
def trained_gp():
    x, errors, _ = synthetic_gp_problem()
    return ElementGP(num_inducing=32, iterations=250, learning_rate=0.03, seed=1).fit(x, errors)


def test_gp_learns_the_error_scale(trained_gp):
    x, _, scale = synthetic_gp_problem(seed=9, n=400)
    predicted = trained_gp.scale(x)
    assert np.corrcoef(np.log(predicted), np.log(scale))[0, 1] > 0.9
    assert np.median(predicted / scale) == pytest.approx(1.0, abs=0.25)
    assert trained_gp.loss_history_[-1] < trained_gp.loss_history_[0]


def test_gp_posterior_variance_grows_away_from_data(trained_gp):
    x, _, _ = synthetic_gp_problem(seed=10, n=200)
    _, var_near = trained_gp.latent(x)
    _, var_far = trained_gp.latent(x * 0 + 8.0)
    assert var_far.mean() > 3 * var_near.mean()


@pytest.mark.parametrize("prior_mean", ["max", "mean"])
def test_gp_prior_mean_is_what_sigma_returns_to_away_from_data(prior_mean):
    """Far from the data the GP's scale is the largest ("max") or the typical ("mean") training
    error scale; near the data both follow the data."""
    x, errors, scale = synthetic_gp_problem(n=600)
    gp = ElementGP(num_inducing=32, iterations=250, learning_rate=0.03, seed=1, prior_mean=prior_mean).fit(x, errors)
    log_errors = np.log(errors)
    constant = float(gp.model_.mean_module.constant.detach())
    expected = log_errors.max() if prior_mean == "max" else log_errors.mean()
    if prior_mean == "max":
        assert constant == pytest.approx(expected, abs=1e-12)  # fixed, not trained
    else:
        assert constant == pytest.approx(expected, abs=0.5)  # trained from the data mean
    far = np.full((5, x.shape[1]), 40.0)  # many length scales from every training point
    mu_far, _ = gp.latent(far)
    np.testing.assert_allclose(mu_far, constant, atol=1e-6)
    near_x, _, near_scale = synthetic_gp_problem(seed=9, n=300)
    assert np.corrcoef(np.log(gp.scale(near_x)), np.log(near_scale))[0, 1] > 0.9
    if prior_mean == "max":
        assert gp.scale(far).min() > 2 * gp.scale(near_x).max()


def test_gp_head_rejects_an_unknown_prior_mean():
    with pytest.raises(ConfigError, match="'prior_mean' is 'median'"):
        make_head("gp", prior_mean="median")


def test_gp_does_not_depend_on_torch_default_dtype():
    x, errors, _ = synthetic_gp_problem(n=300)
    previous = torch.get_default_dtype()
    results = []
    try:
        for dtype in (torch.float32, torch.float64):
            torch.set_default_dtype(dtype)
            gp = ElementGP(num_inducing=16, iterations=60, seed=2).fit(x, errors)
            assert gp.model_.variational_strategy.inducing_points.dtype == torch.float64
            results.append(gp.scale(x[:50]))
    finally:
        torch.set_default_dtype(previous)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_gp_state_round_trip_is_exact(trained_gp):
    x, _, _ = synthetic_gp_problem(seed=11, n=100)
    clone = ElementGP().set_state(trained_gp.state())
    np.testing.assert_array_equal(clone.scale(x), trained_gp.scale(x))


def test_gp_accepts_another_strategy_by_name():
    x, errors, _ = synthetic_gp_problem(n=200)
    strategy = resolve_strategy("UnwhitenedVariationalStrategy")
    gp = ElementGP(num_inducing=8, iterations=30, strategy=strategy).fit(x, errors)
    assert isinstance(gp.model_.variational_strategy, gpytorch.variational.UnwhitenedVariationalStrategy)
    assert np.all(gp.scale(x[:10]) > 0)
    with pytest.raises(ConfigError, match="strategy"):
        resolve_strategy("NotAStrategy")


def test_gp_scale_constant_is_maxwell_log_mean():
    r = scipy.stats.maxwell.rvs(size=400_000, random_state=np.random.default_rng(12))
    assert np.mean(np.log(r)) == pytest.approx(MAXWELL_LOG_MEAN, abs=3e-3)


# --------------------------------------------------------------------------- registry
def test_make_head_registry_and_errors():
    assert type(make_head("distance", max_iter=10)).__name__ == "DistanceHead"
    assert make_head("random", seed=3).settings == {"seed": 3}
    with pytest.raises(ConfigError, match="expected one of"):
        make_head("dropout")
    with pytest.raises(ConfigError, match="unknown setting"):
        make_head("gp", n_inducing=3)
    with pytest.raises(ConfigError, match="n_members"):
        make_head("ensemble", n_members=1)


def test_closed_form_posterior_equals_gpytorch(trained_gp):
    x, _, _ = synthetic_gp_problem(seed=13, n=300)
    x = np.concatenate([x, x[:20] * 5.0])  # include points far from the data
    assert trained_gp._posterior is not None
    mean, var = trained_gp.latent(x)
    mean_ref, var_ref = trained_gp.latent(x, use_gpytorch=True)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(var, var_ref, rtol=1e-8, atol=1e-10)
