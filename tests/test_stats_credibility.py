"""Fits that cannot lie: credibility rules of ``fit_best``, the tail fallback, bounded head σ.

Fast (no NequIP training): synthetic values of the shapes that produced the reported failures
(generalized-Gamma fits on the ``c = -20`` search bound with cutoffs of 5.5 and 72 949 eV/Å for a
largest σ of 0.585, KS p = 5.7e-7, a GP σ of 1467 eV/Å), honest Maxwell / Gamma samples that the
rules must leave alone, and array-level checks of the heads' σ bounds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from otf_statcut.errors import FitError
from otf_statcut.stats import (
    EXTRAPOLATION_FACTOR,
    KS_THRESHOLD,
    DistributionFit,
    check_credibility,
    extrapolation_limit,
    fit_best,
    fit_distribution,
    fit_tail,
    maximum_cutoff,
    per_element_cutoffs,
    per_element_statistical_cutoffs,
    statistical_cutoffs,
)
from otf_statcut.stats.distributions import GENGAMMA_C_BOUNDS


def floor_and_heavy_tail(m: int, seed: int = 0) -> np.ndarray:
    """σ-like values with a hard floor and a heavy upper tail (a GP's exp(μ + v/2) across atoms):
    drives the generalized-Gamma power c onto its -20 search bound."""
    return 0.1 * np.exp(np.random.default_rng(seed).exponential(0.3, m))


def maxwell_values(scale: float, m: int, seed: int = 0) -> np.ndarray:
    return stats.maxwell.rvs(scale=scale, size=m, random_state=np.random.default_rng(seed))


# -- rule (a): parameters on a search bound / diverged ----------------------------------------------
@pytest.mark.parametrize("m", [100, 500, 2000])
def test_gengamma_on_the_c_bound_is_rejected_and_cannot_win(m):
    x = floor_and_heavy_tail(m)
    best = fit_best(x)
    gengamma = best.candidate("gengamma")
    assert gengamma.params[1] == pytest.approx(-GENGAMMA_C_BOUNDS[1], rel=1e-4)  # the failure shape
    reasons = best.rejected("gengamma")
    assert any(r.startswith("bound:") and "search bound |c| = 20" in r for r in reasons)
    assert best.best.name != "gengamma" and gengamma not in best.credible
    # the evidence stays: the candidate is listed, with its reason, in to_dict
    entry = next(c for c in best.to_dict()["candidates"] if c["name"] == "gengamma")
    assert entry["credible"] is False and any("search bound" in r for r in entry["rejected"])


def test_gengamma_on_the_lower_c_bound_is_rejected():
    # log-normal values: the generalized Gamma runs along its c -> 0, a -> inf ridge to |c| = 0.05
    x = np.exp(np.random.default_rng(0).normal(-2.0, 1.5, 2000))
    fit = fit_distribution(x, "gengamma")
    assert abs(fit.params[1]) == pytest.approx(GENGAMMA_C_BOUNDS[0], rel=1e-3)
    assert [r.rule for r in check_credibility(fit, x)][:1] == ["bound"]


def test_an_interior_gengamma_fit_is_not_on_a_bound():
    x = stats.gengamma.rvs(2.0, 1.5, scale=0.05, size=3000, random_state=np.random.default_rng(1))
    fit = fit_distribution(x, "gengamma")
    assert 0.5 < fit.params[1] < 5 and check_credibility(fit, x) == ()


def test_a_diverged_shape_is_rejected():
    x = 0.3 * (1 + 1e-5 * np.random.default_rng(2).standard_normal(200))  # CV 1e-5: a ~ 1e10
    fit = fit_distribution(x, "gamma")
    assert fit.params[0] > 1e5
    rules = check_credibility(fit, x, ks_threshold=0)
    assert [r.rule for r in rules] == ["bound"] and "diverged" in rules[0].reason


# -- rule (b): extrapolation ------------------------------------------------------------------------
def test_extrapolation_limit_formula():
    assert extrapolation_limit(0.585, 500, 1e5) == pytest.approx(
        EXTRAPOLATION_FACTOR * 0.585 * math.log(1e5) / math.log(500))
    assert extrapolation_limit(2.0, 10_000, 100, factor=2) == pytest.approx(4.0)  # n < m: no growth


def test_extrapolation_rule_rejects_the_reported_cutoffs():
    # a largest σ of 0.585 from 500 validation values, n = 1e5: cutoffs of 5.5 and 72 949 are lies
    x = np.r_[np.linspace(0.05, 0.5, 499), 0.585]
    for cutoff in (5.5, 72_949.0):
        scale = cutoff / stats.maxwell.isf(1e-5)  # a fit whose cutoff at n = 1e5 is exactly that
        fit = DistributionFit("maxwell", (scale,), ks_pvalue=0.5)
        rules = check_credibility(fit, x, 1e5)
        assert [r.rule for r in rules] == ["extrapolation"] and f"{cutoff:.4g}" in rules[0].reason
    # the limit itself is the boundary: a hair below passes, a hair above does not
    limit = extrapolation_limit(x.max(), x.size, 1e5)
    for factor, rejected in ((0.999, False), (1.001, True)):
        fit = DistributionFit("maxwell", (factor * limit / stats.maxwell.isf(1e-5),), ks_pvalue=0.5)
        assert bool(check_credibility(fit, x, 1e5)) is rejected


def test_extrapolation_rule_catches_a_runaway_fit_of_real_shape():
    # power-law-tailed values: the generalized Gamma puts the cutoff at n = 1e5 ~ 90x the largest value
    x = 0.05 * np.random.default_rng(3).uniform(size=1000) ** -1.0
    best = fit_best(x, n=1e5)
    gengamma = best.candidate("gengamma")
    assert gengamma.cutoff(1e5) > 50 * x.max()
    assert {"bound", "extrapolation"} <= {r.rule for r in best.rejections if r.name == "gengamma"}
    assert best.cutoff(1e5) <= extrapolation_limit(x.max(), x.size, 1e5)


@pytest.mark.parametrize("family, dist", [
    ("maxwell", stats.maxwell(scale=0.05)),
    ("gamma", stats.gamma(0.5, scale=0.05)),
    ("gamma", stats.gamma(1.0, scale=0.05)),
    ("gamma", stats.gamma(3.0, scale=0.05)),
    ("gamma", stats.gamma(20.0, scale=0.05)),
])
@pytest.mark.parametrize("m", [30, 100, 1000, 100_000])
def test_extrapolation_rule_never_rejects_honest_fits(family, dist, m):
    rng = np.random.default_rng(m)
    for _ in range(12 if m <= 1000 else 2):
        x = dist.rvs(size=m, random_state=rng)
        for n in (1e3, 1e5, 1e7):
            best = fit_best(x, (family,), n=n, ks_threshold=0)
            assert not best.rejections and not best.fallback, best.rejections


# -- rule (c): KS threshold ----------------------------------------------------------------------
def test_ks_threshold_rejects_poor_fits_and_is_configurable():
    rng = np.random.default_rng(8)
    mixture = np.concatenate([stats.maxwell.rvs(scale=s, size=1500, random_state=rng) for s in (0.02, 0.06)])
    p = fit_distribution(mixture).ks_pvalue
    assert 0 < p < KS_THRESHOLD
    best = fit_best(mixture, ("maxwell",))
    assert [r.rule for r in best.rejections] == ["ks"] and best.best.name == "tail"
    assert fit_best(mixture, ("maxwell",), ks_threshold=p / 2).best.name == "maxwell"
    assert fit_best(mixture, ("maxwell",), ks_threshold=0).best.name == "maxwell"
    assert fit_best(mixture, ("maxwell",), ks_threshold=2 * p).best.name == "tail"


def test_credible_fits_are_chosen_exactly_as_before():
    x = stats.gamma.rvs(2.0, scale=0.03, size=3000, random_state=np.random.default_rng(4))
    new = fit_best(x, n=1e6)
    old = fit_best(x, ks_threshold=0, extrapolation_factor=np.inf)
    assert not new.fallback and new.best == old.best and new.passed
    assert [(r.name, r.rule) for r in new.rejections] == [("maxwell", "ks")]  # the wrong family, p ~ 1e-77


# -- the fallback ---------------------------------------------------------------------------------
def test_fallback_when_nothing_is_credible():
    x = floor_and_heavy_tail(2000)
    n = 1e5
    best = fit_best(x, n=n)
    assert best.best.name == "tail" and best.best.is_fallback
    assert best.fallback.startswith("no credible candidate") and not best.passed
    assert {r.name for r in best.rejections} == {"maxwell", "gamma", "gengamma"}
    cut = best.cutoff(n)
    assert np.isfinite(cut) and cut <= extrapolation_limit(x.max(), x.size, n)
    # an exponential tail is lighter than this one: the cutoff errs low (more labels), not high
    assert np.quantile(x, 0.999) < cut < 1.5 * x.max()
    # u + beta ln(n p_u), the peaks-over-threshold estimate
    u, beta, p_u = best.best.params[:3]
    assert p_u == pytest.approx(0.1) and u == pytest.approx(np.quantile(x, 0.9), rel=1e-2)
    assert cut == pytest.approx(u + beta * math.log(n * p_u))
    with pytest.raises(FitError, match="no credible candidate"):
        fit_best(x, n=n, fallback=False)


def test_fallback_behaves_like_a_distribution_fit():
    x = floor_and_heavy_tail(1000, seed=5)
    tail = fit_best(x, n=1e5).best
    assert tail.name == "tail"
    grid = np.linspace(0, 3 * x.max(), 400)
    cdf, sf = tail.cdf(grid), tail.sf(grid)
    assert np.all(np.diff(cdf) >= 0) and cdf[0] == 0 and np.allclose(cdf + sf, 1)
    q = np.linspace(0.001, 0.999, 50)
    assert tail.cdf(tail.ppf(q)) == pytest.approx(q, abs=1e-12)
    assert tail.isf(1e-9) == pytest.approx(tail.cutoff(1e9)) and tail.sf(tail.isf(1e-9)) == pytest.approx(1e-9)
    assert tail.mean() == pytest.approx(x.mean(), rel=0.05) and tail.std() == pytest.approx(x.std(), rel=0.2)
    assert tail.pdf(grid).min() >= 0 and 0 < tail.ks_pvalue <= 1
    # the run log and benchmark files store fits as JSON (at most 1024 characters) and rebuild them
    text = json.dumps(tail.to_dict())
    assert len(text) < 1024
    again = DistributionFit.from_dict(json.loads(text))
    assert again == tail and again.cutoff(1e5) == tail.cutoff(1e5) and again.mean() == tail.mean()
    # the linear error -> σ map of the maximum cutoff works with it on either side
    errors = DistributionFit("maxwell", (0.05,))
    maximum = maximum_cutoff(errors, tail, 1e5, max_error=1.0)
    assert np.isfinite(maximum) and maximum > tail.cutoff(1e5)
    assert np.isfinite(maximum_cutoff(tail, errors, 1e5, max_error=5.0))


def test_fallback_tail_is_capped_by_the_extrapolation_rule():
    x = np.r_[np.full(90, 0.001), np.full(10, 1.0)]  # u = 0.001, mean excess ~1: ln(n p_u) runs away
    n = 1e7
    limit = extrapolation_limit(1.0, 100, n)
    assert fit_tail(x).cutoff(n) > limit
    assert fit_tail(x, n=n).cutoff(n) == pytest.approx(limit)


def test_fallback_with_exact_zeros_and_degenerate_values():
    x = np.r_[np.zeros(1500), maxwell_values(0.05, 3000)]
    tail = fit_tail(x)
    assert tail.cdf(0.0) > 0.2 and tail.ppf(0.1) == 0.0  # the pile of zeros is a point mass
    with pytest.raises(FitError, match="all values are 0"):
        fit_tail(np.zeros(20))
    with pytest.raises(FitError, match="no candidate"):
        fit_best(np.zeros(20))


def test_tail_parameters_are_validated():
    good = fit_tail(floor_and_heavy_tail(200)).params
    with pytest.raises(ValueError, match="tail parameters"):
        DistributionFit("tail", (good[0], -1.0, *good[2:]))
    with pytest.raises(ValueError, match="tail parameters"):
        DistributionFit("tail", (0.0, *good[1:]))  # q9 > u
    with pytest.raises(ValueError, match="takes parameters"):
        DistributionFit("tail", good[:5])


# -- statistical_cutoffs and per element ----------------------------------------------------------------
def test_statistical_cutoffs_record_the_fallback():
    errors = maxwell_values(0.05, 3000)
    sigmas = floor_and_heavy_tail(2000)
    cs = statistical_cutoffs(errors, sigmas, n=100_000)
    assert cs.error_fit.name == "maxwell" and cs.uncertainty_fit.name == "tail"
    assert set(cs.fallbacks) == {"uncertainty"} and cs.fallback and cs.uncertainty_fallback
    assert cs.minimum == pytest.approx(cs.uncertainty_fit.cutoff(100_000)) and cs.minimum < cs.maximum < np.inf
    d = json.loads(json.dumps(cs.to_dict(), allow_nan=False))
    assert d["fallbacks"]["uncertainty"].startswith("no credible candidate")
    assert {r["name"] for r in d["uncertainty_rejections"]} == {"maxwell", "gamma", "gengamma"}
    gengamma = next(c for c in d["uncertainty_candidates"] if c["name"] == "gengamma")
    assert any("search bound" in r for r in gengamma["rejected"])
    assert DistributionFit.from_dict(d["uncertainty_fit"]) == cs.uncertainty_fit
    # with the rules off the old choice comes back (the bound-sitting generalized Gamma cannot be
    # switched off, so only Maxwell and Gamma are offered)
    old = statistical_cutoffs(errors, sigmas, n=100_000, candidates=("maxwell", "gamma"), ks_threshold=0,
                              extrapolation_factor=np.inf)
    assert not old.fallback and old.uncertainty_fit.name in ("maxwell", "gamma")


def test_statistical_cutoffs_apply_the_rules_to_the_error_fit():
    rng = np.random.default_rng(9)
    mixture = np.concatenate([stats.maxwell.rvs(scale=s, size=2000, random_state=rng) for s in (0.02, 0.08)])
    sigmas = stats.gamma.rvs(2.0, scale=0.02, size=3000, random_state=rng)
    cs = statistical_cutoffs(mixture, sigmas, n=10_000)
    assert cs.error_fit.name == "tail" and set(cs.fallbacks) == {"error"}
    assert [r.rule for r in cs.error_rejections] == ["ks"]
    assert cs.error_cutoff == pytest.approx(cs.error_fit.cutoff(10_000)) and cs.error_cutoff > mixture.max()
    assert cs.to_dict()["fallbacks"] == {"error": cs.error_fallback}
    with pytest.raises(FitError, match="no credible"):
        statistical_cutoffs(mixture, sigmas, n=10_000, fallback=False)
    assert statistical_cutoffs(mixture, sigmas, n=10_000, ks_threshold=0).error_fit.name == "maxwell"


def test_per_element_variants_pass_threshold_and_n():
    good = maxwell_values(0.05, 1000, seed=1)
    bad = floor_and_heavy_tail(1000, seed=2)
    values, symbols = np.r_[good, bad], np.array(["Li"] * 1000 + ["Mg"] * 1000)
    per = per_element_cutoffs(values, symbols, n=1e5)
    assert per["Li"].fit.best.name != "tail" and per["Mg"].fit.fallback and per["Mg"].fit.n == 1e5
    assert per["Mg"].cutoff <= extrapolation_limit(bad.max(), bad.size, 1e5)
    sets = per_element_statistical_cutoffs(np.r_[good, good], values, symbols, n=100_000)
    assert not sets["Li"].fallback and set(sets["Mg"].fallbacks) == {"uncertainty"}
    strict = per_element_statistical_cutoffs(np.r_[good, good], values, symbols, n=100_000, ks_threshold=0.999)
    assert set(strict["Li"].fallbacks) == {"error", "uncertainty"}


# -- bounded σ of the uncertainty heads ---------------------------------------------------------
def _gp_training_data(n=400, d=8, zeros=80, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    errors = 0.05 * np.exp(0.5 * x[:, 0]) * np.linalg.norm(rng.normal(size=(n, 3)), axis=1)
    errors[:zeros] = 0.0  # symmetric sites: exact zeros, floored at 1e-6 before the logarithm
    return x, errors


def test_gp_sigma_far_from_the_data_is_finite_and_bounded():
    import torch
    from otf_statcut.uq.base import FAR_FACTOR
    from otf_statcut.uq.sparse_gp import MAXWELL_LOG_MEAN, ElementGP

    torch.set_num_threads(1)
    x, errors = _gp_training_data()
    gp = ElementGP(num_inducing=24, iterations=150).fit(x, errors)
    far = np.full((2, x.shape[1]), 60.0)
    far[1] *= -1
    sigma = gp.scale(far)
    assert np.all(np.isfinite(sigma)) and np.all(sigma <= gp.bound_ * (1 + 1e-12))
    assert sigma == pytest.approx(gp.bound_)  # an atom the GP knows nothing about gets the bound
    # the uncapped posterior mean explodes here (exact zeros widen the prior variance)...
    mu, var = gp.latent(far)
    assert np.exp(mu + var / 2 - MAXWELL_LOG_MEAN).min() > 20 * gp.bound_
    # ...the bound is one decade above the error scale of the worst training atom
    assert gp.bound_ <= FAR_FACTOR * math.exp(gp.y_max_ - MAXWELL_LOG_MEAN) * (1 + 1e-12)
    # near the data (almost) nothing changes: here 20 % exact zeros make the GP so unsure that the
    # variance cap touches a training atom or two
    mu, var = gp.latent(x)
    unchanged = np.isclose(gp.scale(x), np.exp(mu + var / 2 - MAXWELL_LOG_MEAN), rtol=1e-12, atol=0)
    assert unchanged.mean() > 0.98
    # a non-finite input stays NaN (the engine halts on it), never a trusted number
    assert np.isnan(gp.scale(np.full((1, x.shape[1]), np.nan))).all()
    # saved state keeps the bound; a state saved before y_max existed still loads
    state = gp.state()
    assert ElementGP().set_state(state).bound_ == pytest.approx(gp.bound_)
    old = {k: v for k, v in state.items() if k != "y_max"}
    assert np.isfinite(ElementGP().set_state(old).scale(far)).all()


def test_distance_sigma_far_from_the_data_is_capped():
    from otf_statcut.uq.base import FAR_FACTOR
    from otf_statcut.uq.distance import LatentDistance

    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(300, 6)), rng.normal(size=(150, 6))
    errors = 0.05 * np.linalg.norm(rng.normal(size=(150, 3)), axis=1)
    model = LatentDistance().fit_reference(train, np.full(300, 3)).fit_weights(val, np.full(150, 3), errors)
    held_out = model.sigma(val, np.full(150, 3))
    assert model.bound_[3] == pytest.approx(FAR_FACTOR * held_out.max())
    far = model.sigma(np.full((2, 6), 1e6), np.full(2, 3))
    assert np.all(far == model.bound_[3])
    broken = np.r_[val[:2], np.full((1, 6), np.nan), np.full((1, 6), np.inf)]
    sigma = model.sigma(broken, np.full(4, 3))  # no crash in the nearest-neighbour search
    assert np.isfinite(sigma[:2]).all() and np.isnan(sigma[2:]).all()
    again = LatentDistance().set_state(model.state())
    assert again.bound_ == model.bound_
    old = {k: v for k, v in model.state().items() if not k.startswith("bound_")}
    assert LatentDistance().set_state(old).bound_ == {3: np.inf}  # heads saved before: as they were


def test_ensemble_spread_is_bounded_by_the_members_and_nan_on_broken_forces():
    from otf_statcut.uq.ensemble import ensemble_spread

    forces = np.random.default_rng(1).normal(size=(4, 20, 3))
    spread = ensemble_spread(forces)
    largest_gap = np.max(np.linalg.norm(forces[:, None] - forces[None, :], axis=-1), axis=(0, 1))
    assert np.all(spread <= largest_gap)
    forces[2, 5] = np.inf
    assert np.isnan(ensemble_spread(forces)[5]) and np.isfinite(np.delete(ensemble_spread(forces), 5)).all()


def test_head_predict_clips_at_its_bound_and_keeps_nan():
    from otf_statcut.uq.base import SIGMA_FLOOR, UncertaintyHead

    class Exploding(UncertaintyHead):
        name = "exploding"

        def _fit(self, *args):
            pass

        def _raw_sigma(self, frames, predictions):
            return [np.array([0.0, 0.5, 1467.0, np.inf, np.nan])]

        def _sigma_bound(self, val_frames, val_predictions):
            return 3.0

    head = Exploding()
    head.potential_ = object()
    head.scale_ = 2.0
    head.sigma_bound_ = head._sigma_bound(None, None)
    sigma = head.predict([object()], [object()])[0]
    assert sigma[:4].tolist() == [SIGMA_FLOOR, 1.0, 3.0, 3.0] and np.isnan(sigma[4])
