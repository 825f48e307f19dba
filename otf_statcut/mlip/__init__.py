"""NequIP interatomic potential: build from a config, train, predict energy/forces/stress and
invariant latent features, ASE calculator, save/load.

Units: eV, Å, eV/Å, eV/Å³.
"""

from .calculator import PotentialCalculator
from .config import ModelConfig, TrainConfig
from .device import resolve_device
from .graphs import DataStatistics
from .potential import NequIPPotential, Prediction, predictions_from_output
from .training import EpochRecord, TrainingHistory

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "resolve_device",
    "NequIPPotential",
    "Prediction",
    "PotentialCalculator",
    "DataStatistics",
    "TrainingHistory",
    "EpochRecord",
    "predictions_from_output",
]
