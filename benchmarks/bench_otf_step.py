"""Cost of an on-the-fly step on trusted steps, against plain ASE MD with the same NequIP model.

For each system size and uncertainty head: a small NequIP model is trained on a few EMT-labelled
rattled copper cells (the labeller is never called on trusted steps, so its speed does not
matter), then Langevin MD runs

* ``plain``: the potential's own ASE calculator (:class:`~otf_statcut.mlip.PotentialCalculator`);
* ``otf``: :class:`~otf_statcut.engine.OTFCalculator` (NequIP + per-atom σ from the head + the
  decision), with the cutoffs set to infinity so that every step is trusted;
* ``otf+log``: the same, plus the run recorder that ``otf-statcut run`` attaches with its
  defaults (one HDF5 trajectory row per step, flushed every step; checkpoints every 10 steps);
* ``otf+log/flush 10``: the same with ``output.flush_every: 10``.

The three variants advance in lock-step: one step of plain MD, one of otf, one of otf+log, and
again (each has its own dynamics via ``irun``), so load from other processes on this shared
machine falls on all of them alike. After a 20-step warm-up, ``--repeats`` runs of ``--steps``
steps are timed step by step. The JSON keeps per variant the median, mean and 10th percentile of
the step times, and their ratios to plain MD: ``otf / plain`` (target ≤ 1.10) and
``otf+log / plain``. The median is robust to load spikes; the mean includes costs paid every
k-th step (checkpoints). Torch runs on ``--threads`` threads; the load average is recorded.

Usage::

    python benchmarks/bench_otf_step.py [--sizes 32 108] [--heads distance ensemble]
                                        [--steps 200] [--repeats 3] [--threads 1] [--output PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "otf_step.json"
REPEATS_CELLS = {32: (2, 2, 2), 108: (3, 3, 3), 256: (4, 4, 4)}


def _learner(atoms, head: str, steps: int):
    from otf_statcut.engine import Learner
    from otf_statcut.labelers import ASECalculatorLabeler
    from otf_statcut.mlip import ModelConfig, TrainConfig
    from ase.calculators.emt import EMT

    labeler = ASECalculatorLabeler(EMT, name="emt")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=0.08, size=copy.positions.shape)
        frames.append(labeler.label(copy))
    settings = {}
    if head == "ensemble":
        settings = {"n_members": 3, "train_config": {"max_epochs": 5, "batch_size": 2}}
    learner = Learner.from_frames(
        frames, n=steps * len(atoms), head=head, head_settings=settings, val_fraction=0.34,
        model=ModelConfig(species=("Cu",), num_features=16, num_layers=2, l_max=1, radial_mlp_width=32,
                          r_max=4.5),
        train=TrainConfig(max_epochs=5, batch_size=2))
    # every step trusted: the benchmark measures the screening, not labelling
    learner.cutoffs = dataclasses.replace(learner.cutoffs, minimum=float("inf"), maximum=float("inf"))
    return learner, labeler


def _dynamics(atoms, calc, seed: int, recorder_path: Path | None = None, flush_every: int = 1):
    """Langevin dynamics on a copy of ``atoms`` with ``calc`` (and the run recorder, if asked)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.parallel import DummyMPI

    from otf_statcut.engine.observers import RunRecorder
    from otf_statcut.io.runlog import RunLog

    work = atoms.copy()
    work.calc = calc
    rng = np.random.default_rng(seed)
    work.set_momenta(rng.normal(scale=0.05, size=(len(work), 3)))
    dyn = Langevin(work, timestep=2 * units.fs, temperature_K=600, friction=0.02 / units.fs, fixcm=False,
                   rng=rng, comm=DummyMPI())
    log = None
    if recorder_path is not None:
        log = RunLog.create(recorder_path, overwrite=True)
        recorder = RunRecorder(log, dyn, calc, checkpoint_every=10, flush_every=flush_every, rng=rng)
        dyn.attach(recorder, interval=1)
    return dyn, log


def _interleaved(atoms, variants: dict, steps: int, repeats: int, tmp: Path) -> dict[str, list[float]]:
    """Per-step wall times (ms) of each variant, the variants' steps taken in turn (plain, otf,
    otf+log, plain, ...) so that load from other processes falls on all of them alike.

    Each variant has its own calculator instance and its own dynamics; a warm-up run of 20 steps
    per variant comes first and is discarded. ``repeats`` runs of ``steps`` steps follow.
    """
    times = {name: [] for name in variants}
    for r in range(repeats + 1):
        n = steps if r else 20
        runs = {}
        for name, (make_calc, flush_every) in variants.items():
            path = tmp / f"{name}.h5" if flush_every else None
            dyn, log = _dynamics(atoms, make_calc(), seed=r, recorder_path=path, flush_every=flush_every or 1)
            runs[name] = (dyn.irun(n), log)
            next(runs[name][0])  # the initial force call and observers
        for _ in range(n):
            for name, (gen, _) in runs.items():
                start = time.perf_counter()
                next(gen)
                if r:
                    times[name].append(1000.0 * (time.perf_counter() - start))
        for _, log in runs.values():
            if log is not None:
                log.close()
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 108], choices=sorted(REPEATS_CELLS))
    parser.add_argument("--heads", nargs="+", default=["distance", "ensemble"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch
    from ase.build import bulk

    from otf_statcut.engine import OTFCalculator

    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            atoms = bulk("Cu", "fcc", cubic=True).repeat(REPEATS_CELLS[size])
            for head in args.heads:
                learner, labeler = _learner(atoms, head, args.steps)
                otf = lambda: OTFCalculator(learner, labeler)  # noqa: E731
                times = _interleaved(atoms, {"plain": (learner.potential.calculator, 0), "otf": (otf, 0),
                                             "otf_log": (otf, 1), "otf_log_flush10": (otf, 10)},
                                     args.steps, args.repeats, Path(tmp))
                assert labeler.n_calls == 6, "a trusted-step benchmark must not label"
                case = {"n_atoms": size, "head": head}
                for name, per_step in times.items():
                    x = np.asarray(per_step)
                    case[f"{name}_ms_per_step"] = {"median": float(np.median(x)), "mean": float(np.mean(x)),
                                                   "p10": float(np.percentile(x, 10)), "steps": int(x.size)}
                plain = case["plain_ms_per_step"]
                for name in ("otf", "otf_log", "otf_log_flush10"):
                    case[f"ratio_{name}"] = {k: case[f"{name}_ms_per_step"][k] / plain[k]
                                             for k in ("median", "mean", "p10")}
                cases.append(case)
                ratio = {k: case[f"ratio_{k}"] for k in ("otf", "otf_log", "otf_log_flush10")}
                print(f"{size:4d} atoms {head:9s} plain median {plain['median']:6.2f} ms "
                      f"(mean {plain['mean']:6.2f})  otf {ratio['otf']['median']:.3f}x "
                      f"(mean {ratio['otf']['mean']:.3f}x)  otf+log {ratio['otf_log']['median']:.3f}x "
                      f"(mean {ratio['otf_log']['mean']:.3f}x)  otf+log/flush 10 "
                      f"{ratio['otf_log_flush10']['mean']:.3f}x (mean)")
    result = {
        "benchmark": "OTF step time on trusted steps vs plain ASE MD with the same NequIP calculator",
        "target_ratio": 1.10,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "load_average_start": load_start, "load_average_end": list(os.getloadavg())},
        "settings": {"steps": args.steps, "repeats": args.repeats,
                     "model": "NequIP 2 layers, l_max 1, 16 features, r_max 4.5 Å, float32",
                     "dynamics": "Langevin 2 fs", "system": "fcc Cu"},
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
