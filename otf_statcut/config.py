"""The run input file (``otf-statcut run input.yaml``): schema, defaults, validation.

Read once by :func:`load_run_config` into frozen dataclasses; every default is defined once, as
a dataclass field default below (the model and training defaults live in
:class:`~otf_statcut.mlip.ModelConfig` / :class:`~otf_statcut.mlip.TrainConfig`, the labeller
defaults in :mod:`otf_statcut.labelers.registry`, the head defaults in the head classes).
Every mistake raises :class:`~otf_statcut.errors.ConfigError` with one line naming the file,
the key path (``md.temperature_K``), the value and what is allowed; an unknown key gets a
"did you mean" suggestion. Only ``yaml.safe_load`` is used, and nothing named in the file is
imported.

Relative paths (``system.structure``, ``initial_data.file``, ``output.folder``) are resolved
against the folder of the input file, so an input works from any current directory.

Example (every section optional except ``system``)::

    system:
      builder: {element: Li, lattice: bcc, a: 3.44, supercell: [2, 2, 2], vacancies: 0}
      # structure: start.extxyz          # or: any file ASE reads (first frame)
    md:
      ensemble: langevin                 # langevin | npt | velocity_verlet | bussi | nose_hoover
      temperature_K: 600
      pressure_GPa: 0.0                  # npt only
      timestep_fs: 1.0
      steps: 1000
      friction: 0.01                     # 1/fs (langevin)
      taut_fs: 100.0                     # thermostat time (bussi, nose_hoover, npt)
      taup_fs: 1000.0                    # barostat time (npt)
      seed: 0
    initial_data:
      rattled: 8                         # k labels of rattled copies of the start structure ...
      rattle_stdev: 0.1                  # Å
      strain: 0.0                        # ± fractional isotropic strain of those copies
      # file: labelled.extxyz            # ... or labelled frames from a file
      val_fraction: 0.25                 # of the initial and of every new label
    mlip:
      model: {num_features: 16}          # ModelConfig fields (species come from the system)
      # model: {from: model.nequip.zip}  # ... or start from a NequIP package/checkpoint, fine-tuned
      train: {max_epochs: 100}           # TrainConfig fields
      threads: null                      # torch threads (null: torch's default)
      device: cpu                        # cpu | auto | cuda | cuda:N (where the NequIP models run)
    head: {name: ensemble, settings: {n_members: 3}}   # ensemble | gp | distance | random
    labeler:
      name: gpaw                         # gpaw | emt | lj | morse | lammps-snap
      settings: {ecut: 200, kpts: [2, 2, 2]}
      retries: 1
      max_force: 100.0                   # eV/Å; a larger force is an absurd label
      timeout_s: 3600                    # s per label; past it the label has failed
      max_energy_deviation: 1.0          # eV/atom from the model's prediction: an absurd label
      max_consecutive_failures: 5        # failed labels in a row that stop the run
    cutoffs:
      max_error: 1.0                     # eV/Å, mapped onto the uncertainty scale (maximum cutoff)
      candidates: [maxwell, gamma, gengamma]
      robust: false
      n: run                             # run: steps × atoms | remaining | an integer
    retrain:
      every: 10                          # new labels between retrains (and after every halt)
      warm_start: true
      train: {max_epochs: 40}            # TrainConfig overrides for retraining
    output:
      folder: runs/quickstart
      trajectory_every: 1
      checkpoint_every: 10
      flush_every: 1                     # HDF5 flush interval in steps (labels: always at once)
      progress: true
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError, DataError
from .schema import Context, build, check_keys, convert, plain, read_yaml, spec

__all__ = [
    "ENSEMBLES",
    "LATTICES",
    "N_POLICIES",
    "BuilderConfig",
    "SystemConfig",
    "MDConfig",
    "InitialDataConfig",
    "MLIPConfig",
    "HeadConfig",
    "LabelerConfig",
    "CutoffsConfig",
    "RetrainConfig",
    "OutputConfig",
    "RunConfig",
    "load_run_config",
    "parse_run_config",
]

#: Dynamics a run may use (``md.ensemble``).
ENSEMBLES = ("langevin", "npt", "velocity_verlet", "bussi", "nose_hoover")
#: Lattices the structure builder knows (``system.builder.lattice``), as in ``ase.build.bulk``.
LATTICES = ("bcc", "fcc", "hcp", "sc", "diamond")
#: Words allowed for ``cutoffs.n`` besides an integer.
N_POLICIES = ("run", "remaining")
HEADS = ("ensemble", "gp", "distance", "oracle", "random")
FAMILIES = ("maxwell", "gamma", "gengamma")


def _positive(x):
    """Finite and > 0 (``.inf`` is refused: an infinite friction or time step gives NaN dynamics)."""
    return math.isfinite(x) and x > 0


def _nonneg(x):
    return math.isfinite(x) and x >= 0


# ------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class BuilderConfig:
    """A bulk crystal built with ``ase.build.bulk``.

    Attributes
    ----------
    element : str
        Chemical symbol.
    lattice : {"bcc", "fcc", "hcp", "sc", "diamond"}
    a : float or None
        Lattice constant, Å (None: ASE's reference value).
    c : float or None
        Second lattice constant for hcp, Å.
    supercell : (int, int, int)
        Repetitions of the (cubic, where possible) unit cell.
    cubic : bool
        Use the conventional cubic cell (orthorhombic for hcp).
    vacancies : int
        Atoms removed at random (seeded with ``seed``).
    seed : int
        Seed of the vacancy choice.
    """

    element: str
    lattice: Literal["bcc", "fcc", "hcp", "sc", "diamond"] = "bcc"
    a: float | None = spec(None, check=lambda x: x is None or x > 0,
                           expected="a lattice constant > 0 (Å) or null")
    c: float | None = spec(None, check=lambda x: x is None or x > 0,
                           expected="a lattice constant > 0 (Å) or null")
    supercell: tuple[int, int, int] = spec((2, 2, 2), check=lambda t: min(t) >= 1,
                                           expected="three integers >= 1")
    cubic: bool = True
    vacancies: int = spec(0, check=_nonneg, expected="an integer >= 0")
    seed: int = 0


@dataclass(frozen=True)
class SystemConfig:
    """The starting structure: a file (first frame) or a builder; exactly one of them."""

    structure: Path | None = None
    builder: BuilderConfig | None = None


@dataclass(frozen=True)
class MDConfig:
    """The dynamics (ASE), in fs, K, GPa.

    Attributes
    ----------
    ensemble : {"langevin", "npt", "velocity_verlet", "bussi", "nose_hoover"}
        ``npt`` is ASE's isotropic MTK barostat with a Nosé-Hoover chain (needs stress).
    temperature_K : float
        Target temperature (and of the initial Maxwell-Boltzmann velocities).
    pressure_GPa : float
        External pressure (npt only).
    timestep_fs, steps
        Time step and number of MD steps of the whole run.
    friction : float
        Langevin friction, 1/fs.
    taut_fs, taup_fs : float
        Thermostat (bussi, nose_hoover, npt) and barostat (npt) time constants, fs.
    seed : int
        Seed of the initial velocities and of the thermostat's random numbers.
    """

    ensemble: Literal["langevin", "npt", "velocity_verlet", "bussi", "nose_hoover"] = "langevin"
    temperature_K: float = spec(300.0, check=_positive, expected="a temperature > 0 (K)")
    pressure_GPa: float = 0.0
    timestep_fs: float = spec(1.0, check=_positive, expected="a time step > 0 (fs)")
    steps: int = spec(1000, check=lambda x: x >= 1, expected="an integer >= 1")
    friction: float = spec(0.01, check=_positive, expected="a friction > 0 (1/fs)")
    taut_fs: float = spec(100.0, check=_positive, expected="a time > 0 (fs)")
    taup_fs: float = spec(1000.0, check=_positive, expected="a time > 0 (fs)")
    seed: int = 0


@dataclass(frozen=True)
class InitialDataConfig:
    """The labelled frames the first model is trained on.

    Attributes
    ----------
    file : Path or None
        Labelled frames (extxyz, ASE db, ...) to start from; when None, ``rattled`` copies of
        the starting structure are labelled.
    rattled : int
        Number of rattled copies to label (>= 2: at least one trains, one validates).
    rattle_stdev : float
        Standard deviation of the Gaussian displacements, Å.
    strain : float
        Each copy's cell is scaled by a random factor in ``1 ± strain`` (isotropic).
    val_fraction : float
        Fraction of the initial frames, and of later labels, used for validation (head
        calibration, cutoff fits, early stopping).
    seed : int
        Seed of the displacements, strains and the split.
    """

    file: Path | None = None
    rattled: int = spec(8, check=lambda x: x >= 2, expected="an integer >= 2")
    rattle_stdev: float = spec(0.1, check=_positive, expected="a displacement > 0 (Å)")
    strain: float = spec(0.0, check=lambda x: 0 <= x < 0.5, expected="a fraction in [0, 0.5)")
    val_fraction: float = spec(0.25, check=lambda x: 0 < x < 1, expected="a fraction in (0, 1)")
    seed: int = 0


@dataclass(frozen=True)
class MLIPConfig:
    """NequIP settings: ``model`` holds ModelConfig fields except ``species``, or only
    ``from: PATH`` (a NequIP package ``.nequip.zip``, a nequip checkpoint, or a saved model folder
    such as ``runs/x/models/0003``: the run starts from that model and fine-tunes it; its species
    must include the system's elements, and ``retrain.warm_start`` must stay true), ``train``
    TrainConfig fields, ``threads`` the torch threads, ``compile`` the AOTInductor-compiled
    inference of the driving model (:mod:`otf_statcut.mlip.compiled`): ``off`` (eager),
    ``background`` (compiled in a background process after each fit, eager until it is ready:
    never blocks the MD) or ``blocking`` (compiled before the first step with new weights)."""

    model: Mapping[str, Any] = spec(factory=dict)
    train: Mapping[str, Any] = spec(factory=dict)
    threads: int | None = spec(None, check=lambda x: x is None or x >= 1, expected="an integer >= 1 or null")
    device: str = spec("cpu", check=lambda x: _device_available(x),
                       expected="cpu, auto (cuda if available), or cuda / cuda:N on a machine with a "
                                "CUDA GPU")
    compile: Literal["off", "background", "blocking"] = "off"

    @property
    def model_from(self) -> Path | None:
        """The model file or folder the run starts from (``mlip.model.from``), or None."""
        return self.model.get("from")


def _device_available(name: str) -> bool:
    from .mlip.device import resolve_device

    try:
        resolve_device(name)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class HeadConfig:
    """Uncertainty head by registry name, with its constructor settings.

    The default is the ensemble: on the few validation frames a run starts from, the latent
    distance head can fit σ = σ₀ (all distance weights zero), a constant that never selects a
    configuration (seen on 2 validation frames of 16 Li atoms).
    """

    name: Literal["ensemble", "gp", "distance", "oracle", "random"] = "ensemble"
    settings: Mapping[str, Any] = spec(factory=dict)


@dataclass(frozen=True)
class LabelerConfig:
    """Reference method by registry name, with its settings (see :mod:`otf_statcut.labelers.registry`).

    Attributes
    ----------
    name : {"gpaw", "emt", "lj", "morse", "lammps-snap"}
    settings : dataclass
        The labeller's settings dataclass (e.g. :class:`~otf_statcut.labelers.gpaw.GPAWSettings`).
    retries : int
        Extra attempts after a failed label.
    max_force : float
        Largest accepted force on an atom, eV/Å.
    timeout_s : float
        Wall-time limit of one label (all its attempts), s. A label past it is a failed label;
        when the labeller cannot be interrupted (a collective DFT call under MPI, a hang in
        compiled code) the run records the failure and stops at its last checkpoint, resumable,
        and that configuration is not tried again (see :mod:`otf_statcut.engine.label_policy`).
    max_energy_deviation : float
        Largest accepted difference, eV/atom, between a label's energy per atom and the energy
        the run expects for it (the model's prediction; for the initial labels, the median of
        the labels so far). Beyond it the label is a failed label.
    max_consecutive_failures : int
        Failed labels in a row after which the run stops (status ``stopped``, resumable).
    """

    name: Literal["gpaw", "emt", "lj", "morse", "lammps-snap"] = "gpaw"
    settings: Any = None
    retries: int = spec(1, check=_nonneg, expected="an integer >= 0")
    max_force: float = spec(100.0, check=_positive, expected="a force > 0 (eV/Å)")
    timeout_s: float = spec(3600.0, check=_positive, expected="a time > 0 (s)")
    max_energy_deviation: float = spec(1.0, check=_positive, expected="an energy > 0 (eV/atom)")
    max_consecutive_failures: int = spec(5, check=_positive, expected="an integer >= 1")


@dataclass(frozen=True)
class CutoffsConfig:
    """Statistical cutoffs.

    Attributes
    ----------
    max_error : float
        Error bound (eV/Å) mapped onto the uncertainty scale as the maximum cutoff.
    candidates : tuple of str
        Families fitted to the validation σ (best KS p-value wins).
    robust : bool
        Trimmed (robust) fits.
    n : "run", "remaining" or int
        The sampling-set size N of the minimum cutoff (CDF = 1 - 1/N), i.e. how many per-atom
        σ values the run screens: ``run`` = ``md.steps × n_atoms`` (fixed for the run),
        ``remaining`` = (steps left) × n_atoms at each refit (at least n_atoms), or a fixed
        integer; counted per element with per-element cutoffs.
    per_element : "auto", true or false
        One error fit, σ fit, N and pair of cutoffs per chemical element, each atom judged by its
        element's cutoffs; ``auto`` (default): when the system has more than one element.
    """

    max_error: float = spec(1.0, check=lambda x: x > 0, expected="an error bound > 0 (eV/Å; .inf for none)")
    candidates: tuple[str, ...] = spec(FAMILIES, check=lambda t: len(t) > 0 and set(t) <= set(FAMILIES),
                                       expected=f"a non-empty list from {list(FAMILIES)}")
    robust: bool = False
    n: Union[int, str] = spec("run", check=lambda x: x in N_POLICIES if isinstance(x, str) else x >= 2,
                              expected=f"one of {list(N_POLICIES)} or an integer >= 2")
    per_element: Union[bool, str] = spec("auto", check=lambda x: x in ("auto", True, False),
                                         expected="auto, true or false")

    @property
    def per_element_flag(self) -> bool | None:
        """``per_element`` as the fit cycle takes it (None: auto)."""
        return None if self.per_element == "auto" else bool(self.per_element)


@dataclass(frozen=True)
class RetrainConfig:
    """When and how the model is retrained during the run.

    Attributes
    ----------
    every : int
        Retrain after this many new labels (a maximum-cutoff event always retrains at once).
    warm_start : bool
        Continue from the current weights (True) or retrain from scratch (False).
    train : mapping
        TrainConfig fields overriding ``mlip.train`` for retraining (e.g. fewer epochs).
    """

    every: int = spec(10, check=lambda x: x >= 1, expected="an integer >= 1")
    warm_start: bool = True
    train: Mapping[str, Any] = spec(factory=dict)


@dataclass(frozen=True)
class OutputConfig:
    """Where and how often the run writes.

    Attributes
    ----------
    folder : Path
        Run folder (``run.h5``, ``models/``, ``checkpoint/``).
    trajectory_every : int
        Write a trajectory row every this many steps (labelled steps are always written).
    checkpoint_every : int
        Write a checkpoint (positions, momenta, thermostat RNG, model) every this many steps.
    flush_every : int
        Flush the HDF5 file every this many steps (1: every step). Steps with a label, a new
        model or a checkpoint are always flushed at once; larger values only save time on
        trusted steps (rows after the last checkpoint are recomputed on resume anyway).
    progress : bool
        Show a progress bar on stderr.
    """

    folder: Path = Path("otf-run")
    trajectory_every: int = spec(1, check=lambda x: x >= 1, expected="an integer >= 1")
    checkpoint_every: int = spec(10, check=lambda x: x >= 1, expected="an integer >= 1")
    flush_every: int = spec(1, check=lambda x: x >= 1, expected="an integer >= 1")
    progress: bool = True


@dataclass(frozen=True)
class WalkerConfig:
    """One MD walker: what it changes from the run's ``system`` and ``md`` (None: keep).

    Attributes
    ----------
    name : str
        Label in the run file and the summary (default ``w<index>``).
    system : SystemConfig or None
        Its own starting structure (e.g. a vacancy cell).
    ensemble, temperature_K, pressure_GPa, steps, seed
        Its own dynamics settings (``seed`` defaults to ``md.seed + index``).
    """

    name: str = ""
    system: SystemConfig | None = None
    ensemble: Literal["langevin", "npt", "velocity_verlet", "bussi", "nose_hoover"] | None = None
    temperature_K: float | None = spec(None, check=lambda x: x is None or _positive(x),
                                       expected="a temperature > 0 (K)")
    pressure_GPa: float | None = None
    steps: int | None = spec(None, check=lambda x: x is None or x >= 1, expected="an integer >= 1")
    seed: int | None = None


@dataclass(frozen=True)
class WalkerProductConfig:
    """Walkers as a product: every combination of the listed values (an empty list keeps the
    run's value)."""

    system: tuple[SystemConfig, ...] = ()
    temperature_K: tuple[float, ...] = spec((), check=lambda t: all(_positive(x) for x in t),
                                            expected="a list of temperatures > 0 (K)")
    pressure_GPa: tuple[float, ...] = ()
    ensemble: tuple[Literal["langevin", "npt", "velocity_verlet", "bussi", "nose_hoover"], ...] = ()


@dataclass(frozen=True)
class WalkersConfig:
    """Many MD walkers, one learner (see :mod:`otf_statcut.engine.walkers`).

    Attributes
    ----------
    list : tuple of WalkerConfig
        The walkers one by one.
    product : WalkerProductConfig or None
        Or: every combination of structures × temperatures × pressures × ensembles.
    label_groups : int
        0: every MPI rank labels together, one label at a time (rank 0 included; the
        single-walker scheme). G >= 1: rank 0 drives the MD and the MLIP and the other ranks form
        G groups that label different walkers' configurations at the same time.
    converged_after_fs : float
        A walker that went this long (simulated time) without a label is reported converged.
    stop_converged : bool
        Stop a converged walker early (its remaining steps are skipped).
    """

    list: tuple[WalkerConfig, ...] = ()
    product: WalkerProductConfig | None = None
    label_groups: int = spec(0, check=_nonneg, expected="an integer >= 0")
    converged_after_fs: float = spec(500.0, check=_positive, expected="a time > 0 (fs)")
    stop_converged: bool = False


@dataclass(frozen=True)
class Walker:
    """One expanded walker: its index, name, starting structure and dynamics."""

    index: int
    name: str
    system: SystemConfig
    md: MDConfig


@dataclass(frozen=True)
class RunConfig:
    """A validated run input.

    Attributes
    ----------
    source : Path or None
        The input file (None when parsed from a mapping).
    text : str
        The input as written (stored in the run's HDF5 file).
    """

    system: SystemConfig
    md: MDConfig = MDConfig()
    initial_data: InitialDataConfig = InitialDataConfig()
    mlip: MLIPConfig = MLIPConfig()
    head: HeadConfig = HeadConfig()
    labeler: LabelerConfig = LabelerConfig()
    cutoffs: CutoffsConfig = CutoffsConfig()
    retrain: RetrainConfig = RetrainConfig()
    output: OutputConfig = OutputConfig()
    walkers: WalkersConfig | None = None
    source: Path | None = field(default=None, compare=False)
    text: str = field(default="", compare=False)

    def model_config(self, species):
        """The :class:`~otf_statcut.mlip.ModelConfig` for the run's species."""
        from .mlip import ModelConfig

        if self.mlip.model_from is not None:
            raise ValueError("mlip.model.from is set: the model comes from that file, not from a ModelConfig")
        return ModelConfig(species=tuple(species), **dict(self.mlip.model))

    def train_config(self, retrain: bool = False):
        """The :class:`~otf_statcut.mlip.TrainConfig` of the first fit, or of retraining."""
        from .mlip import TrainConfig

        values = dict(self.mlip.train)
        if retrain:
            values.update(self.retrain.train)
        return TrainConfig(**values)

    def walker_list(self) -> list[Walker]:
        """The walkers of the run: one (the run's ``system`` and ``md``) without a ``walkers``
        section, else the list or the product, each with its settings filled in."""
        md, system = self.md, self.system
        if self.walkers is None:
            return [Walker(0, "w0", system, md)]
        entries: list[dict] = []
        if self.walkers.list:
            for w in self.walkers.list:
                entries.append({k: getattr(w, k) for k in ("name", "system", "ensemble", "temperature_K",
                                                            "pressure_GPa", "steps", "seed")})
        else:
            import itertools

            p = self.walkers.product
            axes = {"system": p.system or (None,), "temperature_K": p.temperature_K or (None,),
                    "pressure_GPa": p.pressure_GPa or (None,), "ensemble": p.ensemble or (None,)}
            for combo in itertools.product(*axes.values()):
                entries.append(dict(zip(axes, combo)))
        out = []
        for i, e in enumerate(entries):
            changes = {k: e[k] for k in ("ensemble", "temperature_K", "pressure_GPa", "steps")
                       if e.get(k) is not None}
            changes["seed"] = e["seed"] if e.get("seed") is not None else md.seed + i
            name = e.get("name") or _walker_name(i, e)
            out.append(Walker(i, name, e.get("system") or system, dataclasses.replace(md, **changes)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Resolved settings as JSON-ready data (paths as strings)."""
        return plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_SECTIONS = {"system": SystemConfig, "md": MDConfig, "initial_data": InitialDataConfig, "mlip": MLIPConfig,
             "head": HeadConfig, "labeler": LabelerConfig, "cutoffs": CutoffsConfig,
             "retrain": RetrainConfig, "output": OutputConfig, "walkers": WalkersConfig}


def _walker_name(index: int, entry: Mapping) -> str:
    """``w<index>`` plus what distinguishes the walker (``w2-900K``, ``w3-vacancy1``)."""
    parts = [f"w{index}"]
    if entry.get("temperature_K") is not None:
        parts.append(f"{entry['temperature_K']:g}K")
    if entry.get("pressure_GPa") is not None:
        parts.append(f"{entry['pressure_GPa']:g}GPa")
    if entry.get("ensemble") is not None:
        parts.append(str(entry["ensemble"]))
    system = entry.get("system")
    if system is not None and system.builder is not None and system.builder.vacancies:
        parts.append(f"vacancy{system.builder.vacancies}")
    elif system is not None and system.structure is not None:
        parts.append(Path(system.structure).stem)
    return "-".join(parts)


# ------------------------------------------------------------------------------ loading
def load_run_config(path) -> RunConfig:
    """Read and validate a run input YAML file.

    Raises
    ------
    DataError
        If the file (or a file it names) does not exist.
    ConfigError
        For invalid YAML or any invalid key or value (one line naming file, key, value, allowed).
    """
    path = Path(path)
    data, text = read_yaml(path, "run input")
    return parse_run_config(data, source=path, text=text)


def parse_run_config(data: Any, *, source: Path | None = None, text: str = "") -> RunConfig:
    """Validate an already-parsed input mapping (see :func:`load_run_config`)."""
    ctx = Context(str(source) if source is not None else "run input",
                  source.parent if source is not None else Path.cwd(), special=_SPECIAL)
    if not isinstance(data, Mapping):
        expected = "a mapping with at least the key 'system'"
        raise ctx.error("", data, expected if data is not None else expected + " (the file is empty)")
    check_keys(data, list(_SECTIONS), "", ctx)
    if "system" not in data:
        raise ConfigError(f"{ctx.where}: missing section 'system' (give system.structure or system.builder)")
    sections = {name: build(cls, data.get(name), name, ctx) for name, cls in _SECTIONS.items()
                if name != "walkers" or data.get("walkers") is not None}
    config = RunConfig(**sections, source=source, text=text)
    _cross_checks(config, data, ctx)
    return config


# ------------------------------------------------------------------------------ special fields
def _labeler_settings(section: Mapping, path: str, ctx: Context):
    """``labeler.settings`` is validated against the settings dataclass of ``labeler.name``."""
    from .labelers.registry import settings_class

    cls = settings_class(section.get("name", LabelerConfig.name))  # the name was checked before
    try:
        return build(cls, section.get("settings"), path, ctx)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a settings class's own __post_init__ check
        raise ConfigError(f"{ctx.where}: {path}: {exc}") from None


def _mlip_fields(cls_name: str):
    def converter(section: Mapping, path: str, ctx: Context):
        import otf_statcut.mlip as mlip

        cls = getattr(mlip, cls_name)
        value = section.get(path.rsplit(".", 1)[1])
        if value is None:
            return types.MappingProxyType({})
        if not isinstance(value, Mapping):
            raise ctx.error(path, value, f"a mapping of {cls_name} fields")
        skip = ("species",) if cls_name == "ModelConfig" else ()
        allowed = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
        if "species" in value and skip:
            raise ConfigError(f"{ctx.where}: {path}.species is not allowed: the species come from the system "
                              "and the initial data")
        check_keys(value, allowed, path + ".", ctx)
        hints = typing.get_type_hints(cls)
        out = {k: convert(v, hints[k], f"{path}.{k}", ctx) for k, v in value.items()}
        try:
            cls(**({"species": ("H",)} if skip else {}), **out)
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{ctx.where}: {path}: {exc}") from None
        return types.MappingProxyType(out)

    return converter


def _model_section(section: Mapping, path: str, ctx: Context):
    """``mlip.model``: ModelConfig fields, or ``{from: PATH}`` alone (resolved against the input's
    folder; the file must exist)."""
    value = section.get("model")
    if not isinstance(value, Mapping) or "from" not in value:
        return _mlip_fields("ModelConfig")(section, path, ctx)
    others = sorted(str(k) for k in value if k != "from")
    if others:
        keys = ", ".join(f"{path}.{k}" for k in others)
        raise ConfigError(f"{ctx.where}: {path}: give either {path}.from (the architecture comes from that "
                          f"model) or ModelConfig fields, not both; remove {keys}")
    source = value["from"]
    if not isinstance(source, str) or not source.strip():
        raise ctx.error(f"{path}.from", source, "the path of a NequIP package (.nequip.zip), a nequip "
                        "checkpoint or a saved model folder")
    source = Path(source).expanduser()
    source = source if source.is_absolute() else (ctx.base / source).resolve()
    if not source.exists():
        raise DataError(f"{ctx.where}: {path}.from: {source} not found")
    return types.MappingProxyType({"from": source})


def _check_model_from(config: RunConfig, ctx: Context) -> None:
    """With ``mlip.model.from``: the model must know the system's elements (read cheaply from
    the file, before any work), and retraining must keep its weights."""
    source = config.mlip.model_from
    if source is None:
        return
    from .mlip.nequip_native import inspect_nequip_model

    try:
        species = inspect_nequip_model(source).species  # also refuses architectures it cannot train
    except DataError as exc:
        raise ConfigError(f"{ctx.where}: mlip.model.from: {exc}") from None
    system = config.system
    elements: set[str] = set()
    if system.builder is not None:
        elements.add(system.builder.element)
    elif system.structure is not None:
        import ase.io

        try:
            elements.update(ase.io.read(system.structure, index=0).get_chemical_symbols())
        except Exception:  # noqa: BLE001 - an unreadable structure is reported where it is built
            pass
    missing = sorted(elements - set(species))
    if missing:
        raise ConfigError(f"{ctx.where}: mlip.model.from: the model {source.name} knows {list(species)}, not "
                          f"{missing} of the system; choose a model trained for these elements")
    if not config.retrain.warm_start:
        raise ConfigError(f"{ctx.where}: retrain.warm_start = false with mlip.model.from: a cold retrain "
                          "rebuilds the model from fresh weights and would discard the pretrained ones; use "
                          "true")


def _head_settings(section: Mapping, path: str, ctx: Context):
    """``head.settings`` must be constructor arguments of the named head."""
    import inspect

    value = section.get("settings")
    if value is None:
        return types.MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, "a mapping of head settings")
    name = section.get("name", HeadConfig.name)
    if name not in HEADS:
        return types.MappingProxyType(dict(value))  # the name itself is reported by the 'name' field
    from .uq import HEADS as registry

    cls = registry[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "settings")]
    check_keys(value, allowed, path + ".", ctx)
    try:
        cls(**value)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{ctx.where}: {path}: {exc}") from None
    return types.MappingProxyType(dict(value))


_SPECIAL = {
    (LabelerConfig, "settings"): _labeler_settings,
    (MLIPConfig, "model"): _model_section,
    (MLIPConfig, "train"): _mlip_fields("TrainConfig"),
    (RetrainConfig, "train"): _mlip_fields("TrainConfig"),
    (HeadConfig, "settings"): _head_settings,
}


def _check_walkers(config: RunConfig, ctx: Context) -> None:
    w = config.walkers
    if w is None:
        return
    if bool(w.list) == (w.product is not None):
        raise ConfigError(f"{ctx.where}: walkers: give exactly one of walkers.list (walkers one by one) or "
                          "walkers.product (structures × temperatures × ...)")
    walkers = config.walker_list()
    names = [x.name for x in walkers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{ctx.where}: walkers: names {repeated} are used twice; give each walker its own name")
    for walker, entry in zip(walkers, w.list or [None] * len(walkers)):
        system = walker.system
        where = f"walkers.list[{walker.index}].system" if entry is not None else "walkers.product.system"
        if (system.structure is None) == (system.builder is None):
            raise ConfigError(f"{ctx.where}: {where}: give exactly one of structure (a file) or builder")
        if system.structure is not None and not system.structure.is_file():
            raise DataError(f"{ctx.where}: {where}.structure: file {system.structure} not found")


def _cross_checks(config: RunConfig, data: Mapping, ctx: Context) -> None:
    _check_walkers(config, ctx)
    system = config.system
    if (system.structure is None) == (system.builder is None):
        raise ConfigError(f"{ctx.where}: system: give exactly one of system.structure (a file) "
                          "or system.builder (element, lattice, ...)")
    if system.structure is not None and not system.structure.is_file():
        raise DataError(f"{ctx.where}: system.structure: file {system.structure} not found")
    if system.builder is not None:
        from ase.data import atomic_numbers

        if system.builder.element not in atomic_numbers or system.builder.element == "X":
            raise ctx.error("system.builder.element", system.builder.element,
                            "a chemical symbol such as 'Li'")
    init = data.get("initial_data") or {}
    if isinstance(init, Mapping) and "file" in init and "rattled" in init:
        raise ConfigError(f"{ctx.where}: initial_data: give initial_data.file or initial_data.rattled, "
                          "not both")
    if config.initial_data.file is not None and not config.initial_data.file.is_file():
        raise DataError(f"{ctx.where}: initial_data.file: file {config.initial_data.file} not found")
    if config.labeler.settings is None:  # no 'settings' key: the labeller's defaults
        from .labelers.registry import settings_class

        object.__setattr__(config.labeler, "settings", settings_class(config.labeler.name)())
    if config.head.name == "oracle":
        raise ConfigError(f"{ctx.where}: head.name = 'oracle' is invalid for a run: the oracle needs the "
                          "reference forces of every step (use it in `otf-statcut benchmark`); expected one "
                          "of ensemble, gp, distance, random")
    _check_model_from(config, ctx)
    if not config.output.folder.is_absolute():  # the default folder, like given ones, sits beside the input
        object.__setattr__(config.output, "folder", (ctx.base / config.output.folder).resolve())
