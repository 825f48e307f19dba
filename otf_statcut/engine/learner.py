"""The learning half of the loop: data set, NequIP potential, uncertainty head, cutoffs.

A :class:`Learner` holds the labelled frames (train / validation), the potential, the fitted
head and the current :class:`~otf_statcut.stats.CutoffSet`. :meth:`Learner.fit` trains (warm
start or from scratch), refits the head on the new model and refits both cutoffs on the
validation frames; :meth:`Learner.add` puts a new label in the data set. Everything that
happened is appended to :attr:`Learner.events`, which a recorder drains into the run log; the
learner itself writes no log.

How N (the sampling-set size of the minimum cutoff, CDF = 1 - 1/N) is set: N is the number of
per-atom σ values the run screens. :func:`sampling_size` turns the ``cutoffs.n`` policy into a
function of the current step:

* ``"run"`` (default): ``total_steps × n_atoms`` for the whole run;
* ``"remaining"``: ``(total_steps - step) × n_atoms``, at least ``n_atoms``;
* an integer: that N.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ..errors import DataError, FitError, UserError

__all__ = ["Learner", "ModelRecord", "sampling_size", "validation_turn"]

log = logging.getLogger("otf_statcut.engine")


def sampling_size(policy: int | str, total_steps: int, n_atoms: int) -> Callable[[int], int]:
    """N as a function of the current MD step (see the module notes).

    Parameters
    ----------
    policy : "run", "remaining" or int
    total_steps : int
        MD steps of the whole run.
    n_atoms : int
        Atoms screened per step.
    """
    if isinstance(policy, str):
        if policy == "run":
            n = max(2, int(total_steps) * int(n_atoms))
            return lambda step: n
        if policy == "remaining":
            return lambda step: max(2, max(int(total_steps) - int(step), 1) * int(n_atoms))
        raise ValueError(f"unknown N policy {policy!r}; use 'run', 'remaining' or an integer")
    n = int(policy)
    if n < 2:
        raise ValueError(f"N must be >= 2, got {n}")
    return lambda step: n


def validation_turn(index: int, fraction: float) -> bool:
    """Whether the ``index``-th new label (0-based) goes to validation.

    Deterministic and spread evenly: label ``i`` validates when ``floor((i+1) f) > floor(i f)``,
    so any prefix of the labels has ``round-down(count × f)`` validation frames and a resumed
    run continues the same pattern.
    """
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


@dataclass
class ModelRecord:
    """One trained model: a row of the run log's ``/models`` table.

    Validation metrics: ``val_force_mae`` and ``val_force_rmse`` over force components (eV/Å),
    ``val_energy_mae`` per atom (eV/atom), ``head_nll`` the head's calibrated Maxwell NLL.
    """

    model: int
    step: int
    reason: str
    warm_start: bool
    n_train: int
    n_val: int
    epochs: int
    train_time_s: float
    head_time_s: float
    val_force_mae: float
    val_force_rmse: float
    val_energy_mae: float
    head_nll: float
    path: str = ""

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Learner:
    """Data set + potential + head + cutoffs, refitted together.

    Parameters
    ----------
    potential : NequIPPotential
        Trained or freshly built potential (see :meth:`initial`).
    head_factory : callable
        Returns a new, unfitted :class:`~otf_statcut.uq.UncertaintyHead` (called for the first fit
        and for every cold retrain; a warm retrain refits the current head in place).
    train_config, retrain_config : TrainConfig
        Training of the first model, and of later retrains.
    n_sampling : callable
        ``step -> N`` (:func:`sampling_size`).
    max_error : float
        Error bound (eV/Å) mapped onto the uncertainty scale as the maximum cutoff.
    candidates : sequence of str
        Families for the uncertainty fit.
    robust : bool
        Trimmed fits.
    retrain_every : int
        New labels between retrains.
    warm_start : bool
        Retrain from the current weights (True) or from scratch.
    val_fraction : float
        Fraction of new labels put into validation (:func:`validation_turn`).
    model_dir : Path or None
        Where each model (potential + head) is saved as ``<model_dir>/<id:04d>``; None: not saved.
    """

    potential: Any
    head_factory: Callable[[], Any]
    train_config: Any
    retrain_config: Any
    n_sampling: Callable[[int], int]
    max_error: float = 1.0
    candidates: Sequence[str] = ("maxwell", "gamma", "gengamma")
    robust: bool = False
    retrain_every: int = 10
    warm_start: bool = True
    val_fraction: float = 0.25
    model_dir: Path | None = None
    frames: list = field(default_factory=list)
    splits: list = field(default_factory=list)
    head: Any = None
    cutoffs: Any = None
    model_id: int = -1
    n_labels: int = 0
    labels_since_retrain: int = 0
    events: list = field(default_factory=list)

    # --- construction from Python ---------------------------------------------------------
    @classmethod
    def from_frames(cls, frames: Sequence[Atoms], *, n: int, model=None, head: str = "ensemble",
                    head_settings: dict | None = None, train=None, retrain=None, val_fraction: float = 0.25,
                    seed: int = 0, **kwargs) -> Learner:
        """Split labelled frames, train the first model, fit head and cutoffs: a ready learner.

        Parameters
        ----------
        frames : sequence of Atoms
            Labelled frames (energy, forces[, stress]); at least 2.
        n : int
            N of the minimum cutoff: the number of per-atom σ values the run will screen,
            typically ``steps * len(atoms)``.
        model : ModelConfig, optional
            Default: ``ModelConfig(species=<species of the frames>)``.
        head : str
            Uncertainty head by registry name (``make_head``); ``head_settings`` its arguments.
        train, retrain : TrainConfig, optional
            Training of the first model and of retraining (default ``TrainConfig()`` / ``train``).
        val_fraction : float
            Validation fraction of ``frames`` and of later labels.
        seed : int
            Seed of the split.
        **kwargs
            Further :class:`Learner` fields (``max_error``, ``candidates``, ``robust``,
            ``retrain_every``, ``warm_start``, ``model_dir``).
        """
        from ..data import species_of, train_val_split
        from ..mlip import ModelConfig, NequIPPotential, TrainConfig
        from ..uq import make_head

        frames = list(frames)
        model = model or ModelConfig(species=tuple(sorted(species_of(frames))))
        train = train or TrainConfig()
        settings = dict(head_settings or {})
        splits = np.zeros(len(frames), dtype=int)
        _, val = train_val_split(list(range(len(frames))), val_fraction, seed=seed)
        splits[val] = 1
        potential = NequIPPotential.build(model, [f for f, s in zip(frames, splits) if s == 0])
        learner = cls(potential=potential, head_factory=lambda: make_head(head, **settings),
                      train_config=train, retrain_config=retrain or train,
                      n_sampling=sampling_size(int(n), 1, 1),
                      val_fraction=val_fraction, **kwargs)
        learner.extend_initial(frames, splits)
        learner.fit(step=-1, reason="initial", first=True)
        return learner

    # --- the data set ----------------------------------------------------------------------
    @property
    def train_frames(self) -> list[Atoms]:
        return [f for f, s in zip(self.frames, self.splits) if s == 0]

    @property
    def val_frames(self) -> list[Atoms]:
        return [f for f, s in zip(self.frames, self.splits) if s == 1]

    def extend_initial(self, frames: Sequence[Atoms], splits: Sequence[int], *, record: bool = True,
                       labeler: Any = "") -> None:
        """Add the initial frames with their splits (0 train, 1 validation)."""
        for frame, split in zip(frames, splits, strict=True):
            self.frames.append(frame)
            self.splits.append(int(split))
            if record:
                self.events.append(("frame", frame, {"step": -1, "reason": "initial", "split": int(split),
                                                     "labeler": labeler}))

    def add(self, frame: Atoms, *, step: int, reason: str, max_sigma: float = float("nan"),
            labeler: Any = "", record: bool = True) -> int:
        """Add a new label; returns its split (0 train, 1 validation)."""
        split = int(validation_turn(self.n_labels, self.val_fraction))
        self.frames.append(frame)
        self.splits.append(split)
        self.n_labels += 1
        self.labels_since_retrain += 1
        if record:
            self.events.append(("frame", frame, {"step": int(step), "reason": reason, "split": split,
                                                 "max_sigma": float(max_sigma), "labeler": labeler}))
        return split

    def count_reused_label(self) -> None:
        """A configuration already in the data set was selected again (e.g. after a resume):
        it counts towards the retrain policy but is not stored twice."""
        self.labels_since_retrain += 1

    @property
    def retrain_due(self) -> bool:
        return self.labels_since_retrain >= self.retrain_every

    # --- fitting -----------------------------------------------------------------------------
    def fit(self, *, step: int, reason: str, warm_start: bool | None = None,
            first: bool = False) -> ModelRecord:
        """Train the potential, refit the head and both cutoffs; returns the model's record.

        Parameters
        ----------
        step : int
            MD step (-1 before the MD starts); sets N under the ``remaining`` policy.
        reason : str
            ``initial``, ``every`` (label count reached) or ``halt`` (maximum-cutoff event).
        warm_start : bool, optional
            Defaults to the learner's setting (always from scratch for the first model).
        first : bool
            Use ``train_config`` (the first fit) instead of ``retrain_config``.

        Raises
        ------
        DataError
            Too few frames to train or validate on.
        FitError
            The cutoff fits failed (before any cutoffs exist; later failures keep the old ones).
        """
        train, val = self.train_frames, self.val_frames
        if not train or not val:
            raise DataError(f"training needs at least one training and one validation frame "
                            f"(have {len(train)} and {len(val)}); label more initial structures")
        warm = self.warm_start if warm_start is None else warm_start
        config = self.train_config if first else self.retrain_config
        start = time.perf_counter()
        self.potential.fit(train, val, train_config=config, warm_start=warm and not first)
        train_time = time.perf_counter() - start
        start = time.perf_counter()
        # A warm retrain refits the same head object, so heads that can continue (the ensemble's
        # members) do; a cold one starts from a new, unfitted head.
        head = self.head if (warm and not first and self.head is not None) else self.head_factory()
        needs = bool(getattr(head, "needs_features", True))
        train_pred = self.potential.predict(train, stress=False, features=needs)
        val_pred = self.potential.predict(val, stress=False, features=needs)
        head.fit(self.potential, train, val, train_predictions=train_pred, val_predictions=val_pred)
        self.head = head
        errors = _error_magnitudes(val, val_pred)
        sigmas = np.concatenate(head.predict(val, val_pred))
        self.model_id += 1
        record = ModelRecord(
            model=self.model_id, step=int(step), reason=reason, warm_start=bool(warm and not first),
            n_train=len(train), n_val=len(val),
            epochs=len(self.potential.history.epochs) if self.potential.history else 0,
            train_time_s=train_time, head_time_s=math.nan, val_force_mae=_component_mae(val, val_pred),
            val_force_rmse=float(np.sqrt(np.mean(errors ** 2) / 3.0)),
            val_energy_mae=_energy_mae(val, val_pred),
            head_nll=float(getattr(head, "nll_calibrated_", math.nan)),
        )
        self._refit_cutoffs(errors, sigmas, step)
        record.head_time_s = time.perf_counter() - start
        if self.model_dir is not None:
            record.path = self.save_model(self.model_dir)
        self.labels_since_retrain = 0
        self.events.append(("model", record.row()))
        return record

    def _refit_cutoffs(self, errors: np.ndarray, sigmas: np.ndarray, step: int) -> None:
        from ..stats import statistical_cutoffs

        n = self.n_sampling(max(step, 0))
        try:
            cutoffs = statistical_cutoffs(errors, sigmas, n, max_error=self.max_error,
                                          candidates=tuple(self.candidates), robust=self.robust)
        except (FitError, DataError, UserError) as exc:
            if self.cutoffs is None:
                raise FitError(f"cutoff fit on {errors.size} validation atoms failed: {exc}; "
                               "label more initial structures (initial_data.rattled)") from exc
            log.warning("cutoff refit failed at step %s (%s); keeping the previous cutoffs", step, exc)
            self.events.append(("failure", {"step": int(step), "reason": "cutoffs", "message": str(exc)}))
            self.events.append(("cutoffs", self.cutoffs, {"model": self.model_id, "step": int(step)}))
            return
        self.cutoffs = cutoffs
        self.events.append(("cutoffs", cutoffs, {"model": self.model_id, "step": int(step)}))

    # --- prediction ----------------------------------------------------------------------------
    def sigma(self, atoms: Atoms, prediction) -> np.ndarray:
        """Per-atom σ (eV/Å) of one configuration from the potential's prediction for it."""
        return np.asarray(self.head.predict([atoms], [prediction])[0], dtype=float)

    # --- persistence ---------------------------------------------------------------------------
    def save_model(self, model_dir: Path) -> str:
        """Save potential and head as ``<model_dir>/<model_id:04d>/{potential,head}``; returns the
        folder relative to ``model_dir.parent``."""
        folder = Path(model_dir) / f"{self.model_id:04d}"
        self.potential.save(folder / "potential")
        self.head.save(folder / "head")
        return str(folder.relative_to(Path(model_dir).parent))


def _error_magnitudes(frames: Sequence[Atoms], predictions) -> np.ndarray:
    from ..stats import force_error_magnitudes

    return np.concatenate([force_error_magnitudes(p.forces, f.calc.results["forces"])
                           for f, p in zip(frames, predictions, strict=True)])


def _component_mae(frames: Sequence[Atoms], predictions) -> float:
    """Mean absolute force-component error, eV/Å."""
    return float(np.mean(np.concatenate([np.abs(p.forces - f.calc.results["forces"]).ravel()
                                         for f, p in zip(frames, predictions, strict=True)])))


def _energy_mae(frames: Sequence[Atoms], predictions) -> float:
    diffs = [abs(p.energy - f.calc.results["energy"]) / len(f)
             for f, p in zip(frames, predictions, strict=True)]
    return float(np.mean(diffs)) if diffs else math.nan
