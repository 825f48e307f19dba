"""The training loop: Adam, ``ReduceLROnPlateau``, early stopping with the best weights restored.

Works on precomputed labelled graphs (see :mod:`otf_statcut.mlip.graphs`), so neighbour lists
are built once per fit, not once per epoch; each epoch only shuffles and concatenates them.

The graphs are moved to the model's device once per fit and batched there. Losses and squared
errors are summed on the device and read back once per epoch, and which frames carry a stress
label is decided on the host, so a GPU fit does not wait for the host after every batch.

Cost of a retrain. A fit's time budget (``TrainConfig.max_seconds``) is checked before every
optimiser step, not only after an epoch, so a fit on many frames stops on time. A warm fit
trains its epochs on the *new* frames (those the previous fit did not train on; ``new_train``)
plus a fresh random draw of at most ``warm_replay_frames`` old ones (replay), and selects its
epoch on the new validation frames plus at most ``warm_val_frames`` old ones: an epoch's cost is
bounded however large the data set grows, while every epoch still shows the model every new
label. Graphs are moved to the model's device when first used, not all up front.

Warm starts (``train_model(..., warm_start=True)``: fine-tuning weights that were already trained,
e.g. after new labels in the on-the-fly loop) differ from cold fits in three ways, all set in
:class:`~otf_statcut.mlip.config.TrainConfig`: the starting learning rate
(``warm_learning_rate``), an optional linear ramp (``warm_ramp_epochs``), and Adam's moments
carried over from the previous fit (``warm_carry_optimizer``). And a warm fit never returns its
starting weights: the best epoch >= 1 is restored. With epoch 0 eligible, a fresh Adam's first
steps at the full rate often raised the validation loss of a converged model, early stopping then
restored epoch 0, and the new labels had no effect at all (see
``benchmarks/bench_warm_retrain.py``). ``TrainingHistory`` records whether the weights changed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from .config import TrainConfig
from .graphs import batch_graphs

__all__ = [
    "EpochRecord",
    "TrainingHistory",
    "Batch",
    "train_model",
    "evaluate_model",
    "frozen_parameters",
    "compatible_optimizer_state",
]


@dataclass(frozen=True)
class EpochRecord:
    """Metrics after one epoch (validation metrics in eval mode with the weights of that epoch).

    Attributes
    ----------
    epoch : int
        1-based epoch number.
    train_loss, val_loss : float
        Mean training loss over the epoch's batches; loss on the validation frames.
    val_energy_rmse : float
        Validation energy RMSE per atom (eV/atom).
    val_forces_rmse : float
        Validation force-component RMSE (eV/Å).
    learning_rate : float
        Learning rate used in this epoch (the highest one, when a warm-start ramp raises it
        step by step).
    seconds : float
        Wall time of the epoch including validation.
    frames : int
        Training frames the epoch's optimiser steps saw.
    complete : bool
        False when the time budget ended the epoch before all its frames were seen.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_energy_rmse: float
    val_forces_rmse: float
    learning_rate: float
    seconds: float
    frames: int = 0
    complete: bool = True


@dataclass
class TrainingHistory:
    """What one :func:`train_model` call did.

    Attributes
    ----------
    initial_val_loss : float
        Validation loss before the first optimiser step (compares warm and cold starts).
    initial_val_forces_rmse : float
        Validation force-component RMSE (eV/Å) before the first optimiser step.
    epochs : list of EpochRecord
        One record per epoch run.
    best_epoch : int
        Epoch whose weights were restored (0: no epoch improved on the initial weights; never 0
        for a warm start).
    best_val_loss : float
        Validation loss of the restored (returned) weights.
    best_val_forces_rmse : float
        Validation force-component RMSE (eV/Å) of the returned weights.
    stop_reason : str
        ``"max_epochs"``, ``"early_stopping"``, ``"max_seconds"`` or ``"min_learning_rate"``.
    monitored : str
        ``"val"`` or ``"train"`` (the latter when no validation frames were given).
    seconds : float
        Wall time of the whole call.
    warm_start : bool
        Whether the fit ran as a warm start (fine-tuning: warm learning rate, ramp, carried
        optimiser state, selection among epochs >= 1).
    optimizer_state_carried : bool
        Whether Adam started from the moments of a previous fit.
    max_weight_change : float
        max |Δw| over all floating-point entries of the state dict, between the weights at the
        start of the call and the returned weights.
    weights_changed : bool
        ``max_weight_change > 0``: the returned weights differ from the starting ones.
    n_new_frames : int
        Training frames counted as new (all of them unless the caller said which are new).
    epoch_frames : int
        Training frames per (complete) epoch: all training frames, or with replay the new ones
        plus the replayed sample.
    replay : bool
        Whether epochs were new frames plus a replay sample (a warm fit with more old training
        frames than ``warm_replay_frames``).
    monitor_frames : int
        Frames the monitored (validation) loss was measured on.
    """

    initial_val_loss: float = math.nan
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reason: str = ""
    monitored: str = "val"
    seconds: float = 0.0
    warm_start: bool = False
    optimizer_state_carried: bool = False
    initial_val_forces_rmse: float = math.nan
    best_val_forces_rmse: float = math.nan
    max_weight_change: float = 0.0
    weights_changed: bool = False
    n_new_frames: int = 0
    epoch_frames: int = 0
    replay: bool = False
    monitor_frames: int = 0
    #: Adam's state_dict at the returned weights, kept only with ``warm_carry_optimizer`` (for a
    #: later warm fit); not serialised.
    optimizer_state: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (without the optimiser state)."""
        return {
            "initial_val_loss": self.initial_val_loss,
            "initial_val_forces_rmse": self.initial_val_forces_rmse,
            "epochs": [asdict(record) for record in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_val_forces_rmse": self.best_val_forces_rmse,
            "stop_reason": self.stop_reason,
            "monitored": self.monitored,
            "seconds": self.seconds,
            "warm_start": self.warm_start,
            "optimizer_state_carried": self.optimizer_state_carried,
            "max_weight_change": self.max_weight_change,
            "weights_changed": self.weights_changed,
            "n_new_frames": self.n_new_frames,
            "epoch_frames": self.epoch_frames,
            "replay": self.replay,
            "monitor_frames": self.monitor_frames,
        }


@dataclass(frozen=True)
class _Metrics:
    loss: float
    energy_rmse: float
    forces_rmse: float


class Batch(NamedTuple):
    """Labelled graphs concatenated on the model's device, with host-side counts.

    Attributes
    ----------
    data : dict
        The batched ``AtomicDataDict``.
    n_frames, n_components : int
        Frames and force components (3 × atoms) in the batch.
    stress_rows : torch.Tensor or None
        Indices (on the device) of the frames that have a stress label; None if none has.
    """

    data: dict
    n_frames: int
    n_components: int
    stress_rows: torch.Tensor | None


def _has_stress(graph: dict) -> bool:
    from nequip.data import AtomicDataDict

    return bool(torch.isfinite(graph[AtomicDataDict.STRESS_KEY]).all())


def _loss_terms(
    out: dict, batch: Batch, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted loss of one batch and its unweighted energy/force squared-error sums (for RMSEs),
    all 0-d tensors on the device."""
    from nequip.data import AtomicDataDict

    data = batch.data
    n_atoms = data[AtomicDataDict.NUM_NODES_KEY].to(torch.float64)
    energy_error = (
        out[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1) - data[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1)
    ) / n_atoms
    forces_error = out[AtomicDataDict.FORCE_KEY] - data[AtomicDataDict.FORCE_KEY]
    energy_mse = energy_error.square().mean()
    forces_mse = forces_error.square().mean()
    loss = config.energy_weight * energy_mse + config.forces_weight * forces_mse
    if config.stress_weight > 0 and batch.stress_rows is not None:
        rows = batch.stress_rows
        predicted = out[AtomicDataDict.STRESS_KEY].reshape(-1, 9).index_select(0, rows)
        reference = data[AtomicDataDict.STRESS_KEY].reshape(-1, 9).index_select(0, rows)
        loss = loss + config.stress_weight * (predicted - reference).square().mean()
    return loss, energy_error.detach().square().sum(), forces_error.detach().square().sum()


def _batch(graphs: Sequence[dict], has_stress: Sequence[bool], chunk: Sequence[int]) -> Batch:
    """Concatenate ``graphs[i]`` (on the model's device) for ``i`` in ``chunk`` into one batch."""
    from nequip.data import AtomicDataDict

    chunk = list(chunk)
    data = batch_graphs([graphs[i] for i in chunk])
    rows = [j for j, i in enumerate(chunk) if has_stress[i]]
    device = data[AtomicDataDict.POSITIONS_KEY].device
    stress_rows = torch.tensor(rows, dtype=torch.long, device=device) if rows else None
    n_components = 3 * int(data[AtomicDataDict.POSITIONS_KEY].shape[0])
    return Batch(data, len(chunk), n_components, stress_rows)


def _batches(
    graphs: Sequence[dict], has_stress: Sequence[bool], batch_size: int, order: Sequence[int]
) -> list[Batch]:
    """Concatenate ``graphs`` (already on the model's device) in ``order``, ``batch_size`` at a time."""
    order = list(order)
    return [_batch(graphs, has_stress, order[k : k + batch_size]) for k in range(0, len(order), batch_size)]


class _OnDevice:
    """The caller's graphs, each moved to ``device`` (and its stress flag read) when first used."""

    def __init__(self, graphs: Sequence[dict], device: torch.device) -> None:
        self._graphs = graphs
        self._device = device
        self._moved: dict[int, dict] = {}
        self._stress: dict[int, bool] = {}
        self.has_stress = _LazyFlags(self)

    def __len__(self) -> int:
        return len(self._graphs)

    def __getitem__(self, i: int) -> dict:
        graph = self._moved.get(i)
        if graph is None:
            from nequip.data import AtomicDataDict

            graph = self._moved[i] = AtomicDataDict.to_(dict(self._graphs[i]), self._device)
        return graph

    def stress(self, i: int) -> bool:
        flag = self._stress.get(i)
        if flag is None:
            flag = self._stress[i] = _has_stress(self._graphs[i])
        return flag


class _LazyFlags:
    def __init__(self, owner: _OnDevice) -> None:
        self._owner = owner

    def __getitem__(self, i: int) -> bool:
        return self._owner.stress(i)


def _split_new(n: int, new: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(new indices, old indices) of ``range(n)``; every index is new when ``new`` is None."""
    if new is None:
        return list(range(n)), []
    marked = sorted({int(i) for i in new if 0 <= int(i) < n})
    chosen = set(marked)
    return marked, [i for i in range(n) if i not in chosen]


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module):
    """Run a block with every parameter of ``model`` not requiring gradients (restored after).

    For inference: forces and stress are gradients with respect to positions and strain only, so
    the autograd graph need not track the weights; about 15 % less time per frame on a CPU, same
    numbers."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def evaluate_model(model: torch.nn.Module, batches: Sequence[Batch], config: TrainConfig) -> _Metrics:
    """Loss and RMSEs of ``model`` (put in eval mode) on prebatched labelled graphs.

    The loss is the frame-weighted mean of the per-batch losses. Sums stay on the device until
    the end (one read-back per call).
    """
    model.eval()
    frames = sum(batch.n_frames for batch in batches)
    if frames == 0:
        return _Metrics(math.nan, math.nan, math.nan)
    n_components = sum(batch.n_components for batch in batches)
    totals = []
    with frozen_parameters(model):
        for batch in batches:
            out = model(batch.data)
            loss, energy_sq, forces_sq = _loss_terms(out, batch, config)
            totals.append(torch.stack([loss.detach() * batch.n_frames, energy_sq, forces_sq]))
    total, energy_sq, forces_sq = torch.stack(totals).sum(dim=0).tolist()
    return _Metrics(total / frames, math.sqrt(energy_sq / frames), math.sqrt(forces_sq / n_components))


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _max_abs_change(before: dict, after: dict) -> float:
    """max |after - before| over the floating-point tensors of two state dicts (float64)."""
    change = 0.0
    for key, old in before.items():
        if not torch.is_floating_point(old) or old.numel() == 0:
            continue
        new = after[key].detach().to(old.device, torch.float64)
        change = max(change, float((new - old.to(torch.float64)).abs().max()))
    return change


def _state_dict_copy(optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


def compatible_optimizer_state(state: dict | None, params: Sequence[torch.Tensor]) -> bool:
    """Whether ``state`` (an Adam ``state_dict``) belongs to a single parameter group holding
    exactly ``params`` (same count and shapes)."""
    try:
        groups = state["param_groups"]
        per_param = state["state"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            return False
        for index, param in zip(groups[0]["params"], params):
            entry = per_param.get(index)
            if entry is None:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if tuple(entry[key].shape) != tuple(param.shape):
                    return False
        return True
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


def train_model(
    model: torch.nn.Module,
    train_graphs: Sequence[dict],
    val_graphs: Sequence[dict],
    config: TrainConfig,
    *,
    warm_start: bool = False,
    optimizer_state: dict | None = None,
    new_train: Sequence[int] | None = None,
    new_val: Sequence[int] | None = None,
) -> TrainingHistory:
    """Train ``model`` in place; on return it holds the best weights and is in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        A NequIP ``GraphModel`` with force/stress outputs.
    train_graphs : sequence of dict
        Labelled training graphs (non-empty).
    val_graphs : sequence of dict
        Labelled validation graphs. When empty, the training loss is monitored instead
        (``history.monitored == "train"``).
    config : TrainConfig
        Optimiser, schedule, early stopping, loss weights, time budget and replay sizes.
    warm_start : bool
        Fine-tune already trained weights: start at ``config.warm_learning_rate`` (ramped over
        ``config.warm_ramp_epochs``), from ``optimizer_state`` when ``config.warm_carry_optimizer``,
        train each epoch on the new frames plus a replay sample of old ones
        (``config.warm_replay_frames``), monitor the new validation frames plus a sample of old
        ones (``config.warm_val_frames``), and return the best epoch >= 1 with a finite loss,
        never the starting weights (unless every epoch diverged to a non-finite loss: then the
        starting weights come back, with ``history.weights_changed`` False and ``best_epoch`` 0).
        False (cold): start at ``config.learning_rate`` with a fresh Adam, every epoch over all
        training frames, all validation frames monitored; epoch 0 (the starting weights) may win.
    optimizer_state : dict, optional
        An Adam ``state_dict`` from a previous fit of this model (used only by a warm start with
        ``config.warm_carry_optimizer``; ignored when it does not match the parameters).
    new_train, new_val : sequence of int, optional
        Indices of the training / validation graphs the model has not been fitted on before
        (used by warm fits only). None: all of them are new (no replay: full epochs).

    Notes
    -----
    Training runs on the device of the model's parameters; each graph is copied there once, when
    first used (the caller's graphs are left where they are). With ``config.warm_carry_optimizer``,
    ``history.optimizer_state`` holds Adam's state at the returned weights, for the next warm
    fit (None otherwise, and when a cold fit returns its starting weights). The time budget
    ``config.max_seconds`` is checked before every optimiser step (see :class:`TrainConfig`).

    Returns
    -------
    TrainingHistory
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    history = TrainingHistory(monitored="val" if len(val_graphs) else "train", warm_start=bool(warm_start))
    rng = np.random.default_rng(config.seed)
    device = _model_device(model)
    train_set = _OnDevice(train_graphs, device)
    val_set = _OnDevice(val_graphs, device)

    # --- what an epoch trains on: all frames, or (warm) the new ones plus a replay draw
    new_idx, old_idx = _split_new(len(train_set), new_train)
    replay_size = config.warm_replay_frames if warm_start else None
    replay = replay_size is not None and len(old_idx) > replay_size and len(new_idx) + replay_size > 0
    epoch_size = len(new_idx) + replay_size if replay else len(train_set)
    history.n_new_frames, history.epoch_frames, history.replay = len(new_idx), epoch_size, bool(replay)

    def epoch_order() -> np.ndarray:
        if not replay:
            return rng.permutation(len(train_set))
        drawn = rng.choice(len(old_idx), size=replay_size, replace=False)
        old = np.asarray(old_idx, dtype=np.int64)[drawn]
        chosen = np.concatenate([np.asarray(new_idx, dtype=np.int64), old])
        return chosen[rng.permutation(len(chosen))]

    # --- what the monitored loss is measured on: all frames, or (warm) new ones plus a sample
    if len(val_set):
        monitored, monitored_new = val_set, new_val
    else:
        monitored, monitored_new = train_set, new_train
    monitor_idx = list(range(len(monitored)))
    sample = config.warm_val_frames if warm_start else None
    if sample is not None:
        mon_new, mon_old = _split_new(len(monitored), monitored_new)
        if len(mon_old) > sample and len(mon_new) + sample > 0:
            draw = np.random.default_rng([config.seed, 1]).choice(len(mon_old), size=sample, replace=False)
            monitor_idx = sorted(mon_new + [mon_old[k] for k in draw])
    history.monitor_frames = len(monitor_idx)
    monitor_batches = _batches(monitored, monitored.has_stress, config.batch_size, monitor_idx)

    base_lr = config.effective_warm_learning_rate if warm_start else float(config.learning_rate)
    ramp_epochs = config.warm_ramp_epochs if warm_start else 0
    steps_per_epoch = math.ceil(epoch_size / config.batch_size)
    ramp_steps = ramp_epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=base_lr)
    if warm_start and config.warm_carry_optimizer and optimizer_state is not None:
        if compatible_optimizer_state(optimizer_state, params):
            optimizer.load_state_dict(optimizer_state)
            history.optimizer_state_carried = True
        for group in optimizer.param_groups:
            group["lr"] = base_lr
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=config.lr_factor,
        patience=config.lr_patience,
        min_lr=config.min_learning_rate,
    )

    eval_start = time.perf_counter()
    initial = evaluate_model(model, monitor_batches, config)
    eval_seconds = time.perf_counter() - eval_start
    history.initial_val_loss = initial.loss
    history.initial_val_forces_rmse = initial.forces_rmse
    initial_state = copy.deepcopy(model.state_dict())
    if warm_start:
        # fine-tuning: the starting weights are not a candidate (they would hand the old model
        # back unchanged whenever epoch 1 overshoots); the best epoch >= 1 is returned
        history.best_val_loss = math.inf
        best_state, best_optimizer = None, None
    else:
        history.best_val_loss = initial.loss
        history.best_val_forces_rmse = initial.forces_rmse
        best_state, best_optimizer = initial_state, None
    since_best = 0
    history.stop_reason = "max_epochs"
    step = 0

    def out_of_time() -> bool:
        # a step is not started if it would leave no time for the validation pass after it
        if config.max_seconds is None or step == 0:  # the first step is always taken
            return False
        return time.perf_counter() - start + eval_seconds > config.max_seconds

    bar = tqdm(range(1, config.max_epochs + 1), desc="NequIP fit", unit="epoch", disable=not config.progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        order = epoch_order().tolist()
        losses = []
        rates = []
        frames_seen = 0
        budget_hit = False
        for k in range(0, len(order), config.batch_size):
            if out_of_time():
                budget_hit = True
                break
            chunk = order[k : k + config.batch_size]
            batch = _batch(train_set, train_set.has_stress, chunk)
            if step < ramp_steps:
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * (step + 1) / ramp_steps
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            out = model(batch.data)
            loss, _, _ = _loss_terms(out, batch, config)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            frames_seen += len(chunk)
            step += 1
        if not losses:
            # the budget ran out before this epoch's first step: nothing new to validate
            history.stop_reason = "max_seconds"
            break
        learning_rate = max(rates)
        in_ramp = epoch <= ramp_epochs
        eval_start = time.perf_counter()
        metrics = evaluate_model(model, monitor_batches, config)
        eval_seconds = time.perf_counter() - eval_start
        if not in_ramp:
            scheduler.step(metrics.loss)
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(torch.stack(losses).mean()),
            val_loss=metrics.loss,
            val_energy_rmse=metrics.energy_rmse,
            val_forces_rmse=metrics.forces_rmse,
            learning_rate=learning_rate,
            seconds=time.perf_counter() - epoch_start,
            frames=frames_seen,
            complete=not budget_hit,
        )
        history.epochs.append(record)
        bar.set_postfix(
            val_loss=f"{metrics.loss:.3g}", f_rmse=f"{metrics.forces_rmse:.3g}", lr=f"{learning_rate:.2g}"
        )
        # a warm fit takes its first epoch with a finite loss even when it is worse than the start
        if math.isfinite(metrics.loss) and (metrics.loss < history.best_val_loss or best_state is None):
            history.best_val_loss = metrics.loss
            history.best_val_forces_rmse = metrics.forces_rmse
            history.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            if config.warm_carry_optimizer:
                best_optimizer = _state_dict_copy(optimizer)
            since_best = 0
        elif not in_ramp:
            since_best += 1
        if since_best >= config.patience:
            history.stop_reason = "early_stopping"
            break
        over = config.max_seconds is not None and time.perf_counter() - start > config.max_seconds
        if budget_hit or over:
            history.stop_reason = "max_seconds"
            break
        if (
            not in_ramp
            and optimizer.param_groups[0]["lr"] <= config.min_learning_rate * (1 + 1e-9)
            and since_best >= config.lr_patience
        ):
            history.stop_reason = "min_learning_rate"
            break
    bar.close()
    if best_state is None:
        # a warm fit whose every epoch diverged (non-finite loss): hand back the starting
        # weights rather than broken ones; weights_changed says so
        best_state = initial_state
        history.best_val_loss = initial.loss
        history.best_val_forces_rmse = initial.forces_rmse
    model.load_state_dict(best_state)
    model.eval()
    # None when epoch 0 won a cold fit: no optimiser state belongs to the starting weights
    history.optimizer_state = best_optimizer
    history.max_weight_change = _max_abs_change(initial_state, model.state_dict())
    history.weights_changed = history.max_weight_change > 0.0
    history.seconds = time.perf_counter() - start
    return history
