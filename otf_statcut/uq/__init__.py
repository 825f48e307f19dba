"""Uncertainty heads: per-atom force-error scale σ (eV/Å) from a trained NequIP potential.

Every head follows one interface (:class:`UncertaintyHead`)::

    head = make_head("distance").fit(potential, train_frames, val_frames)
    sigmas = head.predict(frames, predictions)   # list of (n_atoms,) arrays, eV/Å
    head.save("head/");  head = load_head("head/", potential)

and is calibrated on the validation force-error magnitudes by the Maxwell negative
log-likelihood, so σ is the Maxwell scale of the atom's force error.

=============  ========================  ===================================================
name           class                     σ
=============  ========================  ===================================================
``ensemble``   :class:`EnsembleHead`     A · ‖per-component std over n NequIP models‖
``gp``         :class:`SparseGPHead`     A · sparse-GP posterior error scale on latents
``distance``   :class:`DistanceHead`     σ₀ + Σ σᵢ dᵢ, d = |latent − nearest training latent|
``oracle``     :class:`OracleHead`       |F_pred − F_ref| (needs reference forces)
``random``     :class:`RandomHead`       seeded draws from the validation-error Maxwell
=============  ========================  ===================================================
"""

from __future__ import annotations

import inspect
from pathlib import Path

from ..errors import ConfigError
from .base import UncertaintyHead, read_settings
from .baselines import OracleHead, RandomHead
from .distance import DistanceHead, LatentDistance, NearestNeighbourIndex
from .ensemble import EnsembleHead, ensemble_spread
from .sparse_gp import ElementGP, ErrorGP, SparseGPHead

#: The fixed registry of head names (nothing is imported by a user-given name).
HEADS: dict[str, type[UncertaintyHead]] = {
    "ensemble": EnsembleHead,
    "gp": SparseGPHead,
    "distance": DistanceHead,
    "oracle": OracleHead,
    "random": RandomHead,
}

__all__ = [
    "HEADS",
    "UncertaintyHead",
    "EnsembleHead",
    "SparseGPHead",
    "DistanceHead",
    "OracleHead",
    "RandomHead",
    "make_head",
    "load_head",
    "ensemble_spread",
    "LatentDistance",
    "NearestNeighbourIndex",
    "ElementGP",
    "ErrorGP",
]


def make_head(name: str, **settings) -> UncertaintyHead:
    """A new, unfitted head by registry name.

    Parameters
    ----------
    name : {"ensemble", "gp", "distance", "oracle", "random"}
    **settings
        The head class's constructor arguments.

    Raises
    ------
    ConfigError
        Unknown name, or a setting the head does not take.
    """
    if name not in HEADS:
        raise ConfigError(f"uncertainty head {name!r} is unknown; expected one of {sorted(HEADS)}")
    cls = HEADS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"uncertainty head {name!r}: unknown setting(s) {unknown}; allowed are {allowed}")
    return cls(**settings)


def load_head(directory, potential) -> UncertaintyHead:
    """Load a head saved by :meth:`UncertaintyHead.save` (its class is read from ``head.json``)."""
    meta = read_settings(Path(directory))
    if meta.get("name") not in HEADS:
        raise ConfigError(f"{Path(directory) / 'head.json'}: key 'name' is {meta.get('name')!r}, "
                          f"expected one of {sorted(HEADS)}")
    return HEADS[meta["name"]].load(directory, potential)
