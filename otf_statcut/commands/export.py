"""``otf-statcut export RUN.h5 out.extxyz``: the labelled data set (and trajectory) as extended XYZ."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DataError, UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a run's labelled frames (and trajectory) to extxyz",
        description="Write the data set of a run file (every labelled frame with reference energy, forces, "
                    "stress and info: step, reason, split) as extended XYZ.")
    p.add_argument("run_file", help="run.h5 written by `otf-statcut run` (or its folder)")
    p.add_argument("out", help="output .extxyz file for the data set")
    p.add_argument("--trajectory", metavar="FILE",
                   help="also write the MD trajectory (forces used, sigma) here")
    p.set_defaults(func=run)
    return p


def run_file_of(argument: str) -> Path:
    """The run file a command was given: ``run.h5`` itself or its folder (DataError if absent)."""
    path = Path(argument)
    if path.is_dir():
        path = path / "run.h5"
    if not path.is_file():
        raise DataError(f"{path}: run file not found")
    return path


def check_output_file(out: str, what: str) -> Path:
    """A file path we can write: its folder exists and is writable, and it is not a folder.

    Raises
    ------
    UserError
        One line naming the path and what is wrong.
    """
    import os

    path = Path(out)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name (e.g. {path / 'data.extxyz'})")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: the folder {folder} is not writable")
    return path


def run(args) -> int:
    from ..errors import environment_failure
    from ..io.runlog import export_extxyz

    path = run_file_of(args.run_file)
    check_output_file(args.out, "output")
    if args.trajectory:
        check_output_file(args.trajectory, "--trajectory")
    try:
        n_data, n_traj = export_extxyz(path, args.out, args.trajectory)
    except OSError as exc:
        failure = environment_failure(exc, str(args.out))
        if failure is None:
            raise
        raise failure from exc
    print(f"wrote {n_data} labelled frames to {args.out}"
          + (f" and {n_traj} trajectory frames to {args.trajectory}" if args.trajectory else ""))
    return 0
