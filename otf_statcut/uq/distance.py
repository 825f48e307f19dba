"""Latent-distance uncertainty (Janet et al. 2019, as adapted in the paper's SI 2.3).

For an atom with latent feature vector ``x`` (the potential's invariant node features), let
``y`` be the nearest training latent vector of the same element (Euclidean distance) and
``d_i = |x_i − y_i|`` the componentwise absolute difference. Then

.. math::  σ = σ_0 + \\sum_i |σ_i d_i|, \\qquad σ_0, σ_i ≥ 0,

with ``σ_0`` and the ``σ_i`` fitted per element by minimising the Maxwell negative
log-likelihood of the validation force-error magnitudes (validation atoms are not in the
training set, so their distances are informative; training atoms have ``d = 0``).

Bound. σ grows linearly with the latent distance, without limit: a configuration whose
features lie far outside the training set (or a diverging potential) gets an arbitrarily large
σ. The weights are calibrated on the validation atoms only, so the linear law is supported up to
the farthest of them; σ is capped per element at ``FAR_FACTOR`` (10) times the largest σ of that
element's validation atoms (``LatentDistance.bound_``, the head's ``sigma_bound_`` is the
largest): one decade of extrapolation in latent distance, beyond which any atom is already far
above the minimum cutoff fitted to those validation σ (``otf_statcut.uq.base``, "Bounded σ").

Nearest neighbours (issue 11: the search grows with the training set). ``search="pca"``, the
default, is exact and works in three routes:

1. *Tree.* The finite reference vectors are centred and rotated onto their principal axes
   (eigenvectors of the covariance of at most 65 536 evenly spaced rows; a rotation keeps every
   distance, so which rows does not matter for exactness) and stored in the order of the leaves
   of a ``scipy.spatial.cKDTree`` built on them. A query asks the tree for its two nearest
   rotated vectors. Latents are nearly low-rank (issue 11: 96 % of the variance on one principal
   axis, 99.8 % on four); in the input frame every axis mixes the dominant directions, so the
   tree's axis-aligned cuts separate little and a query opens many cells; in the principal frame
   the cuts fall along the spread. Rounding in the rotated frame is bounded by ``ROUNDING_TOL``
   (a distance differs from the one computed in the input frame by at most
   ``ROUNDING_TOL·(|x| + max|y|)``; measured, three decades less at least): when the second is
   farther than the first by more than twice that bound, the first is the exact nearest.
2. *Tie.* Otherwise (exact duplicates, ties, near ties inside the rounding bound) every vector
   within the first's distance plus the bound is fetched from the tree and re-ranked exactly in
   the input frame. ``tests/test_uq_distance_scale.py`` shows such near ties are mis-ranked by
   the rotated frame alone.
3. *Scan.* A query whose nearest vector is farther than ``SCAN_RADIUS`` (0.3) RMS radii of the
   set is not searched by the tree (its cost climbs steeply with the distance: 250 queries one
   RMS radius from 10^5 synthetic latents took 1.3 s in the input-frame tree, 17× a NequIP
   call) but by a blocked linear scan (one float64 matrix product per block), whose
   candidates within its rounding band are re-ranked exactly.

The result is what ``np.argmin`` of the float64 squared distances gives: the lowest index among
equal distances. ``NearestNeighbourIndex.routes_`` counts the queries per route.

Why this one (``benchmarks/bench_distance_head.py``, ``benchmarks/results/distance_head.json``:
``1 + head predict / plain call`` for 250 query atoms against a plain 250-atom NequIP call, CPU
time, 2 shared cores under load). At 10^5 bank vectors: 1.15× on the latents of a trained
NequIP model (the input-frame tree: 1.32×), 1.29–1.35× on synthetic latents with the issue's
spectrum (input frame: 2.5–2.9×); at 10^6 synthetic vectors 1.9–2.3× (7.0–11.5×). The cost
grows as bank^0.28 on the model's latents and bank^0.48–0.57 on the synthetic ones (input
frame: 0.53 and 0.77–0.88); 250 queries one RMS radius from 10^5 vectors cost 5.8× (84×).
Building the index costs about twice the input-frame tree (two tree builds; 7.6 s against
2.6 s for 10^6 vectors, loaded).

Measured and not chosen: a tree on 4–8 principal axes plus the norm of the rest (a lower bound
of the distance, certified with an exact re-rank of 4–8 candidates, the full search for the
rest) was at best 10–20 % faster (latents; the tail-0.6 synthetic bank with 8 axes) and up to
40 % slower (flat tail): the residual keeps the bound loose (with 4 axes and 4 candidates, 92 %
of the queries were certified on latents, 4–15 % on the synthetic banks). An exact flat scan
(``"brute"``; a vector-search library's flat index does the same arithmetic) is linear in N,
~5× a NequIP call at 10^5; graph or inverted-file indexes (faiss HNSW/IVF) give no bound on
the neighbour they miss, and a capped representative bank changes the distance the weights were
fitted on. Reusing the previous MD step's neighbours is exact only when the latents move less
than their nearest-neighbour gap: they move more (0.012 per 2 fs step against a median nearest
distance of 0.008 in a 400 K run).

``search="kdtree"`` is the tree in the input frame (the search before issue 11, kept for heads
saved with it); ``search="brute"`` the blocked float32 scan in torch (one matrix product per
block, ``|y|² − 2 x·y``, bounded memory). The chosen neighbour's differences are computed in
float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..errors import ConfigError, DataError
from .base import (
    FAR_FACTOR,
    UncertaintyHead,
    element_groups,
    features_of,
    maxwell_nll_torch,
    maxwell_scale,
    missing_element_error,
    split,
)

#: Largest number of query × reference scores held in memory at once (float32: 64 MiB).
BLOCK_ELEMENTS = 1 << 24
#: ``"pca"`` search: relative rounding tolerance ``t``. With ``s = |x| + max_y |y|`` (which bounds
#: every norm involved), a distance computed in the rotated frame is within ``t·s`` of the one
#: computed in the input frame (as brute force computes it) and a squared distance of the linear
#: scan within ``3·t·s²`` (float64 rounding of the centring, rotation and sums of either is
#: ~1e-14·s for F ≤ 100, four decades below); every decision closer than that goes to an exact
#: re-rank in the input frame.
ROUNDING_TOL = 1e-10
#: ``"pca"`` search: queries whose nearest vector lies farther than this many RMS radii of the
#: reference set (its centred vectors' root-mean-square norm) go to the linear scan instead of
#: the tree (the tree's cost climbs with the distance; module notes, "Nearest neighbours").
SCAN_RADIUS = 0.3
#: ``"pca"`` search: query × reference scores per block of the linear scan (float64: 2 MiB,
#: cache-sized).
SCAN_BLOCK_ELEMENTS = 1 << 18


def _lowest_nearest(query_rows: np.ndarray, candidates: np.ndarray, sq_dist: np.ndarray,
                    n: int) -> np.ndarray:
    """For each of ``n`` queries, the candidate with the smallest squared distance, the lowest
    index among equal ones (``np.argmin`` on the brute-force distances picks the same)."""
    order = np.lexsort((candidates, sq_dist, query_rows))
    rows = query_rows[order]
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    best = np.full(n, -1, dtype=np.int64)
    best[rows[first]] = candidates[order][first]
    return best


_BLAS = None


def _single_threaded_blas():
    """Context in which the BLAS numpy uses runs on one thread (``threadpoolctl``)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class NearestNeighbourIndex:
    """Euclidean nearest neighbour over a fixed set of reference vectors.

    Parameters
    ----------
    reference : array_like, shape (N, F)
        Reference vectors (training latent features of one element).
    method : {"pca", "kdtree", "brute"}
        ``"pca"`` (default): a KD-tree on the reference vectors expressed in their principal
        axes (an orthogonal change of frame, so distances are unchanged), with every near tie
        re-ranked exactly in the input frame and queries far from the set sent to a blocked
        linear scan (module notes, "Nearest neighbours"). Exact: the index returned is the one
        ``np.argmin`` of the float64 squared distances ``((x − y)**2).sum()`` gives, the lowest
        index among equal distances. Non-finite reference rows are never returned.
        ``"kdtree"``: ``scipy.spatial.cKDTree`` on the vectors as given, exact in float64 (among
        exact ties, any); slow where latents are nearly low-rank and for queries far from the
        set. ``"brute"``: blocked torch matrix products ``|y|² − 2 x·y`` in float32, linear in N
        whatever the data; the nearest vector is exact up to float32 rounding (near ties may
        pick a neighbour a rounding error farther).
    block_elements : int
        ``"brute"`` and the linear scan of ``"pca"``: at most this many query-reference scores
        are held at once.

    Attributes
    ----------
    routes_ : dict
        ``"pca"`` only: how many queries were answered by the tree alone (``"tree"``), by an
        exact re-rank of a near tie (``"tie"``) and by the linear scan (``"scan"``), since the
        index was built.
    """

    METHODS = ("pca", "kdtree", "brute")

    def __init__(self, reference: np.ndarray, method: str = "pca", block_elements: int = BLOCK_ELEMENTS) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or ref.shape[0] == 0:
            raise DataError(f"nearest-neighbour reference must be a non-empty (N, F) array, got {ref.shape}")
        if method not in self.METHODS:
            raise ConfigError(f"distance head: key 'search' is {method!r}, expected one of {list(self.METHODS)}")
        self.reference = ref
        self.method = method
        self.block_elements = int(block_elements)
        if method == "pca":
            self._build_pca(ref)
        elif method == "kdtree":
            self._tree = cKDTree(ref)
        else:
            self._ref32 = torch.as_tensor(ref, dtype=torch.float32)
            self._ref_sq = (self._ref32 * self._ref32).sum(dim=1)

    def __len__(self) -> int:
        return self.reference.shape[0]

    def query(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest reference vector for each row of ``x`` (shape (n,))."""
        if self.method == "pca":
            return self._query_pca(np.asarray(x, dtype=np.float64))
        if self.method == "kdtree":
            return self._tree.query(np.asarray(x, dtype=np.float64), k=1)[1]
        return self._query_brute(np.asarray(x))

    # ---------------------------------------------------------------- "pca"
    def _build_pca(self, ref: np.ndarray) -> None:
        finite = np.isfinite(ref).all(axis=1)
        if not finite.any():
            raise DataError("nearest-neighbour reference has no finite vector")
        rows = np.flatnonzero(finite)
        kept = ref if finite.all() else ref[rows]
        self._mean = kept.mean(axis=0)
        centred = kept - self._mean
        # principal axes from at most 65 536 evenly spaced rows: any orthonormal basis keeps the
        # search exact; the axes only have to line the tree's cuts up with the spread
        sample = centred[:: max(1, len(centred) // 65536)]
        _, vectors = np.linalg.eigh(sample.T @ sample)
        self._basis = np.ascontiguousarray(vectors[:, ::-1])
        rotated = centred @ self._basis
        # rows stored in the order of the tree's leaves, so that a leaf is one stretch of memory
        order = cKDTree(rotated).indices
        rotated = np.ascontiguousarray(rotated[order])
        self._rows = rows[order]  # tree row -> reference row
        rotated_sq = np.einsum("ij,ij->i", rotated, rotated)
        self._half_sq = 0.5 * rotated_sq
        self._max_norm = float(np.sqrt(np.einsum("ij,ij->i", kept, kept).max()))
        self._scan_radius = SCAN_RADIUS * float(np.sqrt(rotated_sq.mean()))
        self._tree = cKDTree(rotated)  # keeps ``rotated`` as its data, no copy
        self.routes_ = {"tree": 0, "tie": 0, "scan": 0}

    def _exact_sq(self, x: np.ndarray, query_rows: np.ndarray, ref_rows: np.ndarray) -> np.ndarray:
        """Squared distances, as ``np.argmin`` on brute force computes them, in the input frame."""
        diff = x[query_rows] - self.reference[ref_rows]
        return (diff * diff).sum(axis=1)

    def _query_pca(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.isfinite(x).all():
            raise DataError("nearest-neighbour query vectors must be finite "
                            "(differences() gives NaN rows for those that are not)")
        rotated = (x - self._mean) @ self._basis
        scale = np.sqrt(np.einsum("ij,ij->i", x, x)) + self._max_norm
        delta = ROUNDING_TOL * scale + np.finfo(np.float64).tiny
        # the nearest two in the rotated frame, among those closer than the scan radius; queries
        # taken in order along the main axis, so consecutive ones walk the same branches
        walk = np.argsort(rotated[:, 0], kind="stable")
        dist, idx = np.empty((n, 2)), np.empty((n, 2), dtype=np.int64)
        dist[walk], idx[walk] = self._tree.query(rotated[walk], k=2, distance_upper_bound=self._scan_radius)
        found = np.isfinite(dist[:, 0])
        # every other vector is at least this far in the rotated frame (≥ the radius if not found)
        second = np.minimum(dist[:, 1], self._scan_radius)
        # the rotated frame is exact to ±delta: a winner by more than 2 delta is the exact one
        sure = found & (second > dist[:, 0] + 2.0 * delta)
        tie = found & ~sure
        scan = ~found
        out = np.empty(n, dtype=np.int64)
        out[sure] = self._rows[idx[sure, 0]]
        if tie.any():
            out[tie] = self._rerank_ties(x, rotated, np.flatnonzero(tie), dist[tie, 0] + 3.0 * delta[tie])
        if scan.any():
            rows = np.flatnonzero(scan)
            out[rows] = self._scan(x[rows], rotated[rows], 3.0 * ROUNDING_TOL * scale[rows] ** 2)
        self.routes_["tree"] += int(sure.sum())
        self.routes_["tie"] += int(tie.sum())
        self.routes_["scan"] += int(scan.sum())
        return out

    def _rerank_ties(self, x: np.ndarray, rotated: np.ndarray, rows: np.ndarray,
                     radius: np.ndarray) -> np.ndarray:
        """Exact winner among every vector within ``radius`` (rotated frame) of each query: all
        that can be as near as the tree's pick once rounding is allowed for."""
        balls = self._tree.query_ball_point(rotated[rows], radius)
        counts = np.fromiter((len(b) for b in balls), dtype=np.int64, count=len(balls))
        local = np.repeat(np.arange(len(rows)), counts)
        tree_rows = np.fromiter((i for b in balls for i in b), dtype=np.int64, count=int(counts.sum()))
        ref_rows = self._rows[tree_rows]
        return _lowest_nearest(local, ref_rows, self._exact_sq(x, rows[local], ref_rows), len(rows))

    def _scan(self, x: np.ndarray, rotated: np.ndarray, tol_sq: np.ndarray) -> np.ndarray:
        """Exact nearest by a blocked linear scan in the rotated frame: ``g = |y|²/2 − q·y``
        (one matrix product per block; ``|q − y|² = |q|² + 2g``) keeps, per query, every vector
        whose squared distance is within ``2·tol_sq`` of the smallest; those are re-ranked
        exactly in the input frame. BLAS runs on one thread here: these products are small, and
        a threaded BLAS on a busy machine made them 20× slower."""
        data = self._tree.data
        m, n_ref = rotated.shape[0], data.shape[0]
        block = max(1, min(n_ref, SCAN_BLOCK_ELEMENTS // m, self.block_elements // m))
        best = np.full(m, np.inf)
        kept_q, kept_y, kept_g = [], [], []
        with _single_threaded_blas():
            for start in range(0, n_ref, block):
                g = rotated @ data[start:start + block].T
                np.subtract(self._half_sq[None, start:start + block], g, out=g)
                np.minimum(best, g.min(axis=1), out=best)
                qi, yi = np.nonzero(g <= (best + tol_sq)[:, None])
                kept_q.append(qi)
                kept_y.append(yi + start)
                kept_g.append(g[qi, yi])
        qi, yi, g = np.concatenate(kept_q), np.concatenate(kept_y), np.concatenate(kept_g)
        keep = g <= best[qi] + tol_sq[qi]
        qi, ref_rows = qi[keep], self._rows[yi[keep]]
        return _lowest_nearest(qi, ref_rows, self._exact_sq(x, qi, ref_rows), m)

    # ---------------------------------------------------------------- "brute"
    def _query_brute(self, x: np.ndarray) -> np.ndarray:
        q = torch.as_tensor(x, dtype=torch.float32)
        n, n_ref = q.shape[0], self._ref32.shape[0]
        ref_block = min(n_ref, self.block_elements)
        query_block = max(1, self.block_elements // ref_block)
        best = torch.empty(n, dtype=torch.long)
        with torch.no_grad():
            for qs in range(0, n, query_block):
                qb = q[qs:qs + query_block]
                best_val = torch.full((qb.shape[0],), float("inf"))
                best_idx = torch.zeros(qb.shape[0], dtype=torch.long)
                for rs in range(0, n_ref, ref_block):
                    # argmin_y |x − y|² = argmin_y (|y|² − 2 x·y)
                    scores = torch.addmm(self._ref_sq[rs:rs + ref_block].unsqueeze(0), qb,
                                         self._ref32[rs:rs + ref_block].T, alpha=-2.0)
                    val, idx = scores.min(dim=1)
                    better = val < best_val
                    best_val = torch.where(better, val, best_val)
                    best_idx = torch.where(better, idx + rs, best_idx)
                best[qs:qs + query_block] = best_idx
        return best.numpy()

    def differences(self, x: np.ndarray) -> np.ndarray:
        """Componentwise ``|x − nearest reference|`` in float64, shape (n, F); NaN rows for
        query vectors that are not finite (a diverged potential: the engine halts on NaN σ)."""
        x = np.asarray(x, dtype=np.float64)
        finite = np.isfinite(x).all(axis=1)
        if finite.all():
            return np.abs(x - self.reference[self.query(x)])
        out = np.full(x.shape, np.nan)
        if finite.any():
            out[finite] = np.abs(x[finite] - self.reference[self.query(x[finite])])
        return out


def _inv_softplus(y: float | np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y + np.log(-np.expm1(-y))


def fit_distance_weights(differences: np.ndarray, errors: np.ndarray, max_iter: int = 500
                         ) -> tuple[float, np.ndarray]:
    """Maxwell-NLL fit of ``σ = σ_0 + Σ_i σ_i d_i`` with ``σ_0, σ_i ≥ 0``.

    The parameters are ``σ_0 = a·softplus(θ_0)`` and ``σ_i = a·softplus(θ_i) / (F·mean d_i)``
    with ``a`` the Maxwell scale of the errors, so every θ is O(1) (a preconditioning for
    L-BFGS); they start at ``softplus(θ) = 1/2`` (σ ≈ a on average).

    Parameters
    ----------
    differences : array_like, shape (n, F)
        Componentwise distances ``d`` of held-out atoms to their nearest training neighbour.
    errors : array_like, shape (n,)
        The atoms' force-error magnitudes in eV/Å.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    sigma0 : float
        Baseline σ_0 in eV/Å.
    weights : ndarray, shape (F,)
        σ_i in eV/Å per unit of latent distance.
    """
    d = torch.as_tensor(np.asarray(differences), dtype=torch.float64)
    e = torch.as_tensor(np.asarray(errors), dtype=torch.float64).ravel()
    if d.ndim != 2 or d.shape[0] != e.shape[0] or e.numel() == 0:
        raise DataError(f"distance fit needs (n, F) differences and n errors, got {tuple(d.shape)} and {e.numel()}")
    n_features = d.shape[1]
    a = maxwell_scale(e.numpy())
    unit = a / (n_features * torch.clamp(d.mean(dim=0), min=1e-12))
    theta = torch.tensor(_inv_softplus(np.full(n_features + 1, 0.5)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def sigma(t: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.softplus(t)
        return a * w[0] + d @ (w[1:] * unit)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = maxwell_nll_torch(e, sigma(theta))
        loss.backward()
        return loss

    opt.step(closure)
    w = torch.nn.functional.softplus(theta.detach())
    return float(a * w[0]), (w[1:] * unit).numpy()


class LatentDistance:
    """Per-element latent-distance σ on arrays (no potential involved).

    Use :meth:`fit_reference` with the training latent features, then :meth:`fit_weights`
    with held-out features and their error magnitudes; :meth:`sigma` then gives σ (eV/Å), at
    most ``bound_[z]`` = ``FAR_FACTOR`` × the largest σ of element z's held-out atoms (module
    notes). Before :meth:`fit_weights`, σ is the unweighted L1 distance (σ_0 = 0, σ_i = 1) and
    unbounded.

    Parameters
    ----------
    max_iter : int
        L-BFGS iterations of the weight fit.
    search : {"pca", "kdtree", "brute"}
        Nearest-neighbour method (:class:`NearestNeighbourIndex`).
    """

    def __init__(self, max_iter: int = 500, search: str = "pca") -> None:
        self.max_iter = int(max_iter)
        self.search = search
        self.index_: dict[int, NearestNeighbourIndex] = {}
        self.sigma0_: dict[int, float] = {}
        self.weights_: dict[int, np.ndarray] = {}
        self.bound_: dict[int, float] = {}

    def fit_reference(self, features: np.ndarray, numbers: np.ndarray) -> LatentDistance:
        """Store the training latent vectors, per element; resets the weights to unit L1."""
        features = np.asarray(features)
        self.index_ = {z: NearestNeighbourIndex(features[idx], self.search)
                       for z, idx in element_groups(numbers).items()}
        n_features = features.shape[1]
        self.sigma0_ = {z: 0.0 for z in self.index_}
        self.weights_ = {z: np.ones(n_features) for z in self.index_}
        self.bound_ = {z: np.inf for z in self.index_}
        return self

    def differences(self, features: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Componentwise distance of each atom to its element's nearest training vector, (n, F)."""
        features = np.asarray(features)
        out = np.empty(features.shape, dtype=np.float64)
        for z, idx in element_groups(numbers).items():
            if z not in self.index_:
                raise missing_element_error(z, "latent-distance head")
            out[idx] = self.index_[z].differences(features[idx])
        return out

    def fit_weights(self, features: np.ndarray, numbers: np.ndarray, errors: np.ndarray) -> LatentDistance:
        """Fit σ_0, σ_i per element by Maxwell NLL on held-out atoms."""
        d = self.differences(features, numbers)
        errors = np.asarray(errors, dtype=np.float64).ravel()
        for z, idx in element_groups(numbers).items():
            self.sigma0_[z], self.weights_[z] = fit_distance_weights(d[idx], errors[idx], self.max_iter)
            held_out = self.sigma0_[z] + d[idx] @ self.weights_[z]
            self.bound_[z] = float(FAR_FACTOR * np.max(held_out))
        return self

    def sigma(self, features: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """σ = σ_0 + Σ_i σ_i d_i per atom (eV/Å once weights are fitted), shape (n,)."""
        d = self.differences(features, numbers)
        out = np.empty(d.shape[0], dtype=np.float64)
        for z, idx in element_groups(numbers).items():
            out[idx] = np.minimum(self.sigma0_[z] + d[idx] @ self.weights_[z], self.bound_.get(z, np.inf))
        return out

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict:
        """Tensors describing the fitted model (for torch.save / weights_only load)."""
        state = {}
        for z in self.index_:
            state[f"reference_{z}"] = torch.as_tensor(self.index_[z].reference)
            state[f"sigma0_{z}"] = torch.tensor(self.sigma0_[z], dtype=torch.float64)
            state[f"weights_{z}"] = torch.as_tensor(self.weights_[z], dtype=torch.float64)
            state[f"bound_{z}"] = torch.tensor(self.bound_.get(z, np.inf), dtype=torch.float64)
        return state

    def set_state(self, state: dict) -> LatentDistance:
        """Restore what :meth:`state` returned."""
        elements = sorted(int(k.split("_")[1]) for k in state if k.startswith("reference_"))
        self.index_ = {z: NearestNeighbourIndex(state[f"reference_{z}"].numpy(), self.search)
                       for z in elements}
        self.sigma0_ = {z: float(state[f"sigma0_{z}"]) for z in elements}
        self.weights_ = {z: state[f"weights_{z}"].numpy().copy() for z in elements}
        # heads saved before the bound existed have none: unbounded, as they were
        self.bound_ = {z: float(state[f"bound_{z}"]) if f"bound_{z}" in state else np.inf for z in elements}
        return self


def _concat_features(frames: Sequence, predictions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    feats = features_of(predictions)
    return np.concatenate(feats), np.concatenate([a.numbers for a in frames])


class DistanceHead(UncertaintyHead):
    """Latent-distance head: σ = σ_0 + Σ_i |σ_i d_i| on the potential's latent features.

    ``fit`` stores the training frames' latent features as the reference set and calibrates
    σ_0, σ_i (per element) by Maxwell NLL on the validation frames; the "uncalibrated" σ whose
    NLL is reported in ``nll_uncalibrated_`` is the plain L1 distance (σ_0 = 0, σ_i = 1).
    ``scale_`` stays 1. σ is capped per element at ten times the element's largest validation σ
    (``sigma_bound_`` is the largest of those caps; module notes, "Bound").

    Parameters
    ----------
    max_iter : int, default 500
        L-BFGS iterations of the Maxwell-NLL weight fit.
    search : {"pca", "kdtree", "brute"}, default "pca"
        Nearest-neighbour method (:class:`NearestNeighbourIndex`): ``"pca"`` and ``"kdtree"`` are
        exact, ``"pca"`` is the fast one (module notes, "Nearest neighbours").
    """

    name = "distance"
    needs_features = True

    def __init__(self, max_iter: int = 500, search: str = "pca") -> None:
        if search not in NearestNeighbourIndex.METHODS:
            raise ConfigError(f"distance head: key 'search' is {search!r}, "
                              f"expected one of {list(NearestNeighbourIndex.METHODS)}")
        super().__init__(max_iter=int(max_iter), search=search)
        self.model_ = LatentDistance(max_iter=int(max_iter), search=search)

    def _fit(self, train_frames, train_predictions, val_frames, val_predictions) -> None:
        self.model_.fit_reference(*_concat_features(train_frames, train_predictions))

    def _calibrate(self, errors, val_frames, val_predictions, raw) -> None:
        self.model_.fit_weights(*_concat_features(val_frames, val_predictions), errors)
        self.scale_ = 1.0

    def _raw_sigma(self, frames, predictions) -> list[np.ndarray]:
        sigma = self.model_.sigma(*_concat_features(frames, predictions))
        return split(sigma, frames)

    def _sigma_bound(self, val_frames, val_predictions) -> float:
        return max(self.model_.bound_.values(), default=np.inf)

    def _state(self, directory) -> dict:
        return self.model_.state()

    def _set_state(self, state, directory) -> None:
        self.model_.set_state(state)
