"""The learning half of the loop: data set, NequIP potential, uncertainty head, cutoffs.

A :class:`Learner` holds the labelled frames (train / validation), the potential, the fitted
head and the current cutoffs (a :class:`~otf_statcut.stats.CutoffSet`, or per-element
:class:`~otf_statcut.stats.element_cutoffs.ElementCutoffs`). :meth:`Learner.fit` runs the
project's one fit cycle (:func:`otf_statcut.fit_cycle.fit_cycle`: train, head, calibration,
cutoffs — the same function the benchmark uses); :meth:`Learner.add` puts a new label in the data
set, on the side the :class:`~otf_statcut.data.stratified.StratifiedSplitter` gives it (so
validation grows with the data, in batches of one, and covers every element and composition).
Everything that happened is appended to :attr:`Learner.events`, which a recorder drains into
the run log; the learner itself writes no log.

How N (the sampling-set size of the minimum cutoff, CDF = 1 - 1/N) is set: N is the number of
per-atom σ values the run screens, per element. :func:`sampling_size` turns the ``cutoffs.n``
policy into a function of the current step:

* ``"run"`` (default): ``total_steps × n_atoms of the element`` for the whole run;
* ``"remaining"``: ``(total_steps - step) × n_atoms of the element``, at least those atoms;
* an integer N: shared among the elements in proportion to their atoms.

With one global cutoff the N used is the sum over the elements.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ..data.stratified import StratifiedSplitter
from ..errors import FitError
from ..fit_cycle import CutoffSettings, element_counts, fit_cycle

__all__ = ["Learner", "ModelRecord", "sampling_size"]

log = logging.getLogger("otf_statcut.engine")


def sampling_size(policy: int | str, total_steps: int,
                  counts: Mapping[str, int] | int) -> Callable[[int], dict[str, int]]:
    """N per element as a function of the current MD step (see the module notes).

    Parameters
    ----------
    policy : "run", "remaining" or int
    total_steps : int
        MD steps of the whole run.
    counts : mapping of str to int
        Atoms of each element screened per step (an int: one pseudo-element ``"*"``).
    """
    if not isinstance(counts, Mapping):
        counts = {"*": int(counts)}
    counts = {str(k): int(v) for k, v in counts.items() if int(v) > 0}
    if isinstance(policy, str):
        if policy == "run":
            return SamplingSize({k: max(2, int(total_steps) * c) for k, c in counts.items()})
        if policy == "remaining":
            return SamplingSize(counts, remaining_of=int(total_steps))
        raise ValueError(f"unknown N policy {policy!r}; use 'run', 'remaining' or an integer")
    total = int(policy)
    if total < 2:
        raise ValueError(f"N must be >= 2, got {total}")
    atoms = sum(counts.values())
    return SamplingSize({k: max(2, round(total * c / atoms)) for k, c in counts.items()})


@dataclass(frozen=True)
class SamplingSize:
    """``step -> {element: N}`` (a class, not a closure, so that a learner pickles).

    Fixed ``n`` per element, or, with ``remaining_of`` set, ``n[k] * (remaining_of - step)``
    (at least 2): the σ values still to be screened in the rest of the run.
    """

    n: Mapping[str, int]
    remaining_of: int | None = None

    def __call__(self, step: int) -> dict[str, int]:
        if self.remaining_of is None:
            return dict(self.n)
        return {k: max(2, max(self.remaining_of - int(step), 1) * c) for k, c in self.n.items()}


@dataclass
class ModelRecord:
    """One trained model: a row of the run log's ``/models`` table.

    Validation metrics: ``val_force_mae`` and ``val_force_rmse`` over force components (eV/Å),
    ``val_energy_mae`` per atom (eV/atom), ``head_nll`` the head's calibrated Maxwell NLL.
    Did the retrain learn (:class:`~otf_statcut.fit_cycle.RetrainCheck`): ``best_epoch`` (0: the
    starting weights were kept), ``max_weight_change``, ``n_new`` frames since the previous model,
    their mean per-atom |ΔF| before and after training (``new_error_before``/``_after``, eV/Å),
    ``learned``; ``problem`` says what went wrong, if anything (e.g. unchanged weights, or a cutoff
    fit that failed and left the previous cutoffs in force).
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
    best_epoch: int = 0
    max_weight_change: float = math.nan
    n_new: int = 0
    new_error_before: float = math.nan
    new_error_after: float = math.nan
    learned: bool = True
    problem: str = ""
    path: str = ""

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Learner:
    """Data set + potential + head + cutoffs, refitted together.

    Parameters
    ----------
    potential : NequIPPotential
        Trained or freshly built potential (see :meth:`from_frames`).
    head_factory : callable
        Returns a new, unfitted :class:`~otf_statcut.uq.UncertaintyHead` (called for the first fit
        and for every cold retrain; a warm retrain refits the current head in place).
    train_config, retrain_config : TrainConfig
        Training of the first model, and of later retrains.
    n_sampling : callable
        ``step -> {element: N}`` (:func:`sampling_size`).
    max_error : float
        Error bound (eV/Å) mapped onto the uncertainty scale as the maximum cutoff.
    candidates : sequence of str
        Families for the uncertainty fit.
    robust : bool
        Trimmed fits.
    per_element : bool or None
        Per-element cutoffs; None (default): when the data set has more than one element.
    fit_options : dict
        Further keywords of the cutoff fits (e.g. ``ks_threshold``).
    retrain_every : int
        New labels between retrains.
    warm_start : bool
        Retrain from the current weights (True) or from scratch.
    val_fraction : float
        Target validation fraction of the data set (:class:`StratifiedSplitter`).
    model_dir : Path or None
        Where each model (potential + head) is saved as ``<model_dir>/<id:04d>``; None: not saved.
    """

    potential: Any
    head_factory: Callable[[], Any]
    train_config: Any
    retrain_config: Any
    n_sampling: Callable[[int], dict]
    max_error: float = 1.0
    candidates: Sequence[str] = ("maxwell", "gamma", "gengamma")
    robust: bool = False
    per_element: bool | None = None
    fit_options: dict = field(default_factory=dict)
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
    last_fit_size: int = 0

    # --- construction from Python ---------------------------------------------------------
    @classmethod
    def from_frames(cls, frames: Sequence[Atoms], *, n: int, model=None, head: str = "ensemble",
                    head_settings: dict | None = None, train=None, retrain=None, val_fraction: float = 0.25,
                    **kwargs) -> Learner:
        """Split labelled frames, train the first model, fit head and cutoffs: a ready learner.

        Parameters
        ----------
        frames : sequence of Atoms
            Labelled frames (energy, forces[, stress]); at least 2.
        n : int
            N of the minimum cutoff: the number of per-atom σ values the run will screen,
            typically ``steps * len(atoms)``; shared among the elements in proportion to their
            atoms in the first frame.
        model : ModelConfig, optional
            Default: ``ModelConfig(species=<species of the frames>)``.
        head : str
            Uncertainty head by registry name (``make_head``); ``head_settings`` its arguments.
        train, retrain : TrainConfig, optional
            Training of the first model and of retraining (default ``TrainConfig()`` / ``train``).
        val_fraction : float
            Validation fraction of the data set (stratified; see :class:`StratifiedSplitter`).
        **kwargs
            Further :class:`Learner` fields (``max_error``, ``candidates``, ``robust``,
            ``per_element``, ``retrain_every``, ``warm_start``, ``model_dir``).
        """
        from ..data import species_of
        from ..mlip import ModelConfig, NequIPPotential, TrainConfig
        from ..uq import make_head

        frames = list(frames)
        model = model or ModelConfig(species=tuple(sorted(species_of(frames))))
        train = train or TrainConfig()
        splits = StratifiedSplitter(val_fraction).assign_many(frames)
        potential = NequIPPotential.build(model, [f for f, s in zip(frames, splits) if s == 0])
        # functools.partial, not a lambda: the learner (and a calculator holding it) pickles.
        learner = cls(potential=potential, head_factory=functools.partial(make_head, head, **dict(head_settings or {})),
                      train_config=train, retrain_config=retrain or train,
                      n_sampling=sampling_size(int(n), 1, element_counts(frames[0])),
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

    @functools.cached_property
    def splitter(self) -> StratifiedSplitter:
        """The validation splitter, rebuilt from the data set on first use (e.g. after a resume)."""
        return StratifiedSplitter.from_frames(self.val_fraction, self.frames, self.splits)

    def extend_initial(self, frames: Sequence[Atoms], splits: Sequence[int], *, record: bool = True,
                       labeler: Any = "") -> None:
        """Add the initial frames with their splits (0 train, 1 validation)."""
        for frame, split in zip(frames, splits, strict=True):
            self.frames.append(frame)
            self.splits.append(int(split))
            if "splitter" in self.__dict__:
                self.splitter.record(frame, int(split))
            if record:
                self.events.append(("frame", frame, {"step": -1, "reason": "initial", "split": int(split),
                                                     "labeler": labeler}))

    def add(self, frame: Atoms, *, step: int, reason: str, max_sigma: float = float("nan"),
            labeler: Any = "", record: bool = True, walker: int | None = None) -> int:
        """Add a new label (of ``walker``'s step, in a many-walker run); returns its split
        (0 train, 1 validation)."""
        split = self.splitter.assign(frame)
        self.frames.append(frame)
        self.splits.append(split)
        self.n_labels += 1
        self.labels_since_retrain += 1
        if record:
            meta = {"step": int(step), "reason": reason, "split": split, "max_sigma": float(max_sigma),
                    "labeler": labeler}
            if walker is not None:
                meta["walker"] = int(walker)
            self.events.append(("frame", frame, meta))
        return split

    def count_reused_label(self) -> None:
        """A configuration already in the data set was selected again (e.g. after a resume):
        it counts towards the retrain policy but is not stored twice."""
        self.labels_since_retrain += 1

    @property
    def retrain_due(self) -> bool:
        return self.labels_since_retrain >= self.retrain_every

    @property
    def cutoff_settings(self) -> CutoffSettings:
        return CutoffSettings(max_error=self.max_error, candidates=tuple(self.candidates), robust=self.robust,
                              per_element=self.per_element, fit_options=dict(self.fit_options))

    # --- fitting -----------------------------------------------------------------------------
    def fit(self, *, step: int, reason: str, warm_start: bool | None = None,
            first: bool = False) -> ModelRecord:
        """One fit cycle (train, head, cutoffs) on the current data set; returns the model's record.

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
            The cutoff fits failed before any cutoffs exist (later failures keep the old ones and
            say so in the record and the failures table).
        """
        warm = bool((self.warm_start if warm_start is None else warm_start) and not first)
        config = self.train_config if first else self.retrain_config
        # A warm retrain refits the same head object, so heads that can continue (the ensemble's
        # members) do; a cold one starts from a new, unfitted head.
        head = self.head if (warm and self.head is not None) else self.head_factory()
        new = self.frames[self.last_fit_size:] if not first else []
        cycle = fit_cycle(self.potential, head, self.train_frames, self.val_frames, train_config=config,
                          warm_start=warm, n=self.n_sampling(max(step, 0)), settings=self.cutoff_settings,
                          new_frames=new)
        self.head = head
        self.last_fit_size = len(self.frames)
        self.model_id += 1
        check = cycle.retrain
        problems = [check.problem()] if check.problem() else []
        if cycle.cutoffs is None:
            if self.cutoffs is None:
                raise FitError(f"{cycle.cutoff_failure}; label more initial structures (initial_data.rattled)")
            log.warning("step %s: %s; keeping the previous cutoffs", step, cycle.cutoff_failure)
            problems.append(cycle.cutoff_failure + "; previous cutoffs kept")
            self.events.append(("failure", {"step": int(step), "reason": "cutoffs", "message": cycle.cutoff_failure}))
        else:
            self.cutoffs = cycle.cutoffs
        self.events.append(("cutoffs", self.cutoffs, {"model": self.model_id, "step": int(step)}))
        record = ModelRecord(
            model=self.model_id, step=int(step), reason=reason, warm_start=warm,
            n_train=len(cycle.train_predictions), n_val=len(cycle.val_predictions), epochs=check.epochs,
            train_time_s=cycle.train_time_s, head_time_s=cycle.head_time_s,
            val_force_mae=cycle.val_force_mae, val_force_rmse=cycle.val_force_rmse,
            val_energy_mae=cycle.val_energy_mae, head_nll=float(getattr(head, "nll_calibrated_", math.nan)),
            best_epoch=check.best_epoch, max_weight_change=check.max_weight_change, n_new=check.n_new,
            new_error_before=check.new_error_before, new_error_after=check.new_error_after,
            learned=check.learned, problem="; ".join(problems),
        )
        if self.model_dir is not None:
            record.path = self.save_model(self.model_dir)
        self.labels_since_retrain = 0
        self.events.append(("model", record.row()))
        return record

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
