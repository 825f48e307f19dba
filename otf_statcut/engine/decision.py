"""The per-step decision: trust the MLIP, label the configuration, or halt and retrain.

One pure function, :func:`decide`, shared by ``otf-statcut run`` (every MD step) and
``otf-statcut benchmark`` (every sampled frame). It sees only per-atom uncertainties and the two
cutoffs on the uncertainty scale; it knows nothing of ASE, torch or the labeller.

Rules (σ_i = uncertainty of atom i in eV/Å; minimum_i and maximum_i the cutoffs of atom i's
element with per-element cutoffs, the same for every atom otherwise)::

    any σ_i not finite (NaN)          -> HALT   (a broken uncertainty is never trusted)
    any σ_i >  maximum_i              -> HALT   (outside anything the model has seen)
    any σ_i >= minimum_i              -> LABEL  (uncertain: label it, add it to the data)
    every σ_i < minimum_i             -> TRUST  (the MLIP result is used)

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

from ..stats.element_cutoffs import thresholds

__all__ = ["Action", "Decision", "decide", "severity", "SEVERITY_LABEL", "SEVERITY_HALT"]

#: :func:`severity` at the minimum cutoff (label at and above) ...
SEVERITY_LABEL = 1.0
#: ... and at the maximum cutoff (halt above).
SEVERITY_HALT = 2.0


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


def decide(sigma, cutoffs, symbols=None) -> Decision:
    """Classify one configuration from its per-atom uncertainties.

    Parameters
    ----------
    sigma : array_like, shape (n_atoms,)
        Per-atom uncertainty in eV/Å, on the same scale as the cutoffs. ``n_atoms >= 1``.
    cutoffs : CutoffSet or ElementCutoffs
        A :class:`otf_statcut.stats.CutoffSet` (or any object with float attributes ``minimum``
        and ``maximum``, uncertainty scale, eV/Å; ``maximum`` may be ``inf``: no halting), or
        per-element :class:`otf_statcut.stats.element_cutoffs.ElementCutoffs`.
    symbols : sequence of str, optional
        Chemical symbol of each atom; needed with per-element cutoffs.

    Returns
    -------
    Decision

    Raises
    ------
    ValueError
        If ``sigma`` is empty or not one-dimensional, or a cutoff is NaN.
    TypeError
        If ``cutoffs`` lacks ``minimum`` or ``maximum``.
    DataError
        Per-element cutoffs without ``symbols``, or an atom of an element that has none.

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
    s = np.asarray(sigma, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"sigma must be one value per atom (1-D), got shape {s.shape}")
    if s.size == 0:
        raise ValueError("sigma is empty: a configuration needs at least one atom")
    minimum, maximum = _bounds(cutoffs, symbols, s.size)

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


def _bounds(cutoffs, symbols, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    for name in ("minimum", "maximum"):
        if not hasattr(cutoffs, name):
            raise TypeError(f"cutoffs must have attributes 'minimum' and 'maximum' (a CutoffSet); "
                            f"{type(cutoffs).__name__} has no {name!r}")
    if symbols is not None and len(symbols) != n_atoms:
        raise ValueError(f"{len(symbols)} symbols for {n_atoms} σ values")
    minimum, maximum, _ = thresholds(cutoffs, symbols, n_atoms)
    return minimum, maximum


def severity(sigma, cutoffs, symbols=None) -> np.ndarray:
    """Per-atom σ on a common scale where every element's minimum cutoff is 1 and maximum is 2.

    A monotone, piecewise-linear map of each atom's σ through its own cutoffs:
    ``σ/minimum`` below the minimum, ``1 + (σ - minimum)/(maximum - minimum)`` between them, and
    ``2 + (σ - maximum)/maximum`` above the maximum (an infinite maximum maps the interval onto
    [1, 2) by ``2 - minimum/σ``; a clamped ``maximum == minimum`` sends σ = minimum to 1 and
    anything above to > 2). So ``decide`` on severities against the bounds (1, 2) gives the same
    action as ``decide`` on σ against the atoms' own cutoffs, and frames of a multi-element system
    can be ranked by one number (how far their most uncertain atom is into its element's band).
    NaN σ gives NaN.
    """
    s = np.asarray(sigma, dtype=float).ravel()
    minimum, maximum = _bounds(cutoffs, symbols, s.size)
    out = np.empty_like(s)
    low = s < minimum
    out[low] = s[low] / minimum[low]
    finite_max = np.isfinite(maximum)
    width = np.where(finite_max, maximum - minimum, 1.0)
    band = ~low & (s <= maximum)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        between = np.where(finite_max, SEVERITY_LABEL + (s - minimum) / np.where(width > 0, width, 1.0),
                           SEVERITY_HALT - minimum / s)
        between = np.where(finite_max & (width <= 0), SEVERITY_LABEL, between)
        out[band] = between[band]
        high = ~low & ~band
        out[high] = SEVERITY_HALT + (s[high] - maximum[high]) / maximum[high]
    out[np.isnan(s)] = np.nan
    return out
