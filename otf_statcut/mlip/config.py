"""Typed, validated settings of the NequIP model (:class:`ModelConfig`) and its training
(:class:`TrainConfig`).

Both are frozen dataclasses, checked once in ``__post_init__``; a bad value raises
:class:`~otf_statcut.errors.ConfigError` naming the field, the value and what is allowed.
``to_dict``/``from_dict`` give the JSON form stored beside saved weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ase.data import atomic_numbers

from otf_statcut.errors import ConfigError

__all__ = ["ModelConfig", "TrainConfig"]


def _check(condition: bool, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{name}={value!r} is invalid: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_dict(cls, data: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a NequIP GNN (``nequip.model.NequIPGNNModel``).

    Defaults are a small model that trains in seconds per epoch on a CPU.

    Attributes
    ----------
    species : tuple of str
        Chemical symbols the model knows, e.g. ``("Li",)``; order fixes the type indices.
    r_max : float
        Cutoff radius in Å.
    num_layers : int
        Interaction blocks.
    l_max : int
        Highest rotation order of the hidden features.
    num_features : int
        Multiplicity of each irrep in the hidden features; also the width of the invariant latent
        features returned by ``predict`` (the last layer keeps only ``num_features`` scalars).
    radial_mlp_width, radial_mlp_depth : int
        Hidden width and depth of the radial (edge-length) MLP.
    num_bessels : int
        Bessel basis functions of the edge-length encoding.
    polynomial_cutoff_p : int
        Exponent of the polynomial cutoff envelope.
    parity : bool
        Keep odd-parity features too.
    seed : int
        Seed of the weight initialisation.
    model_dtype : {"float32", "float64"}
        Precision of the weights. Energies, forces and stress are summed/differentiated in
        float64 in either case.
    """

    species: tuple[str, ...]
    r_max: float = 4.5
    num_layers: int = 2
    l_max: int = 1
    num_features: int = 32
    radial_mlp_width: int = 64
    radial_mlp_depth: int = 1
    num_bessels: int = 8
    polynomial_cutoff_p: int = 6
    parity: bool = True
    seed: int = 0
    model_dtype: str = "float32"

    def __post_init__(self) -> None:
        species = self.species
        if isinstance(species, str):
            species = (species,)
        species = tuple(species)
        object.__setattr__(self, "species", species)
        _check(len(species) > 0, "species", species, "at least one chemical symbol")
        for symbol in species:
            _check(isinstance(symbol, str) and symbol in atomic_numbers and symbol != "X",
                   "species", species, "chemical symbols such as 'Li'")
        _check(len(set(species)) == len(species), "species", species, "distinct symbols")
        _check(float(self.r_max) > 0, "r_max", self.r_max, "a positive cutoff in Å")
        object.__setattr__(self, "r_max", float(self.r_max))
        for name in ("num_layers", "num_features", "radial_mlp_width", "radial_mlp_depth", "num_bessels",
                     "polynomial_cutoff_p"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, name, value,
                   "an integer >= 1")
        _check(_is_int(self.l_max) and self.l_max >= 0, "l_max",
               self.l_max, "an integer >= 0")
        _check(isinstance(self.parity, bool), "parity", self.parity, "true or false")
        _check(_is_int(self.seed), "seed", self.seed, "an integer")
        _check(self.model_dtype in ("float32", "float64"), "model_dtype", self.model_dtype,
               "'float32' or 'float64'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (species as a list)."""
        data = dataclasses.asdict(self)
        data["species"] = list(self.species)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        return _from_dict(cls, data, "model config")


@dataclass(frozen=True)
class TrainConfig:
    """How :meth:`NequIPPotential.fit` trains.

    Loss = ``energy_weight`` · MSE(E/N) + ``forces_weight`` · MSE(F components)
    + ``stress_weight`` · MSE(stress components, frames that have a stress label only);
    units eV/atom, eV/Å, eV/Å³.

    Attributes
    ----------
    max_epochs : int
        Upper bound on passes over the training frames.
    batch_size : int
        Frames per optimiser step.
    learning_rate : float
        Initial Adam learning rate.
    lr_factor, lr_patience, min_learning_rate : float, int, float
        ``ReduceLROnPlateau`` on the validation loss: multiply the rate by ``lr_factor`` after
        ``lr_patience`` epochs without improvement, never below ``min_learning_rate``.
    patience : int
        Early stopping: stop after this many epochs without a new best validation loss; the best
        weights are restored at the end in every case.
    energy_weight, forces_weight, stress_weight : float
        Loss weights (>= 0, not all zero).
    max_seconds : float or None
        Wall-clock budget for one ``fit``, checked before every optimiser step: a step is not
        started when the time used plus one validation pass (as long as the last one took) would
        exceed it; the epoch so far is then validated and is a candidate like any other. At least
        one step is always taken.
    seed : int
        Seed of the batch shuffling.
    progress : bool
        Show a tqdm progress bar over epochs (off by default for library use).
    warm_learning_rate : float or None
        Learning rate a *warm* fit (fine-tuning an already trained potential) ramps up to;
        None (default): ``learning_rate``. Cold fits always start at ``learning_rate``.
    warm_ramp_epochs : int
        Warm fits only: raise the learning rate linearly, optimiser step by optimiser step, from
        ``rate / steps`` to the full rate over the first this-many epochs (0, the default: no
        ramp). Neither the plateau schedule nor early stopping acts during the ramp.
    warm_carry_optimizer : bool
        Keep Adam's state at the returned weights on the potential after a fit (saved as
        ``optimizer.pt``), and let a warm fit continue from the kept moments instead of a fresh
        Adam; the learning rate is still the warm one. A warm fit finding no kept state (the
        previous fit did not keep one, or the file was missing or unusable) starts a fresh
        Adam. Default True.
    warm_replay_frames : int or None
        Warm fits only: each epoch trains on every *new* training frame (not trained on by the
        previous fit) plus at most this many of the old training frames, drawn afresh at random
        each epoch (replay), so a retrain's cost does not grow with the data set. None: every
        epoch over all training frames. Default 128 (with fewer old frames than that, every epoch
        holds them all, as without replay).
    warm_val_frames : int or None
        Warm fits only: the validation loss that selects the returned epoch, drives the plateau
        schedule and early stopping is measured on every new validation frame plus at most this
        many old ones (one draw per fit). None: all validation frames. Default 128.

    Warm fits also never return the starting weights: the returned weights are those of the
    best epoch >= 1 (cold fits may return epoch 0, the initial weights). The warm defaults were
    chosen by ``benchmarks/bench_warm_retrain.py`` (results in
    ``benchmarks/results/warm_retrain.json``): the full rate with the carried Adam state tied
    for the best held-out force MAE of the schemes tried and lowered the new frames' errors
    most; a lower warm rate (0.003, 0.001) left those errors nearly unchanged, and a ramp makes
    epoch 1 (tiny steps) the selected epoch whenever the validation frames do not include new
    ones, which hands back nearly the old weights.
    """

    max_epochs: int = 200
    batch_size: int = 4
    learning_rate: float = 0.01
    lr_factor: float = 0.5
    lr_patience: int = 8
    min_learning_rate: float = 1e-5
    patience: int = 25
    energy_weight: float = 1.0
    forces_weight: float = 1.0
    stress_weight: float = 1.0
    max_seconds: float | None = None
    seed: int = 0
    progress: bool = False
    warm_learning_rate: float | None = None
    warm_ramp_epochs: int = 0
    warm_carry_optimizer: bool = True
    warm_replay_frames: int | None = 128
    warm_val_frames: int | None = 128

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "lr_patience", "patience"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, name, value,
                   "an integer >= 1")
        _check(float(self.learning_rate) > 0, "learning_rate", self.learning_rate, "a positive number")
        _check(0.0 < float(self.lr_factor) < 1.0, "lr_factor", self.lr_factor, "a number in (0, 1)")
        _check(float(self.min_learning_rate) >= 0, "min_learning_rate", self.min_learning_rate,
               "a number >= 0")
        weights = (self.energy_weight, self.forces_weight, self.stress_weight)
        for name, value in zip(("energy_weight", "forces_weight", "stress_weight"), weights):
            _check(float(value) >= 0, name, value, "a number >= 0")
        _check(sum(float(w) for w in weights) > 0, "energy_weight/forces_weight/stress_weight", weights,
               "at least one positive loss weight")
        _check(self.max_seconds is None or float(self.max_seconds) > 0, "max_seconds", self.max_seconds,
               "a positive number of seconds or null")
        _check(_is_int(self.seed), "seed", self.seed, "an integer")
        _check(isinstance(self.progress, bool), "progress", self.progress, "true or false")
        _check(self.warm_learning_rate is None or (not isinstance(self.warm_learning_rate, bool)
                                                   and float(self.warm_learning_rate) > 0),
               "warm_learning_rate", self.warm_learning_rate, "a positive number or null")
        _check(_is_int(self.warm_ramp_epochs) and self.warm_ramp_epochs >= 0, "warm_ramp_epochs",
               self.warm_ramp_epochs, "an integer >= 0")
        _check(isinstance(self.warm_carry_optimizer, bool), "warm_carry_optimizer", self.warm_carry_optimizer,
               "true or false")
        for name in ("warm_replay_frames", "warm_val_frames"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= 0), name, value, "an integer >= 0 or null")

    @property
    def effective_warm_learning_rate(self) -> float:
        """The full learning rate of a warm fit: ``warm_learning_rate``, or ``learning_rate``
        when that is None."""
        return float(self.learning_rate if self.warm_learning_rate is None else self.warm_learning_rate)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        return _from_dict(cls, data, "train config")
