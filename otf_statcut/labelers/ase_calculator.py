"""Label with any ASE calculator given from Python (EMT, LJ, LAMMPS, the user's own ...)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ase import Atoms
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError

from .base import DEFAULT_MAX_FORCE, DEFAULT_RETRIES, Label, Labeler

__all__ = ["ASECalculatorLabeler"]


class ASECalculatorLabeler(Labeler):
    """Wrap an ASE calculator as a labeller.

    Parameters
    ----------
    calculator : ase Calculator or callable returning one
        The reference method. A callable (factory) is called once at construction and again on
        :meth:`reset` (before a retry), so a retry starts from a fresh calculator.
    name : str, optional
        Name stored with every labelled frame (default: the calculator's class name).
    settings : mapping, optional
        JSON-serialisable description stored with every frame (default: the calculator's
        ``parameters`` when it has them).
    stress : bool or None
        Compute the stress: True (required; failure if the calculator cannot), False (never),
        None (default: when the calculator implements it and the cell is periodic in 3-D).
    retries, max_force
        See :class:`~otf_statcut.labelers.base.Labeler`.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> labeler = ASECalculatorLabeler(EMT)
    >>> frame = labeler.label(bulk("Cu", cubic=True))
    >>> frame.get_forces().shape, labeler.settings()["name"]
    ((4, 3), 'EMT')
    """

    def __init__(
        self,
        calculator: BaseCalculator | Callable[[], BaseCalculator],
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
        stress: bool | None = None,
        retries: int = DEFAULT_RETRIES,
        max_force: float = DEFAULT_MAX_FORCE,
    ):
        super().__init__(retries=retries, max_force=max_force)
        if isinstance(calculator, BaseCalculator):
            self._factory = None
            self.calculator = calculator
        elif callable(calculator):
            self._factory = calculator
            self.calculator = calculator()
        else:
            raise TypeError(f"calculator must be an ASE calculator or a factory, got {calculator!r}")
        self.name = name or type(self.calculator).__name__
        self._settings = dict(settings) if settings is not None else _parameters(self.calculator)
        self.stress = stress

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, **self._settings}

    def reset(self) -> None:
        if self._factory is not None:
            self.calculator = self._factory()
        elif hasattr(self.calculator, "reset"):
            self.calculator.reset()

    def _compute(self, atoms: Atoms) -> Label:
        atoms.calc = self.calculator
        out: Label = {"energy": _force_consistent_energy(atoms), "forces": atoms.get_forces()}
        want = self.stress
        if want is None:
            implemented = getattr(self.calculator, "implemented_properties", ())
            want = bool(atoms.pbc.all()) and "stress" in implemented
        if want:
            try:
                out["stress"] = atoms.get_stress(voigt=True)
            except PropertyNotImplementedError:
                if self.stress:
                    raise
        atoms.calc = None
        return out


def _force_consistent_energy(atoms: Atoms) -> float:
    try:
        return float(atoms.get_potential_energy(force_consistent=True))
    except PropertyNotImplementedError:
        return float(atoms.get_potential_energy())


def _parameters(calc) -> dict[str, Any]:
    params = getattr(calc, "parameters", None) or {}
    out = {}
    for key, value in dict(params).items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
            out[key] = list(value)
    return out
