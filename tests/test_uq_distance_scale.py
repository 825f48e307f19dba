"""The latent-distance head's ``"pca"`` nearest-neighbour search (issue 11) against brute force.

The search is exact: the index it returns is ``np.argmin`` of the float64 squared distances
``((x − y)**2).sum()``, i.e. the lowest index among equal distances. Its only approximation is
the rounding of the rotated frame, bounded by ``ROUNDING_TOL``; decisions inside that bound are
re-ranked exactly. These tests cover low-rank and full-rank data, ties, duplicates, far queries,
tiny banks, float32 input, non-finite rows, and show that without the bound near ties are
mis-ranked (the failure mode the re-rank detects).
"""

from __future__ import annotations

import numpy as np
import pytest

import otf_statcut.uq.distance as distance
from otf_statcut.errors import DataError
from otf_statcut.uq import DistanceHead, LatentDistance, NearestNeighbourIndex, load_head


def brute_nearest(reference: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the nearest reference row, lowest among ties, by brute force in float64."""
    reference = np.asarray(reference, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    out = np.empty(len(query), dtype=np.int64)
    for start in range(0, len(query), 16):
        diff = query[start:start + 16, None, :] - reference[None]
        out[start:start + 16] = np.argmin((diff * diff).sum(axis=-1), axis=1)
    return out


def low_rank(rng, dim: int = 32, offset: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A generator of latent-like vectors: 96 % of the variance on one axis, 99.8 % on four."""
    tail = 0.6 ** np.arange(dim - 4)
    var = np.r_[0.96, 0.025, 0.009, 0.004, 0.002 * tail / tail.sum()][:dim]
    axes = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    shift = rng.normal(scale=offset, size=dim)
    return lambda m: (rng.normal(size=(m, dim)) * 0.12 * np.sqrt(var)) @ axes.T + shift


def check_exact(reference, query, **kwargs) -> dict:
    """Build the index, check query() and differences() against brute force; return how many
    queries each route answered (for one query() call)."""
    index = NearestNeighbourIndex(reference, **kwargs)
    expected = brute_nearest(reference, query)
    np.testing.assert_array_equal(index.query(query), expected)
    routes = dict(index.routes_)
    assert sum(routes.values()) == len(query)
    ref64, q64 = np.asarray(reference, np.float64), np.asarray(query, np.float64)
    np.testing.assert_array_equal(index.differences(query), np.abs(q64 - ref64[expected]))
    return routes


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("n_ref", [1, 2, 7, 300, 5000])
@pytest.mark.parametrize("kind", ["low-rank", "full-rank"])
def test_matches_brute_force_on_random_data(kind, n_ref):
    rng = np.random.default_rng(n_ref)
    if kind == "low-rank":
        draw = low_rank(rng)
        reference, query = draw(n_ref), draw(250)
    else:
        reference, query = rng.normal(size=(n_ref, 8)), rng.normal(size=(250, 8))
    check_exact(reference, query)


def test_in_distribution_queries_take_the_tree():
    """The fast path is the one used: latent-like queries are certified by the tree alone."""
    draw = low_rank(np.random.default_rng(1))
    reference, query = draw(20_000), draw(250)
    routes = check_exact(reference, query)
    assert routes["tree"] >= 0.95 * 250


@pytest.mark.parametrize("dim", [1, 2, 3, 6])
def test_ties_on_a_lattice_pick_the_lowest_index_and_are_detected(dim):
    """Integer lattice bank, queries at half-integers: many exact ties; the tree's own pick is
    arbitrary among them, the re-rank (or the scan) makes it the lowest index, and no tied query
    is answered by the tree alone."""
    rng = np.random.default_rng(dim)
    grid = np.stack(np.meshgrid(*[np.arange(5.0)] * dim, indexing="ij"), axis=-1).reshape(-1, dim)
    reference = grid[rng.permutation(len(grid))]
    query = rng.integers(0, 8, size=(200, dim)) / 2.0 - 0.5
    routes = check_exact(reference, query)
    sq = ((query[:, None] - reference[None]) ** 2).sum(-1)
    tied = int(np.sum((sq == sq.min(axis=1, keepdims=True)).sum(axis=1) > 1))
    assert tied > 0 and routes["tie"] + routes["scan"] >= tied


def test_duplicates_and_near_duplicate_clusters():
    rng = np.random.default_rng(3)
    draw = low_rank(rng, dim=16)
    base = draw(400)
    # exact copies (a frame whose atoms are equivalent) and a cluster of float32-noise copies
    copies = np.repeat(base[:3], 50, axis=0)
    cluster = base[3] + 1e-7 * rng.normal(size=(300, 16))
    reference = np.concatenate([base, copies, cluster])[rng.permutation(400 + 150 + 300)]
    query = np.concatenate([base[:3], base[:3] + 1e-4, base[3] + 1e-3 * rng.normal(size=(20, 16)), draw(50)])
    routes = check_exact(reference, query)
    assert routes["tie"] >= 3  # the exact copies cannot be told apart by the tree


@pytest.mark.parametrize("distance_scale", [1.0, 10.0, 1e3, 1e6])
def test_queries_far_from_the_bank(distance_scale):
    rng = np.random.default_rng(4)
    draw = low_rank(rng)
    reference = draw(3000)
    radius = np.sqrt(((reference - reference.mean(0)) ** 2).sum(1).mean())
    step = rng.normal(size=(100, 32))
    query = reference[:100] + distance_scale * radius * step / np.linalg.norm(step, axis=1, keepdims=True)
    assert check_exact(reference, query)["scan"] == 100


@pytest.mark.parametrize("block", [1, 37, 1 << 24])
def test_linear_scan_is_exact_for_any_block_size(block):
    rng = np.random.default_rng(5)
    reference = np.round(rng.normal(size=(500, 4)), 1)  # ties among far candidates too
    query = 50.0 * np.round(rng.normal(size=(40, 4)), 1)
    assert check_exact(reference, query, block_elements=block)["scan"] == 40


def test_bank_of_one_vector_and_of_identical_vectors():
    rng = np.random.default_rng(6)
    one = rng.normal(size=(1, 5))
    query = np.concatenate([one, one + 1e-9, rng.normal(size=(10, 5)), 1e6 * np.ones((1, 5))])
    check_exact(one, query)
    same = np.repeat(one, 40, axis=0)  # 40 exact copies: the tree alone can never decide
    assert check_exact(same, query)["tree"] == 0
    assert np.all(NearestNeighbourIndex(same).query(query) == 0)
    zeros = np.zeros((3, 4))
    check_exact(zeros, np.zeros((2, 4)))


def test_float32_and_float64_inputs():
    rng = np.random.default_rng(7)
    draw = low_rank(rng)
    reference, query = draw(4000).astype(np.float32), draw(250).astype(np.float32)
    check_exact(reference, query)  # compared with brute force on the float64 values
    check_exact(reference, query.astype(np.float64))
    check_exact(reference.astype(np.float64), query)


def test_non_finite_rows():
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(200, 6))
    reference[[0, 5]] = np.nan
    reference[7, 2] = np.inf
    index = NearestNeighbourIndex(reference)
    query = rng.normal(size=(50, 6))
    clean = np.where(np.isfinite(reference).all(axis=1)[:, None], reference, 1e100)
    np.testing.assert_array_equal(index.query(query), brute_nearest(clean, query))
    broken = np.r_[query[:2], np.full((1, 6), np.nan)]
    d = index.differences(broken)
    assert np.isfinite(d[:2]).all() and np.isnan(d[2]).all()
    assert index.query(np.zeros((0, 6))).shape == (0,)
    with pytest.raises(DataError, match="must be finite"):
        index.query(broken)  # as the input-frame tree refuses them; differences() filters first
    with pytest.raises(DataError, match="no finite vector"):
        NearestNeighbourIndex(np.full((3, 2), np.nan))


# --------------------------------------------------------------------------- the rounding bound
def test_rotated_frame_rounding_is_far_below_the_bound():
    """The bound's premise: a distance in the rotated frame is within ROUNDING_TOL·(|x| + max|y|)
    of the exact one; measured, it is at least three decades tighter, even with a large offset."""
    rng = np.random.default_rng(9)
    worst = 0.0
    for offset in (0.0, 1.0, 1e3):
        draw = low_rank(rng, offset=offset)
        reference, query = draw(2000), draw(200)
        index = NearestNeighbourIndex(reference)
        rotated_ref = index._tree.data  # tree row t holds reference row index._rows[t]
        rotated_q = (query - index._mean) @ index._basis
        picks = rng.integers(0, len(reference), size=(200, 20))
        exact = np.linalg.norm(query[:, None] - reference[index._rows[picks]], axis=-1)
        rotated = np.linalg.norm(rotated_q[:, None] - rotated_ref[picks], axis=-1)
        scale = np.linalg.norm(query, axis=1)[:, None] + np.linalg.norm(reference, axis=1).max()
        worst = max(worst, float(np.max(np.abs(rotated - exact) / scale)))
    assert worst < 1e-3 * distance.ROUNDING_TOL


def near_tie_problem(rng, n_query=50, dim=8):
    """Each query gets two bank vectors at the same distance in exact arithmetic (``v`` and a
    rotation of it); which one float64 calls nearer is a matter of rounding."""
    mu = 10.0 * rng.normal(size=dim)
    query = mu + rng.normal(size=(n_query, dim))
    v = 0.01 * rng.normal(size=(n_query, dim))
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    reference = np.concatenate([mu + rng.normal(size=(200, dim)), query + v, query + v @ rotation.T])
    return reference, query


def test_near_ties_inside_the_rounding_bound_are_re_ranked(monkeypatch):
    """With the bound, every near tie goes to the exact re-rank and matches brute force; with the
    bound switched off (ROUNDING_TOL = 0) the rotated frame's rounding mis-ranks some of them:
    this is the failure mode the certificate detects."""
    rng = np.random.default_rng(10)
    problems = [near_tie_problem(rng) for _ in range(20)]
    for reference, query in problems:
        assert check_exact(reference, query)["tie"] == len(query)
    monkeypatch.setattr(distance, "ROUNDING_TOL", 0.0)
    wrong = sum(int(np.sum(NearestNeighbourIndex(r).query(q) != brute_nearest(r, q))) for r, q in problems)
    assert wrong > 0


# --------------------------------------------------------------------------- head, persistence
def test_pca_is_the_default_and_agrees_with_the_kdtree_sigma():
    rng = np.random.default_rng(11)
    draw = low_rank(rng)
    train, val, test = draw(3000), draw(300), draw(250)
    errors = 0.05 * np.linalg.norm(rng.normal(size=(300, 3)), axis=1)
    assert DistanceHead().settings["search"] == "pca" and LatentDistance().search == "pca"
    fitted = {s: LatentDistance(search=s).fit_reference(train, np.full(3000, 3))
              .fit_weights(val, np.full(300, 3), errors) for s in ("pca", "kdtree")}
    np.testing.assert_array_equal(fitted["pca"].sigma(test, np.full(250, 3)),
                                  fitted["kdtree"].sigma(test, np.full(250, 3)))
    clone = LatentDistance().set_state(fitted["pca"].state())
    np.testing.assert_array_equal(clone.sigma(test, np.full(250, 3)), fitted["pca"].sigma(test, np.full(250, 3)))


@pytest.mark.parametrize("search", ["pca", "kdtree"])
def test_saved_head_loads_with_its_search(tmp_path, search):
    """A head saved with either search (``"kdtree"``: heads saved before issue 11) loads through
    ``load_head`` with that search and gives the same σ."""
    rng = np.random.default_rng(12)
    draw = low_rank(rng)
    head = DistanceHead(search=search)
    head.model_.fit_reference(draw(1000), np.full(1000, 3))
    head.potential_ = object()
    head.sigma_bound_ = 1.0
    head.save(tmp_path / "head")
    loaded = load_head(tmp_path / "head", potential=object())
    assert isinstance(loaded, DistanceHead) and loaded.settings["search"] == search
    assert loaded.model_.index_[3].method == search
    query = draw(100)
    np.testing.assert_array_equal(loaded.model_.sigma(query, np.full(100, 3)),
                                  head.model_.sigma(query, np.full(100, 3)))
