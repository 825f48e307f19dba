"""Confusion counts, precision/recall/F1 and their sweeps: hand-counted cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otf_statcut.errors import DataError
from otf_statcut.stats import Confusion, confusion, cutoff_grid, f1_score, precision, recall, sweep

ERRORS = [0.1, 0.5, 0.9, 0.3]
SIGMAS = [0.2, 0.6, 0.1, 0.8]


def test_hand_counted_confusion():
    # positives (error > 0.4): atoms 1, 2; flagged (sigma > 0.5): atoms 1, 3
    c = confusion(ERRORS, SIGMAS, 0.4, 0.5)
    assert c == Confusion(tp=1, fp=1, fn=1, tn=1)
    assert (c.precision(), c.recall(), c.f1()) == (0.5, 0.5, 0.5)
    # all flagged, positives 1 and 2: precision 2/4, recall 1, F1 = 2*2/(2*2+2+0)
    c = confusion(ERRORS, SIGMAS, 0.4, 0.0)
    assert c == Confusion(tp=2, fp=2, fn=0, tn=0)
    assert c.f1() == pytest.approx(2 / 3)
    assert c.f1() == pytest.approx(2 * c.precision() * c.recall() / (c.precision() + c.recall()))


def test_cutoffs_are_strict():
    # a value equal to its cutoff is neither positive nor flagged
    assert confusion([0.5], [0.5], 0.5, 0.5) == Confusion(0, 0, 0, 1)
    assert confusion([0.5], [0.5], 0.499, 0.499) == Confusion(1, 0, 0, 0)


def test_zero_division_conventions():
    nothing_flagged = confusion(ERRORS, SIGMAS, 0.4, 10.0)
    assert nothing_flagged == Confusion(tp=0, fp=0, fn=2, tn=2)
    assert np.isnan(nothing_flagged.precision())
    assert nothing_flagged.precision(zero_division=0.0) == 0.0
    assert nothing_flagged.recall() == 0.0
    assert nothing_flagged.f1() == 0.0  # positives exist but none found: F1 is 0, not undefined
    no_positives = confusion(ERRORS, SIGMAS, 10.0, 0.5)
    assert np.isnan(no_positives.recall()) and no_positives.precision() == 0.0 and no_positives.f1() == 0.0
    empty = confusion(ERRORS, SIGMAS, 10.0, 10.0)
    assert np.isnan(empty.f1()) and empty.f1(zero_division=1.0) == 1.0
    assert np.isnan(precision(0, 0)) and recall(3, 1) == 0.75 and f1_score(1, 0, 0) == 1.0
    assert precision(np.array([0, 1]), np.array([0, 1]), zero_division=0.0) == pytest.approx([0.0, 0.5])


def brute_force(errors, sigmas, error_cutoffs, sigma_cutoffs):
    out = np.zeros((len(error_cutoffs), len(sigma_cutoffs), 4), dtype=int)
    for i, ce in enumerate(error_cutoffs):
        for j, cs in enumerate(sigma_cutoffs):
            c = confusion(errors, sigmas, ce, cs)
            out[i, j] = (c.tp, c.fp, c.fn, c.tn)
    return out


def grid_counts(grid):
    return np.stack([grid.tp, grid.fp, grid.fn, grid.tn], axis=-1)


def test_sweep_matches_hand_counts_and_shape():
    grid = sweep(ERRORS, SIGMAS, [0.4, 0.0, 10.0], [0.5, 0.0])
    assert grid.tp.shape == (3, 2)
    assert grid_counts(grid)[0, 0].tolist() == [1, 1, 1, 1]
    assert grid_counts(grid)[1, 1].tolist() == [4, 0, 0, 0]
    assert grid_counts(grid)[2, 0].tolist() == [0, 2, 0, 2]
    assert grid.f1()[0, 0] == 0.5 and np.isnan(grid.recall()[2, 0])


def test_sweep_matches_brute_force_with_unsorted_grids_and_ties():
    rng = np.random.default_rng(0)
    errors = rng.choice([0.0, 0.1, 0.2, 0.3, 0.5], size=300)  # many ties with the grid
    sigmas = rng.choice([0.0, 0.05, 0.1, 0.4], size=300)
    ce = np.array([0.3, 0.0, 0.1, 0.5, 0.2, 0.1])
    cs = np.array([0.4, 0.0, 0.1, 0.05, 1.0])
    assert np.array_equal(grid_counts(sweep(errors, sigmas, ce, cs)), brute_force(errors, sigmas, ce, cs))


small_floats = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0])


@st.composite
def cases(draw):
    n = draw(st.integers(1, 40))
    errors = draw(st.lists(st.one_of(small_floats, st.floats(0, 3)), min_size=n, max_size=n))
    sigmas = draw(st.lists(st.one_of(small_floats, st.floats(0, 3)), min_size=n, max_size=n))
    ce = draw(st.lists(st.one_of(small_floats, st.floats(-1, 4)), min_size=1, max_size=8))
    cs = draw(st.lists(st.one_of(small_floats, st.floats(-1, 4)), min_size=1, max_size=8))
    return np.array(errors), np.array(sigmas), np.array(ce), np.array(cs)


@given(cases())
@settings(max_examples=150, deadline=None)
def test_sweep_equals_brute_force_property(case):
    errors, sigmas, ce, cs = case
    grid = sweep(errors, sigmas, ce, cs)
    assert np.array_equal(grid_counts(grid), brute_force(errors, sigmas, ce, cs))
    assert np.all(grid.tp + grid.fp + grid.fn + grid.tn == errors.size)
    for metric in (grid.precision(), grid.recall(), grid.f1()):
        defined = metric[~np.isnan(metric)]
        assert np.all((defined >= 0) & (defined <= 1))
    # F1 lies between the smaller and the larger of precision and recall when both are defined
    p, r, f = grid.precision(), grid.recall(), grid.f1()
    both = ~np.isnan(p) & ~np.isnan(r)
    assert np.all(f[both] <= np.maximum(p, r)[both] + 1e-12)
    assert np.all(f[both] >= np.minimum(p, r)[both] - 1e-12)


counts_0_50 = st.integers(0, 50)


@given(st.lists(st.tuples(counts_0_50, counts_0_50, counts_0_50), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_metrics_in_unit_interval_or_nan(counts):
    tp, fp, fn = (np.array(c) for c in zip(*counts))
    for value in (precision(tp, fp), recall(tp, fn), f1_score(tp, fp, fn)):
        value = np.atleast_1d(value)
        assert np.all(np.isnan(value) | ((value >= 0) & (value <= 1)))
    assert np.array_equal(np.isnan(np.atleast_1d(f1_score(tp, fp, fn))), (tp + fp + fn) == 0)


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="errors has 2 values but sigmas has 3"):
        confusion([0.1, 0.2], [0.1, 0.2, 0.3], 0.1, 0.1)
    with pytest.raises(DataError, match="NaN"):
        sweep([0.1, np.nan], [0.1, 0.2], [0.1], [0.1])
    with pytest.raises(DataError, match="cutoffs"):
        sweep([0.1], [0.1], [], [0.1])


def test_cutoff_grid():
    grid = cutoff_grid([0.1, 0.7, 0.3], num=8)
    assert grid.shape == (8,) and grid[0] == 0.0 and grid[-1] == 0.7
