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

Nearest neighbours are found with a KD-tree (``scipy.spatial.cKDTree``, exact) by default, or
by blocked brute force in torch (one matrix product per block, ``|y|² − 2 x·y``, bounded memory,
linear cost); the chosen neighbour's differences are computed in float64. Latent features have a
low intrinsic dimension, where the tree is the faster of the two and grows sub-linearly with the
training set (``benchmarks/bench_heads.py`` measures both).
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


class NearestNeighbourIndex:
    """Euclidean nearest neighbour over a fixed set of reference vectors.

    Parameters
    ----------
    reference : array_like, shape (N, F)
        Reference vectors (training latent features of one element).
    method : {"kdtree", "brute"}
        ``"kdtree"``: ``scipy.spatial.cKDTree``, exact in float64; fast for latent features,
        whose intrinsic dimension is low (a few directions carry most of the variance), and
        sub-linear in N. ``"brute"``: blocked torch matrix products ``|y|² − 2 x·y`` in float32,
        linear in N whatever the data; the nearest vector is exact up to float32 rounding (near
        ties may pick a neighbour a rounding error farther).
    block_elements : int
        ``"brute"`` only: at most this many query-reference scores are held at once.
    """

    METHODS = ("kdtree", "brute")

    def __init__(self, reference: np.ndarray, method: str = "kdtree", block_elements: int = BLOCK_ELEMENTS) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or ref.shape[0] == 0:
            raise DataError(f"nearest-neighbour reference must be a non-empty (N, F) array, got {ref.shape}")
        if method not in self.METHODS:
            raise ConfigError(f"distance head: key 'search' is {method!r}, expected one of {list(self.METHODS)}")
        self.reference = ref
        self.method = method
        self.block_elements = int(block_elements)
        if method == "kdtree":
            self._tree = cKDTree(ref)
        else:
            self._ref32 = torch.as_tensor(ref, dtype=torch.float32)
            self._ref_sq = (self._ref32 * self._ref32).sum(dim=1)

    def __len__(self) -> int:
        return self.reference.shape[0]

    def query(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest reference vector for each row of ``x`` (shape (n,))."""
        if self.method == "kdtree":
            return self._tree.query(np.asarray(x, dtype=np.float64), k=1)[1]
        return self._query_brute(np.asarray(x))

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
    search : {"kdtree", "brute"}
        Nearest-neighbour method (:class:`NearestNeighbourIndex`).
    """

    def __init__(self, max_iter: int = 500, search: str = "kdtree") -> None:
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
    search : {"kdtree", "brute"}, default "kdtree"
        Nearest-neighbour method (:class:`NearestNeighbourIndex`).
    """

    name = "distance"
    needs_features = True

    def __init__(self, max_iter: int = 500, search: str = "kdtree") -> None:
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
