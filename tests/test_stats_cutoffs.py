"""Cutoffs on known distributions: minimum, maximum (error bound mapped onto σ), per element."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from otf_statcut.errors import DataError, FitError, UserError
from otf_statcut.stats import (
    CutoffSet,
    DistributionFit,
    error_to_uncertainty,
    force_error_magnitudes,
    group_by_symbol,
    maximum_cutoff,
    per_element_cutoffs,
    per_element_statistical_cutoffs,
    statistical_cutoffs,
)


def maxwell_errors(scale, n=8000, seed=0):
    rng = np.random.default_rng(seed)
    return np.linalg.norm(rng.normal(0.0, scale, size=(n, 3)), axis=1)


def gamma_sigmas(a=2.0, scale=0.02, n=8000, seed=1):
    return np.random.default_rng(seed).gamma(a, scale, n)


# -- force-error magnitudes -------------------------------------------------------------------
def test_force_error_magnitudes_single_frame_and_frames():
    pred = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    ref = np.zeros((2, 3))
    assert force_error_magnitudes(pred, ref) == pytest.approx([3.0, 0.0])
    frames = force_error_magnitudes([pred, np.ones((1, 3))], [ref, np.ones((1, 3))])
    assert frames == pytest.approx([3.0, 0.0, 0.0])
    assert force_error_magnitudes(pred.tolist(), ref.tolist()) == pytest.approx([3.0, 0.0])


@pytest.mark.parametrize(
    "pred, ref, message",
    [
        (np.zeros((2, 3)), np.zeros((3, 3)), "atoms"),
        (np.zeros((2, 2)), np.zeros((2, 2)), r"expected \(n_atoms, 3\)"),
        ([np.zeros((2, 3))], [np.zeros((2, 3)), np.zeros((2, 3))], "frames"),
        ([np.zeros((2, 3)), np.zeros((1, 3))], [np.zeros((2, 3)), np.zeros((2, 3))], "frame 1"),
        (np.full((2, 3), np.nan), np.zeros((2, 3)), "NaN"),
    ],
)
def test_force_error_magnitudes_rejects_mismatches(pred, ref, message):
    with pytest.raises(DataError, match=message):
        force_error_magnitudes(pred, ref)


# -- minimum and maximum cutoffs --------------------------------------------------------------
def test_statistical_cutoffs_fields_on_known_distributions():
    errors, sigmas = maxwell_errors(0.05), gamma_sigmas()
    cs = statistical_cutoffs(errors, sigmas, n=10_000)
    assert isinstance(cs, CutoffSet)
    assert cs.error_fit.name == "maxwell" and cs.n == 10_000 and cs.max_error == 1.0
    assert cs.error_cutoff == cs.error_fit.cutoff(10_000)
    assert cs.error_cutoff == pytest.approx(stats.maxwell.isf(1e-4, scale=0.05), rel=0.02)
    assert cs.uncertainty_fit.name in ("gamma", "gengamma")
    assert cs.minimum == cs.uncertainty_fit.cutoff(10_000)
    assert cs.minimum == pytest.approx(stats.gamma.isf(1e-4, 2.0, scale=0.02), rel=0.05)
    assert cs.minimum < cs.maximum and not cs.clamped
    assert [c.name for c in cs.uncertainty_candidates] == ["maxwell", "gamma", "gengamma"]
    json.dumps(cs.to_dict())


def test_maximum_is_the_two_point_linear_map():
    e_fit, u_fit = DistributionFit("maxwell", (0.05,)), DistributionFit("gamma", (2.0, 0.02))
    n = 1000
    e_mean, e_cut, u_mean, u_cut = e_fit.mean(), e_fit.cutoff(n), u_fit.mean(), u_fit.cutoff(n)
    # the two anchor points
    assert error_to_uncertainty(e_mean, e_fit, u_fit, n) == pytest.approx(u_mean)
    assert error_to_uncertainty(e_cut, e_fit, u_fit, n) == pytest.approx(u_cut)
    # hand-computed map of 1 eV/Å
    expected = u_mean + (1.0 - e_mean) * (u_cut - u_mean) / (e_cut - e_mean)
    assert maximum_cutoff(e_fit, u_fit, n, 1.0) == pytest.approx(expected)
    # vectorised
    assert error_to_uncertainty(np.array([e_mean, e_cut]), e_fit, u_fit, n) == pytest.approx([u_mean, u_cut])


def test_bound_below_error_cutoff_clamps_to_minimum_or_raises():
    errors, sigmas = maxwell_errors(0.5), gamma_sigmas()  # error cutoff at n=1e4 is about 2.3 eV/Å
    cs = statistical_cutoffs(errors, sigmas, n=10_000, max_error=1.0)
    assert cs.error_cutoff > 1.0
    assert cs.clamped and cs.maximum == cs.minimum
    with pytest.raises(UserError, match="below the error cutoff"):
        statistical_cutoffs(errors, sigmas, n=10_000, max_error=1.0, clamp=False)


def test_infinite_bound_disables_the_maximum_and_nonpositive_bound_is_rejected():
    e_fit, u_fit = DistributionFit("maxwell", (0.05,)), DistributionFit("gamma", (2.0, 0.02))
    assert maximum_cutoff(e_fit, u_fit, 1000, np.inf) == np.inf
    for bound in (0.0, -1.0):
        with pytest.raises(UserError, match="max_error"):
            maximum_cutoff(e_fit, u_fit, 1000, bound)


def test_map_needs_cutoffs_above_the_means():
    e_fit, u_fit = DistributionFit("maxwell", (0.05,)), DistributionFit("gamma", (2.0, 0.02))
    # n = 2: the cutoff is the median, which for a Maxwell lies below the mean
    with pytest.raises(FitError, match="not above"):
        error_to_uncertainty(0.5, e_fit, u_fit, 2)


def test_robust_cutoffs_resist_validation_outliers():
    errors = np.concatenate([maxwell_errors(0.05), [2.0, 3.0, 5.0]])
    sigmas = gamma_sigmas()
    plain = statistical_cutoffs(errors, sigmas, 10_000)
    robust = statistical_cutoffs(errors, sigmas, 10_000, robust=True)
    true_cut = stats.maxwell.isf(1e-4, scale=0.05)
    assert robust.error_cutoff == pytest.approx(true_cut, rel=0.02)
    assert plain.error_cutoff > 1.1 * true_cut
    assert robust.error_fit.n_trimmed >= 3


# -- per element ------------------------------------------------------------------------------
def two_species(seed=2):
    li, mg = maxwell_errors(0.03, n=3000, seed=seed), maxwell_errors(0.09, n=1000, seed=seed + 1)
    values = np.concatenate([li, mg])
    symbols = np.array(["Li"] * li.size + ["Mg"] * mg.size)
    order = np.random.default_rng(seed).permutation(values.size)
    return values[order], symbols[order]


def test_group_by_symbol():
    groups = group_by_symbol([1.0, 2.0, 3.0, 4.0], ["Mg", "Li", "Mg", "Li"])
    assert list(groups) == ["Li", "Mg"]
    assert groups["Li"] == pytest.approx([2.0, 4.0]) and groups["Mg"] == pytest.approx([1.0, 3.0])
    with pytest.raises(DataError, match="symbols"):
        group_by_symbol([1.0, 2.0], ["Li"])


def test_per_element_cutoffs_fit_each_species():
    values, symbols = two_species()
    result = per_element_cutoffs(values, symbols, candidates=("maxwell",))
    assert set(result) == {"Li", "Mg"}
    assert result["Li"].fit.best.params[0] == pytest.approx(0.03, rel=0.05)
    assert result["Mg"].fit.best.params[0] == pytest.approx(0.09, rel=0.05)
    assert result["Li"].n == 3000 and result["Mg"].n == 1000  # n defaults to the count per species
    assert result["Mg"].cutoff == result["Mg"].fit.cutoff(1000)
    fixed = per_element_cutoffs(values, symbols, n=10**5, candidates=("maxwell",))
    assert fixed["Li"].n == fixed["Mg"].n == 10**5
    mapped = per_element_cutoffs(values, symbols, n={"Li": 50, "Mg": 70}, candidates=("maxwell",))
    assert (mapped["Li"].n, mapped["Mg"].n) == (50, 70)
    with pytest.raises(UserError, match="Mg"):
        per_element_cutoffs(values, symbols, n={"Li": 50}, candidates=("maxwell",))


def test_per_element_cutoffs_name_the_species_with_too_few_values():
    values = np.r_[maxwell_errors(0.03, n=100), 0.1, 0.2]
    symbols = ["Li"] * 100 + ["Mg"] * 2
    with pytest.raises(DataError, match="element Mg"):
        per_element_cutoffs(values, symbols)


def test_per_element_statistical_cutoffs():
    values, symbols = two_species()
    sigmas = values * 0.8 + 0.01
    result = per_element_statistical_cutoffs(values, sigmas, symbols, n=10_000)
    assert set(result) == {"Li", "Mg"}
    assert result["Mg"].error_cutoff > 2.5 * result["Li"].error_cutoff
    assert all(isinstance(cs, CutoffSet) and cs.minimum <= cs.maximum for cs in result.values())
    with pytest.raises(DataError):
        per_element_statistical_cutoffs(values, sigmas[:-1], symbols, n=10_000)
