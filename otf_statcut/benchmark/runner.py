"""Run a whole benchmark: every dataset × method, in turn or spread over MPI ranks.

``otf-statcut benchmark input.yaml`` runs every (dataset, method) pair in turn. Launched as
``mpiexec -n K otf-statcut benchmark input.yaml``, the K ranks share the pairs through a
claims file (:class:`TaskQueue`): an idle rank takes the next unclaimed pair, heaviest first
(:func:`task_weight`), so several datasets (the paper's second test) or several methods of one
dataset run side by side and no rank idles while work is left. Each rank trains its own models
with ``threads`` torch threads (keep it 1 and use one rank per core: torch threads on a busy
machine slow down badly). All ranks
write to the one results file, one locked write per iteration (see
:mod:`otf_statcut.io.benchmark_results`); rank 0 writes the CSV summary at the end.

Output folder::

    results.h5          per dataset/method/iteration records and arrays (resumable)
    summary.csv         one row per dataset/method
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
from otf_statcut.io.benchmark_results import BenchmarkResults, MethodSummary, write_summary_csv

from .config import BenchmarkConfig
from .protocol import Observer, run_method
from .replay import load_sampling_set

__all__ = ["run_benchmark", "TaskQueue", "order_tasks", "task_weight", "world", "RESULTS_FILE",
           "SUMMARY_FILE", "CHECKPOINT_DIR", "CLAIMS_FILE"]

log = logging.getLogger("otf_statcut.benchmark")

RESULTS_FILE = "results.h5"
SUMMARY_FILE = "summary.csv"
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
    """Rough relative cost of one dataset/method run, to start the heaviest first.

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
    """Run every dataset × method of a benchmark, resuming from ``output`` if it holds results.

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
        On rank 0 (or without MPI): every dataset/method, in input order. On other ranks: the
        runs that rank did.

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
            for path in (store.path, output / CHECKPOINT_DIR, output / SUMMARY_FILE):
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
    tasks = [(spec.name, method) for spec in config.datasets for method in config.methods]
    queue = TaskQueue(output / CLAIMS_FILE, order_tasks(tasks, [task_weight(config, m) for _, m in tasks]))
    if size > 1:
        together(queue.reset)
        comm.Barrier()
        next_task = queue.claim
    else:
        pending = iter(tasks)  # one process: the input order
        next_task = lambda: next(pending, None)  # noqa: E731
    # with several ranks a rank does not know in advance how many runs it will take
    total = len(tasks) * config.protocol.max_iterations if size == 1 else None
    summaries: list[MethodSummary] = []
    with tqdm(total=total, desc="benchmark", unit="it", disable=not progress or rank != 0,
              dynamic_ncols=True) as bar:
        while (task := next_task()) is not None:
            dataset, method = task
            if size > 1:
                log.info("rank %d takes %s/%s", rank, dataset, method)
            done_before = bar.n
            summary = run_method(samplings[dataset], method, config, store,
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
    everything = []
    for dataset, method in tasks:
        stored = store.summary(dataset, method)
        if stored is not None:
            everything.append(stored)
    write_summary_csv(output / SUMMARY_FILE, everything)
    return everything
