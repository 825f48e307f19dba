"""Histogram of values, fitted PDF and statistical cutoff (the paper's Figs. 1–2).

``plot_fit`` draws on an ``Axes`` it is given; ``fit_figure`` builds a ``Figure`` with one panel
per :class:`FitPanel` on matplotlib's Agg canvas (no ``pyplot``, no window); ``save_figure`` writes
it after checking the file type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import UserError
from ..stats.distributions import PARAM_NAMES, DistributionFit

#: Histogram bins of a panel.
DEFAULT_BINS = 80
#: Points on which a PDF is drawn.
PDF_POINTS = 400


@dataclass(frozen=True)
class FitPanel:
    """What one panel shows: values, the fit drawn solid, optional cutoff and other candidates."""

    values: np.ndarray
    fit: DistributionFit
    cutoff: float | None = None
    title: str = ""
    others: tuple[DistributionFit, ...] = ()


def _label(fit: DistributionFit) -> str:
    params = ", ".join(f"{k}={v:.3g}" for k, v in zip(PARAM_NAMES[fit.name], fit.params))
    return f"{fit.name} ({params}), KS p={fit.ks_pvalue:.2g}"


def plot_fit(
    ax: Axes,
    values,
    fit: DistributionFit,
    cutoff: float | None = None,
    *,
    others: Sequence[DistributionFit] = (),
    bins: int = DEFAULT_BINS,
    xlabel: str = "value (eV/Å)",
    title: str | None = None,
) -> Axes:
    """Draw a density histogram of ``values``, the PDF of ``fit`` and a vertical line at ``cutoff``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    values : array_like
        The fitted values.
    fit : DistributionFit
        Drawn as a solid line, labelled with its parameters and KS p-value.
    cutoff : float, optional
        Drawn as a dotted black vertical line.
    others : sequence of DistributionFit
        Other candidates, drawn dashed.
    bins, xlabel, title
        Histogram bins and labels.

    Returns
    -------
    Axes
    """
    values = np.asarray(values, dtype=float).ravel()
    top = float(values.max()) if values.size else 1.0
    if cutoff is not None and np.isfinite(cutoff):
        top = max(top, float(cutoff))
    top = top * 1.05 if top > 0 else 1.0
    ax.hist(values, bins=bins, range=(0.0, top), density=True, color="tab:blue", alpha=0.45, label="values")
    x = np.linspace(top / PDF_POINTS, top, PDF_POINTS)
    ax.plot(x, fit.pdf(x), color="tab:red", lw=2, label=_label(fit))
    for other in others:
        ax.plot(x, other.pdf(x), lw=1, ls="--", label=_label(other))
    if cutoff is not None and np.isfinite(cutoff):
        ax.axvline(cutoff, color="black", ls=":", lw=1.5, label=f"cutoff {cutoff:.3g}")
    ax.set_xlim(0.0, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="x-small")
    return ax


def fit_figure(
    panels: Sequence[FitPanel], *, ncols: int | None = None, xlabel: str = "value (eV/Å)"
) -> Figure:
    """A figure with one :func:`plot_fit` panel per entry of ``panels`` (Agg canvas attached)."""
    panels = list(panels)
    if not panels:
        raise ValueError("fit_figure needs at least one panel")
    ncols = ncols or min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        plot_fit(
            ax, panel.values, panel.fit, panel.cutoff, others=panel.others, xlabel=xlabel, title=panel.title
        )
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path``; the suffix picks the format.

    Raises
    ------
    UserError
        Unsupported suffix or a folder that does not exist.
    """
    path = Path(path)
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    supported = canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in supported:
        expected = ", ".join("." + s for s in sorted(supported))
        raise UserError(f"{path}: unsupported figure type {path.suffix!r}; expected one of {expected}")
    if not path.parent.is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    fig.savefig(path)
    return path
