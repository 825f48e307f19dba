"""``otf-statcut run input.yaml``: an on-the-fly MD run (also under ``mpiexec -n N``).

Re-running the same command continues an interrupted run from its last checkpoint.

Exit status: 0 finished (or the session's steps done), 1 stopped at the last checkpoint
(resumable: a halt that could not be labelled, too many failed labels in a row), 2 a mistake in
the input or a damaged run file (one line, nothing written), 3 a label that could not be
interrupted ran past ``labeler.timeout_s`` (resumable), 4 the environment (disk full, quota,
unwritable path; one line naming the path; resumable), 130 interrupted. Under
``mpiexec`` every rank runs this command; rank 0 drives the MD and the MLIP and prints, the
other ranks serve the DFT labeller. ``GPAW_MPI_BACKEND`` and ``OMP_NUM_THREADS`` are set by the
program, not by the user.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="on-the-fly active-learning MD run",
        description="Run (or resume) on-the-fly MD with NequIP, an uncertainty head and statistical cutoffs. "
                    "Works under `mpiexec -n N`: rank 0 drives, all ranks label with GPAW.")
    p.add_argument("input", help="run input YAML file")
    p.add_argument("--output", metavar="FOLDER", help="override output.folder")
    p.add_argument("--steps", type=int, metavar="N", help="override md.steps (e.g. to extend a finished run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over even if the output folder holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: mlip.threads, else torch's)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    os.environ.setdefault("GPAW_MPI_BACKEND", "mpi4py")  # before anything imports gpaw
    from ..labelers.mpi import world_comm

    comm = world_comm()
    rank = comm.Get_rank()
    try:
        return _run(args, comm, rank)
    except UserError:
        if rank == 0:
            raise  # the CLI prints it once
        return 2


def _run(args, comm, rank: int) -> int:
    import dataclasses
    from pathlib import Path

    from ..config import load_run_config
    from ..engine.label_policy import RunStopped
    from ..engine.run import run_otf

    config = load_run_config(args.input)
    if args.output:
        config = dataclasses.replace(config, output=dataclasses.replace(config.output,
                                                                        folder=Path(args.output).resolve()))
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps {args.steps}: expected an integer >= 1")
        config = dataclasses.replace(config, md=dataclasses.replace(config.md, steps=args.steps))
    threads = args.threads or config.mlip.threads
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    progress = False if args.no_progress else None
    try:
        summary = run_otf(config, comm=comm, progress=progress, overwrite=args.overwrite)
    except RunStopped as exc:  # a halt that could not be labelled, too many failed labels
        if rank == 0:
            print(f"otf-statcut run: stopped: {exc}", file=sys.stderr)
        return 1
    if rank == 0 and summary is not None:
        for line in summary.lines():
            print(line)
    return 0
