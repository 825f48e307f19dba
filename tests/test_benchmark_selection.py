"""The replay selection rule on plain arrays: doubling limit, stop at the first frame above the
maximum cutoff, ranking, budgets, and agreement with the engine's decide()."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otf_statcut.benchmark.config import ProtocolSettings
from otf_statcut.benchmark.metrics import frame_counts
from otf_statcut.benchmark.protocol import next_step, seed_frames
from otf_statcut.benchmark.selection import Bounds, classify_frames, select_candidates, select_random
from otf_statcut.engine.decision import Action, decide

MIN, MAX = 0.4, 1.0


def test_stops_at_first_frame_above_maximum():
    sigma = [0.1, 0.5, 0.2, 0.6, 1.5, 0.9, 0.8, 2.0]
    sel = select_candidates(sigma, MIN, MAX, current_size=10)
    assert sel.stopped_at == 4
    # frames after the stop (5, 6 uncertain; 7 above) are never selected
    assert sel.indices.tolist() == [1, 3, 4]
    sel = select_candidates(sigma, MIN, MAX, current_size=10, include_halt=False)
    assert sel.indices.tolist() == [1, 3]
    assert sel.stopped_at == 4


def test_no_stop_walks_whole_set():
    sel = select_candidates([0.1, 0.5, 0.45, 0.2], MIN, MAX, current_size=5)
    assert sel.stopped_at == -1
    assert sel.indices.tolist() == [1, 2]


def test_doubling_limit_keeps_most_uncertain():
    sigma = [0.41, 0.9, 0.5, 0.95, 0.42, 0.7, 0.2]
    sel = select_candidates(sigma, MIN, MAX, current_size=3)
    assert sel.indices.tolist() == [1, 3, 5]  # the three largest σ, returned in sampling order
    assert select_candidates(sigma, MIN, MAX, current_size=0).indices.size == 0


def test_ties_keep_sampling_order():
    sel = select_candidates([0.5, 0.5, 0.5, 0.5], MIN, MAX, current_size=2)
    assert sel.indices.tolist() == [0, 1]


def test_labelled_frames_neither_selected_nor_stopping():
    sigma = [0.5, 3.0, 0.6, 0.7, 5.0]
    sel = select_candidates(sigma, MIN, MAX, current_size=10, labelled=[0, 1])
    assert sel.stopped_at == 4
    assert sel.indices.tolist() == [2, 3, 4]
    mask = np.array([True, True, False, False, False])
    assert select_candidates(sigma, MIN, MAX, 10, labelled=mask).indices.tolist() == [2, 3, 4]


def test_budget_limits_additions():
    sigma = [0.5, 0.6, 0.7, 0.8]
    assert select_candidates(sigma, MIN, MAX, current_size=4, budget=1).indices.tolist() == [3]
    assert select_candidates(sigma, MIN, MAX, current_size=4, budget=0).indices.size == 0


def test_boundaries_follow_decide():
    # σ == minimum and σ == maximum both label; NaN halts (decide's documented rules)
    sigma = [MIN, MAX, np.nan, 0.5]
    actions = classify_frames(sigma, MIN, MAX)
    assert actions.tolist() == [Action.LABEL, Action.LABEL, Action.HALT, Action.LABEL]
    sel = select_candidates(sigma, MIN, MAX, current_size=10)
    assert sel.stopped_at == 2
    assert sel.indices.tolist() == [0, 1, 2]


@settings(max_examples=200, deadline=None)
@given(
    sigma=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=40),
    size=st.integers(0, 20),
    n_labelled=st.integers(0, 10),
    include=st.booleans(),
)
def test_rule_properties(sigma, size, n_labelled, include):
    sigma = np.asarray(sigma)
    labelled = np.arange(min(n_labelled, sigma.size))
    sel = select_candidates(sigma, MIN, MAX, size, labelled=labelled, include_halt=include)
    idx = sel.indices
    assert idx.size <= size  # at most doubling
    assert len(set(idx.tolist())) == idx.size and np.all(np.diff(idx) > 0)
    assert not np.isin(idx, labelled).any()
    bounds = Bounds(MIN, MAX)
    actions = [decide([s], bounds).action for s in sigma]
    unlabelled = [i for i in range(sigma.size) if i not in set(labelled.tolist())]
    halts = [i for i in unlabelled if actions[i] is Action.HALT]
    assert sel.stopped_at == (halts[0] if halts else -1)
    end = sel.stopped_at if sel.stopped_at >= 0 else sigma.size
    for i in idx:
        assert i < end or (include and i == sel.stopped_at)
        assert actions[i] is not Action.TRUST
    candidates = [i for i in unlabelled if i < end and actions[i] is Action.LABEL]
    if include and sel.stopped_at >= 0:
        candidates.append(sel.stopped_at)
    assert idx.size == min(size, len(candidates))
    if idx.size:  # nothing left out is more uncertain than what was taken
        left = sorted(set(candidates) - set(idx.tolist()))
        assert not left or sigma[left].max() <= sigma[idx].min()


def test_select_random_draws_within_window():
    rng = np.random.default_rng(0)
    drawn = select_random(3, stopped_at=6, n_frames=10, rng=rng, labelled=[0, 2])
    assert drawn.size == 3
    assert set(drawn.tolist()) <= {1, 3, 4, 5, 6}
    drawn = select_random(10, stopped_at=6, n_frames=10, rng=np.random.default_rng(0), labelled=[0, 2],
                          include_halt=False)
    assert drawn.tolist() == [1, 3, 4, 5]
    again = select_random(3, 6, 10, np.random.default_rng(0), labelled=[0, 2])
    assert again.tolist() == select_random(3, 6, 10, np.random.default_rng(0), labelled=[0, 2]).tolist()
    assert select_random(0, -1, 5, np.random.default_rng(0)).size == 0


def test_next_step_statuses():
    p = ProtocolSettings(max_iterations=5)
    sigma = np.array([0.1, 0.5, 0.6, 0.2, 2.0, 0.7])
    step = next_step("oracle", 0, sigma, MIN, MAX, [0, 3], p)
    assert step.status == "running"
    assert step.selected.tolist() == [2, 4]  # doubling: 2 frames held, 3 candidates (1, 2, 4)
    assert step.n_candidates == 3 and step.stopped_at == 4
    assert next_step("oracle", 4, sigma, MIN, MAX, [0, 3], p).status == "max_iterations"
    capped = ProtocolSettings(max_iterations=5, max_labels=3)
    assert next_step("oracle", 0, sigma, MIN, MAX, [0, 3], capped).selected.tolist() == [4]
    assert next_step("oracle", 0, sigma, MIN, MAX, [0, 1, 3], capped).status == "label_budget"
    quiet = np.array([0.1, 0.2, 0.3])
    assert next_step("oracle", 0, quiet, MIN, MAX, [0], p).status == "converged"
    assert next_step("oracle", 0, quiet, MIN, MAX, [0, 1, 2], p).status == "exhausted"


def test_random_adds_as_many_as_the_rule_allows():
    p = ProtocolSettings(max_iterations=5, seed=3)
    sigma = np.array([0.1, 0.5, 0.6, 0.2, 0.3, 0.9, 2.0, 0.7])
    rule = next_step("oracle", 1, sigma, MIN, MAX, [0, 3], p)
    rand = next_step("random", 1, sigma, MIN, MAX, [0, 3], p)
    assert rand.selected.size == rule.selected.size == 2
    assert rand.stopped_at == rule.stopped_at == 6
    assert set(rand.selected.tolist()) <= {1, 2, 4, 5, 6}
    assert rand.selected.tolist() == next_step("random", 1, sigma, MIN, MAX, [0, 3], p).selected.tolist()


def test_seed_frames_reproducible_and_split():
    p = ProtocolSettings(seed_frames=5, seed=7, val_fraction=0.2)
    frames, is_val = seed_frames(50, p)
    assert frames == seed_frames(50, p)[0]
    assert len(frames) == 5 and len(set(frames)) == 5 and all(0 <= f < 50 for f in frames)
    assert len(is_val) == 5
    with pytest.raises(Exception, match="seed_frames"):
        seed_frames(5, p)


def test_run_seed_changes_seed_frames_and_random_draws():
    runs = [ProtocolSettings(seed_frames=5, seed=s, max_iterations=5) for s in range(4)]
    drawn = {tuple(seed_frames(200, p)[0]) for p in runs}
    assert len(drawn) == 4  # every seed starts from other frames
    sigma = np.full(40, 0.5)  # 40 equally uncertain frames: random picks 10 of them
    held = list(range(10))
    picks = {tuple(next_step("random", 0, sigma, MIN, MAX, held, p).selected.tolist()) for p in runs}
    assert len(picks) == 4
    ranked = {tuple(next_step("oracle", 0, sigma, MIN, MAX, held, p).selected.tolist()) for p in runs}
    assert len(ranked) == 1  # the rule itself does not depend on the seed


def test_frame_counts_leave_out_labelled_frames():
    sigma = np.array([0.1, 0.5, 0.6, 2.0, 0.7, 3.0, 0.2])  # between: 1, 2, 4; above: 3, 5
    assert frame_counts(sigma, MIN, MAX, []) == (3, 2)
    assert frame_counts(sigma, MIN, MAX, [1, 3]) == (2, 1)
    assert frame_counts(sigma, MIN, MAX, [0, 6]) == (3, 2)  # trusted frames change nothing
    assert frame_counts(sigma, MIN, MAX, np.array([1, 2, 4, 3, 5])) == (0, 0)
    mask = np.array([False, True, False, False, False, True, False])
    assert frame_counts(sigma, MIN, MAX, mask) == (2, 1)


def test_task_queue_hands_each_task_once(tmp_path):
    from otf_statcut.benchmark.runner import TaskQueue, order_tasks

    tasks = [("li", m) for m in ("ensemble", "gp", "distance", "oracle", "random")]
    ordered = order_tasks(tasks, [4, 1, 1, 1, 2])
    assert ordered == [tasks[0], tasks[4], tasks[1], tasks[2], tasks[3]]
    queue = TaskQueue(tmp_path / "claims.json", ordered)
    queue.reset()
    other = TaskQueue(tmp_path / "claims.json", ordered)  # a second rank on the same file
    taken = []
    while (task := (queue if len(taken) % 2 else other).claim()) is not None:
        taken.append(task)
    assert taken == ordered
    assert queue.claim() is None and other.claim() is None
