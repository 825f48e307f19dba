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

* **Seed.** Every (dataset, method, seed) of ``protocol.seeds`` (default 5 seeds, 0 … 4) is one
  run. Its run seed ``s`` seeds every random choice of the run (see
  :meth:`~otf_statcut.benchmark.config.BenchmarkConfig.for_seed`): ``protocol.seed_frames``
  frames (default 5) drawn uniformly from the whole sampling set with ``s``, the train/validation
  split, the random method's draws, and, shifted by ``1000·s``, the NequIP weight
  initialisation (ensemble members: that seed + k), the batch shuffling and the GP's inducing
  points. For one seed, every method starts from the same seed frames and the same first split;
  different seeds start from different ones.
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
* **Stopping.** ``converged``: no candidate left (and no more sampling atoms above their error
  cutoff than expected); ``stalled``: no candidate left while more unlabelled sampling atoms lie
  above their element's error cutoff than the Poisson 99.9 % quantile of the ~1 per element
  expected (the
  cutoffs flag nothing, the true errors say the potential is not done: :func:`honest`);
  ``exhausted``: every sampling frame labelled;
  ``max_iterations`` / ``label_budget``: a budget stopped it. Frames selected when a budget stops
  the run are not labelled, so the final data set is the one the last model was trained on and
  the DFT labels used equal the final data-set size. Each seed's run stops on its own. The frame
  counts of a record (``n_between``, ``n_above``) count only frames not yet in the data set.
* **Resume.** Everything the next step needs (data-set positions, split, per-frame σ, cutoffs) is
  stored with each iteration; the next selection is recomputed from the file with the current
  budgets. Warm-start weights (potential and head) of the last completed iteration are kept in
  ``<output>/checkpoints/<dataset>/<method>/seed_<s>/<iteration>/``. Raising a budget continues a
  finished run; adding a seed runs only the new seed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otf_statcut.data.stratified import StratifiedSplitter
from otf_statcut.engine.decision import SEVERITY_HALT, SEVERITY_LABEL, severity
from otf_statcut.fit_cycle import CutoffSettings, element_counts, fit_cycle, force_errors
from otf_statcut.errors import DataError, FitError, UserError
from otf_statcut.io.benchmark_results import BenchmarkResults, IterationRecord, MethodSummary
from otf_statcut.mlip import NequIPPotential
from otf_statcut.stats.element_cutoffs import ElementCutoffs, cutoffs_to_dict, thresholds
from otf_statcut.uq import load_head, make_head

from .config import TRUE_ERROR_METHODS, BenchmarkConfig, ProtocolSettings
from .metrics import classification, frame_counts, frame_max, mean_or_nan, sweep_grids
from .replay import ReplayLabeler, SamplingSet
from .selection import select_candidates, select_random

__all__ = ["run_method", "seed_frames", "next_step", "NextStep", "head_name", "Observer"]

log = logging.getLogger("otf_statcut.benchmark")

#: ``observer(dataset, method, seed, record)`` is called after each iteration is stored.
Observer = Callable[[str, str, int, IterationRecord], None]


def head_name(method: str) -> str:
    """Registry name of the uncertainty head a method uses (random uses the oracle's σ)."""
    return "oracle" if method in TRUE_ERROR_METHODS else method


def seed_frames(n_frames: int, protocol: ProtocolSettings) -> tuple[list[int], list[bool]]:
    """The seed data set: positions drawn with ``protocol.seed`` (the run seed) and their
    validation flags."""
    if protocol.seed_frames >= n_frames:
        raise DataError(f"protocol.seed_frames = {protocol.seed_frames} but the sampling set has only "
                        f"{n_frames} frames; use fewer seed frames")
    rng = np.random.default_rng(protocol.seed)
    chosen = sorted(int(i) for i in rng.choice(n_frames, size=protocol.seed_frames, replace=False))
    return chosen, _val_flags(len(chosen), protocol, batch=0)


def _val_flags(n: int, protocol: ProtocolSettings, batch: int) -> list:
    """Placeholders (``None``) for the validation flags of ``n`` new frames: the iteration places
    them with the stratified splitter (:meth:`_Run.splits`), which needs the whole data set."""
    return [None] * n


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
        Benchmark method (``random`` draws instead of ranking, seeded by the run seed
        ``protocol.seed`` and ``iteration``).
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
                 checkpoints: Path, seed: int = 0):
        self.sampling = sampling
        self.method = method
        self.seed = int(seed)
        # every seeded choice of the run (model, training, heads, split, draws) follows this seed
        self.config = config.for_seed(self.seed)
        self.protocol = self.config.protocol
        self.store = store
        self.checkpoints = checkpoints / sampling.name / method / f"seed_{self.seed}"
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
                log.warning("%s %s seed %d: no checkpoint of iteration %d in %s; the next model trains from "
                            "scratch", self.sampling.name, self.method, self.seed, iteration, folder)
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
    def splits(self, iteration: int, labelled: list[int], is_val: list) -> tuple[list[bool], list[int]]:
        """Validation flags of the data set and the indices of the new frames: flags already fixed
        are kept, the new frames (flag ``None``) are placed by the stratified splitter, in a seeded
        order within the batch."""
        frames = self.label(labelled)
        known = [i for i, v in enumerate(is_val) if v is not None]
        splitter = StratifiedSplitter.from_frames(self.protocol.val_fraction, [frames[i] for i in known],
                                                  [int(bool(is_val[i])) for i in known])
        new = [i for i, v in enumerate(is_val) if v is None]
        rng = np.random.default_rng([self.protocol.seed, iteration, 0x5B17])
        flags = [bool(v) if v is not None else False for v in is_val]
        for k in rng.permutation(len(new)):
            flags[new[k]] = bool(splitter.assign(frames[new[k]]))
        return flags, new

    @property
    def cutoff_settings(self) -> CutoffSettings:
        """How this method's cutoffs are fitted (oracle and random: σ is the error, a Maxwell)."""
        candidates = ("maxwell",) if self.method in TRUE_ERROR_METHODS else tuple(self.protocol.candidates)
        per_element = self.protocol.per_element
        return CutoffSettings(max_error=self.protocol.max_error, candidates=candidates, robust=self.protocol.robust,
                              per_element=None if per_element == "auto" else bool(per_element))

    def element_n(self) -> dict[str, int]:
        """N per element: that element's atoms in the sampling set."""
        return element_counts(self.sampling.atom_symbols)

    def error_schemes(self, cycle, errors, sigma, symbols) -> dict[str, np.ndarray]:
        """Diagnostic: sampling atoms above the error cutoff under the grouping schemes of
        :mod:`otf_statcut.stats.states` (global Maxwell, per element, per element with errors
        scaled by the head's σ) and how many each expects (one per group)."""
        from otf_statcut.stats.states import error_cutoffs

        schemes = ["global", "element"] + ([] if self.method in TRUE_ERROR_METHODS else ["scaled"])
        above, expected = [], []
        for scheme in schemes:
            scaled = scheme == "scaled"
            try:
                fit = error_cutoffs(cycle.val_errors, cycle.val_symbols, symbols, scheme=scheme,
                                    val_scale=cycle.val_sigma if scaled else None,
                                    sampling_scale=sigma if scaled else None)
                above.append(fit.count_above(errors))
                expected.append(fit.expected)
            except (DataError, FitError, UserError) as exc:
                log.debug("error scheme %s not fitted: %s", scheme, exc)
                above.append(-1)
                expected.append(np.nan)
        return {"scheme_names": np.asarray(schemes, dtype="S16"),
                "scheme_n_above_error": np.asarray(above, dtype=np.int64),
                "scheme_expected": np.asarray(expected, dtype=float)}

    # ---------------------------------------------------------------- one iteration
    def iteration(self, iteration: int, labelled: list[int], is_val: list):
        start = time.perf_counter()
        is_val, new = self.splits(iteration, labelled, is_val)
        frames = self.label(labelled)
        train = [f for f, v in zip(frames, is_val) if not v]
        val = [f for f, v in zip(frames, is_val) if v]
        if not train or not val:
            raise DataError(f"{self.sampling.name}: iteration {iteration} has {len(train)} training and "
                            f"{len(val)} validation frames; both must be non-empty (protocol.val_fraction)")
        warm = self.potential is not None and self.protocol.warm_start
        if self.potential is None or not self.protocol.warm_start:
            self.potential = NequIPPotential.build(self.config.model_config(self.sampling.species), train)
        if self.head is None:
            self.head = self.new_head()
        labelled_set = set(int(p) for p in labelled)
        others = [p for p in range(len(self.sampling)) if p not in labelled_set]
        n = self.element_n()
        cycle = fit_cycle(self.potential, self.head, train, val, train_config=self.config.training,
                          warm_start=warm, n=n, settings=self.cutoff_settings, new_frames=[frames[i] for i in new],
                          also_predict=[self.sampling.frames[p] for p in others])
        if cycle.cutoffs is None:
            raise DataError(f"{self.sampling.name} {self.method} iteration {iteration}: {cycle.cutoff_failure}; "
                            "use more seed frames or a larger val_fraction")
        train_time = time.perf_counter() - start
        # Predictions of every sampling frame, in sampling order.
        predictions: list = [None] * len(self.sampling)
        train_pos = [p for p, v in zip(labelled, is_val) if not v]
        val_pos = [p for p, v in zip(labelled, is_val) if v]
        for p, pred in zip(train_pos + val_pos, cycle.train_predictions + cycle.val_predictions):
            predictions[p] = pred
        for p, pred in zip(others, cycle.extra_predictions):
            predictions[p] = pred
        sampling_frames = list(self.sampling.frames)
        sigma = self.head.predict(sampling_frames, predictions)
        errors = force_errors(sampling_frames, predictions)
        symbols = self.sampling.frame_symbols
        cut = cycle.cutoffs
        val_errors, val_sigma = cycle.val_errors, cycle.val_sigma

        all_symbols = self.sampling.atom_symbols
        frame_sigma = frame_max(sigma)
        frame_error = frame_max(errors)
        # Selection on severity: each atom's σ through its element's cutoffs (minimum -> 1,
        # maximum -> 2), so one per-frame number ranks frames of a multi-element system.
        frame_severity = np.array([float(np.max(severity(s, cut, sym))) for s, sym in zip(sigma, symbols)])
        all_errors, all_sigma = np.concatenate(errors), np.concatenate(sigma)
        step = next_step(self.method, iteration, frame_severity, SEVERITY_LABEL, SEVERITY_HALT, labelled,
                         self.protocol)
        between, above = frame_counts(frame_severity, SEVERITY_LABEL, SEVERITY_HALT, labelled)
        sigma_min_atom, _, error_cut_atom = thresholds(cut, all_symbols)
        cls = classification(all_errors, all_sigma, error_cut_atom, sigma_min_atom)
        summary = cut.pooled_cutoffs if isinstance(cut, ElementCutoffs) else cut
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
            error_cutoff=float(summary.error_cutoff),
            sigma_minimum=float(summary.minimum),
            sigma_maximum=float(summary.maximum),
            error_fit=summary.error_fit.name,
            sigma_fit=summary.uncertainty_fit.name,
            sigma_fit_pvalue=float(summary.uncertainty_fit.ks_pvalue),
            n_screened=int(sum(n.values())),
            train_time=train_time,
            wall_time=time.perf_counter() - start,
        )
        elements = sorted(cut.by_element) if isinstance(cut, ElementCutoffs) else ["all"]
        per = [cut.by_element[e] for e in elements] if isinstance(cut, ElementCutoffs) else [cut]
        masks = [all_symbols == e for e in elements] if isinstance(cut, ElementCutoffs) else \
            [np.ones(all_symbols.size, dtype=bool)]
        arrays = {
            "labelled": np.asarray(labelled, dtype=np.int64),
            "is_val": np.asarray(is_val, dtype=bool),
            "selected": step.selected,
            "frame_sigma": frame_sigma,
            "frame_severity": frame_severity,
            "frame_error": frame_error,
            "sampling_errors": all_errors,
            "sampling_sigma": all_sigma,
            "val_errors": val_errors,
            "val_sigma": val_sigma,
            # per element ("all" with global cutoffs): cutoffs, N and sampling atoms above the
            # element's error cutoff (the method expects about 1 per element)
            "element_symbols": np.asarray(elements, dtype="S8"),
            "element_n": np.asarray([c.n for c in per], dtype=np.int64),
            "element_error_cutoff": np.asarray([c.error_cutoff for c in per]),
            "element_sigma_minimum": np.asarray([c.minimum for c in per]),
            "element_sigma_maximum": np.asarray([c.maximum for c in per]),
            "element_n_above_error": np.asarray([int(np.count_nonzero(all_errors[m] > c.error_cutoff))
                                                 for m, c in zip(masks, per)], dtype=np.int64),
            **self.error_schemes(cycle, all_errors, all_sigma, all_symbols),
            **sweep_grids(all_errors, all_sigma, summary.error_cutoff, summary.minimum, self.protocol.sweep_points),
        }
        fits = {
            "error_fit": summary.error_fit.to_dict(),
            "sigma_fit": summary.uncertainty_fit.to_dict(),
            "sigma_candidates": [f.to_dict() for f in summary.uncertainty_candidates],
            "cutoffs": {"n": int(sum(n.values())), "error_cutoff": summary.error_cutoff, "minimum": summary.minimum,
                        "maximum": summary.maximum, "max_error": summary.max_error, "clamped": summary.clamped},
            "all_cutoffs": cutoffs_to_dict(cut),
            "retrain": cycle.retrain.to_dict(),
        }
        return record, arrays, fits, honest(step, arrays, self.sampling)


def summarise(dataset: str, method: str, seed: int, status: str,
              records: Sequence[IterationRecord]) -> MethodSummary:
    """The final summary of a run from its records."""
    last = records[-1]
    return MethodSummary(
        dataset=dataset,
        method=method,
        seed=int(seed),
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


def format_record(dataset: str, method: str, seed: int, r: IterationRecord) -> str:
    """The one-line log of an iteration."""
    return (
        f"{dataset} {method:<8} s{seed:<2} it {r.iteration:>2}: size {r.dataset_size:>4} (+{r.n_added:<3}) "
        f"err train/val/samp {r.mean_error_train:.3f}/{r.mean_error_val:.3f}/"
        f"{r.mean_error_sampling:.3f} eV/Å | "
        f"cut err {r.error_cutoff:.3f} σ [{r.sigma_minimum:.3f}, {r.sigma_maximum:.3f}] ({r.sigma_fit}) | "
        f"frames between {r.n_between} above {r.n_above} | "
        f"P {r.precision:.2f} R {r.recall:.2f} F1 {r.f1:.2f} | "
        f"coverage {r.coverage:.2f} | {r.wall_time:.1f} s"
    )


def run_method(sampling: SamplingSet, method: str, config: BenchmarkConfig, store: BenchmarkResults, *,
               seed: int = 0, checkpoints: Path, observers: Sequence[Observer] = (),
               progress=None) -> MethodSummary:
    """Run (or resume, or skip if finished) the protocol for one dataset, method and seed.

    Parameters
    ----------
    sampling : SamplingSet
        The dataset in sampling order.
    method : str
        One of :data:`otf_statcut.benchmark.config.METHODS`.
    config : BenchmarkConfig
        The validated benchmark input (:meth:`~BenchmarkConfig.for_seed` is applied here).
    store : BenchmarkResults
        The results file (already initialised, dataset written).
    seed : int
        The run seed (one of ``config.protocol.seeds``); the run is stored under ``seed_<seed>``.
    checkpoints : Path
        Folder of the warm-start checkpoints.
    observers : sequence of callables
        ``observer(dataset, method, seed, record)`` after each stored iteration.
    progress : tqdm-like, optional
        Updated once per iteration (``update``, ``set_postfix_str``).

    Returns
    -------
    MethodSummary
    """
    name = sampling.name
    seed = int(seed)
    run = _Run(sampling, method, config, store, checkpoints, seed)
    protocol = run.protocol  # the run's settings: protocol.seed is the run seed
    records = store.completed(name, method, seed=seed)
    status, _ = store.status(name, method, seed=seed)
    label = f"{name} {method} seed {seed}"
    if records:
        last = records[-1]
        arrays = store.iteration_arrays(name, method, -1, seed=seed)
        labelled = [int(i) for i in arrays["labelled"]]
        is_val = [bool(v) for v in arrays["is_val"]]
        step = honest(next_step(method, last.iteration, *_selection_inputs(arrays, last), labelled, protocol),
                      arrays, sampling)
        if step.status != "running":
            summary = summarise(name, method, seed, step.status, records)
            if status != step.status:
                store.finish(summary, _reason(step.status))
            log.info("%s: finished earlier (%s after %d iterations, %d frames)", label, step.status,
                     len(records), last.dataset_size)
            if progress is not None:
                progress.update(len(records))
            return summary
        if status != "running":
            store.reopen(name, method, seed=seed)
        log.info("%s: resuming after iteration %d from %s", label, last.iteration, store.path)
        if progress is not None:
            progress.update(len(records))
        run.restore(last.iteration)
        iteration = last.iteration + 1
        labelled, is_val = labelled + [int(i) for i in step.selected], \
            is_val + _val_flags(step.selected.size, protocol, batch=iteration)
    else:
        iteration = 0
        labelled, is_val = seed_frames(len(sampling), protocol)

    while True:
        record, arrays, fits, step = run.iteration(iteration, labelled, is_val)
        run.save_checkpoint(iteration)
        store.append_iteration(name, method, record, arrays, fits, seed=seed)
        run.prune_checkpoints(keep=iteration)
        records.append(record)
        log.info(format_record(name, method, seed, record))
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{name} {method} s{seed} size {record.dataset_size} F1 {record.f1:.2f}")
        for observer in observers:
            observer(name, method, seed, record)
        if step.status != "running":
            summary = summarise(name, method, seed, step.status, records)
            store.finish(summary, _reason(step.status))
            log.info("%s: %s after %d iterations; final data set %d frames", label,
                     _reason(step.status), len(records), record.dataset_size)
            return summary
        iteration += 1
        labelled = labelled + [int(i) for i in step.selected]
        # the flags the iteration fixed (frames never change sides), then placeholders for the new
        is_val = [bool(v) for v in arrays["is_val"]] + _val_flags(step.selected.size, protocol, batch=iteration)


def _selection_inputs(arrays: dict, last: IterationRecord) -> tuple[np.ndarray, float, float]:
    """What the stored iteration selected on: per-frame severity with the severity thresholds
    when stored, else (older iterations) per-frame σ with the record's cutoffs."""
    if "frame_severity" in arrays:
        return arrays["frame_severity"], SEVERITY_LABEL, SEVERITY_HALT
    return arrays["frame_sigma"], last.sigma_minimum, last.sigma_maximum


#: A converged run may leave at most the ``1 - STALL_LEVEL`` Poisson quantile of its expected
#: count (one per element) of sampling atoms above their error cutoff unflagged.
STALL_LEVEL = 1e-3


def stall_limit(expected: float) -> int:
    """Most sampling atoms above their error cutoff a converged run may leave: the Poisson
    ``1 - STALL_LEVEL`` quantile of the expected count (5 for one element, 8 for two)."""
    from scipy import stats

    return int(stats.poisson.isf(STALL_LEVEL, max(float(expected), 1e-9)))


def unflagged_high_error(arrays: dict, sampling: SamplingSet) -> int:
    """Sampling atoms of frames *not* in the data set whose error is above their element's error
    cutoff (``all``: one cutoff for every atom), from an iteration's stored arrays."""
    errors = np.asarray(arrays["sampling_errors"], dtype=float)
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(arrays["element_symbols"])]
    cut = dict(zip(names, np.atleast_1d(arrays["element_error_cutoff"]).astype(float)))
    sizes = np.asarray(sampling.frame_sizes)
    free = np.ones(sizes.size, dtype=bool)
    free[np.asarray(arrays["labelled"], dtype=np.int64)] = False
    atom_free = np.repeat(free, sizes)
    if set(cut) == {"all"}:
        threshold = np.full(errors.size, cut["all"])
    else:
        threshold = np.full(errors.size, np.inf)
        for element, value in cut.items():
            threshold[sampling.atom_symbols == element] = value
    return int(np.count_nonzero(atom_free & (errors > threshold)))


def honest(step: NextStep, arrays: dict, sampling: SamplingSet) -> NextStep:
    """``converged`` only when the truth agrees: a run whose selection found no candidate while
    more unlabelled sampling atoms lie above their element's error cutoff than the method expects
    (about one per element; :func:`stall_limit`) is ``stalled`` — its cutoffs flag nothing, yet the
    errors say the potential is not done. Benchmark mode knows the true errors, so it can say so;
    the selection itself never looks at them."""
    if step.status != "converged" or "element_symbols" not in arrays:
        return step
    groups = max(len(np.atleast_1d(arrays["element_symbols"])), 1)
    if unflagged_high_error(arrays, sampling) > stall_limit(groups):
        return NextStep(step.selected, step.stopped_at, step.n_candidates, "stalled")
    return step


def _reason(status: str) -> str:
    return {
        "converged": "no uncertain frame left before the first frame above the maximum cutoff",
        "stalled": "no uncertain frame left, but more sampling atoms lie above their error cutoff than "
                   "the method expects: the cutoffs flag nothing the errors call high",
        "exhausted": "every sampling frame is in the data set",
        "max_iterations": "protocol.max_iterations reached",
        "label_budget": "protocol.max_labels reached",
    }[status]
