"""``otf-statcut benchmark input.yaml``: replay labelled datasets through the active-learning protocol.

Runs every dataset × method × seed of the input (see :mod:`otf_statcut.benchmark.config`),
resuming from the output folder when it already holds results, and prints one line per iteration
and, at the end, the table over seeds (one row per dataset × method: mean ± sd of DFT labels,
iterations, final sampling and validation errors, and the labels needed to come within 10 % of the
same seed's oracle). ``mpiexec -n K otf-statcut benchmark input.yaml`` spreads the runs over K
ranks.

Output folder: ``-o``, else the input's ``output`` key, else ``./<input stem>-results``; it
holds ``results.h5``, ``summary.csv`` (one row per run), ``summary_mean.csv`` (over seeds),
``benchmark.log`` and ``checkpoints/``.
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
    from otf_statcut.benchmark.runner import (MEAN_SUMMARY_FILE, RESULTS_FILE, SUMMARY_FILE, benchmark_tables,
                                              world)
    from otf_statcut.io.benchmark_results import BenchmarkResults

    config = load_benchmark_config(args.input)
    folder = output_folder(args.output, config, args.input)
    comm = world()
    rank = comm.Get_rank() if comm is not None else 0
    prefix = f"[rank {rank}] " if comm is not None else ""
    with _logging(folder, args.quiet, prefix):
        summaries = run_benchmark(config, folder, restart=args.restart, comm=comm,
                                  progress=not args.no_progress)
    if rank == 0:
        rows, _ = benchmark_tables(BenchmarkResults(folder / RESULTS_FILE), summaries)
        print(seed_table(rows))
        print(f"results: {folder / RESULTS_FILE}  per run: {folder / SUMMARY_FILE}  "
              f"over seeds: {folder / MEAN_SUMMARY_FILE}")
    return 0


def _pm(mean: float, sd: float, digits: int) -> str:
    """``mean ± sd``; the mean alone when sd is undefined (one seed); ``-`` when nothing."""
    if mean != mean:  # NaN
        return "-"
    return f"{mean:.{digits}f}" if sd != sd else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seed_table(rows) -> str:
    """The table over seeds printed at the end (rows: :class:`~otf_statcut.benchmark.metrics.SeedStatistics`).

    ``labels to 1.1×oracle``: mean ± sd over the seeds whose sampling error came within 10 % of
    the same seed's oracle, then (reached/seeds with a finished oracle run); ``not reached`` when
    none did.
    """
    head = (f"{'dataset':<14} {'method':<9} {'seeds':>5} {'DFT labels':>13} {'iterations':>11} "
            f"{'err sampling':>15} {'err validation':>15} {'labels to 1.1×oracle':>22}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.labels_to_oracle_runs == 0:
            reach = "no oracle"
        elif r.labels_to_oracle_reached == 0:
            reach = f"not reached (0/{r.labels_to_oracle_runs})"
        else:
            reach = (f"{_pm(r.labels_to_oracle_mean, r.labels_to_oracle_sd, 1)} "
                     f"({r.labels_to_oracle_reached}/{r.labels_to_oracle_runs})")
        lines.append(f"{r.dataset:<14} {r.method:<9} {r.n_seeds:>5} "
                     f"{_pm(r.dft_labels_mean, r.dft_labels_sd, 1):>13} "
                     f"{_pm(r.iterations_mean, r.iterations_sd, 1):>11} "
                     f"{_pm(r.final_mean_error_sampling_mean, r.final_mean_error_sampling_sd, 4):>15} "
                     f"{_pm(r.final_mean_error_val_mean, r.final_mean_error_val_sd, 4):>15} {reach:>22}  "
                     f"{r.statuses}")
    lines.append("errors: mean |ΔF| in eV/Å at the last iteration; ± is the sample sd over seeds")
    return "\n".join(lines)
