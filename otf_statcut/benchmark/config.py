"""The benchmark input file (``otf-statcut benchmark input.yaml``): schema, defaults, validation.

Read once by :func:`load_benchmark_config` into frozen dataclasses, with the validation helpers
of the run schema (:mod:`otf_statcut.config`), so both inputs report mistakes alike: every
mistake raises :class:`~otf_statcut.errors.ConfigError` (or :class:`~otf_statcut.errors.DataError`
for a missing file) naming the input file, the key path, the value and what is allowed, with a
"did you mean" hint for a mistyped key.

Relative paths (``datasets[i].path``, ``output``) are resolved against the folder of the input
file, so an input works from any current directory.

Example::

    datasets:                       # one or more sampling sets, each in sampling order
      - name: li_aimd
        path: ../../shared/data/mlearn-Li/Li_training.extxyz   # or a list of files, read in order
        select: {group: [Vacancy, AIMD-NVT]}   # optional: keep frames whose info[key] is listed
        # formula: Li54             # optional: keep frames of these chemical formulas (ASE, Hill order)
        # first: 0                  # optional, after select/formula: skip the first frames,
        # stride: 1                 #   keep every stride-th frame of the rest,
        # count: 100                #   at most count of them
    methods: [ensemble, gp, distance, oracle, random]
    protocol:
      seed_frames: 5                # random frames the data set starts from
      seeds: 5                      # runs per dataset/method: a count k (seeds 0 … k-1) or a list [0, 3]
      val_fraction: 0.2             # of every batch of frames added, this fraction validates
      max_iterations: 12            # budget: active-learning iterations per dataset/method
      max_labels: null              # budget: frames (DFT labels) per dataset/method
      warm_start: true              # continue training from the previous iteration's weights
      include_halt_frame: true      # the first frame above the maximum cutoff is a candidate
      max_error: 1.0                # eV/Å, mapped onto the uncertainty scale as the maximum cutoff
      candidates: [maxwell, gamma, gengamma]
      robust: false
      sweep_points: 40              # F1 sweep grid per axis (stored for the Fig. 3 heat maps)
    model: {num_features: 16}       # ModelConfig fields (species come from the data)
    training: {max_epochs: 60}      # TrainConfig fields
    heads:                          # settings per head, passed to make_head(name, **settings)
      ensemble: {n_members: 3}
    output: results                 # optional; the command's -o overrides it
    threads: 1                      # torch threads per process

**Seeds.** Every (dataset, method, seed) is one run. The run seed ``s`` is the seed of every random
choice of that run: the seed frames and the train/validation split (``protocol.seed`` = ``s`` in
the run's :class:`ProtocolSettings`), the random method's draws, and, shifted by
:data:`SEED_STRIDE` · ``s``, the NequIP weight initialisation (``model.seed``, default 0; the
ensemble's extra members use ``model.seed + k``), the batch shuffling (``training.seed``, and
``heads.ensemble.train_config.seed`` when given) and the sparse GP's inducing points and
mini-batches (``heads.gp.seed``). Seed 0 is the single run of earlier versions. See
:meth:`BenchmarkConfig.for_seed`. The old key ``protocol.seed`` is refused with a message that
names ``protocol.seeds``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


# the run schema's validation helpers, so both inputs report mistakes the same way
from otf_statcut.schema import Context, build, check_keys, convert, read_yaml, spec
from otf_statcut.errors import ConfigError, DataError, UserError
from otf_statcut.mlip import ModelConfig, TrainConfig

__all__ = [
    "METHODS",
    "SEED_STRIDE",
    "DatasetSpec",
    "ProtocolSettings",
    "BenchmarkConfig",
    "load_benchmark_config",
    "parse_benchmark_config",
]

#: Methods a benchmark compares: the uncertainty heads of :mod:`otf_statcut.uq` by registry name.
METHODS = ("ensemble", "gp", "distance", "oracle", "random")
#: Methods whose σ is the true error: their uncertainty fit is Maxwell, like the error fit.
TRUE_ERROR_METHODS = ("oracle", "random")
#: A run with seed ``s`` shifts the model, training and GP seeds by ``SEED_STRIDE * s``, so the
#: ensemble members of one run (``model.seed + k``, k < n_members) never share a seed with another run.
SEED_STRIDE = 1000
#: Runs per dataset/method when ``protocol.seeds`` is not given.
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FORMULA = re.compile(r"^([A-Z][a-z]?[0-9]*)+$")
_FAMILIES = ("maxwell", "gamma", "gengamma")


@dataclass(frozen=True)
class DatasetSpec:
    """One sampling set.

    Attributes
    ----------
    name : str
        Group name in the results file (letters, digits, ``_.-``).
    paths : tuple of Path
        Labelled frames (extxyz, ASE db, or an HDF5 dataset this project wrote), resolved; several
        files are read in the order given and joined into one sampling order.
    select : tuple of (str, tuple of str)
        Keep only frames whose ``atoms.info[key]`` is one of the values, for every key given.
    formula : tuple of str
        Keep only frames whose chemical formula (``Atoms.get_chemical_formula()``, Hill order,
        e.g. ``Be36W12``) is listed (empty: every formula).
    first, stride, count : int, int, int or None
        After ``select`` and ``formula``: skip the first ``first`` frames, keep every
        ``stride``-th frame of the rest, and at most ``count`` of them (``frames[first::stride][:count]``).
    """

    name: str
    paths: tuple[Path, ...]
    select: tuple[tuple[str, tuple[str, ...]], ...] = ()
    first: int = 0
    count: int | None = None
    formula: tuple[str, ...] = ()
    stride: int = 1

    @property
    def path(self) -> Path:
        """The first (usually the only) file."""
        return self.paths[0]

    def describe(self) -> dict[str, Any]:
        path = [str(p) for p in self.paths] if len(self.paths) > 1 else str(self.path)
        return {"name": self.name, "path": path,
                "select": {k: list(v) for k, v in self.select}, "formula": list(self.formula),
                "first": self.first, "stride": self.stride, "count": self.count}


@dataclass(frozen=True)
class _DatasetInput:
    """A ``datasets[i]`` entry as written (checked by the run schema's helpers)."""

    name: str = spec(check=lambda x: bool(_NAME.match(x)),
                     expected="a name of letters, digits, '_', '.', '-'")
    path: Path | tuple[Path, ...] = spec(check=lambda x: not isinstance(x, tuple) or len(x) > 0,
                                         expected="a file or a non-empty list of files")
    select: Mapping[str, Any] = spec(factory=dict)
    formula: tuple[str, ...] = spec((), check=lambda t: all(_FORMULA.match(x) for x in t),
                                    expected="a chemical formula such as Be36W12, or a list of them")
    first: int = spec(0, check=lambda x: x >= 0, expected="an integer >= 0")
    stride: int = spec(1, check=lambda x: x >= 1, expected="an integer >= 1")
    count: int | None = spec(None, check=lambda x: x >= 1, expected="an integer >= 1 or null")


@dataclass(frozen=True)
class ProtocolSettings:
    """How the replay protocol runs (see :mod:`otf_statcut.benchmark.protocol`).

    Attributes
    ----------
    seed_frames : int
        Frames drawn at random (seeded) from the sampling set to start the data set.
    seeds : tuple of int
        The run seeds: every dataset/method runs once per seed (input: a count k for seeds
        0 … k-1, or a list of distinct integers >= 0; default 5 seeds, 0 … 4).
    seed : int
        The seed of *one* run: its seed-frame draw, train/validation split and random draws. Not an
        input key: :meth:`BenchmarkConfig.for_seed` sets it per run (``seeds[0]`` otherwise).
    val_fraction : float
        Fraction of each batch of new frames put into validation (at least one frame of the seed).
    max_iterations : int
        Budget: at most this many iterations (models trained) per dataset/method.
    max_labels : int or None
        Budget: at most this many frames in a data set (None: the sampling set's size).
    warm_start : bool
        Continue training from the previous iteration's weights (True) or retrain from scratch.
    include_halt_frame : bool
        Whether the first frame above the maximum cutoff may be added.
    max_error : float
        Error-scale bound (eV/Å) mapped onto the uncertainty scale as the maximum cutoff.
    candidates : tuple of str
        Families fitted to the validation σ of the uncertainty heads (best KS p-value wins).
    robust : bool
        Trimmed (robust) distribution fits.
    per_element : "auto", true or false
        One error fit, σ fit, N and pair of cutoffs per chemical element, each atom judged by its
        element's cutoffs; ``auto`` (default): when the data set has more than one element.
    sweep_points : int
        Points per axis of the stored precision/recall/F1 sweep grid.
    """

    seed_frames: int = spec(5, check=lambda x: x >= 2, expected="an integer >= 2")
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    seed: int = 0
    val_fraction: float = spec(0.2, check=lambda x: 0 < x < 1, expected="a fraction in (0, 1)")
    max_iterations: int = spec(20, check=lambda x: x >= 1, expected="an integer >= 1")
    max_labels: int | None = spec(None, check=lambda x: x >= 2, expected="an integer >= 2 or null")
    warm_start: bool = True
    include_halt_frame: bool = True
    max_error: float = spec(1.0, check=lambda x: x > 0, expected="an error bound > 0 (eV/Å; .inf for none)")
    candidates: tuple[str, ...] = spec(_FAMILIES, check=lambda t: len(t) > 0 and set(t) <= set(_FAMILIES),
                                       expected=f"a non-empty list from {list(_FAMILIES)}")
    robust: bool = False
    per_element: typing.Union[bool, str] = spec("auto", check=lambda x: x in ("auto", True, False),
                                                expected="auto, true or false")
    sweep_points: int = spec(40, check=lambda x: x >= 2, expected="an integer >= 2")


@dataclass(frozen=True)
class BenchmarkConfig:
    """A validated benchmark input.

    Attributes
    ----------
    source : Path or None
        The input file (None when parsed from a mapping without a file).
    text : str
        The input as written (stored in the results file).
    datasets : tuple of DatasetSpec
    methods : tuple of str
    protocol : ProtocolSettings
    model : dict
        :class:`~otf_statcut.mlip.ModelConfig` fields except ``species`` (taken from the data).
    training : TrainConfig
    heads : dict of str to dict
        Settings per method, passed to ``make_head(method, **settings)``.
    output : Path or None
        Output folder from the input (None: the command's default).
    threads : int
        Torch threads per process.
    """

    source: Path | None
    text: str
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[str, ...]
    protocol: ProtocolSettings = ProtocolSettings()
    model: dict = field(default_factory=dict)
    training: TrainConfig = TrainConfig()
    heads: dict = field(default_factory=dict)
    output: Path | None = None
    threads: int = 1

    def model_config(self, species: Sequence[str]) -> ModelConfig:
        """The :class:`ModelConfig` for a dataset's species."""
        return ModelConfig(species=tuple(species), **self.model)

    def head_settings(self, method: str) -> dict:
        """Settings of one method's head (empty if none given)."""
        return dict(self.heads.get(method, {}))

    def for_seed(self, seed: int) -> BenchmarkConfig:
        """The configuration of the run with seed ``seed`` (see the module notes on seeds).

        ``protocol.seed`` becomes ``seed``; ``model.seed``, ``training.seed``, ``heads.gp.seed``
        and ``heads.ensemble.train_config.seed`` (when given) are shifted by
        ``SEED_STRIDE * seed``. Seed 0 leaves every setting as written.
        """
        shift = SEED_STRIDE * int(seed)
        model = {**self.model, "seed": int(self.model.get("seed", 0)) + shift}
        training = dataclasses.replace(self.training, seed=self.training.seed + shift)
        heads = {k: dict(v) for k, v in self.heads.items()}
        gp = heads.setdefault("gp", {})
        gp["seed"] = int(gp.get("seed", 0)) + shift
        ensemble = heads.get("ensemble", {})
        given = ensemble.get("train_config")
        if isinstance(given, TrainConfig):
            ensemble["train_config"] = dataclasses.replace(given, seed=given.seed + shift)
        elif isinstance(given, Mapping):
            ensemble["train_config"] = {**given, "seed": int(given.get("seed", 0)) + shift}
        return dataclasses.replace(self, protocol=dataclasses.replace(self.protocol, seed=int(seed)),
                                   model=model, training=training, heads=heads)

    def settings(self) -> dict[str, Any]:
        """Resolved settings as JSON-ready data (stored in the results file)."""
        protocol = dataclasses.asdict(self.protocol)
        protocol.pop("seed")  # per run; the runs are protocol.seeds
        protocol["seeds"] = list(self.protocol.seeds)
        return {
            "datasets": [d.describe() for d in self.datasets],
            "methods": list(self.methods),
            "protocol": protocol,
            "model": dict(self.model),
            "training": self.training.to_dict(),
            "heads": {k: dict(v) for k, v in self.heads.items()},
        }

    def fingerprint(self) -> str:
        """Digest of the settings that determine the results.

        Budgets (``max_iterations``, ``max_labels``), the seeds, the method list and the dataset
        list are left out: raising a budget or adding a method or a seed continues an existing
        results file (every run is stored under its own seed).
        """
        settings = self.settings()
        protocol = dict(settings["protocol"])
        protocol.pop("max_iterations")
        protocol.pop("max_labels")
        protocol.pop("seeds")
        training = dict(settings["training"])
        training.pop("progress", None)
        data = {"protocol": protocol, "model": settings["model"], "training": training,
                "heads": settings["heads"]}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- loading
def load_benchmark_config(path) -> BenchmarkConfig:
    """Read and validate a benchmark input YAML file.

    Raises
    ------
    DataError
        If the input file or a dataset file does not exist.
    ConfigError
        For invalid YAML or any invalid key or value (the message names file, key, value and what
        is allowed).
    """
    path = Path(path)
    data, text = read_yaml(path, "benchmark input")
    return parse_benchmark_config(data, source=path, text=text)


def parse_benchmark_config(data: Any, *, source: Path | None = None, text: str = "") -> BenchmarkConfig:
    """Validate an already-parsed input mapping (see :func:`load_benchmark_config`)."""
    ctx = Context(str(source) if source is not None else "benchmark input",
                  source.parent if source is not None else Path.cwd())
    if not isinstance(data, Mapping):
        raise ctx.error("", data, "a mapping with the keys 'datasets' and 'methods'"
                        + (" (the file is empty)" if data is None else ""))
    check_keys(data, list(_TOP_LEVEL), "", ctx)
    for key in ("datasets", "methods"):
        if key not in data:
            raise ConfigError(f"{ctx.where}: missing key {key} ({_TOP_LEVEL[key]})")
    ctx.special[(ProtocolSettings, "seeds")] = _seeds
    datasets = _datasets(data["datasets"], ctx)
    methods = convert(data["methods"], tuple[Literal[METHODS], ...], "methods", ctx)
    if not methods or len(set(methods)) != len(methods):
        raise ctx.error("methods", data["methods"],
                        f"a non-empty list of distinct methods from {list(METHODS)}")
    if isinstance(data.get("protocol"), Mapping) and "seed" in data["protocol"]:
        raise ConfigError(f"{ctx.where}: protocol.seed is no longer read; use protocol.seeds (a count k "
                          f"for seeds 0 … k-1, or a list, e.g. seeds: [{data['protocol']['seed']!r}] for "
                          "that single seed)")
    protocol = build(ProtocolSettings, data.get("protocol"), "protocol", ctx)
    protocol = dataclasses.replace(protocol, seed=protocol.seeds[0])
    model = _fields(ModelConfig, data.get("model"), "model", ctx, skip=("species",))
    training = TrainConfig(**_fields(TrainConfig, data.get("training"), "training", ctx))
    heads = _heads(data.get("heads"), ctx)
    output = None if data.get("output") is None else convert(data["output"], Path, "output", ctx)
    threads = convert(data.get("threads", 1), int, "threads", ctx)
    if threads < 1:
        raise ctx.error("threads", threads, "an integer >= 1")
    return BenchmarkConfig(source=source, text=text, datasets=datasets, methods=methods, protocol=protocol,
                           model=model, training=training, heads=heads, output=output, threads=threads)


_TOP_LEVEL = {
    "datasets": "a list of {name, path} entries",
    "methods": f"a list from {list(METHODS)}",
    "protocol": "", "model": "", "training": "", "heads": "", "output": "", "threads": "",
}


def _seeds(section: Mapping, key: str, ctx: Context) -> tuple[int, ...]:
    """``protocol.seeds``: a count k (seeds 0 … k-1) or a non-empty list of distinct integers >= 0."""
    value = section["seeds"]
    expected = "a count k >= 1 (seeds 0 … k-1) or a non-empty list of distinct integers >= 0"

    def integer(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if integer(value):
        if value < 1:
            raise ctx.error(key, value, expected)
        return tuple(range(value))
    if not isinstance(value, list) or not value or not all(integer(x) and x >= 0 for x in value) \
            or len(set(value)) != len(value):
        raise ctx.error(key, value, expected)
    return tuple(int(x) for x in value)


def _datasets(value: Any, ctx: Context) -> tuple[DatasetSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.error("datasets", value, "a non-empty list of {name, path} entries")
    specs: list[DatasetSpec] = []
    for i, entry in enumerate(value):
        key = f"datasets[{i}]"
        parsed = build(_DatasetInput, entry, key, ctx)
        if parsed.name in {s.name for s in specs}:
            raise ctx.error(f"{key}.name", parsed.name, "a name not used by another dataset")
        paths = parsed.path if isinstance(parsed.path, tuple) else (parsed.path,)
        for j, path in enumerate(paths):
            if not path.is_file():
                where = f"{key}.path" + (f"[{j}]" if isinstance(parsed.path, tuple) else "")
                raise DataError(f"{ctx.where}: {where}: dataset file {path} not found")
        pairs = []
        for k, v in parsed.select.items():
            values = [v] if isinstance(v, (str, int, float)) and not isinstance(v, bool) else v
            if not isinstance(values, list) or not values:
                raise ctx.error(f"{key}.select.{k}", v, "a value or a non-empty list of values")
            pairs.append((str(k), tuple(str(x) for x in values)))
        specs.append(DatasetSpec(name=parsed.name, paths=paths, select=tuple(pairs), first=parsed.first,
                                 count=parsed.count, formula=parsed.formula, stride=parsed.stride))
    return tuple(specs)


def _fields(cls, value: Any, path: str, ctx: Context, skip: Sequence[str] = ()) -> dict:
    """Keyword arguments for ``cls`` (ModelConfig / TrainConfig), checked by building it once."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, f"a mapping of {cls.__name__} fields")
    for key in skip:
        if key in value:
            raise ConfigError(f"{ctx.where}: {path}.{key} is not allowed: the {key} come from each dataset")
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    check_keys(value, allowed, path + ".", ctx)
    hints = typing.get_type_hints(cls)
    out = {k: convert(v, hints[k], f"{path}.{k}", ctx) for k, v in value.items()}
    try:
        cls(**({"species": ("H",)} if "species" in skip else {}), **out)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{ctx.where}: {path}: {exc}") from None
    return out


def _heads(value: Any, ctx: Context) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.error("heads", value, "a mapping method -> head settings")
    tunable = [m for m in METHODS if m not in TRUE_ERROR_METHODS]
    check_keys(value, tunable, "heads.", ctx)
    heads = {}
    for name, settings in value.items():
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise ctx.error(f"heads.{name}", settings, "a mapping of head settings")
        _check_head(name, dict(settings), ctx)
        heads[name] = dict(settings)
    return heads


def _check_head(name: str, settings: dict, ctx: Context) -> None:
    """Build the head once so a bad setting fails now, not after an hour of training."""
    from otf_statcut.uq import make_head

    try:
        make_head(name, **settings)
    except (UserError, TypeError, ValueError) as exc:
        raise ConfigError(f"{ctx.where}: heads.{name}: {exc}") from None
