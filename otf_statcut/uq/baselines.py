"""Reference heads for benchmarks: the oracle (true error) and random σ.

- :class:`OracleHead` returns the true error magnitude ``σ = |F_pred − F_ref|`` (eV/Å) and so
  needs labelled frames. It is deliberately **not** rescaled: its σ is the error itself, the
  perfect ranking the paper compares the real heads against (``scale_ = 1``).
- :class:`RandomHead` returns σ drawn independently per atom from the Maxwell distribution
  fitted (maximum likelihood) to the validation error magnitudes — the right marginal
  distribution with no information about which atom is wrong. Draws come from a seeded
  ``numpy.random.Generator``; every :meth:`fit` restarts the stream at ``seed``, and a saved head
  stores the generator's state, so a loaded head continues the same stream.
"""

from __future__ import annotations

import json

import numpy as np
import scipy.stats

from ..errors import ConfigError
from .base import UncertaintyHead, error_magnitudes, maxwell_scale


class OracleHead(UncertaintyHead):
    """σ = |F_pred − F_ref| per atom; needs reference forces on every frame it is asked about."""

    name = "oracle"

    def _fit(self, train_frames, train_predictions, val_frames, val_predictions) -> None:
        """Nothing to learn."""

    def _calibrate(self, errors, val_frames, val_predictions, raw) -> None:
        self.scale_ = 1.0

    def _raw_sigma(self, frames, predictions) -> list[np.ndarray]:
        return error_magnitudes(frames, predictions)


class RandomHead(UncertaintyHead):
    """σ drawn from the Maxwell distribution fitted to the validation error magnitudes.

    Parameters
    ----------
    seed : int, default 0
        Seed of the random stream (restarted by every :meth:`fit`).
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"random head: key 'seed' is {seed!r}, expected an integer")
        super().__init__(seed=seed)
        self.rng_ = np.random.default_rng(seed)

    def fit(self, potential, train_frames, val_frames, **kwargs) -> RandomHead:
        super().fit(potential, train_frames, val_frames, **kwargs)
        self.rng_ = np.random.default_rng(self.settings["seed"])
        return self

    def _fit(self, train_frames, train_predictions, val_frames, val_predictions) -> None:
        """Nothing to learn before calibration."""

    def _calibrate(self, errors, val_frames, val_predictions, raw) -> None:
        self.scale_ = maxwell_scale(errors)

    def _raw_sigma(self, frames, predictions) -> list[np.ndarray]:
        """Unit-scale Maxwell draws (``scale_`` turns them into the fitted Maxwell)."""
        return [scipy.stats.maxwell.rvs(size=len(a), random_state=self.rng_) for a in frames]

    def _state(self, directory) -> dict:
        return {"rng": json.dumps(self.rng_.bit_generator.state)}

    def _set_state(self, state, directory) -> None:
        self.rng_ = np.random.default_rng()
        self.rng_.bit_generator.state = json.loads(state["rng"])
