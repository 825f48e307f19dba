"""Calibration curves, miscalibration area and the Maxwell negative log-likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from otf_statcut.errors import DataError
from otf_statcut.stats import (
    calibration_curve,
    gaussian_calibration,
    maxwell_calibration,
    maxwell_nll,
    maxwell_pit,
    maxwell_scale_factor,
    miscalibration_area,
)

N = 20_000


def components_and_sigmas(seed=0, n=N):
    """Per-atom σ spread over a decade, force-error components drawn with exactly that σ."""
    rng = np.random.default_rng(seed)
    sigmas = rng.uniform(0.01, 0.1, n)
    residuals = rng.normal(0.0, 1.0, (n, 3)) * sigmas[:, None]
    return residuals, sigmas


def test_calibrated_maxwell_magnitudes_have_small_area():
    residuals, sigmas = components_and_sigmas()
    errors = np.linalg.norm(residuals, axis=1)
    calibrated = maxwell_calibration(errors, sigmas)
    # the empirical CDF of N uniform values strays by about 1/sqrt(N) = 0.007
    assert calibrated.area < 0.01
    assert calibrated.observed == pytest.approx(calibrated.expected, abs=0.02)
    for factor in (0.5, 2.0):  # over- and under-confident σ
        assert maxwell_calibration(errors, factor * sigmas).area > 0.15


def test_calibrated_gaussian_components_have_small_area():
    residuals, sigmas = components_and_sigmas(seed=1)
    assert gaussian_calibration(residuals, sigmas).area < 0.01  # σ per atom serves its 3 components
    assert gaussian_calibration(residuals, 3.0 * sigmas).area > 0.1
    assert gaussian_calibration(residuals.ravel(), np.repeat(sigmas, 3)).area < 0.01


def test_miscalibration_area_known_values():
    assert miscalibration_area([0.5]) == pytest.approx(0.25)  # step at 0.5: two triangles of 1/8
    assert miscalibration_area([0.0, 0.0]) == pytest.approx(0.5)
    assert miscalibration_area([1.0]) == pytest.approx(0.5)
    # four evenly placed points: |F_n(p) - p| is a saw tooth of height 1/4 -> area 4 * (1/4)^2 / 2
    assert miscalibration_area([0.25, 0.5, 0.75, 1.0]) == pytest.approx(0.125)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_miscalibration_area_equals_numerical_integral(pit):
    p = np.linspace(0, 1, 200_001)
    ecdf = np.searchsorted(np.sort(pit), p, side="right") / len(pit)
    numerical = np.trapezoid(np.abs(ecdf - p), p)
    assert miscalibration_area(pit) == pytest.approx(numerical, abs=1e-5)  # grid step 5e-6
    assert 0 <= miscalibration_area(pit) <= 0.5


def test_calibration_curve_shape_and_monotonicity():
    expected, observed = calibration_curve(np.random.default_rng(2).random(500), num=11)
    assert expected.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert observed[-1] == 1.0 and np.all(np.diff(observed) >= 0)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        calibration_curve([0.2, 1.5])


def test_maxwell_pit_is_scipy_cdf():
    errors, sigmas = np.array([0.01, 0.05, 0.2]), np.array([0.02, 0.05, 0.1])
    assert maxwell_pit(errors, sigmas) == pytest.approx(stats.maxwell.cdf(errors, scale=sigmas))


def test_maxwell_nll_matches_scipy_and_is_minimised_at_the_true_scale():
    residuals, sigmas = components_and_sigmas(seed=3)
    errors = np.linalg.norm(residuals, axis=1)
    assert maxwell_nll(errors, sigmas) == pytest.approx(-np.mean(stats.maxwell.logpdf(errors, scale=sigmas)))
    factors = np.linspace(0.8, 1.2, 41)
    nll = [maxwell_nll(errors, f * sigmas) for f in factors]
    assert factors[int(np.argmin(nll))] == pytest.approx(1.0, abs=0.011)
    # closed-form minimiser: sd of the estimate is about 1 / sqrt(6 N) = 0.003
    assert maxwell_scale_factor(errors, sigmas) == pytest.approx(1.0, abs=0.015)
    assert maxwell_scale_factor(errors, 0.5 * sigmas) == pytest.approx(2.0, abs=0.03)


def test_maxwell_nll_with_exact_zero_errors():
    errors = np.array([0.0, 0.05, 0.1])
    sigmas = np.full(3, 0.05)
    assert maxwell_nll(errors, sigmas) == np.inf  # density 0 at the origin
    finite = maxwell_nll(errors, sigmas, include_constant=False)
    assert np.isfinite(finite)
    # the sigma-dependent part keeps the same minimiser
    factors = np.linspace(0.5, 2.0, 301)
    best = factors[int(np.argmin([maxwell_nll(errors, f * sigmas, include_constant=False) for f in factors]))]
    assert best == pytest.approx(maxwell_scale_factor(errors, sigmas), abs=0.006)


@pytest.mark.parametrize(
    "errors, sigmas, message",
    [
        ([0.1, 0.2], [0.1, 0.0], "sigmas"),
        ([0.1, 0.2], [0.1, -0.1], "sigmas"),
        ([0.1, -0.2], [0.1, 0.1], "negative"),
        ([0.1, 0.2], [0.1], "2 errors but 1 sigmas"),
        ([np.nan, 0.2], [0.1, 0.1], "NaN"),
    ],
)
def test_bad_inputs_raise_data_error(errors, sigmas, message):
    with pytest.raises(DataError, match=message):
        maxwell_nll(errors, sigmas)
