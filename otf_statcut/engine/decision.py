"""The per-step decision: trust the MLIP, label the configuration, or halt and retrain.

One pure function, :func:`decide`, shared by ``otf-statcut run`` (every MD step) and
``otf-statcut benchmark`` (every sampled frame). It sees only per-atom uncertainties and the two
cutoffs on the uncertainty scale; it knows nothing of ASE, torch or the labeller.

Rules (σ = per-atom uncertainty in eV/Å, ``max σ`` its maximum over the atoms)::

    any σ not finite (NaN)            -> HALT   (a broken uncertainty is never trusted)
    max σ >  maximum                  -> HALT   (outside anything the model has seen)
    minimum <= max σ <= maximum       -> LABEL  (uncertain: label it, add it to the data)
    max σ <  minimum                  -> TRUST  (the MLIP result is used)

The checks are applied in that order, so HALT wins when ``maximum < minimum`` (possible when the
1 eV/Å error bound maps below the statistical minimum cutoff): a σ above the maximum is never
trusted. Both boundaries belong to LABEL: ``σ == minimum`` and ``σ == maximum`` label.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Action", "Decision", "decide"]


class Action(enum.IntEnum):
    """What to do with one configuration. Integer codes are stored as-is in the HDF5 logs.

    The order is the severity: ``TRUST < LABEL < HALT``, so ``max`` of several actions is the
    most severe one.
    """

    TRUST = 0
    LABEL = 1
    HALT = 2

    @property
    def label(self) -> str:
        """Lower-case name (``"trust"``, ``"label"``, ``"halt"``) for logs and tables."""
        return self.name.lower()


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide` for one configuration.

    Attributes
    ----------
    action : Action
        TRUST, LABEL or HALT.
    max_sigma : float
        Largest per-atom uncertainty (eV/Å); NaN if any σ was NaN.
    atoms : tuple of int
        Indices of the atoms with σ >= minimum cutoff (or σ not finite), ascending. Empty for
        TRUST.
    above_maximum : tuple of int
        Indices of the atoms with σ > maximum cutoff (or σ not finite), ascending. Non-empty
        exactly when ``action`` is HALT.
    """

    action: Action
    max_sigma: float
    atoms: tuple[int, ...]
    above_maximum: tuple[int, ...] = ()

    @property
    def trusted(self) -> bool:
        """True when the MLIP result may be used for this configuration."""
        return self.action is Action.TRUST


def _cutoff(cutoffs: Any, name: str) -> float:
    try:
        value = float(getattr(cutoffs, name))
    except AttributeError as exc:
        raise TypeError(f"cutoffs must have attributes 'minimum' and 'maximum' (a CutoffSet); "
                        f"{type(cutoffs).__name__} has no {name!r}") from exc
    if math.isnan(value):
        raise ValueError(f"cutoffs.{name} is NaN")
    return value


def decide(sigma, cutoffs) -> Decision:
    """Classify one configuration from its per-atom uncertainties.

    Parameters
    ----------
    sigma : array_like, shape (n_atoms,)
        Per-atom uncertainty in eV/Å, on the same scale as the cutoffs. ``n_atoms >= 1``.
    cutoffs : CutoffSet
        Any object with float attributes ``minimum`` and ``maximum`` (uncertainty scale, eV/Å),
        such as :class:`otf_statcut.stats.CutoffSet`. ``maximum`` may be ``inf`` (no halting).

    Returns
    -------
    Decision

    Raises
    ------
    ValueError
        If ``sigma`` is empty or not one-dimensional, or a cutoff is NaN.
    TypeError
        If ``cutoffs`` lacks ``minimum`` or ``maximum``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> cut = SimpleNamespace(minimum=0.1, maximum=0.5)
    >>> decide([0.01, 0.02], cut).action
    <Action.TRUST: 0>
    >>> d = decide([0.01, 0.2, 0.3], cut)
    >>> d.action.label, d.atoms
    ('label', (1, 2))
    >>> decide([0.01, 0.9], cut).action.label
    'halt'
    """
    minimum = _cutoff(cutoffs, "minimum")
    maximum = _cutoff(cutoffs, "maximum")
    s = np.asarray(sigma, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"sigma must be one value per atom (1-D), got shape {s.shape}")
    if s.size == 0:
        raise ValueError("sigma is empty: a configuration needs at least one atom")

    bad = ~np.isfinite(s) & ~np.isposinf(s)  # NaN (and -inf): an uncertainty that cannot be trusted
    above_min = bad | (s >= minimum)
    above_max = bad | (s > maximum)
    max_sigma = float("nan") if np.isnan(s).any() else float(s.max())

    if above_max.any():
        action = Action.HALT
    elif above_min.any():
        action = Action.LABEL
    else:
        action = Action.TRUST
    return Decision(
        action=action,
        max_sigma=max_sigma,
        atoms=tuple(int(i) for i in np.flatnonzero(above_min)),
        above_maximum=tuple(int(i) for i in np.flatnonzero(above_max)),
    )
