"""The paper's active-learning replay protocol (section 4) for one dataset and one method.

One iteration, as :func:`run_method` runs it::

    label the data set (replay labeller)  ->  train NequIP on its training part
    -> fit the uncertainty head on training + validation frames
    -> predict forces and σ for the whole sampling set
    -> cutoffs: Maxwell on validation force-error magnitudes (error cutoff), best of the candidate
       families on validation σ (minimum), max_error mapped onto σ (maximum), all at
       CDF = 1 - 1/N with N the number of per-atom values in the sampling set
    -> classify every sampling frame with the engine's decide() and select the next frames
       (walk in order, stop at the first frame above the maximum, at most double)
    -> record the metrics (HDF5, log line, observers)

and it repeats until no candidate remains or a budget is spent.

Choices the paper leaves open, and what this implementation does:

* **Seed.** ``protocol.seed_frames`` frames (default 5) drawn uniformly from the whole sampling
  set with ``protocol.seed``; the same seed frames and the same first split for every method, so
  all methods start from the same data.
* **Split.** Each batch of frames entering the data set (the seed, then every iteration's
  additions) is split on its own with ``val_fraction`` (default 0.2; at least one validation
  frame in the seed; a batch of one frame trains). Frames never change sides, so validation
  grows with the data set and its errors stay comparable between iterations.
* **Per-frame value.** A frame's σ (and error) is the maximum over its atoms, as in ``decide``.
* **N.** The number of per-atom values in the whole sampling set, fixed for a dataset.
* **Training.** Warm start by default (``protocol.warm_start``): each iteration continues from the
  previous iteration's weights, energy shift/scale fixed by the seed; ``false`` rebuilds and
  retrains from scratch (same model seed) every iteration. The ensemble's extra members follow
  the ensemble head's own ``warm_start`` setting and, unless ``heads.ensemble.train_config`` is
  given, the benchmark's ``training`` settings.
* **Oracle and random.** Both use σ = the true force-error magnitude (the paper: the oracle "also
  used for Random sampling"). Because σ *is* the error, their uncertainty fit is a Maxwell, like
  the error fit, so the minimum cutoff equals the error cutoff and precision = recall = 1 whenever
  an atom is above it. The oracle adds the frames the rule selects; **random adds the same number
  of frames** (what the doubling rule lets the oracle rule add on random's own model), drawn
  uniformly from the unlabelled frames the walk reached (before the first frame above the
  maximum, plus that frame). So random obeys the same stability limit and stopping rule and
  differs only in *which* frames it picks. (:class:`~otf_statcut.uq.RandomHead`, random σ values,
  is not used here: with σ drawn from the error's own distribution almost no frame exceeds the
  cutoffs, which would measure nothing.)
* **Stopping.** ``converged``: no candidate left; ``exhausted``: every sampling frame labelled;
  ``max_iterations`` / ``label_budget``: a budget stopped it. Frames selected when a budget stops
  the run are not labelled, so the final data set is the one the last model was trained on and
  the DFT labels used equal the final data-set size.
* **Resume.** Everything the next step needs (data-set positions, split, per-frame σ, cutoffs) is
  stored with each iteration; the next selection is recomputed from the file with the current
  budgets. Warm-start weights (potential and head) of the last completed iteration are kept in
  ``<output>/checkpoints/<dataset>/<method>/<iteration>/``. Raising a budget continues a finished
  run.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otf_statcut.data import train_val_split
from otf_statcut.errors import DataError, FitError, UserError
from otf_statcut.io.benchmark_results import BenchmarkResults, IterationRecord, MethodSummary
from otf_statcut.mlip import NequIPPotential
from otf_statcut.stats import statistical_cutoffs
from otf_statcut.uq import load_head, make_head

from .config import TRUE_ERROR_METHODS, BenchmarkConfig, ProtocolSettings
from .metrics import classification, frame_counts, frame_max, mean_or_nan, sweep_grids
from .replay import ReplayLabeler, SamplingSet
from .selection import select_candidates, select_random

__all__ = ["run_method", "seed_frames", "next_step", "NextStep", "head_name", "Observer"]

log = logging.getLogger("otf_statcut.benchmark")

#: ``observer(dataset, method, record)`` is called after each iteration is stored.
Observer = Callable[[str, str, IterationRecord], None]


def head_name(method: str) -> str:
    """Registry name of the uncertainty head a method uses (random uses the oracle's σ)."""
    return "oracle" if method in TRUE_ERROR_METHODS else method


def seed_frames(n_frames: int, protocol: ProtocolSettings) -> tuple[list[int], list[bool]]:
    """The seed data set: positions drawn with ``protocol.seed`` and their validation flags."""
    if protocol.seed_frames >= n_frames:
        raise DataError(f"protocol.seed_frames = {protocol.seed_frames} but the sampling set has only "
                        f"{n_frames} frames; use fewer seed frames")
    rng = np.random.default_rng(protocol.seed)
    chosen = sorted(int(i) for i in rng.choice(n_frames, size=protocol.seed_frames, replace=False))
    return chosen, _val_flags(len(chosen), protocol, batch=0)


def _val_flags(n: int, protocol: ProtocolSettings, batch: int) -> list[bool]:
    _, val = train_val_split(list(range(n)), protocol.val_fraction, seed=protocol.seed * 100_003 + batch)
    flags = [False] * n
    for i in val:
        flags[i] = True
    return flags


@dataclass(frozen=True)
class NextStep:
    """What follows an iteration: the frames to add, or why the run stops."""

    selected: np.ndarray
    stopped_at: int
    n_candidates: int
    status: str  # "running" or a final status


def next_step(method: str, iteration: int, frame_sigma: np.ndarray, minimum: float, maximum: float,
              labelled: Sequence[int], protocol: ProtocolSettings) -> NextStep:
    """Select the frames for iteration ``iteration + 1`` (a pure function of stored data).

    Parameters
    ----------
    method : str
        Benchmark method (``random`` draws instead of ranking).
    iteration : int
        The iteration just completed.
    frame_sigma : array, shape (n_frames,)
        Per-frame max σ of that iteration (eV/Å).
    minimum, maximum : float
        Its uncertainty cutoffs (eV/Å).
    labelled : sequence of int
        Sampling positions already in the data set.
    protocol : ProtocolSettings
        Budgets and selection switches.
    """
    n_frames = len(frame_sigma)
    size = len(labelled)
    include = protocol.include_halt_frame
    every = select_candidates(frame_sigma, minimum, maximum, n_frames, labelled=labelled,
                              include_halt=include)
    n_candidates = int(every.indices.size)
    empty = np.zeros(0, dtype=np.int64)
    if n_candidates == 0:
        status = "exhausted" if size >= n_frames else "converged"
        return NextStep(empty, every.stopped_at, 0, status)
    if iteration + 1 >= protocol.max_iterations:
        return NextStep(empty, every.stopped_at, n_candidates, "max_iterations")
    budget = None if protocol.max_labels is None else protocol.max_labels - size
    if budget is not None and budget <= 0:
        return NextStep(empty, every.stopped_at, n_candidates, "label_budget")
    chosen = select_candidates(frame_sigma, minimum, maximum, size, labelled=labelled,
                               include_halt=include, budget=budget).indices
    if method == "random":
        rng = np.random.default_rng([protocol.seed, iteration, 0x5EED])
        chosen = select_random(chosen.size, every.stopped_at, n_frames, rng, labelled=labelled,
                               include_halt=include)
    return NextStep(chosen, every.stopped_at, n_candidates, "running")


class _Run:
    """State of one dataset/method run (internal to :func:`run_method`)."""

    def __init__(self, sampling: SamplingSet, method: str, config: BenchmarkConfig, store: BenchmarkResults,
                 checkpoints: Path):
        self.sampling = sampling
        self.method = method
        self.config = config
        self.protocol = config.protocol
        self.store = store
        self.checkpoints = checkpoints / sampling.name / method
        self.labeller = ReplayLabeler(sampling)
        self.labels: dict[int, object] = {}
        self.references = sampling.reference_forces()
        self.potential: NequIPPotential | None = None
        self.head = None

    # ---------------------------------------------------------------- pieces
    def new_head(self):
        settings = self.config.head_settings(self.method)
        if self.method == "ensemble" and "train_config" not in settings:
            settings["train_config"] = self.config.training
        return make_head(head_name(self.method), **settings)

    def label(self, positions: Sequence[int]) -> list:
        missing = [int(i) for i in positions if int(i) not in self.labels]
        for i, frame in zip(missing, self.labeller.label_many(missing)):
            self.labels[i] = frame
        return [self.labels[int(i)] for i in positions]

    def restore(self, iteration: int) -> None:
        """Load the warm-start weights saved after ``iteration`` (if any)."""
        folder = self.checkpoints / str(iteration)
        if not (self.protocol.warm_start and (folder / "potential").is_dir()):
            if self.protocol.warm_start:
                log.warning("%s %s: no checkpoint of iteration %d in %s; the next model trains from scratch",
                            self.sampling.name, self.method, iteration, folder)
            return
        self.potential = NequIPPotential.load(folder / "potential", species=self.sampling.species)
        if (folder / "head").is_dir():
            self.head = load_head(folder / "head", self.potential)

    def save_checkpoint(self, iteration: int) -> None:
        if not self.protocol.warm_start:
            return
        folder = self.checkpoints / str(iteration)
        if folder.exists():
            shutil.rmtree(folder)
        self.potential.save(folder / "potential")
        self.head.save(folder / "head")

    def prune_checkpoints(self, keep: int) -> None:
        if not self.checkpoints.is_dir():
            return
        for child in self.checkpoints.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) != keep:
                shutil.rmtree(child)

    # ---------------------------------------------------------------- one iteration
    def iteration(self, iteration: int, labelled: list[int], is_val: list[bool]):
        start = time.perf_counter()
        frames = self.label(labelled)
        train = [f for f, v in zip(frames, is_val) if not v]
        val = [f for f, v in zip(frames, is_val) if v]
        if not train or not val:
            raise DataError(f"{self.sampling.name}: iteration {iteration} has {len(train)} training and "
                            f"{len(val)} validation frames; both must be non-empty (protocol.val_fraction)")
        model_config = self.config.model_config(self.sampling.species)
        if self.potential is None or not self.protocol.warm_start:
            self.potential = NequIPPotential.build(model_config, train)
        self.potential.fit(train, val, self.config.training, warm_start=True)
        if self.head is None:
            self.head = self.new_head()
        predictions = self.potential.predict(list(self.sampling.frames), stress=False,
                                             features=self.head.needs_features)
        train_pos = [p for p, v in zip(labelled, is_val) if not v]
        val_pos = [p for p, v in zip(labelled, is_val) if v]
        self.head.fit(self.potential, train, val, train_predictions=[predictions[p] for p in train_pos],
                      val_predictions=[predictions[p] for p in val_pos])
        train_time = time.perf_counter() - start
        sigma = self.head.predict(list(self.sampling.frames), predictions)
        errors = [np.linalg.norm(p.forces - ref, axis=1) for p, ref in zip(predictions, self.references)]

        val_errors = np.concatenate([errors[p] for p in val_pos])
        val_sigma = np.concatenate([sigma[p] for p in val_pos])
        n = self.sampling.n_atoms
        candidates = ("maxwell",) if self.method in TRUE_ERROR_METHODS else self.protocol.candidates
        try:
            cut = statistical_cutoffs(val_errors, val_sigma, n, self.protocol.max_error, candidates,
                                      self.protocol.robust)
        except (FitError, UserError) as exc:
            raise DataError(f"{self.sampling.name} {self.method} iteration {iteration}: cannot fit the "
                            f"validation errors/σ ({exc}); use more seed frames or a larger "
                            "val_fraction") from exc

        frame_sigma = frame_max(sigma)
        frame_error = frame_max(errors)
        all_errors, all_sigma = np.concatenate(errors), np.concatenate(sigma)
        step = next_step(self.method, iteration, frame_sigma, cut.minimum, cut.maximum, labelled,
                         self.protocol)
        between, above = frame_counts(frame_sigma, cut.minimum, cut.maximum)
        cls = classification(all_errors, all_sigma, cut.error_cutoff, cut.minimum)
        n_frames = len(self.sampling)
        record = IterationRecord(
            iteration=iteration,
            dataset_size=len(labelled),
            n_train=len(train),
            n_val=len(val),
            n_added=int(step.selected.size),
            n_candidates=step.n_candidates,
            stopped_at=step.stopped_at,
            coverage=(step.stopped_at if step.stopped_at >= 0 else n_frames) / n_frames,
            n_between=between,
            n_above=above,
            n_true_positive=cls.true_positive,
            n_uncertain=cls.uncertain,
            n_high_error=cls.high_error,
            precision=cls.precision,
            recall=cls.recall,
            f1=cls.f1,
            mean_error_train=mean_or_nan([errors[p] for p in train_pos]),
            mean_error_val=float(val_errors.mean()),
            mean_error_sampling=float(all_errors.mean()),
            error_cutoff=float(cut.error_cutoff),
            sigma_minimum=float(cut.minimum),
            sigma_maximum=float(cut.maximum),
            error_fit=cut.error_fit.name,
            sigma_fit=cut.uncertainty_fit.name,
            sigma_fit_pvalue=float(cut.uncertainty_fit.ks_pvalue),
            n_screened=n,
            train_time=train_time,
            wall_time=time.perf_counter() - start,
        )
        arrays = {
            "labelled": np.asarray(labelled, dtype=np.int64),
            "is_val": np.asarray(is_val, dtype=bool),
            "selected": step.selected,
            "frame_sigma": frame_sigma,
            "frame_error": frame_error,
            "sampling_errors": all_errors,
            "sampling_sigma": all_sigma,
            "val_errors": val_errors,
            "val_sigma": val_sigma,
            **sweep_grids(all_errors, all_sigma, cut.error_cutoff, cut.minimum, self.protocol.sweep_points),
        }
        fits = {
            "error_fit": cut.error_fit.to_dict(),
            "sigma_fit": cut.uncertainty_fit.to_dict(),
            "sigma_candidates": [f.to_dict() for f in cut.uncertainty_candidates],
            "cutoffs": {"n": n, "error_cutoff": cut.error_cutoff, "minimum": cut.minimum,
                        "maximum": cut.maximum, "max_error": cut.max_error, "clamped": cut.clamped},
        }
        return record, arrays, fits, step


def summarise(dataset: str, method: str, status: str, records: Sequence[IterationRecord]) -> MethodSummary:
    """The final summary of a run from its records."""
    last = records[-1]
    return MethodSummary(
        dataset=dataset,
        method=method,
        status=status,
        iterations=len(records),
        final_dataset_size=last.dataset_size,
        dft_labels=last.dataset_size,
        final_mean_error_train=last.mean_error_train,
        final_mean_error_val=last.mean_error_val,
        final_mean_error_sampling=last.mean_error_sampling,
        final_precision=last.precision,
        final_recall=last.recall,
        final_f1=last.f1,
        final_coverage=last.coverage,
        final_error_cutoff=last.error_cutoff,
        final_sigma_minimum=last.sigma_minimum,
        final_sigma_maximum=last.sigma_maximum,
        wall_time=float(sum(r.wall_time for r in records)),
    )


def format_record(dataset: str, method: str, r: IterationRecord) -> str:
    """The one-line log of an iteration."""
    return (
        f"{dataset} {method:<8} it {r.iteration:>2}: size {r.dataset_size:>4} (+{r.n_added:<3}) "
        f"err train/val/samp {r.mean_error_train:.3f}/{r.mean_error_val:.3f}/"
        f"{r.mean_error_sampling:.3f} eV/Å | "
        f"cut err {r.error_cutoff:.3f} σ [{r.sigma_minimum:.3f}, {r.sigma_maximum:.3f}] ({r.sigma_fit}) | "
        f"frames between {r.n_between} above {r.n_above} | "
        f"P {r.precision:.2f} R {r.recall:.2f} F1 {r.f1:.2f} | "
        f"coverage {r.coverage:.2f} | {r.wall_time:.1f} s"
    )


def run_method(sampling: SamplingSet, method: str, config: BenchmarkConfig, store: BenchmarkResults, *,
               checkpoints: Path, observers: Sequence[Observer] = (), progress=None) -> MethodSummary:
    """Run (or resume, or skip if finished) the protocol for one dataset and method.

    Parameters
    ----------
    sampling : SamplingSet
        The dataset in sampling order.
    method : str
        One of :data:`otf_statcut.benchmark.config.METHODS`.
    config : BenchmarkConfig
        The validated benchmark input.
    store : BenchmarkResults
        The results file (already initialised, dataset written).
    checkpoints : Path
        Folder of the warm-start checkpoints.
    observers : sequence of callables
        ``observer(dataset, method, record)`` after each stored iteration.
    progress : tqdm-like, optional
        Updated once per iteration (``update``, ``set_postfix_str``).

    Returns
    -------
    MethodSummary
    """
    name = sampling.name
    run = _Run(sampling, method, config, store, checkpoints)
    records = store.completed(name, method)
    status, _ = store.status(name, method)
    if records:
        last = records[-1]
        arrays = store.iteration_arrays(name, method, -1)
        labelled = [int(i) for i in arrays["labelled"]]
        is_val = [bool(v) for v in arrays["is_val"]]
        step = next_step(method, last.iteration, arrays["frame_sigma"], last.sigma_minimum,
                         last.sigma_maximum, labelled, config.protocol)
        if step.status != "running":
            summary = summarise(name, method, step.status, records)
            if status != step.status:
                store.finish(summary, _reason(step.status))
            log.info("%s %s: finished earlier (%s after %d iterations, %d frames)", name, method, step.status,
                     len(records), last.dataset_size)
            if progress is not None:
                progress.update(len(records))
            return summary
        if status != "running":
            store.reopen(name, method)
        log.info("%s %s: resuming after iteration %d from %s", name, method, last.iteration, store.path)
        if progress is not None:
            progress.update(len(records))
        run.restore(last.iteration)
        iteration = last.iteration + 1
        labelled, is_val = labelled + [int(i) for i in step.selected], \
            is_val + _val_flags(step.selected.size, config.protocol, batch=iteration)
    else:
        iteration = 0
        labelled, is_val = seed_frames(len(sampling), config.protocol)

    while True:
        record, arrays, fits, step = run.iteration(iteration, labelled, is_val)
        run.save_checkpoint(iteration)
        store.append_iteration(name, method, record, arrays, fits)
        run.prune_checkpoints(keep=iteration)
        records.append(record)
        log.info(format_record(name, method, record))
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{name} {method} size {record.dataset_size} F1 {record.f1:.2f}")
        for observer in observers:
            observer(name, method, record)
        if step.status != "running":
            summary = summarise(name, method, step.status, records)
            store.finish(summary, _reason(step.status))
            log.info("%s %s: %s after %d iterations; final data set %d frames", name, method,
                     _reason(step.status), len(records), record.dataset_size)
            return summary
        iteration += 1
        labelled = labelled + [int(i) for i in step.selected]
        is_val = is_val + _val_flags(step.selected.size, config.protocol, batch=iteration)


def _reason(status: str) -> str:
    return {
        "converged": "no uncertain frame left before the first frame above the maximum cutoff",
        "exhausted": "every sampling frame is in the data set",
        "max_iterations": "protocol.max_iterations reached",
        "label_budget": "protocol.max_labels reached",
    }[status]
