"""The decision function, exhaustively: every region, both boundaries, NaN/inf, bad inputs."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otf_statcut.engine.decision import Action, Decision, decide

CUT = SimpleNamespace(minimum=0.1, maximum=0.5)


def reference(sigma, minimum, maximum):
    """A deliberately naive re-statement of the rules, atom by atom."""
    action = Action.TRUST
    atoms, above = [], []
    for i, s in enumerate(sigma):
        bad = s != s or s == -np.inf
        if bad or s >= minimum:
            atoms.append(i)
            action = max(action, Action.LABEL)
        if bad or s > maximum:
            above.append(i)
            action = Action.HALT
    return action, tuple(atoms), tuple(above)


@pytest.mark.parametrize(
    "sigma, action, atoms",
    [
        ([0.0], Action.TRUST, ()),
        ([0.09999], Action.TRUST, ()),
        ([0.1], Action.LABEL, (0,)),  # minimum belongs to LABEL
        ([0.3], Action.LABEL, (0,)),
        ([0.5], Action.LABEL, (0,)),  # maximum belongs to LABEL
        ([0.50001], Action.HALT, (0,)),
        ([np.inf], Action.HALT, (0,)),
        ([np.nan], Action.HALT, (0,)),
        ([-np.inf], Action.HALT, (0,)),
        ([-0.2, 0.05], Action.TRUST, ()),
        ([0.05, 0.2, 0.01, 0.4], Action.LABEL, (1, 3)),
        ([0.05, 0.2, 0.9, 0.01], Action.HALT, (1, 2)),
        ([0.05, np.nan, 0.01], Action.HALT, (1,)),
    ],
)
def test_regions_and_boundaries(sigma, action, atoms):
    d = decide(sigma, CUT)
    assert d.action is action
    assert d.atoms == atoms
    assert d.trusted == (action is Action.TRUST)


def test_every_combination_of_three_atoms_matches_the_reference():
    levels = [0.0, 0.1 - 1e-12, 0.1, 0.3, 0.5, 0.5 + 1e-12, 7.0, np.inf, np.nan]
    for combo in itertools.product(levels, repeat=3):
        d = decide(np.array(combo), CUT)
        action, atoms, above = reference(combo, 0.1, 0.5)
        assert (d.action, d.atoms, d.above_maximum) == (action, atoms, above), combo


def test_max_sigma_and_above_maximum():
    d = decide(np.array([0.2, 0.7, 0.05, 0.6]), CUT)
    assert d.max_sigma == pytest.approx(0.7)
    assert d.above_maximum == (1, 3)
    assert d.atoms == (0, 1, 3)
    assert np.isnan(decide([0.2, np.nan], CUT).max_sigma)
    assert decide([0.2, np.inf], CUT).max_sigma == np.inf


def test_maximum_below_minimum_halts_first():
    cut = SimpleNamespace(minimum=0.5, maximum=0.2)
    assert decide([0.1], cut).action is Action.TRUST
    assert decide([0.3], cut).action is Action.HALT  # above the maximum: never trusted
    assert decide([0.6], cut).action is Action.HALT


def test_infinite_maximum_never_halts_on_finite_sigma():
    cut = SimpleNamespace(minimum=0.1, maximum=np.inf)
    assert decide([1e300], cut).action is Action.LABEL
    assert decide([np.inf], cut).action is Action.LABEL


def test_pure_input_not_modified_and_result_frozen():
    s = np.array([0.3, 0.01])
    before = s.copy()
    d = decide(s, CUT)
    np.testing.assert_array_equal(s, before)
    with pytest.raises(AttributeError):
        d.action = Action.TRUST  # type: ignore[misc]
    assert isinstance(d, Decision)
    assert all(type(i) is int for i in d.atoms)


def test_actions_are_ordered_by_severity_and_have_labels():
    assert Action.TRUST < Action.LABEL < Action.HALT
    assert [a.label for a in Action] == ["trust", "label", "halt"]
    assert [int(a) for a in Action] == [0, 1, 2]


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], np.zeros((2, 3)), 0.3])
def test_bad_sigma_shape_raises(bad):
    with pytest.raises(ValueError, match="sigma"):
        decide(bad, CUT)


def test_bad_cutoffs_raise():
    with pytest.raises(TypeError, match="minimum"):
        decide([0.1], SimpleNamespace(maximum=1.0))
    with pytest.raises(ValueError, match="NaN"):
        decide([0.1], SimpleNamespace(minimum=np.nan, maximum=1.0))


finite = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    sigma=st.lists(st.one_of(finite, st.just(np.nan), st.just(np.inf)), min_size=1, max_size=12),
    lo=finite,
    hi=st.one_of(finite, st.just(np.inf)),
)
def test_matches_reference_on_random_inputs(sigma, lo, hi):
    d = decide(sigma, SimpleNamespace(minimum=lo, maximum=hi))
    assert (d.action, d.atoms, d.above_maximum) == reference(sigma, lo, hi)
    assert (d.action is Action.HALT) == bool(d.above_maximum)
    assert set(d.above_maximum) <= set(d.atoms) or lo > hi
