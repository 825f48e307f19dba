"""Distribution fits against scipy.stats on samples with known parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from otf_statcut.errors import DataError, FitError, UserError
from otf_statcut.stats import KS_SAMPLE_SIZE, BestFit, DistributionFit, fit_best, fit_distribution

N = 20_000  # large enough for ~1 % parameter errors, small enough to run in milliseconds


def sample(dist, n=N, seed=0):
    return dist.rvs(size=n, random_state=np.random.default_rng(seed))


def loglik(fit: DistributionFit, x) -> float:
    return float(np.sum(fit.logpdf(x)))


# -- maximum-likelihood estimates --------------------------------------------------------------
def test_maxwell_uses_closed_form_mle_and_recovers_scale():
    x = sample(stats.maxwell(scale=0.08))
    fit = fit_distribution(x, "maxwell")
    assert fit.params == pytest.approx((np.sqrt(np.sum(x**2) / (3 * x.size)),), rel=1e-12)
    # Fisher information: sd(scale_hat) = scale / sqrt(6 n); allow 5 sd
    assert fit.params[0] == pytest.approx(0.08, rel=5 / np.sqrt(6 * N))
    # at least as likely as scipy's numerical fit
    loc, scale = stats.maxwell.fit(x, floc=0)
    assert loglik(fit, x) >= np.sum(stats.maxwell.logpdf(x, loc, scale)) - 1e-9


def test_gamma_matches_scipy_floc0_fit_and_recovers_shape():
    a_true, scale_true = 1.7, 0.05
    x = sample(stats.gamma(a_true, scale=scale_true))
    fit = fit_distribution(x, "gamma")
    a, loc, scale = stats.gamma.fit(x, floc=0)
    assert fit.params == pytest.approx((a, scale), rel=1e-8)
    # Fisher information with known loc: var(a_hat) = a / (n (a psi'(a) - 1)); allow 5 sd
    sd_a = np.sqrt(a_true / (N * (a_true * special.polygamma(1, a_true) - 1)))
    assert abs(fit.params[0] - a_true) < 5 * sd_a


@pytest.mark.parametrize("a, c, scale", [(1.3, 1.6, 0.08), (2.0, -1.5, 0.3), (1.5, 2.0, 0.1)])
def test_gengamma_is_a_likelihood_maximum_and_recovers_the_tail(a, c, scale):
    true = stats.gengamma(a, c, scale=scale)
    x = sample(true)
    fit = fit_distribution(x, "gengamma")
    # the MLE must be at least as likely as the parameters that generated the sample
    assert loglik(fit, x) >= np.sum(true.logpdf(x)) - 1e-6
    assert np.sign(fit.params[1]) == np.sign(c)
    # the quantity the method uses, the far tail, within 5 % (its sampling error is about 1-2 %)
    assert fit.cutoff(1000) == pytest.approx(true.isf(1e-3), rel=0.05)


def test_gengamma_beats_or_matches_scipy_generic_fit():
    x = sample(stats.gengamma(2.0, -1.5, scale=0.3), n=3000, seed=3)
    ours = fit_distribution(x, "gengamma")
    a, c, loc, scale = stats.gengamma.fit(x, floc=0)
    assert loglik(ours, x) >= np.sum(stats.gengamma.logpdf(x, a, c, loc, scale)) - 1e-6


def test_gengamma_subsamples_huge_inputs_but_still_fits():
    x = sample(stats.gengamma(1.5, 2.0, scale=0.1), n=200_000, seed=4)
    fit = fit_distribution(x, "gengamma")
    assert fit.n == x.size
    assert fit.cutoff(x.size) == pytest.approx(stats.gengamma(1.5, 2.0, scale=0.1).isf(1 / x.size), rel=0.05)


@given(st.floats(1e-3, 1e3), st.sampled_from(["maxwell", "gamma"]))
@settings(max_examples=30, deadline=None)
def test_fits_are_scale_equivariant(k, name):
    x = sample(stats.maxwell(scale=1.0), n=500, seed=5)
    base, scaled = fit_distribution(x, name), fit_distribution(k * x, name)
    assert scaled.params[-1] == pytest.approx(k * base.params[-1], rel=1e-9)
    assert scaled.params[:-1] == pytest.approx(base.params[:-1], rel=1e-9)
    assert scaled.ks_pvalue == pytest.approx(base.ks_pvalue, rel=1e-6)


# -- the value object and its cutoff ----------------------------------------------------------
@pytest.mark.parametrize("n", [10, 1e3, 1e6, 1e12])
def test_maxwell_cutoff_is_isf_of_one_over_n(n):
    fit = DistributionFit("maxwell", (0.1,))
    assert fit.cutoff(n) == pytest.approx(stats.maxwell.isf(1 / n, scale=0.1), rel=1e-12)
    assert fit.cdf(fit.cutoff(n)) == pytest.approx(1 - 1 / n, rel=1e-12)


def test_cutoff_keeps_precision_where_ppf_of_one_minus_q_cannot():
    fit = DistributionFit("gamma", (1.5, 0.02))
    # 1 - 1e-17 == 1.0 in float64, so ppf(1 - 1/n) would be inf; isf(1/n) stays finite and ordered
    assert np.isinf(fit.ppf(1 - 1e-17))
    assert np.isfinite(fit.cutoff(1e17)) and fit.cutoff(1e17) > fit.cutoff(1e12) > fit.cutoff(1e6)
    assert fit.sf(fit.cutoff(1e17)) == pytest.approx(1e-17, rel=1e-8)


def test_distribution_fit_forwards_to_frozen_scipy_object():
    fit = DistributionFit("gengamma", (1.4, 1.6, 0.07))
    frozen = stats.gengamma(1.4, 1.6, loc=0, scale=0.07)
    x = np.linspace(0.01, 0.3, 7)
    assert fit.pdf(x) == pytest.approx(frozen.pdf(x))
    assert fit.cdf(x) == pytest.approx(frozen.cdf(x))
    assert fit.isf(0.01) == pytest.approx(frozen.isf(0.01))
    assert fit.mean() == pytest.approx(frozen.mean())
    assert fit.param_dict == {"a": 1.4, "c": 1.6, "scale": 0.07}


def test_distribution_fit_round_trips_through_json():
    import json

    fit = fit_distribution(sample(stats.gamma(2.0, scale=0.02), n=500), "gengamma")
    again = DistributionFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again == fit and again.cutoff(1000) == fit.cutoff(1000)


def test_distribution_fit_is_immutable_and_validated():
    fit = DistributionFit("maxwell", (0.1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.params = (0.2,)
    assert fit == DistributionFit("maxwell", (0.1,)) and hash(fit) == hash(DistributionFit("maxwell", (0.1,)))
    with pytest.raises(UserError, match="unknown distribution"):
        DistributionFit("lognorm", (0.1,))
    with pytest.raises(ValueError, match="takes parameters"):
        DistributionFit("gamma", (0.1,))
    with pytest.raises(ValueError, match="scale"):
        DistributionFit("maxwell", (-0.1,))
    for n in (1, 0.5, -3):
        with pytest.raises(UserError, match="n > 1"):
            fit.cutoff(n)


# -- zeros, bad data, degenerate data ----------------------------------------------------------
def test_exact_zeros_do_not_break_fits_and_gamma_families_ignore_them():
    x = sample(stats.maxwell(scale=0.05), n=5000)
    with_zeros = np.concatenate([x, np.zeros(50)])
    best = fit_best(with_zeros)
    assert {c.name for c in best.candidates} == {"maxwell", "gamma", "gengamma"} and not best.failures
    assert fit_distribution(with_zeros, "gamma").params == fit_distribution(x, "gamma").params
    assert fit_distribution(with_zeros, "gamma").n == with_zeros.size


def test_round_off_zeros_count_as_zeros_for_gamma_families():
    # symmetric sites: errors of 1e-16..1e-7 eV/Å are round-off, not information about the shape
    x = sample(stats.gamma(2.0, scale=0.02), n=2000)
    residues = np.concatenate([x, [1e-16, 3e-12, 1e-7]])
    zeros = np.concatenate([x, [0.0, 0.0, 0.0]])
    for name in ("gamma", "gengamma"):
        assert fit_distribution(residues, name).params == pytest.approx(fit_distribution(zeros, name).params)
        assert fit_distribution(residues, name).params == pytest.approx(fit_distribution(x, name).params)


def test_a_pile_of_zeros_shows_up_as_poor_ks_evidence():
    x = sample(stats.maxwell(scale=0.05), n=3000)
    mostly_zero = np.concatenate([x, np.zeros(1500)])
    best = fit_best(mostly_zero)
    assert not best.passed
    assert all(c.ks_pvalue < 1e-6 for c in best.candidates)


@pytest.mark.parametrize(
    "values, message",
    [
        ([], "empty"),
        ([0.1, np.nan] + [0.2] * 20, "NaN"),
        ([0.1, np.inf] + [0.2] * 20, "NaN or infinite"),
        ([0.1, -0.2] + [0.2] * 20, "negative"),
        ([0.1, 0.2, 0.3], "at least 10"),
    ],
)
def test_bad_values_raise_data_error(values, message):
    with pytest.raises(DataError, match=message):
        fit_distribution(values)
    with pytest.raises(DataError, match=message):
        fit_best(values)


def test_degenerate_values_raise_fit_error():
    with pytest.raises(FitError, match="all values are 0"):
        fit_distribution(np.zeros(20), "maxwell")
    with pytest.raises(FitError, match="all equal"):
        fit_distribution(np.full(20, 0.3), "gamma")
    with pytest.raises(FitError, match="positive values"):
        fit_distribution(np.r_[np.zeros(20), 0.1, 0.2], "gengamma")
    with pytest.raises(FitError, match="no candidate"):
        fit_best(np.zeros(20))


def test_fit_best_records_failed_candidates():
    values = np.full(30, 0.3)  # Maxwell fits (poorly); Gamma and generalized Gamma cannot
    best = fit_best(values)
    assert [c.name for c in best.candidates] == ["maxwell"]
    assert [name for name, _ in best.failures] == ["gamma", "gengamma"]
    # the poor Maxwell fit (KS p far below 1e-3) is not credible: the tail fallback stands in for it
    assert best.rejected("maxwell") and best.best.name == "tail" and best.fallback
    assert best.cutoff(1000) == pytest.approx(0.3, rel=1e-4)
    # without the KS rule Maxwell is the only credible fit, as before the credibility check
    assert fit_best(values, ks_threshold=0).best.name == "maxwell"


# -- KS evidence --------------------------------------------------------------------------------
def test_ks_uses_a_fixed_size_seeded_subsample():
    x = sample(stats.maxwell(scale=0.05), n=50_000)
    fit = fit_distribution(x)
    assert fit.ks_sample_size == KS_SAMPLE_SIZE and fit.n == x.size
    assert fit_distribution(x) == fit  # deterministic
    assert fit_distribution(x, seed=1).ks_pvalue != fit.ks_pvalue
    small = x[:500]
    assert fit_distribution(small).ks_sample_size == 500
    assert fit_distribution(small, seed=1).ks_pvalue == fit_distribution(small).ks_pvalue


def test_ks_subsample_keeps_p_value_meaningful_where_full_sample_collapses():
    # two temperatures, each exactly Maxwell, scales 20 % apart: a real but practically small deviation
    rng = np.random.default_rng(7)
    x = np.concatenate([stats.maxwell.rvs(scale=s, size=100_000, random_state=rng) for s in (1.0, 1.2)])
    fit = fit_distribution(x)
    assert stats.kstest(x, fit.frozen.cdf).pvalue < 1e-12  # 2e5 values: KS rejects outright
    # 2000 values: the fit passes for most seeds of the subsample (the p-value is random, not collapsed)
    assert sum(fit_distribution(x, seed=seed).passed() for seed in range(8)) >= 5
    # a grossly wrong model still fails on the subsample
    wide = np.concatenate([stats.maxwell.rvs(scale=s, size=100_000, random_state=rng) for s in (1.0, 3.0)])
    assert not fit_distribution(wide).passed()


def test_fit_best_picks_highest_p_value_and_exposes_all_candidates():
    x = sample(stats.gamma(0.8, scale=0.05), n=5000)
    best = fit_best(x)
    assert isinstance(best, BestFit)
    assert [c.name for c in best.candidates] == ["maxwell", "gamma", "gengamma"]
    assert best.best.ks_pvalue == max(c.ks_pvalue for c in best.candidates)
    assert best.best.name in ("gamma", "gengamma") and best.passed
    assert best.candidate("maxwell").ks_pvalue < 0.05
    assert best.cutoff(5000) == best.best.cutoff(5000)
    assert {c.ks_sample_size for c in best.candidates} == {2000}


def test_fit_best_with_maxwell_only_reports_a_poor_fit_of_a_mixture():
    rng = np.random.default_rng(8)
    mixture = np.concatenate([stats.maxwell.rvs(scale=s, size=3000, random_state=rng) for s in (0.02, 0.06)])
    best = fit_best(mixture, candidates=("maxwell",))
    assert not best.passed and best.candidate("maxwell").ks_pvalue < 0.05
    # so poor (p < KS_THRESHOLD) that it is not credible: the tail fallback stands in for it
    assert best.best.name == "tail" and [r.rule for r in best.rejections] == ["ks"]


@pytest.mark.parametrize("candidates", [(), ("maxwell", "weibull"), ("gamma", "gamma")])
def test_fit_best_rejects_bad_candidate_lists(candidates):
    with pytest.raises(UserError):
        fit_best(np.linspace(0.1, 1, 30), candidates)


# -- robust fit ---------------------------------------------------------------------------------
def test_robust_fit_trims_rare_outliers():
    x = sample(stats.maxwell(scale=0.05), n=10_000)
    with_outliers = np.concatenate([x, [1.0, 1.5, 2.0, 3.0, 4.0]])
    plain = fit_distribution(with_outliers)
    robust = fit_distribution(with_outliers, robust=True)
    assert plain.params[0] > 1.1 * 0.05  # five outliers inflate the scale by > 10 %
    assert robust.params[0] == pytest.approx(0.05, rel=5 / np.sqrt(6 * x.size))
    assert robust.n_trimmed >= 5 and robust.n == with_outliers.size
    assert robust.passed() and not plain.passed()


def test_robust_fit_barely_changes_clean_data():
    x = sample(stats.maxwell(scale=0.05), n=10_000)
    plain, robust = fit_distribution(x), fit_distribution(x, robust=True)
    assert robust.n_trimmed <= 5
    assert robust.params[0] == pytest.approx(plain.params[0], rel=2e-3)


def test_stats_package_imports_neither_torch_nor_ase():
    import subprocess
    import sys

    code = (
        "import sys, otf_statcut.stats; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ase'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
