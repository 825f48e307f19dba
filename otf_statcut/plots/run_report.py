"""Report of an on-the-fly run: figures of the HDF5 file written by ``otf-statcut run``.

Everything is read through :func:`~otf_statcut.io.runlog.read_table` (see the layout in
:mod:`otf_statcut.io.runlog`) into a :class:`RunData` by :func:`load_run`, and drawn on
matplotlib's Agg canvas (no ``pyplot``, no window). :func:`plot_run` writes all figures; each
``*_figure`` function builds one :class:`~matplotlib.figure.Figure` from a :class:`RunData`.

Files written:

===================  ===============================================================================
``run_sigma``        max σ of every recorded MD step vs simulated time (ps) with the minimum
                     (dashed) and maximum (dotted) cutoffs as step functions that change at each
                     refit; label (○) and halt (✕) decisions marked. With per-element cutoffs: one
                     max σ line and one pair of cutoff lines per element.
``run_decisions``    (a) label and halt decisions per ps, (b) labels stored in the data set per ps
                     by reason and failed labels per ps, over equal time windows
``run_cutoffs``      minimum, maximum and error cutoff of every refit vs MD step (per element when
                     the run has per-element cutoffs; the pooled fit dotted grey for reference)
``run_validation``   validation force MAE and RMSE (eV/Å) and energy MAE (meV/atom) of every model,
                     with n_train/n_val; retrains that did not learn (``learned`` False) marked
``run_thermo``       kinetic temperature vs time (the target dashed); NPT runs also the cell volume
===================  ===============================================================================

A table that is empty (no trajectory rows yet, no labels, no failures, a single model, ...)
is drawn as far as it goes, and the figure says what is absent instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import DataError, UserError
from ..io.runlog import SCHEMA as RUN_SCHEMA
from ..io.runlog import RunLog, read_table
from .distributions import save_figure

__all__ = [
    "RUN_SCHEMA",
    "FIGURES",
    "TRUST",
    "LABEL",
    "HALT",
    "REQUIRED",
    "RunData",
    "load_run",
    "step_times_ps",
    "cutoff_steps",
    "sigma_figure",
    "decisions_figure",
    "cutoffs_figure",
    "validation_figure",
    "thermo_figure",
    "plot_run",
]

#: Decision codes of the trajectory's ``decision`` column (:class:`otf_statcut.engine.decision.Action`).
TRUST, LABEL, HALT = 0, 1, 2
#: File names (without suffix) written by :func:`plot_run`, in order.
FIGURES = ("run_sigma", "run_decisions", "run_cutoffs", "run_validation", "run_thermo")
#: Cutoff rows that are not an element of their own.
_NOT_ELEMENTS = ("all", "pooled")
DPI = 110
#: Most time windows of the decisions figure.
MAX_WINDOWS = 50
#: Fewest trajectory rows per time window of the decisions figure.
ROWS_PER_WINDOW = 5
_DECISION_STYLE = {
    LABEL: {"marker": "o", "facecolors": "none", "edgecolors": "tab:orange", "s": 28, "label": "label"},
    HALT: {"marker": "X", "color": "tab:red", "s": 40, "label": "halt"},
}
_REASON_COLOURS = {"label": "tab:orange", "halt": "tab:red", "failed": "0.35"}
#: Columns the report reads from each table (a table that exists must have them).
REQUIRED = {
    "trajectory": ("step", "time_fs", "max_sigma", "decision", "temperature_K", "cell", "numbers", "sigma"),
    "dataset": ("offset", "step", "reason"),
    "models": ("model", "step", "reason", "n_train", "n_val", "val_force_mae", "val_force_rmse",
               "val_energy_mae", "learned"),
    "cutoffs": ("refit", "step", "element", "minimum", "maximum", "error_cutoff"),
    "failures": ("step",),
}


@dataclass
class RunData:
    """The tables of a run file, as read by :func:`load_run`.

    Attributes
    ----------
    path : Path
        The run file.
    config : dict
        Resolved settings of the run (root attribute ``config``).
    trajectory, dataset, models, cutoffs, failures : dict of str to ndarray
        Columns of each table (:func:`~otf_statcut.io.runlog.read_table`); ``{}`` when the table
        does not exist yet (the trajectory is created with its first row).
    """

    path: Path
    config: dict = field(default_factory=dict)
    trajectory: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    cutoffs: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)

    @staticmethod
    def rows(table: dict) -> int:
        """Rows of a table (0 when absent)."""
        first = "offset" if "offset" in table else "step"
        return int(len(table.get(first, ())))

    @property
    def name(self) -> str:
        """``<run folder>/<file>`` for titles."""
        return f"{self.path.parent.name}/{self.path.name}" if self.path.parent.name else self.path.name

    @property
    def ensemble(self) -> str:
        return str(self.config.get("md", {}).get("ensemble", ""))

    @property
    def timestep_fs(self) -> float | None:
        value = self.config.get("md", {}).get("timestep_fs")
        return float(value) if value is not None else None

    def time_ps(self) -> np.ndarray:
        """Simulated time of every trajectory row, ps."""
        return np.asarray(self.trajectory.get("time_fs", np.zeros(0)), dtype=float) / 1000.0

    def labels(self) -> dict:
        """MD step and reason of the frames labelled during MD (data-set rows with step >= 0)."""
        step = np.asarray(self.dataset.get("step", np.zeros(0, dtype=np.int64)))
        reason = np.asarray(self.dataset.get("reason", np.zeros(0, dtype=object)), dtype=object)
        keep = step >= 0
        return {"step": step[keep], "reason": reason[keep]}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_run(path, trajectory: str = "trajectory") -> RunData:
    """Read the tables and settings of a run file.

    Parameters
    ----------
    path : str or Path
        The ``run.h5`` written by ``otf-statcut run``.

    Raises
    ------
    DataError
        Missing file, not an HDF5 run file of the version this code reads, or unreadable
        contents; the one-line message names the path.
    """
    path = Path(path)
    try:
        with RunLog.open(path, "r") as runlog:
            config = runlog.config
        tables = {name: read_table(path, trajectory if name == "trajectory" else name,
                                   columns=REQUIRED[name] + (("walker",) if name == "dataset" else ()))
                  for name in REQUIRED}
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the run file ({_one_line(exc)})") from exc
    for name, table in tables.items():
        missing = [column for column in REQUIRED[name] if table and column not in table]
        if missing:
            raise DataError(f"{path}: table /{name} lacks column(s) {', '.join(missing)}; "
                            "not a complete otf-statcut run file")
    if not isinstance(config, dict):
        config = {}
    return RunData(path=path, config=config, **tables)


# --- time axis and cutoff step functions ----------------------------------------------------------
def step_times_ps(run: RunData, steps) -> np.ndarray:
    """Simulated time (ps) of MD steps: interpolated on the trajectory's ``step``/``time_fs``,
    extrapolated beyond it with the run's time step (``md.timestep_fs``, else the trajectory's
    mean step, else 1 fs). Steps below 0 (initial data) map to the start."""
    steps = np.maximum(np.asarray(steps, dtype=float), 0.0)
    ts = np.asarray(run.trajectory.get("step", np.zeros(0)), dtype=float)
    tf = np.asarray(run.trajectory.get("time_fs", np.zeros(0)), dtype=float)
    dt = run.timestep_fs
    if dt is None:
        dt = float((tf[-1] - tf[0]) / (ts[-1] - ts[0])) if ts.size > 1 and ts[-1] > ts[0] else 1.0
    if not ts.size:
        return steps * dt / 1000.0
    out = np.interp(steps, ts, tf)
    below, above = steps < ts[0], steps > ts[-1]
    out[below] = tf[0] + (steps[below] - ts[0]) * dt
    out[above] = tf[-1] + (steps[above] - ts[-1]) * dt
    return np.maximum(out, min(tf[0], 0.0)) / 1000.0


def _elements_of(cutoffs: dict) -> list[str]:
    """Cutoff groups to draw: ``all`` (global cutoffs) first, then the elements by symbol."""
    names = set(np.asarray(cutoffs.get("element", ()), dtype=object).tolist())
    out = ["all"] if "all" in names else []
    return out + sorted(names - set(_NOT_ELEMENTS))


def cutoff_steps(run: RunData, element: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A cutoff of one element (or ``all``) as a step function over simulated time.

    Returns
    -------
    x : ndarray
        Time (ps) of every refit of that element, then the end of the trajectory.
    y : ndarray
        ``column`` (``minimum`` or ``maximum``, eV/Å) of every refit, then the last one again;
        draw with ``drawstyle="steps-post"``.
    """
    c = run.cutoffs
    rows = np.flatnonzero(np.asarray(c.get("element", ()), dtype=object) == element)
    if not rows.size:
        return np.zeros(0), np.zeros(0)
    rows = rows[np.argsort(c["refit"][rows], kind="stable")]
    x = step_times_ps(run, c["step"][rows])
    y = np.asarray(c[column][rows], dtype=float)
    t = run.time_ps()
    end = max(float(t[-1]) if t.size else x[-1], x[-1])
    return np.append(x, end), np.append(y, y[-1])


# --- drawing helpers -------------------------------------------------------------------------------
def _figure(nrows: int, ncols: int, width: float = 6.0, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained", dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _note(ax: Axes, text: str, *, centre: bool = True) -> None:
    """Write what is absent on the axes (centred when nothing else is drawn there)."""
    if centre:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize="small",
                color="0.3", gid="absent")
    else:
        ax.text(0.01, 0.98, text, transform=ax.transAxes, ha="left", va="top", fontsize="x-small",
                color="0.3", gid="absent")


def _colours(elements: list[str]) -> dict[str, str]:
    cmap = colormaps["tab10"]
    out, k = {}, 0
    for e in elements:
        if e == "all":
            out[e] = "tab:blue"
        else:
            out[e] = cmap(k % 10)
            k += 1
    return out


def _symbols(run: RunData) -> np.ndarray:
    numbers = np.asarray(run.trajectory.get("numbers", np.zeros(0, dtype=int)), dtype=int)
    return np.array([chemical_symbols[z] for z in numbers], dtype=object)


def _title(fig: Figure, run: RunData, what: str) -> None:
    fig.suptitle(f"{run.name}: {what}", fontsize="medium")


# --- figures ---------------------------------------------------------------------------------------
def sigma_figure(run: RunData) -> Figure:
    """Max σ vs simulated time with the cutoffs as step functions and the decisions marked.

    One max σ line (``max σ``) and the ``minimum cutoff`` / ``maximum cutoff`` step functions for
    global cutoffs; with per-element cutoffs one ``max σ <El>`` line (max over that element's atoms
    of the trajectory's ``sigma``) and ``<El> minimum`` / ``<El> maximum`` step functions per
    element. Label and halt decisions are scatter points on the max σ of their step.
    """
    fig, axes = _figure(1, 1, width=8.0, height=4.2)
    _title(fig, run, "max σ and statistical cutoffs over the MD")
    _draw_sigma(axes[0, 0], run)
    return fig


def walkers_figure(runs: list[RunData], names: list[str]) -> Figure:
    """Many walkers side by side: each walker's max σ with the shared cutoffs and its decisions
    (one panel per walker, common axes)."""
    ncols = min(len(runs), 3)
    nrows = -(-len(runs) // ncols)
    fig, axes = _figure(nrows, ncols, width=4.6, height=3.2)
    _title(fig, runs[0], f"{len(runs)} walkers: max σ and the shared cutoffs")
    for i, ax in enumerate(axes.flat):
        if i >= len(runs):
            ax.set_visible(False)
            continue
        _draw_sigma(ax, runs[i])
        ax.set_title(f"{names[i]}: {int(np.sum(runs[i].dataset.get('walker', np.zeros(0)) == i))} labels",
                     fontsize="small")
    for ax in axes.flat[1:]:
        if ax.get_visible():
            ax.sharey(axes.flat[0])
    return fig


def _draw_sigma(ax: Axes, run: RunData) -> None:
    ax.set_xlabel("simulated time (ps)")
    ax.set_ylabel("max σ (eV/Å)")
    rows = run.rows(run.trajectory)
    elements = _elements_of(run.cutoffs)
    per_element = any(e != "all" for e in elements)
    colours = _colours(elements)
    absent = []
    if rows:
        t = run.time_ps()
        max_sigma = np.asarray(run.trajectory["max_sigma"], dtype=float)
        symbols = _symbols(run)
        sigma = run.trajectory.get("sigma")
        if per_element and sigma is not None and symbols.size == np.shape(sigma)[1]:
            for e in [e for e in elements if e != "all"] + sorted(set(symbols) - set(elements)):
                mask = symbols == e
                if mask.any():
                    ax.plot(t, np.asarray(sigma, dtype=float)[:, mask].max(axis=1), lw=0.9,
                            color=colours.get(e, "0.5"), label=f"max σ {e}")
        else:
            ax.plot(t, max_sigma, lw=0.9, color="tab:blue" if not per_element else "0.4", label="max σ")
        decision = np.asarray(run.trajectory["decision"])
        for code, style in _DECISION_STYLE.items():
            hit = decision == code
            style = dict(style, label=f"{style['label']} ({int(hit.sum())})")
            ax.scatter(t[hit], max_sigma[hit], zorder=3, **style)
    else:
        absent.append("no trajectory rows yet")
    if elements:
        for e in elements:
            colour = "black" if e == "all" else colours[e]
            for column, ls in (("minimum", "--"), ("maximum", ":")):
                x, y = cutoff_steps(run, e, column)
                label = f"{column} cutoff" if e == "all" else f"{e} {column}"
                ax.plot(x, y, drawstyle="steps-post", ls=ls, lw=1.3, color=colour, label=label)
    else:
        absent.append("no cutoffs recorded")
    if absent:
        _note(ax, "; ".join(absent), centre=not rows)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", ncols=2 if per_element else 1, loc="upper left")


def _nice(value: float) -> float:
    """Smallest of 1, 2, 5 × 10^k that is >= value."""
    exponent = np.floor(np.log10(value))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        if mantissa * 10.0 ** exponent >= value * (1 - 1e-9):
            return float(mantissa * 10.0 ** exponent)
    return float(10.0 ** (exponent + 1))  # pragma: no cover


def _windows(run: RunData) -> tuple[np.ndarray, float]:
    """Edges (ps) of equal time windows over the run and their width (ps).

    A window is a whole number of MD steps (a "nice" 1, 2, 5 × 10^k fs rounded up to a multiple of
    the time step), at most :data:`MAX_WINDOWS` of them and at least :data:`ROWS_PER_WINDOW` rows
    each; the edges lie half a time step before a step, so that no event sits on an edge.
    """
    t = run.time_ps()
    dt = (run.timestep_fs or (float(np.median(np.diff(t))) * 1000.0 if t.size > 1 else 1.0)) / 1000.0
    dt = dt if dt > 0 else 1e-3
    times = [t]
    for steps in (run.labels()["step"], run.failures.get("step", np.zeros(0))):
        if len(steps):
            times.append(step_times_ps(run, steps))
    every = np.concatenate(times)
    start = float(every.min()) if every.size else 0.0
    end = float(every.max()) if every.size else 0.0
    span = end - start + dt
    n = int(np.clip(max(t.size, 1) // ROWS_PER_WINDOW, 1, MAX_WINDOWS))
    width = dt * np.ceil(_nice(span / n) / dt - 1e-9)
    n = int(np.ceil(span / width - 1e-9))
    return start - dt / 2 + width * np.arange(n + 1), float(width)


def _bars(ax: Axes, edges: np.ndarray, width: float, series: dict[str, np.ndarray]) -> None:
    """Stacked bars of events per ps in each window, one series per key (its times in ps)."""
    bottom = np.zeros(edges.size - 1)
    for name, times in series.items():
        counts, _ = np.histogram(times, bins=edges)
        rate = counts / width
        ax.bar(edges[:-1], rate, width=width, bottom=bottom, align="edge", color=_REASON_COLOURS[name],
               alpha=0.85, label=f"{name} ({int(counts.sum())})", hatch="//" if name == "failed" else None,
               edgecolor="white", linewidth=0.3)
        bottom = bottom + rate


def decisions_figure(run: RunData) -> Figure:
    """Decisions, stored labels and failed labels per ps over equal time windows.

    (a) label and halt decisions of the trajectory; (b) frames labelled during MD (data-set rows
    with step >= 0) by ``reason``, and failed labels (``/failures``), stacked. Each bar is the count
    in its window divided by the window's width (ps); the legend gives the totals.
    """
    fig, axes = _figure(2, 1, width=8.0, height=3.0)
    a, b = axes[:, 0]
    _title(fig, run, "decisions and labels per ps")
    edges, width = _windows(run)
    rows = run.rows(run.trajectory)
    if rows:
        t = run.time_ps()
        decision = np.asarray(run.trajectory["decision"])
        _bars(a, edges, width, {"label": t[decision == LABEL], "halt": t[decision == HALT]})
        trusted = int((decision == TRUST).sum())
        a.set_title(f"(a) decisions: {trusted} of {rows} recorded steps trusted", fontsize="small")
        if not (decision != TRUST).any():
            _note(a, "no label or halt decisions", centre=False)
        a.legend(fontsize="x-small", loc="upper right")
    else:
        a.set_title("(a) decisions", fontsize="small")
        _note(a, "no trajectory rows yet")
    labels = run.labels()
    fail_steps = np.asarray(run.failures.get("step", np.zeros(0)))
    series = {reason: step_times_ps(run, labels["step"][labels["reason"] == reason])
              for reason in ("label", "halt")}
    series["failed"] = step_times_ps(run, fail_steps)
    n_initial = run.rows(run.dataset) - labels["step"].size
    b.set_title(f"(b) frames labelled during MD (plus {n_initial} initial) and failed labels",
                fontsize="small")
    absent = [text for text, empty in (("no labels during MD", not labels["step"].size),
                                       ("no failed labels", not fail_steps.size)) if empty]
    if len(absent) < 2:
        _bars(b, edges, width, series)
        b.legend(fontsize="x-small", loc="upper right")
    if absent:
        _note(b, "; ".join(absent), centre=len(absent) == 2)
    for ax in (a, b):
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"per ps ({width * 1000:.4g} fs windows)")
    b.set_xlabel("simulated time (ps)")
    return fig


def cutoffs_figure(run: RunData) -> Figure:
    """Minimum, maximum and error cutoff of every refit vs MD step (-1: fitted on the initial data).

    One line per element (``all`` for global cutoffs), labelled by the element; the pooled fit of
    per-element runs is the dotted grey ``pooled`` line.
    """
    fig, axes = _figure(1, 3, width=4.2, height=3.4)
    _title(fig, run, "cutoff history (one point per refit)")
    c = run.cutoffs
    elements = _elements_of(c)
    names = elements + (["pooled"] if "pooled" in set(np.asarray(c.get("element", ()), dtype=object)) else [])
    colours = _colours(elements)
    for ax, column, what in zip(axes[0], ("minimum", "maximum", "error_cutoff"),
                                ("(a) minimum cutoff on σ", "(b) maximum cutoff on σ", "(c) error cutoff")):
        ax.set_title(what, fontsize="small")
        ax.set_xlabel("MD step of the refit (−1: initial)")
        ax.set_ylabel("eV/Å")
        if not names:
            _note(ax, "no cutoff refits recorded")
            continue
        for e in names:
            rows = np.flatnonzero(np.asarray(c["element"], dtype=object) == e)
            rows = rows[np.argsort(c["refit"][rows], kind="stable")]
            style = ({"color": "0.55", "ls": ":", "marker": "."} if e == "pooled"
                     else {"color": "black" if e == "all" else colours[e], "ls": "-", "marker": "o", "ms": 3})
            ax.plot(c["step"][rows], np.asarray(c[column][rows], dtype=float), label=e, **style)
        if len(np.unique(c["refit"])) == 1:
            _note(ax, "one refit only", centre=False)
    if names:
        axes[0, 0].legend(fontsize="x-small", title="element", title_fontsize="x-small")
    return fig


def validation_figure(run: RunData) -> Figure:
    """Validation errors of every model vs model id (tick labels: id and the MD step it was trained at).

    (a) force MAE (``force MAE``) and RMSE (``force RMSE``) in eV/Å, each point annotated
    ``n_train/n_val``; (b) energy MAE in meV/atom. Retrains whose ``learned`` is False are ringed
    red (``did not learn``).
    """
    fig, axes = _figure(1, 2, width=5.0, height=3.6)
    a, b = axes[0]
    _title(fig, run, "validation errors per model")
    a.set_title("(a) forces (labels: n_train/n_val)", fontsize="small")
    b.set_title("(b) energy", fontsize="small")
    a.set_ylabel("validation force error (eV/Å)")
    b.set_ylabel("validation energy MAE (meV/atom)")
    m = run.models
    n = run.rows(m)
    for ax in (a, b):
        ax.set_xlabel("model (MD step trained at)")
    if not n:
        for ax in (a, b):
            _note(ax, "no models recorded")
        return fig
    ids = np.asarray(m["model"], dtype=int)
    mae = np.asarray(m["val_force_mae"], dtype=float)
    rmse = np.asarray(m["val_force_rmse"], dtype=float)
    energy = 1000.0 * np.asarray(m["val_energy_mae"], dtype=float)
    a.plot(ids, mae, "o-", ms=4, color="tab:blue", label="force MAE")
    a.plot(ids, rmse, "s--", ms=4, color="tab:green", label="force RMSE")
    b.plot(ids, energy, "o-", ms=4, color="tab:purple", label="energy MAE")
    for i in range(n):
        a.annotate(f"{int(m['n_train'][i])}/{int(m['n_val'][i])}", (ids[i], mae[i]), xytext=(0, 5),
                   textcoords="offset points", ha="center", fontsize="xx-small")
    reason = np.asarray(m.get("reason", np.full(n, "")), dtype=object)
    failed = (reason != "initial") & ~np.asarray(m["learned"], dtype=bool)
    if failed.any():
        style = {"marker": "o", "s": 110, "facecolors": "none", "edgecolors": "tab:red", "linewidths": 1.4,
                 "zorder": 4, "label": f"did not learn ({int(failed.sum())})"}
        a.scatter(ids[failed], mae[failed], **style)
        b.scatter(ids[failed], energy[failed], **style)
    if n <= 15:
        steps = np.asarray(m["step"], dtype=int)
        ticks = [f"{i}\n({'init' if s < 0 else s})" for i, s in zip(ids, steps)]
        for ax in (a, b):
            ax.set_xticks(ids, ticks, fontsize="x-small")
    if n == 1:
        for ax in (a, b):
            _note(ax, "a single model: no retrain yet", centre=False)
    for ax in (a, b):
        ax.legend(fontsize="x-small", loc="upper right")
    return fig


def thermo_figure(run: RunData) -> Figure:
    """Kinetic temperature vs simulated time (target of ``md.temperature_K`` dashed); for NPT runs
    (``md.ensemble`` npt) also the cell volume |det(cell)| in Å³."""
    npt = run.ensemble == "npt"
    fig, axes = _figure(2 if npt else 1, 1, width=8.0, height=3.0)
    _title(fig, run, f"thermodynamics ({run.ensemble or 'ensemble unknown'})")
    a = axes[0, 0]
    a.set_ylabel("temperature (K)")
    rows = run.rows(run.trajectory)
    t = run.time_ps()
    target = run.config.get("md", {}).get("temperature_K")
    if rows:
        a.plot(t, np.asarray(run.trajectory["temperature_K"], dtype=float), lw=0.9, color="tab:red",
               label="kinetic temperature")
        if target is not None:
            a.axhline(float(target), color="black", ls="--", lw=0.9, label=f"target {float(target):g} K")
        a.legend(fontsize="x-small", loc="lower right")
    else:
        _note(a, "no trajectory rows yet")
    if npt:
        v = axes[1, 0]
        v.set_ylabel("volume (Å³)")
        if rows:
            volume = np.abs(np.linalg.det(np.asarray(run.trajectory["cell"], dtype=float)))
            v.plot(t, volume, lw=0.9, color="tab:blue", label="cell volume")
            pressure = run.config.get("md", {}).get("pressure_GPa")
            v.set_title("cell volume" + (f" at {float(pressure):g} GPa" if pressure is not None else ""),
                        fontsize="small")
        else:
            _note(v, "no trajectory rows yet")
    axes[-1, 0].set_xlabel("simulated time (ps)")
    return fig


#: Figure builders in the order of :data:`FIGURES`.
_BUILDERS = (sigma_figure, decisions_figure, cutoffs_figure, validation_figure, thermo_figure)


def plot_run(path, outdir=None, *, fmt: str = "png") -> list[Path]:
    """Write the report of a run file: one file per figure of :data:`FIGURES`.

    Parameters
    ----------
    path : str or Path
        The ``run.h5`` written by ``otf-statcut run`` (may be a run still going or killed).
    outdir : str or Path, optional
        Folder for the figures (created); default ``<run folder>/figures``.
    fmt : str
        File type (``png``, ``pdf``, ``svg``).

    Returns
    -------
    list of Path
        Files written, in the order of :data:`FIGURES`.

    Raises
    ------
    DataError
        The run file is missing or unreadable (see :func:`load_run`).
    UserError
        A figure cannot be written (unwritable folder, disk full); the message names the file.
    """
    import json

    import h5py

    with h5py.File(path, "r", locking=False) as f:
        names = json.loads(f["walkers"].attrs["names"]) if "walkers" in f and "names" in f["walkers"].attrs else []
    if names:  # many walkers: the report of each walker, and all of them side by side
        runs = [load_run(path, trajectory=f"walkers/{i}/trajectory") for i in range(len(names))]
        reports = [(f"_{name}", r) for name, r in zip(names, runs)]
    else:
        runs = [load_run(path)]
        reports = [("", runs[0])]
    run = runs[0]
    outdir = Path(outdir) if outdir is not None else run.path.parent / "figures"
    written = []
    target = outdir
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for suffix, one in reports:
            for name, build in zip(FIGURES, _BUILDERS):
                if suffix and name in ("run_cutoffs", "run_validation"):
                    continue  # shared by the walkers: written once, below
                target = outdir / f"{name}{suffix}.{fmt}"
                written.append(save_figure(build(one), target))
        if names:
            for name, build in zip(FIGURES, _BUILDERS):
                if name in ("run_cutoffs", "run_validation"):
                    target = outdir / f"{name}.{fmt}"
                    written.append(save_figure(build(run), target))
            target = outdir / f"run_walkers.{fmt}"
            written.append(save_figure(walkers_figure(runs, names), target))
    except OSError as exc:
        raise UserError(f"{target}: cannot write the figure ({_one_line(exc)})") from exc
    return written
