"""Typed input schemas: frozen dataclasses filled from YAML, with errors that name the key.

The run input (:mod:`otf_statcut.config`) and the benchmark input
(:mod:`otf_statcut.benchmark.config`) are both dataclasses whose fields say their type, default and
allowed values (:func:`spec`); :func:`build` fills one from a parsed YAML mapping, converting each
value to its annotated type (bool, int, float, str, Path, Literal, tuples, unions, mappings, nested
dataclasses) and raising :class:`~otf_statcut.errors.ConfigError` with one line naming the file,
the key path, the value and what is allowed; an unknown key gets a "did you mean" suggestion.
Fields that need more than their annotation (settings whose schema depends on another key) are
converted by the functions in :attr:`Context.special`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError, DataError

__all__ = ["Context", "spec", "read_yaml", "check_keys", "build", "convert", "describe", "show", "plain"]


def spec(default=dataclasses.MISSING, *, check=None, expected: str = "", factory=None):
    """A dataclass field with a validity check ``check(value) -> bool``; ``expected`` says what
    is allowed."""
    meta = {"check": check, "expected": expected}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping repeats a key (YAML allows it and keeps the last; an input file must not)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (a second ``md:`` block
    would silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                raise DuplicateKeyError(
                    f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str) -> tuple[Any, str]:
    """Read an input file (safe YAML, duplicate keys refused, UTF-8 only): ``(data, text)``.

    Raises
    ------
    DataError
        If the file does not exist (the message calls it ``what``, e.g. "run input").
    ConfigError
        If it is not valid YAML (the message gives the line and column).
    """
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); save the {what} as UTF-8") from None
    try:
        loader = _UniqueKeyLoader(text)  # a yaml.SafeLoader: plain data only, never objects
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    return data, text


class Context:
    """Where values come from: ``where`` (the file, for messages), ``base`` (the folder relative
    paths are resolved against) and ``special``: ``{(dataclass, field name): converter}`` for
    fields converted as ``converter(section_mapping, key_path, context)``."""

    def __init__(self, where: str, base: Path,
                 special: Mapping[tuple[type, str], Callable[[Mapping, str, Context], Any]] | None = None):
        self.where = where
        self.base = base
        self.special = dict(special or {})

    def error(self, path: str, value: Any, expected: str) -> ConfigError:
        key = path or "(top level)"
        return ConfigError(f"{self.where}: {key} = {show(value)} is invalid; expected {expected}")


def show(value: Any) -> str:
    """A value as it appears in an error message (at most 60 characters)."""
    text = repr(value) if not isinstance(value, Mapping) else "{" + ", ".join(map(str, value)) + "}"
    return text if len(text) <= 60 else text[:57] + "..."


def check_keys(mapping: Mapping, allowed: list[str], prefix: str, ctx: Context) -> None:
    """Raise a ConfigError for the first key of ``mapping`` not in ``allowed`` (with a suggestion)."""
    for key in mapping:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{ctx.where}: unknown key {prefix}{key}; {hint}allowed: {', '.join(allowed)}")


def build(cls, value: Any, path: str, ctx: Context):
    """Build dataclass ``cls`` from a mapping (None: defaults), checking keys, types and values."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, f"a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in ("source", "text")]
    names = [f.name for f in fields]
    check_keys(value, names, path + "." if path else "", ctx)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields:
        key = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{ctx.where}: missing key {key}")
            continue
        special = ctx.special.get((cls, f.name))
        converted = special(value, key, ctx) if special else convert(value[f.name], hints[f.name], key, ctx)
        check = f.metadata.get("check")
        if check is not None and converted is not None and not check(converted):
            raise ctx.error(key, value[f.name], f.metadata["expected"])
        kwargs[f.name] = converted
    return cls(**kwargs)


def convert(value: Any, hint: Any, path: str, ctx: Context):
    """Convert a YAML value to the annotated type, or raise a ConfigError naming ``path``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        last = None
        for option in options:
            try:
                return convert(value, option, path, ctx)
            except ConfigError as exc:
                last = exc
        if len(options) == 1:
            raise last
        raise ctx.error(path, value, " or ".join(describe(a) for a in args))
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.6)
        hint_text = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.error(path, value, f"one of {', '.join(map(str, args))}{hint_text}")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                value = [value]  # a single item where a list is expected
            else:
                raise ctx.error(path, value, describe(hint))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{path}[{i}]", ctx) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ctx.error(path, value, describe(hint))
        return tuple(convert(v, a, f"{path}[{i}]", ctx) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if value is None:
            return types.MappingProxyType({})
        if not isinstance(value, Mapping):
            raise ctx.error(path, value, "a mapping")
        return types.MappingProxyType(dict(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ctx.error(path, value, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ctx.error(path, value, "an integer")
    if hint is float:
        number = None
        if isinstance(value, str):
            try:
                number = float(value)  # PyYAML reads 1e-3 (no dot) as a string
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is not None and not math.isnan(number):  # NaN is never a setting
            return number
        raise ctx.error(path, value, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ctx.error(path, value, "a string")
    if hint is Path:
        if isinstance(value, str) and value:
            return (ctx.base / value).resolve()
        raise ctx.error(path, value, "a file or folder path")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path, ctx)
    if hint is Any:
        return value
    raise TypeError(f"schema.py cannot convert type {hint!r} (at {path})")  # a bug in this module


def describe(hint: Any) -> str:
    """What a type annotation allows, in words ('an integer', 'a list of 3 numbers')."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path"}.get(hint, getattr(hint, "__name__", str(hint)))


def plain(value: Any) -> Any:
    """Dataclasses, mappings, tuples and paths as JSON-ready data (``source``/``text`` fields left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in ("source", "text")}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
