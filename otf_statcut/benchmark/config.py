"""The benchmark input file (``otf-statcut benchmark input.yaml``): schema, defaults, validation.

Read once by :func:`load_benchmark_config` into frozen dataclasses; every mistake raises
:class:`~otf_statcut.errors.ConfigError` (or :class:`~otf_statcut.errors.DataError` for a
missing file) naming the input file, the key and what is expected.

Relative paths (``datasets[i].path``, ``output``) are resolved against the folder of the input
file, so an input works from any current directory.

Example::

    datasets:                       # one or more sampling sets, each in sampling order
      - name: li_aimd
        path: ../../shared/data/mlearn-Li/Li_training.extxyz
        select: {group: [Vacancy, AIMD-NVT]}   # optional: keep frames whose info[key] is listed
        # first: 0                  # optional: slice of the frames kept, in file order
        # count: 100
    methods: [ensemble, gp, distance, oracle, random]
    protocol:
      seed_frames: 5                # random frames the data set starts from
      seed: 0
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
      ensemble: {n_models: 3}
    output: results                 # optional; the command's -o overrides it
    threads: 1                      # torch threads per process
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otf_statcut.errors import ConfigError, DataError, UserError
from otf_statcut.mlip import ModelConfig, TrainConfig

__all__ = [
    "METHODS",
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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FAMILIES = ("maxwell", "gamma", "gengamma")


@dataclass(frozen=True)
class DatasetSpec:
    """One sampling set.

    Attributes
    ----------
    name : str
        Group name in the results file (letters, digits, ``_.-``).
    path : Path
        Labelled frames (extxyz, ASE db, or an HDF5 dataset this project wrote), resolved.
    select : tuple of (str, tuple of str)
        Keep only frames whose ``atoms.info[key]`` is one of the values, for every key given.
    first, count : int, int or None
        After ``select``, keep frames ``first : first + count`` of the file order.
    """

    name: str
    path: Path
    select: tuple[tuple[str, tuple[str, ...]], ...] = ()
    first: int = 0
    count: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "select": {k: list(v) for k, v in self.select},
                "first": self.first, "count": self.count}


@dataclass(frozen=True)
class ProtocolSettings:
    """How the replay protocol runs (see :mod:`otf_statcut.benchmark.protocol`).

    Attributes
    ----------
    seed_frames : int
        Frames drawn at random (seeded) from the sampling set to start the data set.
    seed : int
        Seed of the seed-frame draw, the train/validation split and the random method.
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
    sweep_points : int
        Points per axis of the stored precision/recall/F1 sweep grid.
    """

    seed_frames: int = 5
    seed: int = 0
    val_fraction: float = 0.2
    max_iterations: int = 20
    max_labels: int | None = None
    warm_start: bool = True
    include_halt_frame: bool = True
    max_error: float = 1.0
    candidates: tuple[str, ...] = _FAMILIES
    robust: bool = False
    sweep_points: int = 40


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

    def settings(self) -> dict[str, Any]:
        """Resolved settings as JSON-ready data (stored in the results file)."""
        return {
            "datasets": [d.describe() for d in self.datasets],
            "methods": list(self.methods),
            "protocol": dataclasses.asdict(self.protocol),
            "model": dict(self.model),
            "training": self.training.to_dict(),
            "heads": {k: dict(v) for k, v in self.heads.items()},
        }

    def fingerprint(self) -> str:
        """Digest of the settings that determine the results.

        Budgets (``max_iterations``, ``max_labels``), the method list and the dataset list are
        left out: raising a budget or adding a method continues an existing results file.
        """
        settings = self.settings()
        protocol = dict(settings["protocol"])
        protocol.pop("max_iterations")
        protocol.pop("max_labels")
        training = dict(settings["training"])
        training.pop("progress", None)
        data = {"protocol": protocol, "model": settings["model"], "training": training, "heads": settings["heads"]}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- loading
def load_benchmark_config(path) -> BenchmarkConfig:
    """Read and validate a benchmark input YAML file.

    Raises
    ------
    DataError
        If the file does not exist or is not valid YAML.
    ConfigError
        For any invalid key or value (the message names file, key, value and what is allowed).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: benchmark input file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML ({problem})") from exc
    return parse_benchmark_config(data, source=path, text=text)


def parse_benchmark_config(data: Any, *, source: Path | None = None, text: str = "") -> BenchmarkConfig:
    """Validate an already-parsed input mapping (see :func:`load_benchmark_config`)."""
    where = str(source) if source is not None else "benchmark input"
    base = source.parent if source is not None else Path.cwd()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys 'datasets' and 'methods', got {_kind(data)}")
    _known(data, ("datasets", "methods", "protocol", "model", "training", "heads", "output", "threads"), where, "")
    datasets = _datasets(data.get("datasets"), base, where)
    methods = _methods(data.get("methods"), where)
    protocol = _protocol(data.get("protocol", {}) or {}, where)
    model = _model(data.get("model", {}) or {}, where)
    training = _training(data.get("training", {}) or {}, where)
    heads = _heads(data.get("heads", {}) or {}, methods, where)
    output = data.get("output")
    if output is not None:
        if not isinstance(output, str) or not output:
            raise ConfigError(f"{where}: key 'output' = {output!r}; expected a folder path")
        output = (base / output).resolve()
    threads = data.get("threads", 1)
    if not _is_int(threads) or threads < 1:
        raise ConfigError(f"{where}: key 'threads' = {threads!r}; expected an integer >= 1")
    return BenchmarkConfig(source=source, text=text, datasets=datasets, methods=methods, protocol=protocol,
                           model=model, training=training, heads=heads, output=output, threads=threads)


def _datasets(value: Any, base: Path, where: str) -> tuple[DatasetSpec, ...]:
    if value is None:
        raise ConfigError(f"{where}: missing key 'datasets' (a list of {{name, path}} entries)")
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: key 'datasets' = {value!r}; expected a non-empty list of {{name, path}}")
    specs, names = [], set()
    for i, entry in enumerate(value):
        key = f"datasets[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: key '{key}' = {entry!r}; expected a mapping with 'name' and 'path'")
        _known(entry, ("name", "path", "select", "first", "count"), where, key + ".")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: key '{key}.name' = {name!r}; expected a name of letters, digits, '_', '.', '-'")
        if name in names:
            raise ConfigError(f"{where}: key '{key}.name' = {name!r} is used twice; names must be unique")
        names.add(name)
        raw = entry.get("path")
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{where}: key '{key}.path' = {raw!r}; expected a file path")
        path = (base / raw).resolve()
        if not path.is_file():
            raise DataError(f"{where}: key '{key}.path': dataset file {path} not found")
        select = entry.get("select") or {}
        if not isinstance(select, Mapping):
            raise ConfigError(f"{where}: key '{key}.select' = {select!r}; expected a mapping info-key -> values")
        pairs = []
        for k, v in select.items():
            values = [v] if isinstance(v, (str, int, float)) else v
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: key '{key}.select.{k}' = {v!r}; expected a value or a list of values")
            pairs.append((str(k), tuple(str(x) for x in values)))
        first = entry.get("first", 0)
        if not _is_int(first) or first < 0:
            raise ConfigError(f"{where}: key '{key}.first' = {first!r}; expected an integer >= 0")
        count = entry.get("count")
        if count is not None and (not _is_int(count) or count < 1):
            raise ConfigError(f"{where}: key '{key}.count' = {count!r}; expected an integer >= 1 or null")
        specs.append(DatasetSpec(name=name, path=path, select=tuple(pairs), first=first, count=count))
    return tuple(specs)


def _methods(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        raise ConfigError(f"{where}: missing key 'methods'; expected a list from {list(METHODS)}")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: key 'methods' = {value!r}; expected a non-empty list from {list(METHODS)}")
    for i, m in enumerate(value):
        if m not in METHODS:
            raise ConfigError(f"{where}: key 'methods[{i}]' = {m!r} is not a method; expected one of {list(METHODS)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: key 'methods' = {value!r} lists a method twice")
    return tuple(value)


def _protocol(value: Any, where: str) -> ProtocolSettings:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key 'protocol' = {value!r}; expected a mapping")
    names = [f.name for f in dataclasses.fields(ProtocolSettings)]
    _known(value, names, where, "protocol.")
    v = dict(value)

    def bad(key, expected):
        return ConfigError(f"{where}: key 'protocol.{key}' = {v[key]!r}; expected {expected}")

    for key, low in (("seed_frames", 2), ("max_iterations", 1), ("sweep_points", 2)):
        if key in v and (not _is_int(v[key]) or v[key] < low):
            raise bad(key, f"an integer >= {low}")
    if "seed" in v and not _is_int(v["seed"]):
        raise bad("seed", "an integer")
    if v.get("max_labels") is not None and (not _is_int(v["max_labels"]) or v["max_labels"] < 2):
        raise bad("max_labels", "an integer >= 2 or null")
    if "val_fraction" in v and (not _is_number(v["val_fraction"]) or not 0 < v["val_fraction"] < 1):
        raise bad("val_fraction", "a number in (0, 1)")
    if "max_error" in v and (not _is_number(v["max_error"]) or not v["max_error"] > 0):
        raise bad("max_error", "a positive number in eV/Å (.inf for no maximum)")
    for key in ("warm_start", "include_halt_frame", "robust"):
        if key in v and not isinstance(v[key], bool):
            raise bad(key, "true or false")
    if "candidates" in v:
        c = v["candidates"]
        if isinstance(c, str):
            c = [c]
        if not isinstance(c, list) or not c or any(x not in _FAMILIES for x in c):
            raise bad("candidates", f"a non-empty list from {list(_FAMILIES)}")
        v["candidates"] = tuple(c)
    if "val_fraction" in v:
        v["val_fraction"] = float(v["val_fraction"])
    if "max_error" in v:
        v["max_error"] = float(v["max_error"])
    return ProtocolSettings(**v)


def _model(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key 'model' = {value!r}; expected a mapping of ModelConfig fields")
    if "species" in value:
        raise ConfigError(f"{where}: key 'model.species' is not allowed: the species come from each dataset")
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "species"]
    _known(value, names, where, "model.")
    try:
        ModelConfig(species=("H",), **value)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: key 'model': {exc}") from None
    return dict(value)


def _training(value: Any, where: str) -> TrainConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key 'training' = {value!r}; expected a mapping of TrainConfig fields")
    _known(value, [f.name for f in dataclasses.fields(TrainConfig)], where, "training.")
    try:
        return TrainConfig(**value)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: key 'training': {exc}") from None


def _heads(value: Any, methods: Sequence[str], where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key 'heads' = {value!r}; expected a mapping method -> settings")
    heads = {}
    for name, settings in value.items():
        if name not in METHODS:
            raise ConfigError(f"{where}: key 'heads.{name}' is not a method; expected one of {list(METHODS)}")
        if name in TRUE_ERROR_METHODS:
            raise ConfigError(f"{where}: key 'heads.{name}': the {name} method uses the true error as σ and takes "
                              f"no settings; settings are allowed for {[m for m in METHODS if m not in TRUE_ERROR_METHODS]}")
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}: key 'heads.{name}' = {settings!r}; expected a mapping of head settings")
        _check_head(name, dict(settings), where)
        heads[name] = dict(settings)
    return heads


def _check_head(name: str, settings: dict, where: str) -> None:
    """Build the head once so a bad setting fails now, not after an hour of training."""
    from otf_statcut.uq import make_head

    try:
        make_head(name, **settings)
    except (UserError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: key 'heads.{name}': {exc}") from None


def _known(mapping: Mapping, allowed: Sequence[str], where: str, prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'; allowed keys are {sorted(allowed)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "nothing (empty file)" if value is None else type(value).__name__
