"""``otf-statcut plot RESULTS.h5 [-o OUTDIR]``: draw the figures of a benchmark results file.

Writes the learning curves over seeds (mean ± sd bands), and for one seed (``--seed``, default
the lowest stored) the Fig. 3–5 panels, parity and calibration plots and the fitted distributions
(see :mod:`otf_statcut.plots.benchmark`), and prints the path of every file written.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``plot`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "plot",
        help="draw the figures of a benchmark results file",
        description=(
            "Draw the sampling error vs DFT labels over all seeds (mean +- sd bands) and, for one seed, "
            "active-learning curves (errors, counts, precision/recall/F1, data-set size, coverage), "
            "precision/recall/F1 sweeps over error x uncertainty cutoffs, parity and calibration plots per "
            "head, and the fitted distributions with their cutoffs."
        ),
    )
    p.add_argument("results", metavar="RESULTS.h5", help="results file written by 'otf-statcut benchmark'")
    p.add_argument("-o", "--outdir", metavar="DIR",
                   help="folder for the figures (default: <results folder>/figures)")
    p.add_argument("--iteration", default="first",
                   help="iteration shown by the parity, calibration and distribution figures: "
                        "first (default, as in the paper's SI), last, or an index")
    p.add_argument("--seed", type=int, default=None,
                   help="run seed of the per-iteration figures (default: the lowest seed stored)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="file type (default png)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Write the figures and print their paths; returns 0."""
    from otf_statcut.errors import UserError
    from otf_statcut.plots.benchmark import plot_benchmark

    which = args.iteration
    if which not in ("first", "last"):
        try:
            which = int(which)
        except ValueError:
            raise UserError(f"--iteration {args.iteration!r}: expected first, last or an integer") from None
    for path in plot_benchmark(args.results, args.outdir, iteration=which, fmt=args.format, seed=args.seed):
        print(path)
    return 0
