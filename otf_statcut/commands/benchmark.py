"""``otf-statcut benchmark input.yaml``: replay labelled datasets through the active-learning protocol.

Runs every dataset × method of the input (see :mod:`otf_statcut.benchmark.config`), resuming
from the output folder when it already holds results, and prints one line per iteration and a
summary table. ``mpiexec -n K otf-statcut benchmark input.yaml`` spreads the runs over K ranks.

Output folder: ``-o``, else the input's ``output`` key, else ``./<input stem>-results``; it
holds ``results.h5``, ``summary.csv``, ``benchmark.log`` and ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

__all__ = ["add_parser", "run", "output_folder"]

LOGGER = "otf_statcut"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``benchmark`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "benchmark",
        help="replay labelled datasets through the active-learning protocol and compare uncertainty heads",
        description=(
            "Seed a data set with a few random frames, then repeatedly train NequIP, fit each uncertainty "
            "head, compute the statistical cutoffs and add the uncertain frames reached before the first "
            "frame above the maximum cutoff (at most doubling), until nothing is uncertain. Results go to "
            "one HDF5 file plus a CSV summary; re-running the same command resumes."
        ),
    )
    p.add_argument("input", metavar="INPUT.yaml", help="benchmark input file")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="output folder (default: the input's 'output' key, else ./<input stem>-results)")
    p.add_argument("--restart", action="store_true", help="discard results already in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the log lines remain)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-iteration log lines on the terminal")
    p.set_defaults(func=run)
    return p


def output_folder(args_output: str | None, config, input_path: str) -> Path:
    """The output folder the command writes to (see the module notes)."""
    if args_output:
        return Path(args_output)
    if config.output is not None:
        return config.output
    return Path.cwd() / f"{Path(input_path).stem}-results"


@contextlib.contextmanager
def _logging(folder: Path, quiet: bool, rank_prefix: str):
    """Log lines to the terminal (through tqdm, so bars stay intact) and to ``benchmark.log``."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger(LOGGER)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    # opened at the first log line, which comes after the run has validated its data and created the folder
    file_handler = logging.FileHandler(folder / "benchmark.log", delay=True)
    file_handler.setFormatter(logging.Formatter(f"%(asctime)s {rank_prefix}%(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [file_handler]
    if not quiet:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(f"%(asctime)s {rank_prefix}%(message)s", datefmt="%H:%M:%S"))
        handlers.append(console)
    for h in handlers:
        logger.addHandler(h)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns 0. User mistakes raise :class:`~otf_statcut.errors.UserError`."""
    from otf_statcut.benchmark import load_benchmark_config, run_benchmark
    from otf_statcut.benchmark.runner import world

    config = load_benchmark_config(args.input)
    folder = output_folder(args.output, config, args.input)
    comm = world()
    rank = comm.Get_rank() if comm is not None else 0
    prefix = f"[rank {rank}] " if comm is not None else ""
    with _logging(folder, args.quiet, prefix):
        summaries = run_benchmark(config, folder, restart=args.restart, comm=comm,
                                  progress=not args.no_progress)
    if rank == 0:
        print(_table(summaries))
        print(f"results: {folder / 'results.h5'}  summary: {folder / 'summary.csv'}")
    return 0


def _table(summaries) -> str:
    head = (f"{'dataset':<14} {'method':<9} {'status':<15} {'iter':>4} {'frames':>6} {'err samp':>9} "
            f"{'F1':>5} {'coverage':>8} {'time (s)':>9}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(f"{s.dataset:<14} {s.method:<9} {s.status:<15} {s.iterations:>4} "
                     f"{s.final_dataset_size:>6} "
                     f"{s.final_mean_error_sampling:>9.4f} {s.final_f1:>5.2f} {s.final_coverage:>8.2f} "
                     f"{s.wall_time:>9.1f}")
    return "\n".join(lines)
