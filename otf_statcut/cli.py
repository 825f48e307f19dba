"""Command-line entry point: ``otf-statcut <command> ...``.

Thin by design: each command lives in :mod:`otf_statcut.commands` as a module with
``add_parser(subparsers)`` and ``run(args) -> int``; this file only dispatches and turns a
:class:`~otf_statcut.errors.UserError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

from .errors import EnvironmentFailure, FitError, UserError

#: Subcommands, in the order ``--help`` lists them. Fixed list: nothing is imported by a name
#: that comes from user input.
COMMANDS = ("run", "benchmark", "cutoffs", "plot", "export", "export-model")


def _command_module(name: str):
    if name == "run":
        from .commands import run as module
    elif name == "benchmark":
        from .commands import benchmark as module
    elif name == "cutoffs":
        from .commands import cutoffs as module
    elif name == "plot":
        from .commands import plot as module
    elif name == "export":
        from .commands import export as module
    elif name == "export-model":
        from .commands import export_model as module
    else:  # pragma: no cover - argparse restricts the choices
        raise KeyError(name)
    return module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otf-statcut",
        description="On-the-fly active learning of NequIP potentials with statistical cutoffs.",
    )
    try:
        version = importlib.metadata.version("otf-statcut")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        _command_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FitError) as exc:
        # A user mistake or data the method cannot fit: one line, no traceback.
        print(f"otf-statcut {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except EnvironmentFailure as exc:
        # Disk full, quota, unwritable path: one line naming the path.
        print(f"otf-statcut {args.command}: error: {exc}", file=sys.stderr)
        return 4
    except BrokenPipeError:
        # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"otf-statcut {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
