"""The training loop: Adam, ``ReduceLROnPlateau``, early stopping with the best weights restored.

Works on precomputed labelled graphs (see :mod:`otf_statcut.mlip.graphs`), so neighbour lists
are built once per fit, not once per epoch; each epoch only shuffles and concatenates them.

The graphs are moved to the model's device once per fit and batched there. Losses and squared
errors are summed on the device and read back once per epoch, and which frames carry a stress
label is decided on the host, so a GPU fit does not wait for the host after every batch.
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

__all__ = ["EpochRecord", "TrainingHistory", "Batch", "train_model", "evaluate_model"]


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
        Learning rate used in this epoch.
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
    epochs : list of EpochRecord
        One record per epoch run.
    best_epoch : int
        Epoch whose weights were restored (0: no epoch improved on the initial weights).
    best_val_loss : float
        Validation loss of the restored weights.
    stop_reason : str
        ``"max_epochs"``, ``"early_stopping"``, ``"max_seconds"`` or ``"min_learning_rate"``.
    monitored : str
        ``"val"`` or ``"train"`` (the latter when no validation frames were given).
    seconds : float
        Wall time of the whole call.
    """

    initial_val_loss: float = math.nan
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reason: str = ""
    monitored: str = "val"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "initial_val_loss": self.initial_val_loss,
            "epochs": [asdict(record) for record in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "stop_reason": self.stop_reason,
            "monitored": self.monitored,
            "seconds": self.seconds,
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


def train_model(
    model: torch.nn.Module,
    train_graphs: Sequence[dict],
    val_graphs: Sequence[dict],
    config: TrainConfig,
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

    Notes
    -----
    Training runs on the device of the model's parameters; the graphs are copied there once
    (the caller's graphs are left where they are).

    Returns
    -------
    TrainingHistory
    """
    from nequip.data import AtomicDataDict
    from tqdm.auto import tqdm

    start = time.perf_counter()
    history = TrainingHistory(monitored="val" if len(val_graphs) else "train")
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

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=config.lr_factor,
        patience=config.lr_patience,
        min_lr=config.min_learning_rate,
    )

    initial = evaluate_model(model, monitor_batches, config)
    history.initial_val_loss = initial.loss
    history.best_val_loss = initial.loss
    best_state = copy.deepcopy(model.state_dict())
    since_best = 0
    history.stop_reason = "max_epochs"

    bar = tqdm(range(1, config.max_epochs + 1), desc="NequIP fit", unit="epoch", disable=not config.progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        learning_rate = optimizer.param_groups[0]["lr"]
        model.train()
        order = rng.permutation(len(train_graphs))
        losses = []
        for batch in _batches(train_graphs, train_stress, config.batch_size, order):
            optimizer.zero_grad(set_to_none=True)
            out = model(batch.data)
            loss, _, _ = _loss_terms(out, batch, config)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        metrics = evaluate_model(model, monitor_batches, config)
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
        if metrics.loss < history.best_val_loss:
            history.best_val_loss = metrics.loss
            history.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            since_best = 0
        else:
            since_best += 1
        if since_best >= config.patience:
            history.stop_reason = "early_stopping"
            break
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            history.stop_reason = "max_seconds"
            break
        if (
            optimizer.param_groups[0]["lr"] <= config.min_learning_rate * (1 + 1e-9)
            and since_best >= config.lr_patience
        ):
            history.stop_reason = "min_learning_rate"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history
