"""One fit cycle: train → head fit → calibration → cutoffs, shared by ``run`` and ``benchmark``.

Both the on-the-fly engine (:class:`~otf_statcut.engine.learner.Learner`) and the benchmark
protocol (:mod:`otf_statcut.benchmark.protocol`) call :func:`fit_cycle` after their data set
changed; neither trains, fits a head or fits cutoffs in any other way. One cycle:

1. **Errors on the new frames before training** (the frames labelled since the last fit, when
   the model is warm-started): the potential's mean per-atom |ΔF| on them.
2. **Train** the potential (warm start or from scratch) with its validation frames for model
   selection; the weights before and after are compared (``max_weight_change``).
3. **Errors on the new frames after training.** A warm retrain that left the weights unchanged,
   or that did not lower the error on the frames it was given, is recorded as such and logged as
   a warning: labels were paid for and the model did not learn from them.
4. **Head**: fitted on the training frames and calibrated (Maxwell NLL) on the validation frames.
5. **Cutoffs**: validation |ΔF| and σ per atom, globally or per element
   (:func:`~otf_statcut.stats.element_cutoffs.fit_cutoffs`) at the callers' N per element.

Force errors everywhere are :func:`otf_statcut.uq.base.error_magnitudes` (per atom
``|F_pred − F_ref|``, eV/Å), the one force-error function of the project.

Cost. A cycle's cost should not grow with the data set (issue 11): the potential's (and an
ensemble's members') warm retrain trains on the new frames plus a replay sample within its time
budget (:class:`~otf_statcut.mlip.TrainConfig`), graphs come from the graph cache, the trained
potential's predictions of the validation frames are computed once and shared by the retrain
check, the head's fit and calibration, and the cutoffs (an ensemble likewise evaluates its
members on them once). The training frames are predicted only when the head reads their
predictions (feature heads: GP, latent distance); otherwise ``CycleResult.train_predictions`` is a
:class:`LazyPredictions` that computes them, with the weights of this cycle, if read.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms

from .errors import DataError, FitError, UserError
from .stats.distributions import DEFAULT_CANDIDATES
from .stats.element_cutoffs import fit_cutoffs

__all__ = ["CutoffSettings", "RetrainCheck", "CycleResult", "LazyPredictions", "fit_cycle", "force_errors",
           "element_counts", "mean_error"]

log = logging.getLogger("otf_statcut.fit_cycle")


@dataclass(frozen=True)
class CutoffSettings:
    """How the cutoffs of a cycle are fitted.

    Attributes
    ----------
    max_error : float
        Error bound (eV/Å) mapped onto σ as the maximum cutoff.
    candidates : tuple of str
        Families tried for the σ fit.
    robust : bool
        Trimmed fits.
    per_element : bool or None
        Per-element cutoffs; None (auto): when the data hold more than one element.
    fit_options : dict
        Further keywords of :func:`~otf_statcut.stats.statistical_cutoffs` (e.g. ``ks_threshold``).
    """

    max_error: float = 1.0
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    robust: bool = False
    per_element: bool | None = None
    fit_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RetrainCheck:
    """Did a training call learn from the data it was given?

    Attributes
    ----------
    warm_start : bool
        Continued from the previous weights.
    epochs, best_epoch : int
        Epochs run and the epoch whose weights were kept (0: the starting weights).
    stop_reason : str
        Why training stopped.
    seconds : float
        Training wall time.
    max_weight_change : float
        Largest |Δw| over all weights between start and end (0: nothing changed).
    n_new : int
        Frames new since the previous fit (0 for a first fit).
    new_error_before, new_error_after : float
        Mean per-atom |ΔF| (eV/Å) on the new frames before and after training (NaN: none, or a
        cold start, where "before" is an untrained model).
    """

    warm_start: bool
    epochs: int
    best_epoch: int
    stop_reason: str
    seconds: float
    max_weight_change: float
    n_new: int
    new_error_before: float
    new_error_after: float

    @property
    def weights_changed(self) -> bool:
        return bool(self.max_weight_change > 0)

    @property
    def learned(self) -> bool:
        """Weights changed and, where measurable, the new frames' error went down."""
        if not self.weights_changed:
            return False
        if math.isnan(self.new_error_before) or math.isnan(self.new_error_after):
            return True
        return bool(self.new_error_after < self.new_error_before)

    def problem(self) -> str:
        """One line naming what went wrong, or ``""``."""
        if self.warm_start and not self.weights_changed:
            return "warm retrain returned the previous weights unchanged"
        if self.weights_changed and not self.learned:
            return (f"retrain did not lower the error on its {self.n_new} new frames "
                    f"({self.new_error_before:.4g} -> {self.new_error_after:.4g} eV/Å)")
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights_changed": self.weights_changed, "learned": self.learned}


@dataclass
class CycleResult:
    """What one :func:`fit_cycle` produced.

    Attributes
    ----------
    head : UncertaintyHead
        The fitted, calibrated head.
    train_predictions, val_predictions, extra_predictions : list of Prediction
        The trained potential's predictions (with latent features if the head needs them).
        ``train_predictions`` is a :class:`LazyPredictions` when the head did not need them.
    val_errors, val_sigma : ndarray
        Per validation atom |ΔF| and σ, eV/Å.
    val_symbols : ndarray of str
        Chemical symbol of each validation atom.
    cutoffs : CutoffSet or ElementCutoffs or None
        None when the cutoff fit failed (``cutoff_failure`` says why).
    retrain : RetrainCheck
    train_time_s, head_time_s : float
        Potential training; head fit + calibration + cutoffs.
    val_force_mae, val_force_rmse : float
        Validation force-component MAE and RMSE, eV/Å.
    val_energy_mae : float
        Validation energy MAE per atom, eV/atom.
    cutoff_failure : str
        Why the cutoff fit failed ("" when it did not).
    """

    head: Any
    train_predictions: list
    val_predictions: list
    extra_predictions: list
    val_errors: np.ndarray
    val_sigma: np.ndarray
    val_symbols: np.ndarray
    cutoffs: Any
    retrain: RetrainCheck
    train_time_s: float
    head_time_s: float
    val_force_mae: float
    val_force_rmse: float
    val_energy_mae: float
    cutoff_failure: str = ""


class LazyPredictions(Sequence):
    """Predictions of frames by a potential as its weights were when this object was made,
    computed on first access (``len`` needs no computation).

    The weights are snapshotted (a state-dict copy, cheap); if the potential has been refitted
    by the time the predictions are read, a copy with the snapshotted weights computes them.
    """

    def __init__(self, potential, frames: Sequence[Atoms], features: bool) -> None:
        self._potential = potential
        self._model = potential.model
        self._state = {k: v.detach().clone() for k, v in potential.model.state_dict().items()}
        self._frames = list(frames)
        self._features = bool(features)
        self._values: list | None = None

    @property
    def computed(self) -> bool:
        """Whether the predictions have been computed."""
        return self._values is not None

    def _unchanged(self) -> bool:
        if self._potential.model is not self._model:
            return False
        now = self._model.state_dict()
        return all(torch.equal(now[k].detach().to(v.device), v) for k, v in self._state.items())

    def _compute(self) -> list:
        if self._values is None:
            potential = self._potential
            if not self._unchanged():
                potential = potential.copy()
                potential.model.load_state_dict(self._state)
                potential.model.eval()
            from .mlip.training import frozen_parameters

            with frozen_parameters(potential.model):
                self._values = potential.predict(self._frames, stress=False, features=self._features)
            self._potential = self._model = self._state = None
        return self._values

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index):
        return self._compute()[index]

    def __iter__(self):
        return iter(self._compute())

    def __add__(self, other):
        return list(self._compute()) + list(other)

    def __radd__(self, other):
        return list(other) + list(self._compute())

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self) -> str:
        state = "computed" if self.computed else "not computed"
        return f"LazyPredictions({len(self)} frames, {state})"


def force_errors(frames: Sequence[Atoms], predictions: Sequence) -> list[np.ndarray]:
    """Per frame, per-atom ``|F_pred − F_ref|`` in eV/Å (the project's one force-error function)."""
    from .uq.base import error_magnitudes

    return error_magnitudes(frames, predictions)


def mean_error(frames: Sequence[Atoms], predictions: Sequence) -> float:
    """Mean per-atom |ΔF| over frames (NaN for none)."""
    if not len(frames):
        return math.nan
    return float(np.concatenate(force_errors(frames, predictions)).mean())


def element_counts(atoms_or_symbols) -> dict[str, int]:
    """``{symbol: count}`` of an Atoms object or a sequence of symbols."""
    symbols = atoms_or_symbols.get_chemical_symbols() if isinstance(atoms_or_symbols, Atoms) \
        else list(atoms_or_symbols)
    out: dict[str, int] = {}
    for s in symbols:
        out[s] = out.get(s, 0) + 1
    return dict(sorted(out.items()))


def fit_cycle(
    potential,
    head,
    train: Sequence[Atoms],
    val: Sequence[Atoms],
    *,
    train_config,
    warm_start: bool,
    n: Mapping[str, int],
    settings: CutoffSettings = CutoffSettings(),
    new_frames: Sequence[Atoms] = (),
    also_predict: Sequence[Atoms] = (),
) -> CycleResult:
    """Train ``potential``, fit ``head`` and the cutoffs (see the module notes).

    Parameters
    ----------
    potential : NequIPPotential
        Trained in place.
    head : UncertaintyHead
        Fitted in place (pass a new head for a cold refit, the previous one to continue it).
    train, val : sequence of Atoms
        Labelled training and validation frames (both non-empty).
    train_config : TrainConfig
        Training settings of this fit.
    warm_start : bool
        Continue from the current weights (True) or rebuild and train from scratch.
    n : mapping of str to int
        N per element: per-atom σ values the cutoffs are for (CDF = 1 - 1/N).
    settings : CutoffSettings
        How the cutoffs are fitted.
    new_frames : sequence of Atoms
        Frames added since the previous fit (subset of ``train`` + ``val``), for the retrain check.
    also_predict : sequence of Atoms
        Further frames to predict with the trained potential in the same pass (e.g. a
        benchmark's sampling set); returned as ``extra_predictions``.

    Raises
    ------
    DataError
        No training or no validation frame.
    """
    train, val, new_frames = list(train), list(val), list(new_frames)
    if not train or not val:
        raise DataError(f"training needs at least one training and one validation frame "
                        f"(have {len(train)} and {len(val)})")
    from .mlip.training import frozen_parameters

    def predict(frames, features=False):
        with frozen_parameters(potential.model):
            return potential.predict(frames, stress=False, features=features)

    before_error = math.nan
    if warm_start and new_frames:
        before_error = mean_error(new_frames, predict(new_frames))
    start = time.perf_counter()
    potential.fit(train, val, train_config=train_config, warm_start=warm_start,
                  new_frames=new_frames if new_frames else None)
    train_time = time.perf_counter() - start
    history = potential.history  # its max_weight_change compares the returned and starting weights

    start = time.perf_counter()
    needs = bool(getattr(head, "needs_features", True))
    needs_train = bool(getattr(head, "needs_train_predictions", True))
    predicted = (train if needs_train else []) + val + list(also_predict)
    predictions = predict(predicted, features=needs)
    offset = len(train) if needs_train else 0
    train_pred = predictions[:offset] if needs_train else LazyPredictions(potential, train, needs)
    val_pred = predictions[offset:offset + len(val)]
    extra_pred = predictions[offset + len(val):]
    after_error = math.nan
    if new_frames:
        ids = {id(f): i for i, f in enumerate(predicted[:offset + len(val)])}
        missing = [f for f in new_frames if id(f) not in ids]
        computed = iter(predict(missing)) if missing else iter(())
        new_pred = [predictions[ids[id(f)]] if id(f) in ids else next(computed) for f in new_frames]
        after_error = mean_error(new_frames, new_pred)
    check = RetrainCheck(
        warm_start=bool(warm_start), epochs=len(history.epochs), best_epoch=int(history.best_epoch),
        stop_reason=str(history.stop_reason),
        seconds=train_time, max_weight_change=float(history.max_weight_change), n_new=len(new_frames),
        new_error_before=before_error, new_error_after=after_error,
    )
    if check.problem():
        log.warning("%s", check.problem())

    fit_options = {}
    if "new_frames" in inspect.signature(head.fit).parameters:
        fit_options["new_frames"] = new_frames if (warm_start and new_frames) else None
    # a head that does not read the training predictions gets placeholders of the right length
    head.fit(potential, train, val, train_predictions=train_pred if needs_train else [None] * len(train),
             val_predictions=val_pred, **fit_options)
    val_errors = np.concatenate(force_errors(val, val_pred))
    val_sigma = np.concatenate(head.predict(val, val_pred))
    val_symbols = np.concatenate([np.asarray(f.get_chemical_symbols(), dtype=str) for f in val])
    cutoffs, failure = None, ""
    try:
        cutoffs = fit_cutoffs(val_errors, val_sigma, val_symbols, n, per_element=settings.per_element,
                              max_error=settings.max_error, candidates=tuple(settings.candidates),
                              robust=settings.robust, **settings.fit_options)
    except (FitError, DataError, UserError) as exc:
        failure = f"cutoff fit on {val_errors.size} validation atoms failed: {exc}"
    components = np.concatenate([np.abs(p.forces - f.calc.results["forces"]).ravel()
                                 for f, p in zip(val, val_pred, strict=True)])
    energy_mae = float(np.mean([abs(p.energy - f.calc.results["energy"]) / len(f)
                                for f, p in zip(val, val_pred, strict=True)]))
    return CycleResult(
        head=head, train_predictions=train_pred, val_predictions=val_pred, extra_predictions=extra_pred,
        val_errors=val_errors, val_sigma=val_sigma, val_symbols=val_symbols, cutoffs=cutoffs,
        retrain=check, train_time_s=train_time, head_time_s=time.perf_counter() - start,
        val_force_mae=float(components.mean()), val_force_rmse=float(np.sqrt(np.mean(components ** 2))),
        val_energy_mae=energy_mae, cutoff_failure=failure,
    )
