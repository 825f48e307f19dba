"""StratifiedSplitter: validation grows with the data, in batches of one, and covers every
element and composition (issue: a validation set that froze at one or two frames of one element)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from otf_statcut.data.stratified import StratifiedSplitter, stratum_of
from otf_statcut.errors import UserError


def _cell(symbols: str, config_type: str | None = None) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.symbols = symbols
    if config_type is not None:
        atoms.info["config_type"] = config_type
    return atoms


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.5])
def test_fraction_holds_after_every_frame_of_a_one_frame_at_a_time_stream(fraction):
    splitter = StratifiedSplitter(fraction)
    for size in range(1, 201):
        splitter.assign(_cell("CuCuCuCu"))
        assert splitter.size == size
        # floor(f × size) validation frames (one earlier at size 2: the element coverage rule)
        assert splitter.n_val == max(math.floor(fraction * size + 1e-9), int(size >= 2))


def test_two_elements_never_validate_on_one_element_only():
    """Pure-Al frames first, Li-containing ones later: Li reaches validation as soon as a second
    Li frame arrives, even when the fraction alone would wait."""
    splitter = StratifiedSplitter(0.1)
    for _ in range(12):
        splitter.assign(_cell("AlAlAlAl"))
    first_li = splitter.assign(_cell("LiAlAlAl"))
    second_li = splitter.assign(_cell("LiAlAlAl"))
    assert (first_li, second_li) == (0, 1)  # a model must see Li first, then validation gets it
    assert splitter.val_elements == {"Al", "Li"}


def test_every_composition_and_config_type_gets_its_share():
    rng = np.random.default_rng(0)
    kinds = [("CuCuCuCu", "bulk"), ("CuCuCuCu", "surface"), ("CuCuAuAu", "bulk"), ("CuAuAuAu", "bulk")]
    weights = [0.7, 0.1, 0.1, 0.1]
    splitter = StratifiedSplitter(0.2)
    frames = [_cell(*kinds[rng.choice(4, p=weights)]) for _ in range(300)]
    splits = [splitter.assign(f) for f in frames]
    for symbols, kind in kinds:
        stratum = stratum_of(_cell(symbols, kind))
        members = [s for f, s in zip(frames, splits) if stratum_of(f) == stratum]
        assert len(members) >= 10
        # each stratum validates on floor(0.2 × its size) frames or one more (coverage rules)
        assert math.floor(0.2 * len(members)) <= sum(members) <= math.floor(0.2 * len(members)) + 2, stratum
    assert abs(sum(splits) / len(splits) - 0.2) < 0.02


def test_config_type_and_composition_make_the_stratum():
    assert stratum_of(_cell("CuCuAuAu", "bulk")) == stratum_of(_cell("AuCuAuCu", "bulk"))
    assert stratum_of(_cell("CuCuAuAu", "bulk")) != stratum_of(_cell("CuCuAuAu", "liquid"))
    assert stratum_of(_cell("CuCuAuAu")) != stratum_of(_cell("CuAuAuAu"))


def test_a_resumed_splitter_continues_the_same_pattern():
    frames = [_cell("CuCuAuAu" if i % 3 else "CuCuCuCu") for i in range(60)]
    whole = StratifiedSplitter(0.25)
    splits = [whole.assign(f) for f in frames]
    resumed = StratifiedSplitter.from_frames(0.25, frames[:25], splits[:25])
    assert [resumed.assign(f) for f in frames[25:]] == splits[25:]


def test_zero_fraction_trains_everything_and_bad_fraction_is_refused():
    splitter = StratifiedSplitter(0.0)
    assert splitter.assign_many([_cell("CuCuCuCu")] * 5) == [0] * 5
    with pytest.raises(UserError, match="val_fraction"):
        StratifiedSplitter(1.0)
