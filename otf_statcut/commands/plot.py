"""``otf-statcut plot FILE.h5 [-o OUTDIR]``: draw the figures of a run file or a benchmark results file.

The file's root attribute ``schema`` picks the figures:

* a run file of ``otf-statcut run`` (``otf-statcut/run``): the run report of
  :mod:`otf_statcut.plots.run_report` (max σ with the cutoffs over time, decisions and labels per
  ps, cutoff history, validation errors per model, temperature and, for NPT, volume);
* a benchmark results file (``otf-statcut/benchmark``): the learning curves over seeds (mean ± sd
  bands), and for one seed (``--seed``, default the lowest stored) the Fig. 3–5 panels, parity and
  calibration plots and the fitted distributions (see :mod:`otf_statcut.plots.benchmark`).

Prints the path of every file written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run", "file_schema"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``plot`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "plot",
        help="draw the report of a run file or the figures of a benchmark results file",
        description=(
            "Run file (from 'otf-statcut run'): max sigma over simulated time with the minimum and maximum "
            "cutoffs and the decisions, decisions and labels per ps, the cutoff history, validation errors "
            "per model, temperature (and volume for NPT). "
            "Benchmark results file (from 'otf-statcut benchmark'): the sampling error vs DFT labels over "
            "all seeds (mean +- sd bands) and, for one seed, active-learning curves (errors, counts, "
            "precision/recall/F1, data-set size, coverage), precision/recall/F1 sweeps over error x "
            "uncertainty cutoffs, parity and calibration plots per head, and the fitted distributions with "
            "their cutoffs."
        ),
    )
    p.add_argument("results", metavar="FILE.h5",
                   help="run file written by 'otf-statcut run' or results file written by "
                        "'otf-statcut benchmark'")
    p.add_argument("-o", "--outdir", metavar="DIR",
                   help="folder for the figures (default: <folder of FILE.h5>/figures)")
    p.add_argument("--iteration", default=None,
                   help="benchmark files: iteration shown by the parity, calibration and distribution "
                        "figures: first (default, as in the paper's SI), last, or an index")
    p.add_argument("--seed", type=int, default=None,
                   help="benchmark files: run seed of the per-iteration figures "
                        "(default: the lowest seed stored)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="file type (default png)")
    p.set_defaults(func=run)
    return p


def file_schema(path) -> str | None:
    """The root attribute ``schema`` of an HDF5 file (None when it has none).

    Raises
    ------
    DataError
        The file does not exist or is not a readable HDF5 file.
    """
    import h5py

    from otf_statcut.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            schema = f.attrs.get("schema")
    except OSError as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: not a readable HDF5 file ({reason})") from exc
    if isinstance(schema, bytes):
        schema = schema.decode("utf-8", "replace")
    return None if schema is None else str(schema)


def run(args: argparse.Namespace) -> int:
    """Write the figures and print their paths; returns 0."""
    from otf_statcut.errors import DataError, UserError
    from otf_statcut.io.benchmark_results import SCHEMA as BENCHMARK_SCHEMA
    from otf_statcut.io.runlog import SCHEMA as RUN_SCHEMA

    schema = file_schema(args.results)
    if schema == RUN_SCHEMA:
        from otf_statcut.plots.run_report import plot_run

        given = [flag for flag, value in (("--iteration", args.iteration), ("--seed", args.seed))
                 if value is not None]
        if given:
            raise UserError(f"{' and '.join(given)}: only for benchmark results files; "
                            f"{args.results} is a run file")
        paths = plot_run(args.results, args.outdir, fmt=args.format)
    elif schema == BENCHMARK_SCHEMA:
        from otf_statcut.plots.benchmark import plot_benchmark

        which = args.iteration or "first"
        if which not in ("first", "last"):
            try:
                which = int(which)
            except ValueError:
                message = f"--iteration {args.iteration!r}: expected first, last or an integer"
                raise UserError(message) from None
        paths = plot_benchmark(args.results, args.outdir, iteration=which, fmt=args.format, seed=args.seed)
    else:
        raise DataError(f"{args.results}: attribute 'schema' is {schema!r}: neither a run file "
                        f"({RUN_SCHEMA!r}, from 'otf-statcut run') nor a benchmark results file "
                        f"({BENCHMARK_SCHEMA!r}, from 'otf-statcut benchmark')")
    for path in paths:
        print(path)
    return 0
