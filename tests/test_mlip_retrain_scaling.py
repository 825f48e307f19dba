"""Retraining whose cost does not grow with the data set (issue 11): graphs cached across fits,
the time budget checked inside epochs, warm epochs over the new frames plus a bounded replay
sample, validation predictions computed once per fit cycle, and the GP head refitted warm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from otf_statcut.errors import ConfigError
from otf_statcut.fit_cycle import LazyPredictions, fit_cycle
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
from otf_statcut.mlip import training
from otf_statcut.mlip.graphs import GRAPH_CACHE, GraphCache, GraphConverter, geometry_digest
from conftest import cu_cells
from otf_statcut.uq import make_head
from otf_statcut.uq.sparse_gp import ElementGP

torch.set_num_threads(1)

TINY = ModelConfig(species=("Cu",), r_max=4.0, num_layers=1, l_max=1, num_features=8, radial_mlp_width=8,
                   seed=3)


@pytest.fixture(scope="module")
def data():
    return {"train": cu_cells(12, seed=0), "val": cu_cells(4, seed=1), "new": cu_cells(3, seed=2, rattle=0.1)}


@pytest.fixture(scope="module")
def trained(data):
    potential = NequIPPotential.build(TINY, data["train"])
    potential.fit(data["train"], data["val"], TrainConfig(max_epochs=6, batch_size=4), warm_start=False)
    return potential


def _same_graph(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ graph cache
def test_graph_cache_hits_and_equals_a_fresh_build(data):
    cache = GraphCache()
    converter = GraphConverter(("Cu",), 4.0, cache=cache)
    fresh = GraphConverter(("Cu",), 4.0, cache=None)
    frames = data["train"][:4]
    first = converter.labelled_graphs(frames)
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 4)
    second = converter.labelled_graphs(frames)
    assert (cache.hits, cache.misses) == (4, 4)
    for a, b, c in zip(first, second, fresh.labelled_graphs(frames)):
        assert _same_graph(a, c) and _same_graph(b, c)
        assert a is not b  # every lookup hands out its own dict
    # unlabelled lookups (predict, calculator) read the cache but never add to it
    unseen = data["val"][0]
    converter.graph(unseen)
    assert len(cache) == 4 and _same_graph(converter.graph(frames[0]), fresh.graph(frames[0]))
    # another converter with the same settings shares the entries
    assert GraphConverter(("Cu",), 4.0, cache=cache).labelled_graphs(frames[:1]) and cache.hits == 6


def test_graph_cache_invalidated_by_cutoff_species_and_geometry(data):
    cache = GraphCache()
    frame = data["train"][0]
    base = GraphConverter(("Cu",), 4.0, cache=cache).labelled_graph(frame)
    wider = GraphConverter(("Cu",), 5.0, cache=cache).labelled_graph(frame)
    assert cache.misses == 2 and cache.hits == 0
    assert wider["edge_index"].shape[1] > base["edge_index"].shape[1]  # never the 4 Å graph
    other_species = GraphConverter(("Ag", "Cu"), 4.0, cache=cache).labelled_graph(frame)
    assert cache.misses == 3 and int(other_species["atom_types"][0]) == 1
    moved = frame.copy()
    moved.positions[0, 0] += 1e-9
    assert geometry_digest(moved) != geometry_digest(frame)
    GraphConverter(("Cu",), 4.0, cache=cache).graph(moved)
    assert cache.misses == 4
    assert cache.invalidate(r_max=5.0) == 1 and len(cache) == 2
    assert cache.invalidate(species=("Cu",)) == 1 and len(cache) == 1
    with cache.disabled():
        GraphConverter(("Ag", "Cu"), 4.0, cache=cache).labelled_graph(frame)
    assert cache.hits == 0


def test_graph_cache_is_bounded_and_drops_the_least_recently_used(data):
    frames = data["train"][:3]
    graph = GraphConverter(("Cu",), 4.0, cache=None).graph(frames[0])
    size = sum(v.numel() * v.element_size() for v in graph.values())
    cache = GraphCache(max_bytes=int(2.5 * size))
    converter = GraphConverter(("Cu",), 4.0, cache=cache)
    converter.labelled_graph(frames[0])
    converter.labelled_graph(frames[1])
    converter.labelled_graph(frames[0])  # frames[1] is now the least recently used
    converter.labelled_graph(frames[2])
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    hits = cache.hits
    converter.labelled_graph(frames[0])
    assert cache.hits == hits + 1
    converter.labelled_graph(frames[1])
    assert cache.hits == hits + 1  # dropped, rebuilt


def test_fits_reuse_cached_graphs_and_leave_them_unchanged(trained, data):
    potential = trained.copy()
    frames = data["train"] + data["val"]
    keys = [potential.converter.cache_key(a) for a in frames]
    assert all(GRAPH_CACHE._items.get(k) is not None for k in keys)  # built by the first fit
    before = {k: {n: t.clone() for n, t in GRAPH_CACHE._items[k][0].items()} for k in keys}
    misses = GRAPH_CACHE.misses
    potential.fit(data["train"], data["val"], TrainConfig(max_epochs=1, batch_size=4))
    potential.predict(frames)
    assert GRAPH_CACHE.misses == misses  # no neighbour list was rebuilt
    for k in keys:  # the model never modified a cached tensor (nor its requires_grad flag)
        assert _same_graph(GRAPH_CACHE._items[k][0], before[k])
        assert not any(t.requires_grad for t in GRAPH_CACHE._items[k][0].values())


# ------------------------------------------------------------------------------ time budget
def test_the_budget_stops_inside_an_epoch(trained):
    frames = cu_cells(120, seed=5)
    warm = TrainConfig(max_epochs=5, batch_size=2, max_seconds=0.05)
    history = trained.copy().fit(frames, frames[:2], warm).history
    first = history.epochs[0]
    assert history.stop_reason == "max_seconds" and len(history.epochs) == 1
    assert not first.complete and 2 <= first.frames < len(frames)
    # the partial epoch is validated and is the warm fit's result
    assert history.warm_start and history.best_epoch == 1 and history.weights_changed
    # a budget smaller than one step still takes one step
    tiny = trained.copy().fit(frames[:8], frames[:2],
                              TrainConfig(max_epochs=5, batch_size=2, max_seconds=1e-9))
    assert tiny.history.epochs[0].frames == 2 and tiny.history.weights_changed
    # a cold fit obeys it too
    cold = NequIPPotential.build(TINY, frames).fit(frames, frames[:2], warm, warm_start=False)
    assert not cold.history.epochs[0].complete and cold.history.stop_reason == "max_seconds"


# ------------------------------------------------------------------------------ replay
def _record_epochs(monkeypatch, n_train: int):
    """Patch the batcher; returns the training batches' index lists, in optimiser-step order
    (batches of the ``n_train`` training graphs only, not of the validation graphs)."""
    chunks = []
    real = training._batch

    def spy(graphs, has_stress, chunk):
        if len(graphs) == n_train:
            chunks.append(list(chunk))
        return real(graphs, has_stress, chunk)

    monkeypatch.setattr(training, "_batch", spy)
    return chunks


def test_warm_epochs_hold_every_new_frame_plus_a_bounded_replay_sample(trained, data, monkeypatch):
    old, new = data["train"], data["new"]
    train = old + new
    config = TrainConfig(max_epochs=3, batch_size=2, patience=10, warm_replay_frames=4, warm_val_frames=1)
    chunks = _record_epochs(monkeypatch, len(train))
    potential = trained.copy().fit(train, data["val"] + new[:1], config, new_frames=new)
    history = potential.history
    assert history.replay and history.n_new_frames == 3 and history.epoch_frames == 3 + 4
    assert history.monitor_frames == 1 + 1  # the new validation frame and one old one
    steps = math.ceil(7 / 2)
    assert len(chunks) == 3 * steps
    new_idx = set(range(len(old), len(train)))
    drawn = []
    for e in range(3):
        epoch = [i for chunk in chunks[e * steps:(e + 1) * steps] for i in chunk]
        assert len(epoch) == 7 and len(set(epoch)) == 7
        assert new_idx <= set(epoch)  # every new frame, every epoch
        replayed = set(epoch) - new_idx
        assert len(replayed) == 4 and replayed <= set(range(len(old)))
        drawn.append(frozenset(replayed))
    assert len(set(drawn)) > 1  # a fresh draw each epoch
    assert all(e.frames == 7 for e in history.epochs)
    assert history.warm_start and history.best_epoch >= 1 and history.weights_changed


def test_replay_falls_back_to_full_epochs(trained, data, monkeypatch):
    old, new = data["train"], data["new"]
    chunks = _record_epochs(monkeypatch, len(old) + len(new))
    # fewer old frames than the replay size: every epoch holds all of them (as before)
    history = trained.copy().fit(old + new, data["val"], TrainConfig(max_epochs=1, batch_size=3),
                                 new_frames=new).history
    assert not history.replay and history.epoch_frames == len(old) + len(new)
    assert sorted(i for c in chunks for i in c) == list(range(len(old) + len(new)))
    # replay off, or a cold fit: all frames
    off = TrainConfig(max_epochs=1, batch_size=3, warm_replay_frames=None, warm_val_frames=None)
    assert not trained.copy().fit(old + new, data["val"], off, new_frames=new).history.replay
    replaying = TrainConfig(max_epochs=1, batch_size=3, warm_replay_frames=2)
    cold = NequIPPotential.build(TINY, old).fit(old + new, data["val"], replaying, warm_start=False)
    assert not cold.history.replay and cold.history.epoch_frames == len(old) + len(new)


def test_new_frames_default_to_those_the_last_fit_did_not_see(trained, data):
    config = TrainConfig(max_epochs=1, batch_size=4, warm_replay_frames=2, warm_val_frames=2)
    potential = trained.copy()
    assert potential.fitted_digests == trained.fitted_digests and len(trained.fitted_digests) == 16
    history = potential.fit(data["train"] + data["new"], data["val"], config).history
    assert history.replay and history.n_new_frames == 3
    assert history.epoch_frames == 5 and history.monitor_frames == 2
    # a potential that does not know what it was fitted on (loaded) counts everything as new
    potential.fitted_digests = None
    history = potential.fit(data["train"] + data["new"], data["val"], config).history
    assert not history.replay and history.n_new_frames == 15 and history.monitor_frames == 4


@pytest.mark.parametrize("key", ["warm_replay_frames", "warm_val_frames"])
def test_replay_fields_are_validated(key):
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match=key):
            TrainConfig(**{key: bad})
    assert TrainConfig.from_dict(TrainConfig(**{key: None}).to_dict()) == TrainConfig(**{key: None})


# ------------------------------------------------------------------------------ fit cycle
def test_fit_cycle_shares_validation_predictions(trained, data):
    potential = trained.copy()
    config = TrainConfig(max_epochs=2, batch_size=4, warm_replay_frames=4)
    head = make_head("ensemble", n_members=2, train_config=config)
    fit_cycle(potential, head, data["train"], data["val"], train_config=config, warm_start=True,
              n={"Cu": 1000})
    train, val = data["train"] + data["new"][:2], data["val"] + data["new"][2:]
    cycle = fit_cycle(potential, head, train, val, train_config=config, warm_start=True, n={"Cu": 1000},
                      new_frames=data["new"])
    # the members were evaluated on the validation frames once, not in calibration, bound and σ again
    assert head.member_evaluations_ == len(val)
    separate = potential.predict(val, stress=False, features=False)
    for shared, alone in zip(cycle.val_predictions, separate):
        np.testing.assert_allclose(shared.forces, alone.forces, rtol=1e-6, atol=1e-9)
    members = [m.predict(val, stress=False, features=False) for m in head.members_]
    stacked = head.member_forces(val, cycle.val_predictions)
    for i, forces in enumerate(stacked):
        np.testing.assert_allclose(forces[1:], np.stack([m[i].forces for m in members]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.concatenate(head.predict(val, separate)), cycle.val_sigma, rtol=1e-5)
    assert head.member_evaluations_ == len(val)  # all of that from the kept forces
    head.predict(data["train"][:2])  # other frames are evaluated
    assert head.member_evaluations_ == len(val) + 2
    # the members trained on the new frames plus replay, as the potential did
    assert potential.history.replay and potential.history.epoch_frames == 2 + 4
    assert all(m.history.replay and m.history.n_new_frames == 2 for m in head.members_)
    # the ensemble needs no training-frame predictions: they are computed only when read
    lazy = cycle.train_predictions
    assert isinstance(lazy, LazyPredictions) and len(lazy) == len(train) and not lazy.computed
    expected = potential.predict(train, stress=False, features=False)
    potential.fit(train, val, TrainConfig(max_epochs=1, batch_size=4))  # the weights move on
    for got, want in zip(lazy + [], expected):  # still this cycle's weights
        np.testing.assert_allclose(got.forces, want.forces, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------ GP head
def _gp_data(seed: int, n: int = 600, d: int = 6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d) + np.arange(d)
    scale = 0.05 * np.exp(0.4 * np.tanh(x[:, 0] - x[:, 1]))
    errors = np.linalg.norm(rng.normal(size=(n, 3)), axis=1) * scale
    return x, errors


def test_warm_gp_refit_starts_from_the_previous_state_and_is_faster():
    x, errors = _gp_data(0)
    cold = ElementGP(num_inducing=24, iterations=400, seed=1).fit(x, errors)
    assert not cold.warm_
    # more data, another standardisation, the same largest error: with no steps the warm start
    # is exactly the previous GP, re-expressed in the new coordinates
    extra, more = _gp_data(1, n=200)
    x2 = np.concatenate([x, 1.3 * extra + 0.5])
    e2 = np.concatenate([errors, np.minimum(more, errors.max())])
    start = ElementGP(num_inducing=24, warm_iterations=0, seed=1).fit(x2, e2, init=cold)
    assert start.warm_
    probe = np.concatenate([x[:50], x2[-50:]])
    for a, b in zip(cold.latent(probe), start.latent(probe)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    # the warm refit (200 steps, no k-means) vs a cold one (400 steps + k-means)
    warm = ElementGP(num_inducing=24, iterations=400, warm_iterations=100, seed=1).fit(x2, e2, init=cold)
    again = ElementGP(num_inducing=24, iterations=400, seed=1).fit(x2, e2)
    assert warm.warm_ and not again.warm_
    assert warm.fit_seconds_ < 0.6 * again.fit_seconds_
    assert warm.loss_history_[0] < again.loss_history_[0]  # starts near the optimum
    assert np.mean(warm.loss_history_[-20:]) <= np.mean(again.loss_history_[-20:]) + 0.02
    # a GP that cannot be continued is ignored
    assert not ElementGP(num_inducing=32, seed=1, iterations=5).fit(x2, e2, init=cold).warm_
    assert not ElementGP(num_inducing=24, seed=1, iterations=5).fit(x2[:, :4], e2, init=cold).warm_


def test_gp_head_refits_warm_only_after_a_warm_retrain(trained, data):
    head = make_head("gp", num_inducing=8, iterations=30, warm_iterations=10, batch_size=64)
    potential = trained.copy()
    head.fit(potential, data["train"], data["val"])
    assert not head.warm_refit_
    previous = dict(head.gps_)
    potential.fit(data["train"] + data["new"], data["val"], TrainConfig(max_epochs=1, batch_size=4),
                  new_frames=data["new"])
    head.fit(potential, data["train"] + data["new"], data["val"])
    assert head.warm_refit_ and all(gp.warm_ for gp in head.gps_.values())
    assert all(len(gp.loss_history_) == 10 for gp in head.gps_.values())
    assert head.gps_[29] is not previous[29]
    # after a cold retrain the features are new: cold refit
    potential.fit(data["train"], data["val"], TrainConfig(max_epochs=1, batch_size=4), warm_start=False)
    head.fit(potential, data["train"], data["val"])
    assert not head.warm_refit_
    # another potential, or warm_start off: cold
    other = trained.copy().fit(data["train"], data["val"], TrainConfig(max_epochs=1, batch_size=4))
    head.fit(other, data["train"], data["val"])
    assert not head.warm_refit_
    off = make_head("gp", num_inducing=8, iterations=5, warm_start=False)
    off.fit(other, data["train"], data["val"])
    other.fit(data["train"], data["val"], TrainConfig(max_epochs=1, batch_size=4))
    off.fit(other, data["train"], data["val"])
    assert not off.warm_refit_
    with pytest.raises(ConfigError, match="warm_iterations"):
        make_head("gp", warm_iterations=0)
