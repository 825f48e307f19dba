"""Figures of a benchmark results file (the paper's Figs. 2–5 and SI Figs. 1–5).

Everything is read from the HDF5 file through :class:`~otf_statcut.io.benchmark_results.BenchmarkResults`
and drawn on matplotlib's Agg canvas (no ``pyplot``, no window). :func:`plot_benchmark` writes
all figures of a file; the other functions build one :class:`~matplotlib.figure.Figure` each.

Files written (``<d>`` dataset, ``<m>`` method; ``all`` aggregates several datasets):

==============================  =================================================================
``learning_<d>.png``            all seeds: sampling error vs DFT labels per method, mean over
                                seeds with a ±1 sd band (each seed's curve interpolated on the
                                labels axis), each seed's final point, 1.1 × the oracle's mean
                                final error dashed; ``learning_all.png``: the datasets side by side
``curves_<d>.png``              one seed: Fig. 4/5: errors, frame counts (unlabelled frames),
                                classification counts, precision/recall/F1 vs data-set size;
                                data-set size and coverage vs iteration
``sweeps_<d>_<m>.png``          one seed: Fig. 3: precision, recall, F1 over error × σ cutoffs,
                                first and last iteration, statistical cutoffs dotted
``parity_<d>.png``              one seed: SI Fig. 1: σ vs error per method (validation and sampling atoms)
``calibration_<d>.png``         one seed: SI Fig. 2: Maxwell calibration curves per method
``distributions_<d>_<m>.png``   one seed: Fig. 2: validation/sampling errors and σ with fits and cutoffs
==============================  =================================================================

"One seed" is ``seed`` of :func:`plot_benchmark` (``otf-statcut plot --seed``), by default the
lowest seed stored (normally 0); those figures say which in their title.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from otf_statcut.benchmark.config import TRUE_ERROR_METHODS
from otf_statcut.errors import UserError
from otf_statcut.io.benchmark_results import BenchmarkResults, IterationRecord
from otf_statcut.stats import DistributionFit, maxwell_calibration

from .distributions import FitPanel, fit_figure, save_figure

__all__ = [
    "MethodCurves",
    "SeedCurve",
    "load_curves",
    "load_seed_curves",
    "band",
    "learning_figure",
    "aggregate_curves",
    "curves_figure",
    "sweeps_figure",
    "parity_figure",
    "calibration_figure",
    "distributions_figure",
    "plot_benchmark",
]

#: Method colours, fixed so every figure agrees.
COLOURS = {"ensemble": "tab:blue", "gp": "tab:orange", "distance": "tab:green", "oracle": "black",
           "random": "tab:gray"}
LABELS = {"ensemble": "Ensemble", "gp": "Sparse GP", "distance": "Distance", "oracle": "Oracle",
          "random": "Random"}
#: Largest number of points drawn per scatter series (keeps PNGs small).
MAX_SCATTER = 4000
DPI = 110
#: Heat-map colours; grey where a score is undefined (0/0).
_SWEEP_CMAP = colormaps["viridis"].with_extremes(bad="lightgray")


@dataclass(frozen=True)
class MethodCurves:
    """Per-iteration columns of one method (one dataset, or several summed)."""

    method: str
    iteration: np.ndarray
    dataset_size: np.ndarray
    mean_error_train: np.ndarray
    mean_error_val: np.ndarray
    mean_error_sampling: np.ndarray
    n_between: np.ndarray
    n_above: np.ndarray
    n_true_positive: np.ndarray
    n_uncertain: np.ndarray
    n_high_error: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    coverage: np.ndarray
    finished_at: tuple[int, ...] = ()  # iterations where a dataset finished (aggregates only)


def _column(records: Sequence[IterationRecord], name: str) -> np.ndarray:
    return np.array([getattr(r, name) for r in records], dtype=float)


def load_curves(results: BenchmarkResults, dataset: str, seed: int = 0) -> list[MethodCurves]:
    """Curves of every method of one dataset and seed that has at least one completed iteration."""
    curves = []
    for method in _ordered(results.methods(dataset)):
        records = results.completed(dataset, method, seed=seed)
        if not records:
            continue
        names = [f for f in MethodCurves.__dataclass_fields__ if f not in ("method", "finished_at")]
        curves.append(MethodCurves(method=method, **{n: _column(records, n) for n in names}))
    return curves


def aggregate_curves(per_dataset: Sequence[Sequence[MethodCurves]]) -> list[MethodCurves]:
    """Several datasets as one (Fig. 5): sizes and counts summed per iteration, a finished dataset
    keeping its last values; errors and coverage averaged; precision/recall/F1 recomputed from the
    summed counts."""
    methods = _ordered({c.method for curves in per_dataset for c in curves})
    out = []
    for method in methods:
        runs = [c for curves in per_dataset for c in curves if c.method == method]
        length = max(c.iteration.size for c in runs)

        def padded(c, name):
            v = getattr(c, name)
            return np.concatenate([v, np.full(length - v.size, v[-1])])

        summed = {n: sum(padded(c, n) for c in runs) for n in
                  ("dataset_size", "n_between", "n_above", "n_true_positive", "n_uncertain", "n_high_error")}
        mean = {n: np.mean([padded(c, n) for c in runs], axis=0) for n in
                ("mean_error_train", "mean_error_val", "mean_error_sampling", "coverage")}
        with np.errstate(divide="ignore", invalid="ignore"):
            tp, unc, high = summed["n_true_positive"], summed["n_uncertain"], summed["n_high_error"]
            precision = np.where(unc > 0, tp / np.maximum(unc, 1), np.nan)
            recall = np.where(high > 0, tp / np.maximum(high, 1), np.nan)
            f1 = np.where(unc + high > 0, 2 * tp / np.maximum(unc + high, 1), np.nan)
        out.append(MethodCurves(method=method, iteration=np.arange(length, dtype=float), precision=precision,
                                recall=recall, f1=f1, finished_at=tuple(c.iteration.size - 1 for c in runs),
                                **summed, **mean))
    return out


@dataclass(frozen=True)
class SeedCurve:
    """Sampling error against DFT labels of one run (one seed)."""

    seed: int
    labels: np.ndarray
    error: np.ndarray


def load_seed_curves(results: BenchmarkResults, dataset: str) -> dict[str, list[SeedCurve]]:
    """Per method, the learning curve (labels, sampling error) of every seed with an iteration."""
    out: dict[str, list[SeedCurve]] = {}
    for method in _ordered(results.methods(dataset)):
        for seed in results.seeds(dataset, method):
            records = results.completed(dataset, method, seed=seed)
            if records:
                out.setdefault(method, []).append(SeedCurve(seed, _column(records, "dataset_size"),
                                                            _column(records, "mean_error_sampling")))
    return out


def band(curves: Sequence[SeedCurve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample sd over seeds on a common labels axis.

    The axis is the union of the seeds' data-set sizes; each seed's curve is interpolated
    linearly in log2(labels) between its iterations and held at its first / last value outside
    them (a finished run keeps the error it stopped with). The sd is NaN for one seed.

    Returns
    -------
    labels, mean, sd : arrays
    """
    grid = np.unique(np.concatenate([c.labels for c in curves]))
    values = np.array([np.interp(np.log2(grid), np.log2(c.labels), c.error) for c in curves])
    mean = values.mean(axis=0)
    sd = values.std(axis=0, ddof=1) if len(curves) > 1 else np.full(grid.size, np.nan)
    return grid, mean, sd


def learning_figure(per_dataset: dict[str, dict[str, list[SeedCurve]]], title: str = "") -> Figure:
    """Sampling error vs DFT labels per method over seeds, one panel per dataset.

    Solid line: mean over seeds (:func:`band`); shaded: mean ± 1 sd; dots: each seed's final
    point; dashed black: 1.1 × the oracle's final sampling error, mean over seeds (the target of
    "labels to reach the oracle").
    """
    if not per_dataset:
        raise UserError("no completed iteration to plot")
    fig, axes = _figure(1, len(per_dataset), width=4.6, height=3.6)
    for ax, (dataset, methods) in zip(axes[0], per_dataset.items()):
        for method, curves in methods.items():
            colour = COLOURS.get(method)
            grid, mean, sd = band(curves)
            ax.plot(grid, mean, color=colour, lw=1.6, label=f"{LABELS.get(method, method)} ({len(curves)})")
            if np.isfinite(sd).any():
                ax.fill_between(grid, mean - sd, mean + sd, color=colour, alpha=0.18, lw=0)
            ax.scatter([c.labels[-1] for c in curves], [c.error[-1] for c in curves], color=colour, s=14,
                       zorder=3)
        if "oracle" in methods:
            target = 1.1 * float(np.mean([c.error[-1] for c in methods["oracle"]]))
            ax.axhline(target, color="black", ls="--", lw=0.9, label="1.1 × oracle final")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("DFT labels (data-set size)")
        ax.set_ylabel("sampling mean |ΔF| (eV/Å)")
        ax.set_title(f"{dataset}: mean ± sd over seeds", fontsize="small")
        ax.legend(fontsize="x-small", title="method (seeds)", title_fontsize="x-small")
    if title:
        fig.suptitle(title)
    return fig


def _ordered(methods) -> list[str]:
    order = list(COLOURS)
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


def _figure(nrows: int, ncols: int, width: float = 4.2, height: float = 3.3) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained", dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def curves_figure(curves: Sequence[MethodCurves], title: str = "") -> Figure:
    """The six Fig. 4/5 panels, all methods together.

    (a) mean error magnitude (sampling solid, validation dashed, training dotted) vs data-set size;
    (b) unlabelled sampling frames between the cutoffs (solid) and above the maximum (dashed) vs size;
    (c) data-set size vs iteration; (d) true positives (solid), uncertain (dashed) and high-error
    (dotted) atoms vs size; (e) precision (solid), recall (dashed), F1 (dotted) vs size;
    (f) coverage of the sampling order vs iteration.
    """
    if not curves:
        raise UserError("no completed iteration to plot")
    fig, axes = _figure(2, 3)
    (a, b, c), (d, e, f) = axes
    for cv in curves:
        kw = {"color": COLOURS.get(cv.method), "marker": "o", "ms": 3}
        x = cv.dataset_size
        a.plot(x, cv.mean_error_sampling, ls="-", label=LABELS.get(cv.method, cv.method), **kw)
        a.plot(x, cv.mean_error_val, ls="--", **kw)
        a.plot(x, cv.mean_error_train, ls=":", **kw)
        b.plot(x, cv.n_between, ls="-", **kw)
        b.plot(x, cv.n_above, ls="--", **kw)
        c.plot(cv.iteration, cv.dataset_size, ls="-", **kw)
        d.plot(x, cv.n_true_positive, ls="-", **kw)
        d.plot(x, cv.n_uncertain, ls="--", **kw)
        d.plot(x, cv.n_high_error, ls=":", **kw)
        e.plot(x, cv.precision, ls="-", **kw)
        e.plot(x, cv.recall, ls="--", **kw)
        e.plot(x, cv.f1, ls=":", **kw)
        f.plot(cv.iteration, cv.coverage, ls="-", **kw)
        if cv.finished_at:
            idx = np.asarray(cv.finished_at, dtype=int)
            f.scatter(cv.iteration[idx], cv.coverage[idx], color=COLOURS.get(cv.method), s=30, zorder=3)
    for ax in (a, b, d, e):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("data-set size (frames)")
    a.set_ylabel("mean |ΔF| (eV/Å)")
    a.set_title("(a) errors: sampling —, validation --, train ··", fontsize="small")
    b.set_ylabel("unlabelled sampling frames")
    b.set_title("(b) between cutoffs —, above maximum --", fontsize="small")
    b.set_yscale("symlog", linthresh=1)
    b.set_ylim(bottom=0)
    c.set_xlabel("active-learning iteration")
    c.set_ylabel("data-set size (frames)")
    c.set_yscale("log", base=2)
    c.set_title("(c) data-set size", fontsize="small")
    d.set_ylabel("sampling atoms")
    d.set_title("(d) true positive —, uncertain --, high error ··", fontsize="small")
    e.set_ylabel("score")
    e.set_ylim(-0.03, 1.03)
    e.set_title("(e) precision —, recall --, F1 ··", fontsize="small")
    f.set_xlabel("active-learning iteration")
    f.set_ylabel("coverage of sampling order")
    f.set_ylim(-0.03, 1.03)
    f.set_title("(f) coverage", fontsize="small")
    a.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return fig


def sweeps_figure(first: dict, last: dict, method: str, title: str = "") -> Figure:
    """Fig. 3: precision, recall and F1 over the error × σ cutoff grid for two iterations.

    ``first`` and ``last`` are :meth:`BenchmarkResults.iteration_arrays` dicts (with ``size``
    and ``cutoffs`` added by :func:`plot_benchmark`). The statistical cutoffs are dotted black.
    """
    rows = [first] if first["iteration"] == last["iteration"] else [first, last]
    fig, axes = _figure(len(rows), 3, width=3.9, height=3.3)
    for row, data in zip(axes, rows):
        x, y = data["sweep_sigma_cutoffs"], data["sweep_error_cutoffs"]
        cut = data["fits"]["cutoffs"]
        panels = zip(row, ("sweep_precision", "sweep_recall", "sweep_f1"), ("precision", "recall", "F1"))
        for ax, key, name in panels:
            grid = np.ma.masked_invalid(np.asarray(data[key], dtype=float))
            mesh = ax.pcolormesh(x, y, grid, vmin=0, vmax=1, cmap=_SWEEP_CMAP, shading="nearest")
            ax.axvline(cut["minimum"], color="black", ls=":", lw=1.5)
            ax.axhline(cut["error_cutoff"], color="black", ls=":", lw=1.5)
            ax.set_xlabel("uncertainty cutoff (eV/Å)")
            ax.set_ylabel("error cutoff (eV/Å)")
            ax.set_title(f"{name}, iteration {data['iteration']} ({data['size']} frames)", fontsize="small")
        fig.colorbar(mesh, ax=row[-1], shrink=0.9)
    fig.suptitle(title or f"{LABELS.get(method, method)}: precision / recall / F1 sweeps")
    return fig


def _subsample(n: int, limit: int = MAX_SCATTER, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def parity_figure(per_method: dict[str, dict], title: str = "") -> Figure:
    """SI Fig. 1: per method, σ (x) against the true error (y) of validation and sampling atoms,
    with the error cutoff (horizontal) and the minimum/maximum σ cutoffs (vertical). Random is
    left out when the oracle is there: both use the true error as σ."""
    methods = [m for m in _ordered(per_method) if not (m == "random" and "oracle" in per_method)]
    ncols = min(len(methods), 3)
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = _figure(nrows, ncols, width=3.8, height=3.5)
    for ax, method in zip(axes.ravel(), methods):
        data = per_method[method]
        cut = data["fits"]["cutoffs"]
        se, ss = data["sampling_errors"], data["sampling_sigma"]
        ve, vs = data["val_errors"], data["val_sigma"]
        pick = _subsample(se.size)
        ax.scatter(ss[pick], se[pick], s=3, alpha=0.35, color="tab:blue", label="sampling", rasterized=True)
        pick = _subsample(ve.size)
        ax.scatter(vs[pick], ve[pick], s=3, alpha=0.5, color="tab:orange", label="validation",
                   rasterized=True)
        top = float(max(np.max(se), np.max(ss), 1e-6))
        ax.plot([0, top], [0, top], color="0.5", lw=0.8)
        ax.axhline(cut["error_cutoff"], color="black", ls=":", lw=1.2)
        ax.axvline(cut["minimum"], color="black", ls=":", lw=1.2)
        if np.isfinite(cut["maximum"]) and cut["maximum"] != cut["minimum"]:
            ax.axvline(cut["maximum"], color="tab:red", ls="--", lw=1.0)
        ax.set_xlabel("σ (eV/Å)")
        ax.set_ylabel("|ΔF| (eV/Å)")
        ax.set_title(f"{LABELS.get(method, method)}, iteration {data['iteration']}", fontsize="small")
        ax.legend(fontsize="x-small", markerscale=3)
    for ax in axes.ravel()[len(methods):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def calibration_figure(per_method: dict[str, dict], title: str = "") -> Figure:
    """SI Fig. 2: Maxwell calibration curves (observed vs expected proportion of errors within the
    σ-quantile) on validation and sampling atoms, one line per uncertainty head, miscalibration
    area in the legend. Oracle and random are left out: their σ is the error itself, so the
    probability integral transform is the constant F_Maxwell(1) and the curve is meaningless."""
    per_method = {m: d for m, d in per_method.items() if m not in TRUE_ERROR_METHODS}
    fig, axes = _figure(1, 2, width=4.2, height=3.8)
    for ax, (prefix, name) in zip(axes[0], (("val", "validation"), ("sampling", "sampling"))):
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8)
        for method in _ordered(per_method):
            data = per_method[method]
            sigma = np.maximum(np.asarray(data[f"{prefix}_sigma"], dtype=float), 1e-12)
            curve = maxwell_calibration(np.asarray(data[f"{prefix}_errors"], dtype=float), sigma)
            ax.plot(curve.expected, curve.observed, color=COLOURS.get(method),
                    label=f"{LABELS.get(method, method)} (area {curve.area:.3f})")
        ax.set_xlabel("expected proportion")
        ax.set_ylabel("observed proportion")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} atoms", fontsize="small")
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return fig


def _fit(description: dict) -> DistributionFit:
    return DistributionFit(description["name"], tuple(description["params"]),
                           ks_statistic=description.get("ks_statistic", float("nan")),
                           ks_pvalue=description.get("ks_pvalue", float("nan")), n=description.get("n", 0))


def distributions_figure(data: dict, method: str, title: str = "") -> Figure:
    """Fig. 2: histograms of validation and sampling errors and σ with the validation fits and cutoffs."""
    fits = data["fits"]
    cut = fits["cutoffs"]
    error_fit, sigma_fit = _fit(fits["error_fit"]), _fit(fits["sigma_fit"])
    others = tuple(_fit(f) for f in fits.get("sigma_candidates", []) if f["name"] != sigma_fit.name)
    panels = [
        FitPanel(data["val_errors"], error_fit, cut["error_cutoff"], "validation |ΔF|"),
        FitPanel(data["val_sigma"], sigma_fit, cut["minimum"], "validation σ", others),
        FitPanel(data["sampling_errors"], error_fit, cut["error_cutoff"], "sampling |ΔF|"),
        FitPanel(data["sampling_sigma"], sigma_fit, cut["minimum"], "sampling σ", others),
    ]
    fig = fit_figure(panels, ncols=2)
    fig.set_dpi(DPI)
    fig.set_size_inches(9.0, 6.6)
    fig.suptitle(title or f"{LABELS.get(method, method)}, iteration {data['iteration']}: fits of validation "
                          "values with cutoffs at CDF = 1 − 1/N")
    return fig


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def elements_figure(per_method: dict[str, list[dict]], title: str = "") -> Figure:
    """Per element, per iteration: (a) sampling atoms above the element's error cutoff (about one
    expected per element, dotted), (b) the element's minimum σ cutoff, (c) sampling atoms above
    the error cutoff at the last iteration under the grouping schemes of
    :mod:`otf_statcut.stats.states` (global / per element / per element with σ-scaled errors),
    against the number each expects."""
    fig, axes = _figure(1, 3, width=4.4)
    styles = ("-", "--", ":", "-.")
    elements: list[str] = []
    for method, iterations in per_method.items():
        colour = COLOURS.get(method, "grey")
        names = _text(iterations[0].get("element_symbols", []))
        for k, element in enumerate(names):
            if element not in elements:
                elements.append(element)
            style = styles[elements.index(element) % len(styles)]
            sizes = [it["size"] for it in iterations]
            above = [int(it["element_n_above_error"][k]) for it in iterations]
            minimum = [float(it["element_sigma_minimum"][k]) for it in iterations]
            label = f"{LABELS.get(method, method)} {element}"
            axes[0, 0].plot(sizes, above, style, color=colour, marker="o", ms=3, label=label)
            axes[0, 1].plot(sizes, minimum, style, color=colour, marker="o", ms=3, label=label)
    axes[0, 0].axhline(1.0, color="black", ls=":", lw=1)
    axes[0, 0].set_ylim(bottom=0)
    axes[0, 0].set(xlabel="DFT labels", ylabel="sampling atoms above error cutoff", yscale="symlog",
                   title="(a) per element (≈ 1 expected each)")
    axes[0, 1].set(xlabel="DFT labels", ylabel="minimum σ cutoff (eV/Å)", title="(b) σ cutoff per element")
    axes[0, 0].legend(fontsize=6)
    # (c) grouping schemes, last iteration of each method
    methods = [m for m, its in per_method.items() if "scheme_names" in its[-1]]
    width = 0.8 / max(len(methods), 1)
    every_name: list[str] = []
    for j, method in enumerate(methods):
        last = per_method[method][-1]
        names = _text(last["scheme_names"])
        every_name = names if len(names) > len(every_name) else every_name
        above = np.asarray(last["scheme_n_above_error"], dtype=float)
        above[above < 0] = np.nan
        x = np.arange(len(names)) + (j - (len(methods) - 1) / 2) * width
        axes[0, 2].bar(x, above, width, color=COLOURS.get(method, "grey"), label=LABELS.get(method, method))
        for xi, e in zip(x, np.asarray(last["scheme_expected"], dtype=float)):
            axes[0, 2].plot([xi - width / 2, xi + width / 2], [e, e], color="black", lw=1)
    axes[0, 2].set_xticks(np.arange(len(every_name)), every_name)
    axes[0, 2].set(ylabel="sampling atoms above error cutoff", yscale="symlog",
                   title="(c) Maxwell schemes, last iter. (line: expected)")
    axes[0, 2].set_ylim(bottom=0)
    if methods:
        axes[0, 2].legend(fontsize=6)
    fig.suptitle(title)
    return fig


def _pick(records: Sequence[IterationRecord], which: str | int) -> int:
    if which == "first":
        return 0
    if which == "last":
        return len(records) - 1
    index = int(which)
    if not -len(records) <= index < len(records):
        raise UserError(f"iteration {index} does not exist (0 … {len(records) - 1} are stored)")
    return index % len(records)


def plot_benchmark(path, outdir=None, *, iteration: str | int = "first", fmt: str = "png",
                   seed: int | None = None) -> list[Path]:
    """Write every figure of a benchmark results file.

    Parameters
    ----------
    path : str or Path
        The ``results.h5`` written by ``otf-statcut benchmark``.
    outdir : str or Path, optional
        Folder for the figures (created); default ``<folder of path>/figures``.
    iteration : "first", "last" or int
        Which iteration the parity, calibration and distribution figures show (the paper's SI uses
        the first); the sweeps always show the first and the last.
    fmt : str
        File type (``png``, ``pdf``, ``svg``).
    seed : int, optional
        The run seed of the per-iteration figures (curves, sweeps, parity, calibration,
        distributions); default the lowest seed stored. The learning figures show every seed.

    Returns
    -------
    list of Path
        Files written.

    Raises
    ------
    UserError
        Not a benchmark results file, no completed iteration in it, or no run with ``seed``.
    """
    results = BenchmarkResults(path)
    results.check()
    outdir = Path(outdir) if outdir is not None else results.path.parent / "figures"
    stored = sorted({s for _, _, s in results.runs()})
    if seed is None:
        seed = stored[0] if stored else 0
    elif stored and seed not in stored:
        raise UserError(f"{results.path}: no run with seed {seed} (seeds stored: "
                        f"{' '.join(map(str, stored))})")
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        written.append(save_figure(fig, outdir / f"{name}.{fmt}"))

    all_curves = []
    learning: dict[str, dict[str, list[SeedCurve]]] = {}
    for dataset in results.datasets():
        seed_curves = load_seed_curves(results, dataset)
        if seed_curves:
            learning[dataset] = seed_curves
            save(learning_figure({dataset: seed_curves}), f"learning_{dataset}")
        curves = load_curves(results, dataset, seed)
        if not curves:
            continue
        all_curves.append(curves)
        save(curves_figure(curves, f"{dataset}, seed {seed}: active learning, all methods"),
             f"curves_{dataset}")
        chosen: dict[str, dict] = {}
        per_element: dict[str, list[dict]] = {}
        for method in _ordered(results.methods(dataset)):
            records = results.completed(dataset, method, seed=seed)
            if not records:
                continue

            def arrays(index: int) -> dict:
                data = results.iteration_arrays(dataset, method, index, seed=seed)
                data["size"] = records[index].dataset_size
                return data

            every = [arrays(k) for k in range(len(records))]
            if "element_symbols" in every[0]:
                per_element[method] = every
            first, last = every[0], every[-1]
            title = (f"{dataset}, {LABELS.get(method, method)}, seed {seed}: sweeps of error × uncertainty "
                     "cutoffs (statistical cutoffs dotted)")
            save(sweeps_figure(first, last, method, title), f"sweeps_{dataset}_{method}")
            index = _pick(records, iteration)
            chosen[method] = first if index == 0 else last if index == len(records) - 1 else arrays(index)
            heading = (f"{LABELS.get(method, method)}, seed {seed}, iteration {chosen[method]['iteration']}: "
                       "fits of validation values with cutoffs at CDF = 1 − 1/N")
            save(distributions_figure(chosen[method], method, heading), f"distributions_{dataset}_{method}")
        save(parity_figure(chosen, f"{dataset}, seed {seed}: σ vs true error ({iteration} iteration)"),
             f"parity_{dataset}")
        if per_element:
            save(elements_figure(per_element, f"{dataset}, seed {seed}: cutoffs per element"),
                 f"elements_{dataset}")
        if any(m not in TRUE_ERROR_METHODS for m in chosen):
            heading = f"{dataset}, seed {seed}: Maxwell calibration ({iteration} iteration)"
            save(calibration_figure(chosen, heading), f"calibration_{dataset}")
    if not all_curves:
        raise UserError(f"{results.path}: no completed iteration to plot yet")
    if len(all_curves) > 1:
        heading = f"all datasets, seed {seed} (sizes and counts summed)"
        save(curves_figure(aggregate_curves(all_curves), heading), "curves_all")
    if len(learning) > 1:
        save(learning_figure(learning, "all datasets: sampling error vs DFT labels over seeds"),
             "learning_all")
    return written
