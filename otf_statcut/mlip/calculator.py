"""ASE calculator of a :class:`~otf_statcut.mlip.potential.NequIPPotential`.

A thin subclass of NequIP's own ``nequip.integrations.ase.NequIPCalculator``: the same data path
(``atoms_to_data`` -> ``call_model`` -> results -> ``save_extra_outputs(out)``), with

- results always float64 (a float32 model included),
- ``stress`` only for frames with a cell volume (otherwise ASE raises
  ``PropertyNotImplementedError`` for it, as for any property a calculator did not compute),
- the invariant latent node features as the extra property ``"features"`` (n_atoms, F),
- :attr:`PotentialCalculator.prediction`, the :class:`Prediction` of the last calculation, set
  *before* ``save_extra_outputs(out)`` runs, and the raw model output passed to that hook, so a
  subclass (the on-the-fly engine) can add per-atom uncertainties without evaluating twice.

The calculator always evaluates the potential's current ``torch`` model (also after a fit from
scratch replaced it) on the potential's current device (also after ``potential.to(...)``); after
any refit, call :meth:`reset` so cached results are not reused. The graph is built on the CPU and
moved to the device once per calculation; results come back as float64 NumPy arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from ase.calculators.calculator import Calculator, all_changes
from nequip.integrations.ase import NequIPCalculator

from otf_statcut.errors import ConfigError

from .device import resolve_device
from .graphs import float64_default
from .potential import Prediction, predictions_from_output

if TYPE_CHECKING:
    from .potential import NequIPPotential

__all__ = ["PotentialCalculator"]


class PotentialCalculator(NequIPCalculator):
    """ASE calculator for a :class:`NequIPPotential`: energy, forces, stress, latent features.

    Parameters
    ----------
    potential : NequIPPotential
        The potential; its model is shared, not copied.
    device : str, torch.device or None
        None (default): the potential's device, followed if the potential moves later. A value
        is a check: it must resolve to the potential's device (the model is shared, so the
        calculator cannot run it elsewhere; move the potential with ``potential.to(device)``).
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator` (e.g. ``label``).

    Attributes
    ----------
    prediction : Prediction or None
        Output of the last calculation, float64.

    Raises
    ------
    ConfigError
        If ``device`` is invalid, unavailable, or not the potential's device.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "features"]

    def __init__(self, potential: NequIPPotential, device: str | torch.device | None = None, **kwargs):
        potential.model.eval()
        self.potential = potential
        self.prediction: Prediction | None = None
        super().__init__(
            model=potential.model,
            device=potential.device if device is None else resolve_device(device),
            transforms=potential.converter.transforms,
            **kwargs,
        )

    @property
    def device(self) -> torch.device:
        """The potential's current device (where the model runs)."""
        return self.potential.device

    @device.setter
    def device(self, value) -> None:
        requested = resolve_device(value)
        if requested != self.potential.device:
            raise ConfigError(
                f"calculator device '{requested}' differs from the potential's device "
                f"'{self.potential.device}': the model is shared; move it with potential.to('{requested}') "
                "or leave the calculator's device unset"
            )

    def atoms_to_data(self, atoms):
        """Graph of ``atoms`` (float64 positions/cell, type mapping, neighbour list).

        Raises
        ------
        otf_statcut.errors.DataError
            If ``atoms`` holds an element the potential does not know.
        """
        from nequip.data import AtomicDataDict

        data = self.potential.converter.graph(atoms, "calculator atoms")
        return AtomicDataDict.to_(data, self.potential.device)

    def call_model(self, data):
        """Run the potential's current model (a fit from scratch replaces the module): its
        AOTInductor-compiled form when compiled inference is on and ready for the current weights
        (``potential.enable_compiled``), else eager."""
        model = self.potential.model
        model.eval()
        compiled = getattr(self.potential, "_compiled", None)
        with float64_default():
            return model(data) if compiled is None else compiled.run(data, model)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Evaluate the model once and fill :attr:`results` with every implemented property."""
        from nequip.data import AtomicDataDict

        Calculator.calculate(self, atoms, properties, system_changes)
        out = self.call_model(self.atoms_to_data(self.atoms))
        prediction = predictions_from_output(out, stress=True, features=True)[0]
        self.results = {
            "energy": prediction.energy,
            "free_energy": prediction.energy,
            "forces": prediction.forces,
            "features": prediction.features,
        }
        if AtomicDataDict.PER_ATOM_ENERGY_KEY in out:
            self.results["energies"] = (
                out[AtomicDataDict.PER_ATOM_ENERGY_KEY].detach().cpu().double().numpy().reshape(-1).copy()
            )
        if prediction.stress is not None:
            self.results["stress"] = prediction.stress
        self.prediction = prediction
        self.save_extra_outputs(out)

    def save_extra_outputs(self, out) -> None:
        """Hook for subclasses: ``out`` is the raw model output (``AtomicDataDict``, torch tensors,
        including ``node_features``); :attr:`prediction` and :attr:`results` are already set."""
