"""Run a whole benchmark: every dataset × method × seed, in turn or spread over MPI ranks.

A *run* is one (dataset, method, seed) triple. ``otf-statcut benchmark input.yaml`` runs them in
turn, seed by seed (every dataset and method of seed 0 first, so the first complete comparison
comes early). Launched as ``mpiexec -n K otf-statcut benchmark input.yaml``, the K ranks share
the runs through a claims file (:class:`TaskQueue`): an idle rank takes the next unclaimed run,
heaviest first (:func:`task_weight`, ties seed by seed), so several datasets (the paper's second
test), methods or seeds run side by side and no rank idles while work is left. Each rank trains
its own models with ``threads`` torch threads (keep it 1 and use one rank per core: torch threads
on a busy machine slow down badly). All ranks write to the one results file, one locked write per
iteration (see :mod:`otf_statcut.io.benchmark_results`); a run resumes on its own (finished runs
are skipped, an interrupted one continues after its last stored iteration). Rank 0 writes the CSV
summaries at the end.

Output folder::

    results.h5          per dataset/method/seed/iteration records and arrays (resumable)
    summary.csv         one row per dataset/method/seed (finished runs)
    summary_mean.csv    one row per dataset/method: mean ± sd over seeds, labels to reach the oracle
    checkpoints/        warm-start weights of the last completed iteration of each run
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from otf_statcut.errors import UserError
from otf_statcut.io.benchmark_results import (
    BenchmarkResults,
    MethodSummary,
    write_seed_statistics_csv,
    write_summary_csv,
)

from .config import BenchmarkConfig
from .metrics import SeedStatistics, seed_statistics
from .protocol import Observer, run_method
from .replay import load_sampling_set

__all__ = ["run_benchmark", "benchmark_tables", "write_tables", "TaskQueue", "order_tasks", "task_weight",
           "world", "RESULTS_FILE", "SUMMARY_FILE", "MEAN_SUMMARY_FILE", "CHECKPOINT_DIR", "CLAIMS_FILE"]

log = logging.getLogger("otf_statcut.benchmark")

RESULTS_FILE = "results.h5"
SUMMARY_FILE = "summary.csv"
MEAN_SUMMARY_FILE = "summary_mean.csv"
CHECKPOINT_DIR = "checkpoints"
CLAIMS_FILE = ".claims.json"
_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")


def world():
    """``MPI.COMM_WORLD`` when launched by ``mpiexec`` with more than one rank, else None.

    mpi4py is imported only when an MPI launcher's environment says there are several ranks, so
    a plain run never initialises MPI.
    """
    sizes = [os.environ.get(k) for k in _MPI_SIZE_VARIABLES]
    if not any(s is not None and s.isdigit() and int(s) > 1 for s in sizes):
        return None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def task_weight(config: BenchmarkConfig, method: str) -> float:
    """Rough relative cost of one dataset/method/seed run, to start the heaviest first.

    The ensemble trains ``n_members`` models per iteration; random sampling rarely runs out of
    candidates and usually runs to its budget (weight 2); every other method weighs 1.
    """
    if method == "ensemble":
        return float(config.head_settings("ensemble").get("n_members", 4))
    if method == "random":
        return 2.0
    return 1.0


def order_tasks(tasks: Sequence, weights: Sequence[float]) -> list:
    """Tasks heaviest first (stable: equal weights keep the input order)."""
    return [tasks[i] for i in sorted(range(len(tasks)), key=lambda i: (-weights[i], i))]


class TaskQueue:
    """Tasks shared by MPI ranks through a claims file: an idle rank takes the next unclaimed task.

    The file holds the indices already claimed; every claim reads and rewrites it under an
    exclusive ``fcntl`` lock, so two ranks never take the same task. Dynamic claiming keeps the
    ranks busy whatever the tasks cost (a long random-sampling run, an ensemble).
    """

    def __init__(self, path: Path, tasks: Sequence):
        self.path = Path(path)
        self.tasks = list(tasks)

    def reset(self) -> None:
        """Forget all claims (rank 0, before the ranks start)."""
        self.path.write_text("[]")

    def claim(self):
        """The next unclaimed task, or None when every task is taken."""
        with open(self.path, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                claimed = set(json.loads(handle.read() or "[]"))
                free = [i for i in range(len(self.tasks)) if i not in claimed]
                if not free:
                    return None
                claimed.add(free[0])
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(sorted(claimed)))
                handle.flush()
                return self.tasks[free[0]]
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def run_benchmark(config: BenchmarkConfig, output, *, restart: bool = False, comm=None,
                  observers: Sequence[Observer] = (), progress: bool = True) -> list[MethodSummary]:
    """Run every dataset × method × seed of a benchmark, resuming from ``output`` if it holds results.

    Parameters
    ----------
    config : BenchmarkConfig
        The validated input.
    output : str or Path
        Output folder (created).
    restart : bool
        Discard existing results and checkpoints in ``output`` first.
    comm : mpi4py communicator, optional
        Ranks to spread the runs over; by default :func:`world` (None: run in turn).
    observers : sequence of callables
        Passed to :func:`~otf_statcut.benchmark.protocol.run_method`.
    progress : bool
        Show tqdm progress bars (rank 0 only).

    Returns
    -------
    list of MethodSummary
        On rank 0 (or without MPI): every finished run, sorted by dataset, method (input order)
        and seed. On other ranks: the runs that rank did.

    Raises
    ------
    UserError
        Bad data, or ``output`` holds results of a benchmark with other settings.
    """
    import torch
    from tqdm.auto import tqdm

    comm = world() if comm is None else comm
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    torch.set_num_threads(config.threads)
    output = Path(output)
    store = BenchmarkResults(output / RESULTS_FILE)

    def together(action):
        """Run ``action`` on rank 0; every rank raises the same UserError if it failed."""
        message = None
        if rank == 0:
            try:
                action()
            except UserError as exc:
                message = str(exc)
        if comm is not None:
            message = comm.bcast(message, root=0)
        if message is not None:
            raise UserError(message)

    def prepare():
        output.mkdir(parents=True, exist_ok=True)
        if restart:
            for path in (store.path, output / CHECKPOINT_DIR, output / SUMMARY_FILE,
                         output / MEAN_SUMMARY_FILE):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        store.initialise(input_text=config.text, settings=config.settings(), fingerprint=config.fingerprint())

    # every rank reads every dataset (a data error is then raised identically everywhere), and
    # before anything is written, so a bad input leaves no output folder behind
    samplings = {spec.name: load_sampling_set(spec, min_frames=config.protocol.seed_frames + 1)
                 for spec in config.datasets}
    together(prepare)

    def describe():
        for s in samplings.values():
            store.write_dataset(s.name, path=s.path, frame_sizes=s.frame_sizes, species=s.species)

    together(describe)
    seeds = config.protocol.seeds
    tasks = [(spec.name, method, seed) for seed in seeds for spec in config.datasets
             for method in config.methods]
    queue = TaskQueue(output / CLAIMS_FILE, order_tasks(tasks, [task_weight(config, m) for _, m, _ in tasks]))
    if size > 1:
        together(queue.reset)
        comm.Barrier()
        next_task = queue.claim
    else:
        pending = iter(tasks)  # one process: the input order, seed by seed
        next_task = lambda: next(pending, None)  # noqa: E731
    # with several ranks a rank does not know in advance how many runs it will take
    total = len(tasks) * config.protocol.max_iterations if size == 1 else None
    summaries: list[MethodSummary] = []
    with tqdm(total=total, desc="benchmark", unit="it", disable=not progress or rank != 0,
              dynamic_ncols=True) as bar:
        while (task := next_task()) is not None:
            dataset, method, seed = task
            if size > 1:
                log.info("rank %d takes %s/%s/seed %d", rank, dataset, method, seed)
            done_before = bar.n
            summary = run_method(samplings[dataset], method, config, store, seed=seed,
                                 checkpoints=output / CHECKPOINT_DIR, observers=observers, progress=bar)
            if total is not None:  # iterations a run did not need count as done: the bar ends at 100 %
                bar.update(max(0, done_before + config.protocol.max_iterations - bar.n))
            summaries.append(summary)
    if comm is not None:
        comm.Barrier()
        if rank == 0:
            queue.path.unlink(missing_ok=True)
    if rank != 0:
        return summaries
    order = [(d.name, m, s) for d in config.datasets for m in config.methods for s in seeds]
    everything = [x for d, m, s in order if (x := store.summary(d, m, seed=s)) is not None]
    write_tables(store, everything, output)
    return everything


def benchmark_tables(store: BenchmarkResults, summaries: Sequence[MethodSummary]
                     ) -> tuple[list[SeedStatistics], dict]:
    """Over-seeds statistics of finished runs (:func:`~otf_statcut.benchmark.metrics.seed_statistics`),
    with each run's learning curve read from ``store``."""
    curves = {}
    for s in summaries:
        records = store.completed(s.dataset, s.method, seed=s.seed)
        curves[(s.dataset, s.method, s.seed)] = ([r.dataset_size for r in records],
                                                 [r.mean_error_sampling for r in records])
    return seed_statistics(summaries, curves)


def write_tables(store: BenchmarkResults, summaries: Sequence[MethodSummary], output) -> list[SeedStatistics]:
    """Write ``summary.csv`` (one row per run) and ``summary_mean.csv`` (over seeds) into ``output``."""
    rows, per_run = benchmark_tables(store, summaries)
    write_summary_csv(Path(output) / SUMMARY_FILE, summaries, per_run)
    write_seed_statistics_csv(Path(output) / MEAN_SUMMARY_FILE, rows)
    return rows
