"""train_val_split: reproducible, disjoint, complete, sized as documented."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otf_statcut.data import train_val_split
from otf_statcut.errors import UserError


@given(n=st.integers(0, 60), fraction=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_split_is_a_partition_with_documented_size(n, fraction, seed):
    items = list(range(n))
    train, val = train_val_split(items, fraction, seed)
    assert sorted(train + val) == items
    assert train == sorted(train) and val == sorted(val)  # input order kept
    expected = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        expected = max(expected, 1)
    assert len(val) == min(expected, max(n - 1, 0))
    if n >= 1:
        assert len(train) >= 1


def test_same_seed_same_split_other_seed_other_split():
    items = [f"frame{i}" for i in range(50)]
    assert train_val_split(items, 0.2, seed=3) == train_val_split(items, 0.2, seed=3)
    assert train_val_split(items, 0.2, seed=3)[1] != train_val_split(items, 0.2, seed=4)[1]


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_fraction_is_a_user_error(fraction):
    with pytest.raises(UserError, match="val_fraction"):
        train_val_split([1, 2, 3], fraction)
