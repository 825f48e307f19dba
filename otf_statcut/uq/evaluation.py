"""How a head ranks groups of frames against reference frames: σ ratios per atom and per frame.

The question a user asks of a head trained on one kind of configuration: *are the frames unlike
the training data given a higher σ than frames like it?* :func:`sigma_ratios` answers it with two
reductions, both as ratios to the reference frames:

- ``frame``: the mean over the frames of each frame's **maximum** σ — the number the engine
  compares with the cutoffs (:func:`otf_statcut.engine.decision.decide`), so a ratio above 1 means
  these frames are more likely to be sent for a label;
- ``atom``: the mean over all atoms of the frames, where a few unusual atoms (the shell around a
  vacancy, a surface's broken-shell atoms) are diluted by the many ordinary ones.

Each group gets its own ratios, and ``pooled`` is all the groups' frames together.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .base import UncertaintyHead


def _reduce(per_atom: Sequence[np.ndarray]) -> dict[str, float]:
    return {"frame": float(np.mean([np.max(s) for s in per_atom])), "atom": float(np.concatenate(per_atom).mean())}


def sigma_ratios(head: UncertaintyHead, potential, reference: Sequence, groups: Mapping[str, Sequence]) -> dict:
    """Mean σ of each group of frames over the mean σ of the reference frames.

    Parameters
    ----------
    head : UncertaintyHead
        A fitted head (the oracle needs labelled frames).
    potential : NequIPPotential
        The potential the head was fitted with.
    reference : sequence of ase.Atoms
        Frames like the training data (e.g. held-out frames of the training distribution).
    groups : mapping of str to sequence of ase.Atoms
        Named groups of frames to compare with the reference; names must not be ``reference``
        or ``pooled``.

    Returns
    -------
    dict
        ``{"reference": {"frame": σ̄, "atom": σ̄}, name: {"frame": r, "atom": r}, ...,
        "pooled": {"frame": r, "atom": r}}``: the reference means in eV/Å, the others as ratios
        to them (``frame``: mean of per-frame maxima; ``atom``: mean over atoms).
    """
    clash = {"reference", "pooled"} & set(groups)
    if clash:
        raise ValueError(f"group names {sorted(clash)} are reserved")
    sets = {"reference": list(reference), **{name: list(frames) for name, frames in groups.items()}}
    if any(not frames for frames in sets.values()):
        raise ValueError("every group of frames, and the reference, needs at least one frame")
    needs = bool(getattr(head, "needs_features", False))
    sigma = {name: head.predict(frames, potential.predict(frames, stress=False, features=needs))
             for name, frames in sets.items()}
    base = _reduce(sigma["reference"])
    out = {"reference": base}
    pooled = [s for name in groups for s in sigma[name]]
    for name, values in [*((n, sigma[n]) for n in groups), ("pooled", pooled)]:
        means = _reduce(values)
        out[name] = {key: means[key] / base[key] for key in base}
    return out
