"""Ensemble uncertainty (paper SI 2.1, eq. 1).

``n`` NequIP models that differ only in their initialisation seed predict forces ``f_{i,j}``
(component ``i``, member ``j``); the per-atom uncertainty is the norm of the per-component
standard deviations (population form, divided by ``n``, as in eq. 1),

.. math::  σ = A \\sqrt{\\sum_{i \\in xyz} \\frac{1}{n} \\sum_j (f_{i,j} - \\bar f_i)^2},

with ``A`` fitted by Maxwell NLL on validation errors.

Bound: σ needs no cap (``sigma_bound_ = inf``). The spread is at most the largest distance
between two members' force vectors, ``σ/A ≤ max_{j,k} |f_j − f_k|`` (the mean ``f̄`` lies in the
members' convex hull, so every ``|f_j − f̄|`` is at most that), so it is finite whenever the
members' forces are; a member with non-finite forces gives NaN, on which the engine halts.

Member 0 **is the given potential** (the one whose forces drive the MD); members ``1 … n−1`` are
copies built with the potential's :class:`~otf_statcut.mlip.ModelConfig` and seeds
``config.seed + k``, trained on the same frames with the head's own ``TrainConfig``. So ``n = 4``
trains 3 extra models, and ``predict`` with the potential's predictions given evaluates only
those 3.

Cost of a refit. A warm refit passes the frames new since the previous fit on to the members'
fits (``fit(..., new_frames=...)``), so they train on the new frames plus a replay sample (see
:class:`~otf_statcut.mlip.TrainConfig`), and the members share the potential's cached graphs.
The members' forces on the validation frames are computed once, right after their training, and
kept (keyed by each frame's geometry digest) until the next fit: calibration, the bound and the
fit cycle's σ on the validation frames all read them instead of evaluating the members again.
The head needs no predictions of the training frames (``needs_train_predictions = False``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..mlip.graphs import geometry_digest
from .base import UncertaintyHead

#: Sub-directory (with the member index appended) that holds each extra member in a saved head.
MEMBER_DIR = "member_"


def ensemble_spread(forces: np.ndarray) -> np.ndarray:
    """Norm of the per-component standard deviation across members (eq. 1 without ``A``).

    Parameters
    ----------
    forces : array_like, shape (n_members, n_atoms, 3)
        Each member's forces in eV/Å.

    Returns
    -------
    ndarray, shape (n_atoms,)
        ``sqrt(Σ_xyz var_members)`` in eV/Å (population variance); at most the largest distance
        between two members' force vectors, NaN for an atom with non-finite member forces.
    """
    forces = np.asarray(forces, dtype=np.float64)
    if forces.ndim != 3 or forces.shape[2] != 3 or forces.shape[0] < 2:
        raise ValueError(f"ensemble forces must have shape (n_members >= 2, n_atoms, 3), got {forces.shape}")
    with np.errstate(invalid="ignore"):  # non-finite member forces: NaN on purpose (the engine halts)
        return np.sqrt(np.sum(np.var(forces, axis=0), axis=1))


def _train_config(value):
    from ..mlip import TrainConfig

    if value is None:
        return TrainConfig()
    if isinstance(value, TrainConfig):
        return value
    if isinstance(value, dict):
        return TrainConfig.from_dict(value)
    raise ConfigError(f"ensemble head: key 'train_config' is {value!r}, expected a TrainConfig or a mapping")


class EnsembleHead(UncertaintyHead):
    """Ensemble of ``n_members`` NequIP models; member 0 is the given potential.

    Parameters
    ----------
    n_members : int, default 4
        Ensemble size including the potential itself (>= 2).
    train_config : TrainConfig or dict, optional
        How the extra members are trained (default ``TrainConfig()``).
    warm_start : bool, default True
        On a refit, continue training the existing extra members from their current weights;
        False starts them again from fresh seeded weights (``potential.copy(seed=...)``, which
        carries the potential's energy shift/scale and neighbour statistics).

    Attributes
    ----------
    members_ : list of NequIPPotential
        The extra members 1 … n−1.
    """

    name = "ensemble"
    #: The members are trained on the frames themselves; the potential's predictions of the
    #: training frames are not read (the fit cycle passes placeholders).
    needs_train_predictions = False

    def __init__(self, n_members: int = 4, train_config=None, warm_start: bool = True) -> None:
        if not isinstance(n_members, int) or isinstance(n_members, bool) or n_members < 2:
            raise ConfigError(f"ensemble head: key 'n_members' is {n_members!r}, expected an integer >= 2")
        if not isinstance(warm_start, bool):
            raise ConfigError(f"ensemble head: key 'warm_start' is {warm_start!r}, expected true or false")
        self.train_config = _train_config(train_config)
        super().__init__(n_members=n_members, warm_start=warm_start)
        self.members_: list = []
        self._new_frames = None
        #: geometry digest -> the extra members' forces (n_members - 1, n_atoms, 3) on the
        #: validation frames of the last fit
        self._memo: dict[bytes, np.ndarray] = {}
        #: how many frames the members were evaluated on since the last fit (diagnostics/tests)
        self.member_evaluations_ = 0

    def fit(self, potential, train_frames, val_frames, *, train_predictions=None, val_predictions=None,
            new_frames=None):
        """:meth:`UncertaintyHead.fit`, plus ``new_frames``: the frames new since the previous fit
        (passed on to the members' warm fits; None: each member works it out from its own last
        fit, see :meth:`NequIPPotential.fit`)."""
        self._new_frames = None if new_frames is None else list(new_frames)
        try:
            return super().fit(potential, train_frames, val_frames, train_predictions=train_predictions,
                               val_predictions=val_predictions)
        finally:
            self._new_frames = None

    def member_seeds(self, potential) -> list[int]:
        """Seeds of the extra members for ``potential``: ``config.seed + k``, k = 1 … n−1."""
        return [potential.config.seed + k for k in range(1, self.settings["n_members"])]

    def _compatible(self, potential) -> bool:
        from dataclasses import replace

        return len(self.members_) == self.settings["n_members"] - 1 and all(
            replace(m.config, seed=potential.config.seed) == potential.config for m in self.members_
        )

    def _fit(self, train_frames, train_predictions, val_frames, val_predictions) -> None:
        potential = self.potential_
        self._memo = {}
        self.member_evaluations_ = 0
        reuse = self.settings["warm_start"] and self._compatible(potential)
        if not reuse:
            self.members_ = [potential.copy(seed=s) for s in self.member_seeds(potential)]
        for member in self.members_:
            # warm_start=True keeps the member's current weights: the previous fit's (reuse) or,
            # for a fresh copy, its seeded random initialisation with the potential's statistics
            # (an untrained member trains with the cold settings, on every frame)
            member.fit(train_frames, val_frames, self.train_config, warm_start=True,
                       new_frames=self._new_frames if reuse else None)
        # the members' validation forces, once: calibration, bound and the caller's σ reuse them
        val_frames = list(val_frames)
        forces = self._evaluate_members(val_frames)
        self._memo = {geometry_digest(a): f for a, f in zip(val_frames, forces)}

    def _evaluate_members(self, frames) -> list[np.ndarray]:
        """Per frame, the extra members' forces stacked, shape (n_members - 1, n_atoms, 3)."""
        frames = list(frames)
        if not frames:
            return []
        from ..mlip.training import frozen_parameters

        self.member_evaluations_ += len(frames)
        others = []
        for member in self.members_:
            with frozen_parameters(member.model):
                others.append(member.predict(frames, stress=False, features=False))
        return [np.stack([o[i].forces for o in others]) for i in range(len(frames))]

    def member_forces(self, frames, predictions) -> list[np.ndarray]:
        """Per frame, the stacked forces of all members, shape (n_members, n_atoms, 3).

        Member 0's forces are taken from ``predictions``; the extra members' come from the
        validation forces kept at the last fit where the frame's geometry matches, and are
        computed otherwise."""
        frames = list(frames)
        found = [self._memo.get(geometry_digest(a)) if self._memo else None for a in frames]
        missing = [i for i, f in enumerate(found) if f is None]
        for i, forces in zip(missing, self._evaluate_members([frames[i] for i in missing])):
            found[i] = forces
        return [np.concatenate([np.asarray(p.forces)[None], f]) for p, f in zip(predictions, found)]

    def _raw_sigma(self, frames, predictions) -> list[np.ndarray]:
        return [ensemble_spread(f) for f in self.member_forces(frames, predictions)]

    def _json_settings(self) -> dict:
        return {**self.settings, "train_config": self.train_config.to_dict()}

    def _state(self, directory: Path) -> dict:
        for k, member in enumerate(self.members_, start=1):
            member.save(directory / f"{MEMBER_DIR}{k}")
        return {}

    def _set_state(self, state: dict, directory: Path) -> None:
        from ..mlip import NequIPPotential

        species = self.potential_.species if self.potential_ is not None else None
        self._memo = {}
        self.members_ = [NequIPPotential.load(directory / f"{MEMBER_DIR}{k}", species=species)
                         for k in range(1, self.settings["n_members"])]
