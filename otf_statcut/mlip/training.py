"""The training loop: Adam, ``ReduceLROnPlateau``, early stopping with the best weights restored.

Works on precomputed labelled graphs (see :mod:`otf_statcut.mlip.graphs`), so neighbour lists
are built once per fit, not once per epoch; each epoch only shuffles and concatenates them.

The graphs are moved to the model's device once per fit and batched there. Losses and squared
errors are summed on the device and read back once per epoch, and which frames carry a stress
label is decided on the host, so a GPU fit does not wait for the host after every batch.

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
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_energy_rmse: float
    val_forces_rmse: float
    learning_rate: float
    seconds: float


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


def _batches(
    graphs: Sequence[dict], has_stress: Sequence[bool], batch_size: int, order: Sequence[int]
) -> list[Batch]:
    """Concatenate ``graphs`` (already on the model's device) in ``order``, ``batch_size`` at a time."""
    from nequip.data import AtomicDataDict

    order = list(order)
    batches = []
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        data = batch_graphs([graphs[i] for i in chunk])
        rows = [j for j, i in enumerate(chunk) if has_stress[i]]
        device = data[AtomicDataDict.POSITIONS_KEY].device
        stress_rows = torch.tensor(rows, dtype=torch.long, device=device) if rows else None
        n_components = 3 * int(data[AtomicDataDict.POSITIONS_KEY].shape[0])
        batches.append(Batch(data, len(chunk), n_components, stress_rows))
    return batches


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
        Optimiser, schedule, early stopping and loss weights.
    warm_start : bool
        Fine-tune already trained weights: start at ``config.warm_learning_rate`` (ramped over
        ``config.warm_ramp_epochs``), from ``optimizer_state`` when ``config.warm_carry_optimizer``,
        and return the best epoch >= 1 with a finite loss, never the starting weights (unless
        every epoch diverged to a non-finite loss: then the starting weights come back, with
        ``history.weights_changed`` False and ``best_epoch`` 0). False (cold): start at
        ``config.learning_rate`` with a fresh Adam; epoch 0 (the starting weights) may win.
    optimizer_state : dict, optional
        An Adam ``state_dict`` from a previous fit of this model (used only by a warm start with
        ``config.warm_carry_optimizer``; ignored when it does not match the parameters).

    Notes
    -----
    Training runs on the device of the model's parameters; the graphs are copied there once
    (the caller's graphs are left where they are). With ``config.warm_carry_optimizer``,
    ``history.optimizer_state`` holds Adam's state at the returned weights, for the next warm
    fit (None otherwise, and when a cold fit returns its starting weights).

    Returns
    -------
    TrainingHistory
    """
    from nequip.data import AtomicDataDict
    from tqdm.auto import tqdm

    start = time.perf_counter()
    history = TrainingHistory(monitored="val" if len(val_graphs) else "train", warm_start=bool(warm_start))
    rng = np.random.default_rng(config.seed)
    device = _model_device(model)
    train_stress = [_has_stress(g) for g in train_graphs]
    val_stress = [_has_stress(g) for g in val_graphs]
    train_graphs = [AtomicDataDict.to_(dict(g), device) for g in train_graphs]
    val_graphs = [AtomicDataDict.to_(dict(g), device) for g in val_graphs]
    if len(val_graphs):
        monitored, monitored_stress = val_graphs, val_stress
    else:
        monitored, monitored_stress = train_graphs, train_stress
    monitor_batches = _batches(monitored, monitored_stress, config.batch_size, range(len(monitored)))

    base_lr = config.effective_warm_learning_rate if warm_start else float(config.learning_rate)
    ramp_epochs = config.warm_ramp_epochs if warm_start else 0
    steps_per_epoch = math.ceil(len(train_graphs) / config.batch_size)
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

    initial = evaluate_model(model, monitor_batches, config)
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

    bar = tqdm(range(1, config.max_epochs + 1), desc="NequIP fit", unit="epoch", disable=not config.progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        order = rng.permutation(len(train_graphs))
        losses = []
        rates = []
        for batch in _batches(train_graphs, train_stress, config.batch_size, order):
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
            step += 1
        learning_rate = max(rates)
        in_ramp = epoch <= ramp_epochs
        metrics = evaluate_model(model, monitor_batches, config)
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
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
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
