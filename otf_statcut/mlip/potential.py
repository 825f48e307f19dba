"""A NequIP interatomic potential with a scikit-learn-like interface: build, fit, predict, save, load.

The network is a real ``nequip.model.NequIPGNNModel`` (nequip 0.19) wrapped in NequIP's
``ForceStressOutput``: forces are −∂E/∂r and the stress is (1/V) ∂E/∂ε (ASE's sign
convention), both by autograd. The per-atom latent features returned by :meth:`predict` are the
output of the last interaction block, ``out["node_features"]``, read just before the per-atom
energy readout. NequIPGNNModel's last block keeps only scalars (``num_features x 0e``), so these
features are rotation-, translation- and permutation-invariant as they stand; no slicing needed.

Device: a potential lives on one torch device (``device=`` of :meth:`NequIPPotential.build`,
:meth:`~NequIPPotential.load` and the constructor; :meth:`~NequIPPotential.to` moves it;
default ``"cpu"``, ``"auto"`` picks CUDA when available, see
:func:`otf_statcut.mlip.device.resolve_device`). Graphs are built on the CPU (the neighbour
list is a CPU routine), moved once per batch (``predict``) or once per fit (training), and
results always come back as float64 NumPy arrays on the CPU. Saved weights are CPU tensors, so a
directory saved from a GPU loads anywhere; the device is not saved.

Saved models are a directory::

    potential.json   format tag, version, ModelConfig, DataStatistics
    weights.pt       the model's state_dict (torch.save), loaded with weights_only=True
    history.json     the last fit's TrainingHistory (optional)
    optimizer.pt     Adam's state at the returned weights of the last fit (optional; read with
                     weights_only=True; a missing, unreadable or mismatched file only means the
                     next warm fit starts from a fresh Adam)
"""

from __future__ import annotations

import copy as _copy
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from otf_statcut.errors import DataError

from ..io.files import torch_save
from .config import ModelConfig, TrainConfig
from .device import resolve_device
from .graphs import (
    DataStatistics,
    GraphConverter,
    batch_graphs,
    compute_statistics,
    ensure_nequip_state,
    float64_default,
    geometry_digest,
)
from .training import TrainingHistory, compatible_optimizer_state, train_model

__all__ = ["Prediction", "NequIPPotential", "predictions_from_output"]

FORMAT = "otf-statcut-nequip-potential"
FORMAT_VERSION = 1
CONFIG_FILE = "potential.json"
WEIGHTS_FILE = "weights.pt"
HISTORY_FILE = "history.json"
OPTIMIZER_FILE = "optimizer.pt"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The potential's output for one frame (float64 throughout).

    Attributes
    ----------
    energy : float
        Total energy (eV).
    forces : ndarray, shape (n_atoms, 3)
        Forces (eV/Å).
    stress : ndarray, shape (6,), or None
        Stress (eV/Å³), Voigt order xx, yy, zz, yz, xz, xy, ASE sign convention; None when not
        requested or the frame has no cell volume.
    features : ndarray, shape (n_atoms, num_features), or None
        Invariant latent node features (before the energy readout); None when not requested.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None
    features: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.forces.shape[0])


def _numpy64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def predictions_from_output(out: dict, stress: bool = True, features: bool = True) -> list[Prediction]:
    """Split a (batched or single-frame) NequIP model output into per-frame :class:`Prediction`.

    Parameters
    ----------
    out : dict
        The model's output ``AtomicDataDict`` (must contain total energy and forces).
    stress, features : bool
        Whether to fill :attr:`Prediction.stress` and :attr:`Prediction.features`.
    """
    from ase.stress import full_3x3_to_voigt_6_stress
    from nequip.data import AtomicDataDict

    energies = _numpy64(out[AtomicDataDict.TOTAL_ENERGY_KEY]).reshape(-1)
    n_frames = energies.shape[0]
    forces = _numpy64(out[AtomicDataDict.FORCE_KEY])
    if AtomicDataDict.NUM_NODES_KEY in out:
        counts = out[AtomicDataDict.NUM_NODES_KEY].detach().cpu().numpy().reshape(-1)
    else:
        counts = np.array([forces.shape[0]])
    bounds = np.concatenate([[0], np.cumsum(counts)])
    stresses = None
    if stress and AtomicDataDict.STRESS_KEY in out and out[AtomicDataDict.STRESS_KEY].numel() == 9 * n_frames:
        stresses = _numpy64(out[AtomicDataDict.STRESS_KEY]).reshape(n_frames, 3, 3)
    latent = _numpy64(out[AtomicDataDict.NODE_FEATURES_KEY]) if features else None
    predictions = []
    for i in range(n_frames):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        frame_stress = None
        if stresses is not None and np.all(np.isfinite(stresses[i])):
            frame_stress = full_3x3_to_voigt_6_stress(stresses[i])
        predictions.append(
            Prediction(
                energy=float(energies[i]),
                forces=forces[lo:hi],
                stress=frame_stress,
                features=None if latent is None else latent[lo:hi],
            )
        )
    return predictions


def _build_model(config: ModelConfig, statistics: DataStatistics) -> torch.nn.Module:
    """A fresh NequIPGNNModel (eval mode) from ``config``, seeded with ``config.seed``."""
    import warnings

    from nequip.model import NequIPGNNModel

    ensure_nequip_state()
    with warnings.catch_warnings():
        # nequip warns about TorchScript/compile options irrelevant to eager CPU use
        warnings.simplefilter("ignore", UserWarning)
        model = NequIPGNNModel(
            seed=config.seed,
            model_dtype=config.model_dtype,
            type_names=list(config.species),
            r_max=config.r_max,
            num_layers=config.num_layers,
            l_max=config.l_max,
            parity=config.parity,
            num_features=config.num_features,
            radial_mlp_width=config.radial_mlp_width,
            radial_mlp_depth=config.radial_mlp_depth,
            num_bessels=config.num_bessels,
            polynomial_cutoff_p=config.polynomial_cutoff_p,
            avg_num_neighbors=statistics.avg_num_neighbors,
            per_type_energy_shifts=dict(statistics.energy_shifts),
            per_type_energy_scales=dict(statistics.energy_scales),
        )
    model.eval()
    return model


class NequIPPotential:
    """A NequIP potential for one species set.

    Use :meth:`build` (fresh weights, statistics from data) or :meth:`load`; then :meth:`fit`,
    :meth:`predict`, :meth:`calculator`, :meth:`save`.

    Parameters
    ----------
    config : ModelConfig
        Architecture and seed.
    statistics : DataStatistics
        Energy shifts/scales and average neighbour count baked into the model.
    model : torch.nn.Module, optional
        An existing NequIP ``GraphModel`` built from ``config`` and ``statistics``; a fresh one
        is built when omitted. It is moved to ``device``.
    device : str or torch.device
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA if available).

    Raises
    ------
    ConfigError
        If ``device`` is unknown or names a GPU that torch cannot use.

    Attributes
    ----------
    model : torch.nn.Module
        The NequIP ``GraphModel`` (kept in eval mode outside :meth:`fit`).
    history : TrainingHistory or None
        What the last :meth:`fit` did.
    trained : bool
        Whether the weights have been trained (by :meth:`fit`, or given as ``model``, or
        :meth:`load`-ed): only then does ``fit(warm_start=True)`` fine-tune with the warm
        settings of :class:`TrainConfig`; an untrained potential (:meth:`build`,
        ``copy(seed=...)``) trains with the cold settings from its current weights.
    optimizer_state : dict or None
        Adam's ``state_dict`` at the weights the last fit returned, kept when that fit's
        :class:`TrainConfig` had ``warm_carry_optimizer`` (None otherwise), for the next warm fit
        with ``warm_carry_optimizer``; saved as ``optimizer.pt``.
    """

    def __init__(
        self,
        config: ModelConfig,
        statistics: DataStatistics,
        model: torch.nn.Module | None = None,
        device: str | torch.device = "cpu",
    ):
        self._device = resolve_device(device)
        self._config = config
        self.statistics = statistics
        self.model = (model if model is not None else _build_model(config, statistics)).to(self._device)
        self.converter = GraphConverter(config.species, config.r_max)
        self.history: TrainingHistory | None = None
        self.trained: bool = model is not None
        self.optimizer_state: dict | None = None
        #: geometry digests of the frames (training + validation) of the last fit: a later warm
        #: fit counts the frames not among them as new (see fit's ``new_frames``); not saved
        self.fitted_digests: frozenset[bytes] | None = None
        #: compiled inference (see :meth:`enable_compiled`); None: eager only; not saved or copied
        self._compiled = None

    # --- properties ------------------------------------------------------------------------

    @property
    def config(self) -> ModelConfig:
        """The :class:`ModelConfig` that built the model."""
        return self._config

    @property
    def species(self) -> tuple[str, ...]:
        """Chemical symbols the model knows, in type-index order."""
        return self._config.species

    @property
    def device(self) -> torch.device:
        """The torch device holding the weights, where :meth:`fit` and :meth:`predict` run."""
        return self._device

    def to(self, device: str | torch.device) -> NequIPPotential:
        """Move the model to ``device`` (see :func:`~otf_statcut.mlip.device.resolve_device`);
        returns ``self``. Calculators made by :meth:`calculator` follow the move.

        Raises
        ------
        ConfigError
            If ``device`` is unknown or names a GPU that torch cannot use.
        """
        self._device = resolve_device(device)
        self.model.to(self._device)
        return self

    @property
    def feature_dim(self) -> int:
        """Width of the latent features returned by :meth:`predict` (``num_features``)."""
        return self._config.num_features

    def __repr__(self) -> str:
        c = self._config
        return (
            f"NequIPPotential(species={list(c.species)}, r_max={c.r_max}, num_layers={c.num_layers}, "
            f"l_max={c.l_max}, num_features={c.num_features}, model_dtype={c.model_dtype!r}, seed={c.seed}, "
            f"device='{self._device}')"
        )

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def build(
        cls, config: ModelConfig, frames: Sequence[Atoms], device: str | torch.device = "cpu"
    ) -> NequIPPotential:
        """A new, untrained potential whose energy shift/scale and average neighbour count come
        from ``frames``.

        Parameters
        ----------
        config : ModelConfig
            Architecture, species and seed.
        frames : sequence of ase.Atoms
            Labelled frames (energy and forces), typically the training set.
        device : str or torch.device
            ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``. The initial weights are
            drawn on the CPU, so they do not depend on the device.

        Raises
        ------
        ConfigError
            If ``device`` is unknown or names a GPU that torch cannot use.
        DataError
            If ``frames`` is empty, a frame is unlabelled, or holds an element not in
            ``config.species``.
        """
        device = resolve_device(device)
        ensure_nequip_state()
        converter = GraphConverter(config.species, config.r_max)
        graphs = converter.labelled_graphs(frames, "statistics frames")
        return cls(config, compute_statistics(frames, graphs, config.species), device=device)

    # --- training --------------------------------------------------------------------------

    def fit(
        self,
        train: Sequence[Atoms],
        val: Sequence[Atoms] | None = None,
        train_config: TrainConfig | None = None,
        warm_start: bool = True,
        new_frames: Sequence[Atoms] | None = None,
    ) -> NequIPPotential:
        """Train on labelled frames, on :attr:`device`; returns ``self``.

        Parameters
        ----------
        train : sequence of ase.Atoms
            Labelled training frames (energy, forces; stress is used where present).
        val : sequence of ase.Atoms, optional
            Labelled validation frames for the LR schedule, early stopping and the restored best
            weights. Without them the training loss is monitored.
        train_config : TrainConfig, optional
            Defaults to ``TrainConfig()``.
        warm_start : bool
            True: continue from the current weights and keep the current statistics. When the
            potential is :attr:`trained`, this is a fine-tuning fit: its learning rate ramps up
            to ``train_config.warm_learning_rate`` over ``warm_ramp_epochs``, it continues from
            the kept Adam state if ``warm_carry_optimizer``, and it returns the best epoch >= 1,
            so the weights always change (``history.weights_changed``). An untrained potential
            keeps its current weights but trains with the cold settings.
            False: rebuild the model from ``config`` (same seed) with statistics recomputed from
            ``train``, then train from scratch.
        new_frames : sequence of ase.Atoms, optional
            For a fine-tuning (warm) fit: the frames of ``train`` and ``val`` that are new since
            the previous fit (matched by geometry). Each epoch then trains on the new training
            frames plus a replay sample of the others (``train_config.warm_replay_frames``), and
            the monitored loss is measured on the new validation frames plus a sample of the
            others (``warm_val_frames``). None (default): the frames that were not in the
            previous fit of this potential (:attr:`fitted_digests`) are new, or all of them when
            that is unknown (e.g. after :meth:`load`).

        Graphs come from the process-wide graph cache
        (:data:`~otf_statcut.mlip.graphs.GRAPH_CACHE`): a frame's neighbour list is built once,
        not at every fit.

        Raises
        ------
        DataError
            If ``train`` is empty or a frame is unlabelled or has an unknown element.
        """
        train_config = train_config or TrainConfig()
        if len(train) == 0:
            raise DataError("fit needs at least one labelled training frame")
        ensure_nequip_state()
        val = list(val) if val is not None else []
        train_graphs = self.converter.labelled_graphs(train, "training frames")
        val_graphs = self.converter.labelled_graphs(val, "validation frames")
        if not warm_start:
            self.statistics = compute_statistics(train, train_graphs, self.species)
            self.model = _build_model(self._config, self.statistics).to(self._device)
        warm = bool(warm_start and self.trained)
        train_digests = [geometry_digest(a) for a in train]
        val_digests = [geometry_digest(a) for a in val]
        new_train = new_val = None
        if warm:
            if new_frames is not None:
                known = {geometry_digest(a) for a in new_frames}
                new_train = [i for i, d in enumerate(train_digests) if d in known]
                new_val = [i for i, d in enumerate(val_digests) if d in known]
            elif self.fitted_digests is not None:
                known = self.fitted_digests
                new_train = [i for i, d in enumerate(train_digests) if d not in known]
                new_val = [i for i, d in enumerate(val_digests) if d not in known]
        with float64_default():
            history = train_model(
                self.model,
                train_graphs,
                val_graphs,
                train_config,
                warm_start=warm,
                optimizer_state=self.optimizer_state if warm else None,
                new_train=new_train,
                new_val=new_val,
            )
        self.optimizer_state, history.optimizer_state = history.optimizer_state, None
        self.history = history
        self.trained = True
        self.fitted_digests = frozenset(train_digests) | frozenset(val_digests)
        return self

    # --- inference ---------------------------------------------------------------------------

    def predict(
        self,
        frames: Sequence[Atoms] | Atoms,
        batch_size: int = 16,
        stress: bool = True,
        features: bool = True,
    ) -> list[Prediction]:
        """Energy, forces, stress and latent features of each frame.

        Graphs are built and batched on the CPU; each batch is moved to :attr:`device` once and
        its outputs come back once.

        Parameters
        ----------
        frames : sequence of ase.Atoms, or one ase.Atoms
            Configurations (labels, if any, are ignored).
        batch_size : int
            Frames per model call.
        stress, features : bool
            Whether to return the stress and the latent features.

        Returns
        -------
        list of Prediction
            One per frame, in order, float64 NumPy arrays on the CPU whatever the device.

        Raises
        ------
        DataError
            If a frame has an element not among :attr:`species`.
        """
        if isinstance(frames, Atoms):
            frames = [frames]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from nequip.data import AtomicDataDict

        self.model.eval()
        graphs = [self.converter.graph(atoms, f"frame {i}") for i, atoms in enumerate(frames)]
        predictions: list[Prediction] = []
        with float64_default():
            for start in range(0, len(graphs), batch_size):
                batch = AtomicDataDict.to_(batch_graphs(graphs[start : start + batch_size]), self._device)
                # the AOTInductor model of the current weights when one is ready, else eager
                out = self.model(batch) if self._compiled is None else self._compiled.run(batch, self.model)
                predictions.extend(predictions_from_output(out, stress=stress, features=features))
        return predictions

    def enable_compiled(self, mode: str = "background", **kwargs):
        """Evaluate with an AOTInductor-compiled model of the current weights when one is
        ready (:meth:`predict`, the calculator), eager otherwise; see
        :mod:`otf_statcut.mlip.compiled` for the policy. ``mode``: ``"background"`` (compile
        in a background child process, eager meanwhile) or ``"blocking"`` (compile at the first
        evaluation with new weights). Keyword arguments go to
        :class:`~otf_statcut.mlip.compiled.CompiledManager` (``workdir``, ``example``,
        ``timeout``). Starts compiling now; returns the manager."""
        from .compiled import CompiledManager

        self.disable_compiled()
        self._compiled = CompiledManager(self, mode=mode, **kwargs)
        self._compiled.refresh()
        return self._compiled

    def disable_compiled(self) -> None:
        """Back to eager only (cancels a running compilation, removes the compiled files)."""
        if self._compiled is not None:
            self._compiled.close()
            self._compiled = None

    def compiled_status(self) -> dict:
        """State of compiled inference: ``{"state": "off"}`` or the manager's
        :meth:`~otf_statcut.mlip.compiled.CompiledManager.status` (``"ready"``, ``"compiling"``,
        ``"eager"``, ``"failed"`` with ``reason``, counters, compile times)."""
        return {"state": "off"} if self._compiled is None else self._compiled.status()

    def force_errors(self, frames: Sequence[Atoms] | Atoms, batch_size: int = 16) -> list[np.ndarray]:
        """Per frame, the per-atom force-error magnitudes ``|F_pred - F_ref|`` (eV/Å) of this
        potential on labelled frames (see
        :func:`otf_statcut.stats.magnitudes.force_error_magnitudes`).

        Parameters
        ----------
        frames : sequence of ase.Atoms, or one ase.Atoms
            Labelled frames (reference forces).
        batch_size : int
            Frames per model call.

        Returns
        -------
        list of ndarray
            One array of shape (n_atoms,) per frame, in order.

        Raises
        ------
        DataError
            If a frame has no reference forces or an element not among :attr:`species`.
        """
        from otf_statcut.data import frame_forces
        from otf_statcut.stats.magnitudes import force_error_magnitudes

        if isinstance(frames, Atoms):
            frames = [frames]
        references = []
        for i, atoms in enumerate(frames):
            try:
                references.append(frame_forces(atoms))
            except DataError as exc:
                raise DataError(f"force_errors: frame {i}: {exc}") from exc
        predictions = self.predict(frames, batch_size=batch_size, stress=False, features=False)
        return [force_error_magnitudes(p.forces, ref) for p, ref in zip(predictions, references)]

    def calculator(self, **kwargs):
        """An ASE calculator (energy, forces, stress, latent features) sharing this model, on
        :attr:`device`.

        Keyword arguments go to :class:`otf_statcut.mlip.calculator.PotentialCalculator`.
        """
        from .calculator import PotentialCalculator

        return PotentialCalculator(self, **kwargs)

    # --- persistence -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``potential.json``, ``weights.pt`` (and ``history.json`` after a fit) into
        ``directory`` (created if needed); returns the directory path.

        The weights are saved as CPU tensors whatever :attr:`device` is; the device itself is
        not saved (choose it when loading)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        torch_save(state, directory / WEIGHTS_FILE)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model_config": self._config.to_dict(),
            "statistics": self.statistics.to_dict(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if self.history is not None:
            history = _json_safe(self.history.to_dict())
            (directory / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
        optimizer_path = directory / OPTIMIZER_FILE
        if self.optimizer_state is not None:
            torch_save(_to_cpu(self.optimizer_state), optimizer_path)
        elif optimizer_path.exists():
            optimizer_path.unlink()  # a stale state of another model must not be picked up
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        species: Sequence[str] | None = None,
        device: str | torch.device | None = "cpu",
    ) -> NequIPPotential:
        """Load a potential saved by :meth:`save`.

        Parameters
        ----------
        directory : str or Path
            The saved model directory.
        species : sequence of str, optional
            Species the caller expects; a model for another species set (compared as sets) is
            refused.
        device : str, torch.device or None
            Where to put the model: ``"cpu"`` (default; also ``None``), ``"cuda"``, ``"cuda:N"``
            or ``"auto"``. The weights are read onto the CPU first (``map_location="cpu"``), so
            any saved directory loads on any device.

        Raises
        ------
        ConfigError
            If ``device`` is unknown or names a GPU that torch cannot use.
        DataError
            If the directory or a file in it is missing or unreadable, was written by something
            else, or the model's species differ from ``species``.
        """
        device = resolve_device(device)
        directory = Path(directory)
        meta_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not directory.is_dir():
            raise DataError(f"{directory}: model directory not found")
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise DataError(f"{path}: missing; not a saved NequIPPotential directory")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{meta_path}: unreadable JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: key 'format' must be {FORMAT!r}; not a saved NequIPPotential")
        if meta.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{meta_path}: key 'version' is {meta.get('version')!r}, expected {FORMAT_VERSION}"
            )
        try:
            config = ModelConfig.from_dict(meta["model_config"])
            statistics = DataStatistics.from_dict(meta["statistics"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{meta_path}: invalid model_config/statistics ({exc})") from exc
        if species is not None and set(species) != set(config.species):
            raise DataError(
                f"{directory}: model was trained for species {sorted(config.species)}, "
                f"expected {sorted(set(species))}"
            )
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt/foreign file
            raise DataError(f"{weights_path}: cannot load weights ({exc})") from exc
        potential = cls(config, statistics)
        try:
            potential.model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise DataError(f"{weights_path}: weights do not match the model in {meta_path} ({exc})") from exc
        potential.model.eval()
        potential.trained = True
        potential.optimizer_state = _load_optimizer_state(directory / OPTIMIZER_FILE, potential.model)
        return potential.to(device)

    def copy(self, seed: int | None = None) -> NequIPPotential:
        """A deep copy (same weights), or, with ``seed``, a freshly initialised model with the
        same statistics and ``config.seed = seed`` (for ensembles); on the same :attr:`device`."""
        if seed is not None:
            return NequIPPotential(replace(self._config, seed=seed), self.statistics, device=self._device)
        clone = NequIPPotential(self._config, self.statistics, device=self._device)
        clone.model.load_state_dict(self.model.state_dict())
        clone.model.eval()
        clone.trained = self.trained
        clone.optimizer_state = _copy.deepcopy(self.optimizer_state)
        clone.fitted_digests = self.fitted_digests
        return clone

    # --- NequIP-native forms (see otf_statcut.mlip.nequip_native) ------------------------------

    def to_nequip(self, path: str | Path, fmt: str = "package", example: Sequence[Atoms] | None = None,
                  **kwargs) -> Path:
        """Write this potential in a form nequip's own tools read: ``fmt="package"``
        (``.nequip.zip`` via ``nequip-package``, or a ``.ckpt`` checkpoint), ``"aotinductor"``
        (``.nequip.pt2`` for nequip's ASE calculator) or ``"lammps"`` (``.nequip.lmp.pt``
        ML-IAP, or ``.nequip.pt2`` for pair_nequip). ``example``: frames of the system (shapes
        for AOT compilation). See :func:`otf_statcut.mlip.nequip_native.export_potential`."""
        from .nequip_native import export_potential

        return export_potential(self, path, fmt, example=example, **kwargs)

    @classmethod
    def from_nequip(
        cls, path: str | Path, species: Sequence[str] | None = None, device: str | torch.device = "cpu"
    ) -> NequIPPotential:
        """A trained potential from a NequIP package (``.nequip.zip``), a nequip checkpoint or a
        saved potential folder; ``species``: elements it must know. See
        :func:`otf_statcut.mlip.nequip_native.load_nequip_model`."""
        from .nequip_native import load_nequip_model

        return load_nequip_model(path, species=species, device=device)


def _to_cpu(value):
    """A copy of a nested optimiser state with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _load_optimizer_state(path: Path, model: torch.nn.Module) -> dict | None:
    """The saved Adam state beside the weights, or None (with a warning when the file is there but
    unusable): a warm fit then starts from a fresh Adam."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt/foreign file
        log.warning("%s: unreadable optimiser state (%s); the next warm fit starts a fresh Adam", path, exc)
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    if not isinstance(state, dict) or not compatible_optimizer_state(state, params):
        log.warning("%s: optimiser state does not match the model; the next warm fit starts a fresh Adam",
                    path)
        return None
    return state


def _json_safe(value):
    """Replace non-finite floats by None so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
