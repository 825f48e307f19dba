"""``otf-statcut export RUN.h5 out.extxyz``: the labelled data set (and trajectory) as extended XYZ."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DataError


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


def run(args) -> int:
    from ..io.runlog import export_extxyz

    path = Path(args.run_file)
    if path.is_dir():
        path = path / "run.h5"
    if not path.is_file():
        raise DataError(f"{path}: run file not found")
    n_data, n_traj = export_extxyz(path, args.out, args.trajectory)
    print(f"wrote {n_data} labelled frames to {args.out}"
          + (f" and {n_traj} trajectory frames to {args.trajectory}" if args.trajectory else ""))
    return 0
