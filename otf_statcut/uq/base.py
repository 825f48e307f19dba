"""Shared machinery of the uncertainty heads: the Maxwell likelihood, calibration, save/load.

An uncertainty head maps each atom of a configuration to ``σ`` in eV/Å, the **scale of a
Maxwell distribution** for that atom's force-error magnitude ``|F_pred − F_ref|``:

.. math::

    p(e \\mid σ) = \\sqrt{2/π}\\, \\frac{e^2}{σ^3} \\exp\\!\\left(-\\frac{e^2}{2σ^2}\\right),
    \\qquad -\\log p = 3\\log σ + \\frac{e^2}{2σ^2} - 2\\log e - \\tfrac12\\log(2/π).

Every head is calibrated on the validation error magnitudes by minimising this negative
log-likelihood (NLL, :func:`otf_statcut.stats.maxwell_nll`). For a prefactor ``σ = A·s`` the
minimiser is closed-form, ``A² = Σ (e_i/s_i)² / (3n)``
(:func:`otf_statcut.stats.maxwell_scale_factor`).

Subclasses implement four hooks: ``_fit`` (head-specific training), ``_raw_sigma`` (the
uncalibrated σ), ``_state`` / ``_set_state`` (arrays and tensors to save) and, if the head
calibrates in another way than one prefactor, ``_calibrate``.

**Bounded σ.** Every head's σ is finite and at most ``sigma_bound_`` (eV/Å), an attribute set
at fit time by the ``_sigma_bound`` hook, saved with the head, and applied in :meth:`predict`
after the calibration (``σ = min(A·raw, sigma_bound_)``). Far from the data a head extrapolates
(a GP returns to its prior, a latent distance grows linearly); beyond one decade
(``FAR_FACTOR``) above the error scale the head was fitted on, σ carries no information the
decision needs — such an atom is already above the minimum cutoff, which a credible fit of the
validation σ puts at most ``EXTRAPOLATION_FACTOR`` (2.5) × their largest value × max(1, ln n /
ln m), below one decade whenever ln n / ln m < 4 (n < 1e8 for m = 100 validation atoms) — but
an unbounded σ still distorts fits, plots and metrics (one GP σ of 1467 eV/Å was seen). Each head states
its bound: sparse GP and latent distance in their docstrings; the ensemble needs none (its σ
is at most the largest distance between two members' force vectors, times A) and keeps
``sigma_bound_ = inf``; the oracle and random heads likewise. A σ that is NaN because the
potential's own output (forces, features) is not finite stays NaN, and
:func:`otf_statcut.engine.decision.decide` halts on it; it is never replaced by a number that
could be trusted.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import DataError, UserError
from ..io.files import torch_save
from ..stats import maxwell_nll, maxwell_scale_factor

#: Version of the layout written by :meth:`UncertaintyHead.save`.
SCHEMA_VERSION = 1
#: File holding the head's name, settings and calibration in a saved directory.
SETTINGS_FILE = "head.json"
#: File holding the head's arrays/tensors in a saved directory (read with weights_only=True).
STATE_FILE = "state.pt"
#: Smallest σ (eV/Å) a head returns; keeps the Maxwell likelihood finite.
SIGMA_FLOOR = 1e-8
#: Heads that extrapolate cap σ at this factor above the error scale they were fitted on (one
#: decade; see the module notes and each head's docstring).
FAR_FACTOR = 10.0


# --------------------------------------------------------------------------- Maxwell likelihood
def maxwell_nll_torch(errors: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Differentiable Maxwell NLL without σ-independent terms: mean of ``3 log σ + e²/(2σ²)``.

    Same minimiser as :func:`otf_statcut.stats.maxwell_nll`; used where σ has parameters to fit
    by gradient (the latent-distance weights).
    """
    return torch.mean(3.0 * torch.log(sigmas) + errors**2 / (2.0 * sigmas**2))


def _nll(errors: np.ndarray, sigmas: np.ndarray) -> float:
    """:func:`otf_statcut.stats.maxwell_nll`, or ``inf`` when some σ is 0 (zero likelihood)."""
    return maxwell_nll(errors, sigmas) if np.all(sigmas > 0) else math.inf


def maxwell_scale(errors: np.ndarray) -> float:
    """Maximum-likelihood Maxwell scale of error magnitudes, ``sqrt(Σ e² / 3n)`` (eV/Å)."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size == 0:
        raise DataError("cannot fit a Maxwell scale to zero error values")
    return maxwell_scale_factor(e, np.ones_like(e))


# --------------------------------------------------------------------------- frame helpers
def reference_forces(atoms) -> np.ndarray:
    """Reference (label) forces of a labelled frame, in eV/Å.

    Raises
    ------
    DataError
        If the frame has no calculator with forces (an unlabelled frame).
    """
    calc = atoms.calc
    forces = None if calc is None else calc.results.get("forces")
    if forces is None:
        label = atoms.info.get("description", atoms.get_chemical_formula())
        raise DataError(
            f"frame {label!r} has no reference forces: this head needs labelled frames "
            "(ASE Atoms with a SinglePointCalculator holding 'forces')"
        )
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise DataError(f"reference forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    return forces


def error_magnitudes(frames: Sequence, predictions: Sequence) -> list[np.ndarray]:
    """Per frame, per-atom ``|F_pred − F_ref|`` in eV/Å."""
    from ..stats.magnitudes import force_error_magnitudes

    return [force_error_magnitudes(p.forces, reference_forces(a)) for a, p in zip(frames, predictions, strict=True)]


def features_of(predictions: Sequence) -> list[np.ndarray]:
    """Latent features of each prediction; raises if the potential did not return them."""
    out = []
    for p in predictions:
        if p.features is None:
            raise UserError("this head needs latent features: call potential.predict(frames, features=True)")
        out.append(np.asarray(p.features))
    return out


def split(values: np.ndarray, frames: Sequence) -> list[np.ndarray]:
    """Split a concatenated per-atom array into one array per frame of ``frames``."""
    sizes = [len(a) for a in frames]
    return list(np.split(np.asarray(values), np.cumsum(sizes)[:-1]))


# --------------------------------------------------------------------------- the base class
class UncertaintyHead(ABC):
    """Base class: per-atom force-error scale σ (eV/Å) from a trained potential.

    scikit-learn style: settings go to the constructor, learned state gets a trailing
    underscore, :meth:`fit` returns ``self``.

    Attributes
    ----------
    potential_ : NequIPPotential
        The potential the head was fitted (or loaded) for.
    scale_ : float
        Calibration prefactor ``A`` (σ = A · raw σ); 1.0 for heads that calibrate otherwise.
    nll_uncalibrated_, nll_calibrated_ : float
        Mean Maxwell NLL on the validation errors before and after calibration.
    sigma_bound_ : float
        Largest σ (eV/Å) :meth:`predict` returns (``inf`` for heads that cannot diverge); see the
        module notes.
    """

    #: Registry name (``make_head``); set by each subclass.
    name: ClassVar[str] = ""
    #: Whether the head reads ``Prediction.features``.
    needs_features: ClassVar[bool] = False

    def __init__(self, **settings: Any) -> None:
        self.settings = dict(settings)
        self.potential_ = None
        self.scale_ = 1.0
        self.nll_uncalibrated_ = math.nan
        self.nll_calibrated_ = math.nan
        self.sigma_bound_ = math.inf

    # ---------------------------------------------------------------- public interface
    def fit(self, potential, train_frames: Sequence, val_frames: Sequence, *,
            train_predictions: Sequence | None = None, val_predictions: Sequence | None = None):
        """Fit the head for ``potential`` and calibrate it on the validation frames.

        Parameters
        ----------
        potential : NequIPPotential
            The trained potential whose errors the head describes.
        train_frames, val_frames : sequence of ase.Atoms
            Labelled frames (reference energy/forces on a SinglePointCalculator).
        train_predictions, val_predictions : sequence of Prediction, optional
            The potential's predictions for those frames, if already computed.

        Returns
        -------
        self
        """
        if len(val_frames) == 0:
            raise DataError("an uncertainty head needs at least one validation frame to calibrate on")
        self.potential_ = potential
        train_predictions = self._predictions(train_frames, train_predictions)
        val_predictions = self._predictions(val_frames, val_predictions)
        self._fit(train_frames, train_predictions, val_frames, val_predictions)
        errors = np.concatenate(error_magnitudes(val_frames, val_predictions))
        self.scale_ = 1.0
        self.sigma_bound_ = math.inf
        raw = np.concatenate(self._raw_sigma(val_frames, val_predictions))
        self.nll_uncalibrated_ = _nll(errors, raw)
        self._calibrate(errors, val_frames, val_predictions, raw)
        self.sigma_bound_ = float(self._sigma_bound(val_frames, val_predictions))
        calibrated = np.concatenate(self.predict(val_frames, val_predictions))
        self.nll_calibrated_ = _nll(errors, calibrated)
        return self

    def predict(self, frames: Sequence, predictions: Sequence | None = None) -> list[np.ndarray]:
        """Per frame, per-atom σ in eV/Å, in ``[SIGMA_FLOOR, sigma_bound_]``.

        NaN where the potential's output for the atom is not finite (``decide`` halts on it).

        Parameters
        ----------
        frames : sequence of ase.Atoms
        predictions : sequence of Prediction, optional
            The potential's predictions for these frames (with features for feature heads);
            computed here if omitted.
        """
        self._check_fitted()
        predictions = self._predictions(frames, predictions)
        raw = self._raw_sigma(frames, predictions)
        bound = getattr(self, "sigma_bound_", math.inf)
        return [np.clip(self.scale_ * np.asarray(r, dtype=np.float64), SIGMA_FLOOR, bound) for r in raw]

    def save(self, directory) -> Path:
        """Write the head to ``directory`` (``head.json`` + ``state.pt``); the potential is not saved."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "settings": self._json_settings(),
            "scale": self.scale_,
            "nll_uncalibrated": self.nll_uncalibrated_,
            "nll_calibrated": self.nll_calibrated_,
            "sigma_bound": self.sigma_bound_,
        }
        (directory / SETTINGS_FILE).write_text(json.dumps(meta, indent=2, allow_nan=True))
        torch_save(self._state(directory), directory / STATE_FILE)
        return directory

    @classmethod
    def load(cls, directory, potential) -> UncertaintyHead:
        """Read a head written by :meth:`save`, attached to ``potential``.

        Raises
        ------
        DataError
            If the directory does not hold a head of this class.
        """
        directory = Path(directory)
        meta = read_settings(directory)
        if meta["name"] != cls.name:
            raise DataError(f"{directory / SETTINGS_FILE}: key 'name' is {meta['name']!r}, expected {cls.name!r}")
        head = cls(**meta["settings"])
        head.potential_ = potential
        head.scale_ = float(meta["scale"])
        head.nll_uncalibrated_ = float(meta["nll_uncalibrated"])
        head.nll_calibrated_ = float(meta["nll_calibrated"])
        state = torch.load(directory / STATE_FILE, weights_only=True)
        head._set_state(state, directory)
        # heads saved before sigma_bound existed: the head's own bound where its state gives it
        saved_bound = meta.get("sigma_bound")
        head.sigma_bound_ = float(saved_bound) if saved_bound is not None else float(head._sigma_bound(None, None))
        return head

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._json_settings().items())
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------- hooks
    @abstractmethod
    def _fit(self, train_frames, train_predictions, val_frames, val_predictions) -> None:
        """Head-specific training (before calibration)."""

    @abstractmethod
    def _raw_sigma(self, frames, predictions) -> list[np.ndarray]:
        """Uncalibrated per-atom σ, per frame (positive)."""

    def _calibrate(self, errors: np.ndarray, val_frames, val_predictions, raw: np.ndarray) -> None:
        """Default calibration: one prefactor by Maxwell maximum likelihood."""
        self.scale_ = maxwell_scale_factor(errors, raw)

    def _sigma_bound(self, val_frames, val_predictions) -> float:
        """Largest σ (eV/Å, after calibration) the head may return; called after calibration,
        and with ``None, None`` when loading a head saved without it. Default: ``inf``."""
        return math.inf

    def _state(self, directory: Path) -> dict:
        """Tensors/arrays to save (torch.save-able with weights_only loading)."""
        return {}

    def _set_state(self, state: dict, directory: Path) -> None:
        """Restore what :meth:`_state` returned."""

    def _json_settings(self) -> dict:
        """Settings as JSON-serialisable values (what the constructor accepts back)."""
        return dict(self.settings)

    # ---------------------------------------------------------------- helpers
    def _predictions(self, frames, predictions):
        if predictions is not None:
            if len(predictions) != len(frames):
                raise UserError(f"got {len(predictions)} predictions for {len(frames)} frames")
            return list(predictions)
        if self.potential_ is None:
            raise UserError(f"{type(self).__name__} is not fitted: call fit(potential, train, val) first")
        return self.potential_.predict(list(frames), stress=False, features=self.needs_features)

    def _check_fitted(self) -> None:
        if self.potential_ is None:
            raise UserError(f"{type(self).__name__} is not fitted: call fit(potential, train, val) first")


def read_settings(directory) -> dict:
    """Read and check ``head.json`` of a saved head."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found (not a directory written by UncertaintyHead.save)")
    meta = json.loads(path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{path}: key 'schema_version' is {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return meta


def element_groups(numbers: np.ndarray) -> dict[int, np.ndarray]:
    """Indices of the atoms of each element: ``{Z: indices}`` in increasing Z."""
    numbers = np.asarray(numbers).ravel()
    return {int(z): np.flatnonzero(numbers == z) for z in np.unique(numbers)}


def missing_element_error(z: int, what: str) -> DataError:
    """The error raised when a head meets an element it has no fitted model for."""
    from ase.data import chemical_symbols

    return DataError(
        f"the {what} has no model for element {chemical_symbols[z]} (Z={z}): "
        "the training frames given to fit() contained no atom of it"
    )
