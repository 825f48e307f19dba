"""``otf-statcut cutoffs``: fit distributions to values and print the statistical cutoff.

Two forms::

    otf-statcut cutoffs VALUES [--n N] [--candidates maxwell,gamma,gengamma] [--robust]
                        [--ks-threshold P] [--json] [--plot out.png]
    otf-statcut cutoffs --pred P.extxyz --ref R.extxyz [--per-element] [same options]

``VALUES`` is a ``.npy``, ``.txt`` or ``.csv`` file of non-negative values (one column; a ``.csv``
may have one header line). The second form computes per-atom force-error magnitudes
``|F_pred - F_ref|`` (eV/Å) frame by frame from two files ASE can read (frames in the same order,
same atoms); ``--per-element`` adds one fit per chemical species. ``--n`` (default: the number of
values, per species with ``--per-element``) is the sampling-set size of the cutoff
CDF = 1 - 1/n. Every candidate gets the credibility check of
:func:`~otf_statcut.stats.distributions.fit_best` at that ``n`` (search bound, extrapolation rule,
KS p-value at least ``--ks-threshold``); the output lists the rejected candidates with their
reasons and, when none is credible, the ``tail`` fallback and why. Every bad input raises
:class:`~otf_statcut.errors.DataError` or
:class:`~otf_statcut.errors.UserError`, which the CLI prints on one line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, FitError, UserError
from ..stats import (
    DEFAULT_CANDIDATES,
    DISTRIBUTIONS,
    KS_THRESHOLD,
    BestFit,
    fit_best,
    force_error_magnitudes,
    per_element_cutoffs,
)

#: File types the VALUES form reads.
VALUE_SUFFIXES = (".npy", ".txt", ".csv")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cutoffs`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "cutoffs",
        help="fit Maxwell/Gamma/generalized-Gamma distributions and print the statistical cutoff",
        description=(
            "Fit distributions (loc fixed at 0) to non-negative values, pick the best by KS p-value, "
            "and print the cutoff where the CDF reaches 1 - 1/n."
        ),
    )
    p.add_argument(
        "values", nargs="?", metavar="VALUES", help="a .npy, .txt or .csv file of non-negative values"
    )
    p.add_argument("--pred", metavar="P.extxyz", help="predicted forces (any ASE-readable file with forces)")
    p.add_argument("--ref", metavar="R.extxyz", help="reference forces, same frames and atoms as --pred")
    p.add_argument(
        "--per-element", action="store_true", help="also fit each chemical species (--pred/--ref form)"
    )
    p.add_argument(
        "--n", type=int, default=None, help="sampling-set size for the cutoff (default: number of values)"
    )
    p.add_argument(
        "--candidates",
        default=",".join(DEFAULT_CANDIDATES),
        help=f"comma-separated families to try (default: {','.join(DEFAULT_CANDIDATES)})",
    )
    p.add_argument("--robust", action="store_true", help="iteratively trim values above the cutoff and refit")
    p.add_argument(
        "--ks-threshold",
        type=float,
        default=KS_THRESHOLD,
        metavar="P",
        help=f"candidates with a KS p-value below P are not credible (default: {KS_THRESHOLD:g}; 0 disables)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--plot", metavar="OUT.png", help="write histogram, fitted PDF and cutoff to this image")
    p.set_defaults(func=run)
    return p


# -- input ------------------------------------------------------------------------------------
def _existing(path_text: str, what: str) -> Path:
    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    return path


def load_values(path_text: str) -> np.ndarray:
    """Read a ``.npy``, ``.txt`` or ``.csv`` file of values into a flat array (not yet validated)."""
    path = _existing(path_text, "values")
    suffix = path.suffix.lower()
    if suffix not in VALUE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(VALUE_SUFFIXES)}"
        )
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            delimiter = "," if suffix == ".csv" else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
                try:
                    array = np.loadtxt(path, delimiter=delimiter, ndmin=1)
                except ValueError:
                    array = np.loadtxt(path, delimiter=delimiter, ndmin=1, skiprows=1)  # one header line
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read numbers ({exc})") from None
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{path}: array of shape {array.shape}; expected a single column of values")
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: values of type {array.dtype}; expected numbers")
    return array.astype(np.float64)


def _read_frames(path_text: str, what: str) -> list:
    import ase.io  # only this form needs ASE

    path = _existing(path_text, what)
    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # any parser failure of a user file becomes a one-line DataError
        raise DataError(f"{path}: cannot read frames ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise DataError(f"{path}: no frames")
    return frames


def _frame_forces(atoms, path_text: str, index: int) -> np.ndarray:
    calc = atoms.calc
    if calc is not None and "forces" in getattr(calc, "results", {}):
        return np.asarray(calc.results["forces"], dtype=float)
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"], dtype=float)
    raise DataError(f"{path_text}: frame {index} has no forces")


def load_force_errors(pred_path: str, ref_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom force-error magnitudes (eV/Å) and chemical symbols from two frame files."""
    pred = _read_frames(pred_path, "--pred")
    ref = _read_frames(ref_path, "--ref")
    if len(pred) != len(ref):
        raise DataError(
            f"{pred_path} has {len(pred)} frames but {ref_path} has {len(ref)}; expected the same frames"
        )
    pred_forces, ref_forces, symbols = [], [], []
    for i, (p, r) in enumerate(zip(pred, ref)):
        if p.get_chemical_symbols() != r.get_chemical_symbols():
            raise DataError(
                f"frame {i}: {pred_path} has {len(p)} atoms ({p.get_chemical_formula()}) but {ref_path} has "
                f"{len(r)} ({r.get_chemical_formula()}); expected the same atoms in the same order"
            )
        pred_forces.append(_frame_forces(p, pred_path, i))
        ref_forces.append(_frame_forces(r, ref_path, i))
        symbols.extend(r.get_chemical_symbols())
    return force_error_magnitudes(pred_forces, ref_forces), np.asarray(symbols)


def _candidates(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DISTRIBUTIONS]
    if not names or unknown:
        raise UserError(
            f"--candidates {text!r}: unknown or missing names {unknown}; "
            f"expected some of {','.join(DISTRIBUTIONS)}"
        )
    return names


# -- output -----------------------------------------------------------------------------------
def _number(value: float):
    return float(value) if math.isfinite(value) else None


def summary(fit: BestFit, n_values: int, n: int) -> dict:
    """JSON-ready description of a :class:`BestFit` and its cutoff at ``n``.

    ``fallback`` is empty unless no candidate was credible (then ``distribution`` is ``"tail"``
    and ``fallback`` says why); each candidate has ``credible`` and ``rejected`` (reasons), and
    ``rejections`` lists ``{name, rule, reason}`` for every failed rule.
    """
    best = fit.best
    return {
        "distribution": best.name,
        "params": list(best.params),
        "param_names": list(best.param_dict),
        "ks_statistic": _number(best.ks_statistic),
        "ks_pvalue": _number(best.ks_pvalue),
        "passed": fit.passed,
        "ks_sample_size": best.ks_sample_size,
        "ks_threshold": float(fit.ks_threshold),
        "n_values": int(n_values),
        "n_trimmed": best.n_trimmed,
        "n": int(n),
        "cutoff": _number(fit.cutoff(n)),
        "fallback": fit.fallback,
        "candidates": [
            {
                "name": c.name,
                "params": list(c.params),
                "param_names": list(c.param_dict),
                "ks_statistic": _number(c.ks_statistic),
                "ks_pvalue": _number(c.ks_pvalue),
                "cutoff": _number(c.cutoff(n)),
                "credible": not fit.rejected(c.name),
                "rejected": list(fit.rejected(c.name)),
            }
            for c in fit.candidates
        ],
        "rejections": [r.to_dict() for r in fit.rejections],
        "failures": [{"name": name, "reason": reason} for name, reason in fit.failures],
    }


def _params_text(names, params) -> str:
    return " ".join(f"{k}={v:.5g}" for k, v in zip(names, params))


def _text(result: dict, title: str) -> list[str]:
    if result["fallback"]:
        u, beta, p_u = result["params"][:3]
        verdict = "no candidate is credible"
        best = f"tail (fallback): exponential tail above u = {u:.5g} (top {p_u:.3g}), beta = {beta:.5g}"
    else:
        verdict = ("passes" if result["passed"] else "FAILS") + " at 0.05"
        best = f"{result['distribution']} {_params_text(result['param_names'], result['params'])}"
    lines = [
        f"{title}: {result['n_values']} values, n = {result['n']}",
        f"  best fit   {best}",
        f"  KS         p = {result['ks_pvalue']:.3g} ({verdict}; "
        f"tested on {result['ks_sample_size']} values)",
        f"  cutoff     {result['cutoff']:.6g}  (CDF = 1 - 1/{result['n']})",
    ]
    if result["n_trimmed"]:
        lines.append(
            f"  robust     {result['n_trimmed']} values above the cutoff trimmed before the final fit"
        )
    lines.append(f"  candidates (credible: KS p >= {result['ks_threshold']:g}, no parameter on a bound, "
                 "cutoff within the extrapolation limit)")
    for c in result["candidates"]:
        mark = "" if c["credible"] else "  REJECTED"
        lines.append(
            f"    {c['name']:<9} {_params_text(c['param_names'], c['params']):<40} "
            f"KS D = {c['ks_statistic']:.4f}  p = {c['ks_pvalue']:.3g}  cutoff {c['cutoff']:.4g}{mark}"
        )
        for reason in c["rejected"]:
            lines.append(f"              {reason}")
    for f in result["failures"]:
        lines.append(f"    {f['name']:<9} fit failed: {f['reason']}")
    if result["fallback"]:
        lines.append(f"  fallback   {result['fallback']}")
    return lines


# -- the command ------------------------------------------------------------------------------
def _fit(values, candidates, robust: bool, where: str, n: int, ks_threshold: float) -> BestFit:
    try:
        return fit_best(values, candidates, robust=robust, n=n, ks_threshold=ks_threshold)
    except (DataError, FitError) as exc:
        raise DataError(f"{where}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Fit, print (text or JSON), optionally plot. Returns 0."""
    from_forces = args.pred is not None or args.ref is not None
    if from_forces and args.values is not None:
        raise UserError("give either VALUES or --pred/--ref, not both")
    if not from_forces and args.values is None:
        raise UserError("give a VALUES file (.npy, .txt, .csv) or --pred P.extxyz --ref R.extxyz")
    if from_forces and (args.pred is None or args.ref is None):
        raise UserError("--pred and --ref go together; give both")
    if args.per_element and not from_forces:
        raise UserError("--per-element needs --pred/--ref (the chemical symbols come from the frames)")
    if args.n is not None and args.n < 2:
        raise UserError(f"--n {args.n}: the sampling-set size must be at least 2")
    if not 0 <= args.ks_threshold <= 1:
        raise UserError(f"--ks-threshold {args.ks_threshold:g}: expected a p-value between 0 and 1")
    candidates = _candidates(args.candidates)

    if from_forces:
        values, symbols = load_force_errors(args.pred, args.ref)
        where = f"force errors of {args.pred} vs {args.ref}"
        xlabel = "force-error magnitude (eV/Å)"
    else:
        values, symbols = load_values(args.values), None
        where = str(args.values)
        xlabel = "value"

    n = args.n if args.n is not None else values.size
    best = _fit(values, candidates, args.robust, where, n, args.ks_threshold)
    result = {"source": where, "robust": bool(args.robust), **summary(best, values.size, n)}

    elements = {}
    if args.per_element:
        try:
            elements = per_element_cutoffs(
                values, symbols, n=args.n, candidates=candidates, robust=args.robust,
                ks_threshold=args.ks_threshold,
            )
        except (DataError, FitError) as exc:
            raise DataError(f"{where}: {exc}") from None
        result["per_element"] = {
            symbol: summary(item.fit, int(np.count_nonzero(symbols == symbol)), item.n)
            for symbol, item in elements.items()
        }

    if args.plot:
        _plot(args.plot, values, best, n, symbols, elements, xlabel)
        result["plot"] = str(args.plot)

    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        lines = _text(result, f"all values ({where})")
        for symbol, item in result.get("per_element", {}).items():
            lines += _text(item, f"element {symbol}")
        if args.plot:
            lines.append(f"plot written to {args.plot}")
        print("\n".join(lines))
    return 0


def _plot(path, values, best: BestFit, n: int, symbols, elements, xlabel: str) -> None:
    from ..plots.distributions import FitPanel, fit_figure, save_figure

    def others(fit: BestFit):
        return tuple(c for c in fit.candidates if c is not fit.best)

    panels = [FitPanel(values, best.best, best.cutoff(n), title=f"all values (n = {n})", others=others(best))]
    for symbol, item in elements.items():
        panels.append(
            FitPanel(values[symbols == symbol], item.fit.best, item.cutoff, title=f"{symbol} (n = {item.n})",
                     others=others(item.fit))
        )
    save_figure(fit_figure(panels, xlabel=xlabel), path)
