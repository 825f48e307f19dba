"""Cost of an on-the-fly step on trusted steps, against plain ASE MD with the same NequIP model.

For each system size and uncertainty head: a small NequIP model is trained on a few EMT-labelled
rattled copper cells (the labeller is never called on trusted steps, so its speed does not
matter), then Langevin MD runs

* ``plain``: the potential's own ASE calculator (:class:`~otf_statcut.mlip.PotentialCalculator`);
* ``otf``: :class:`~otf_statcut.engine.OTFCalculator` (NequIP + per-atom σ from the head + the
  decision), with the cutoffs set to infinity so that every step is trusted;
* ``otf+log``: the same, plus the run recorder that ``otf-statcut run`` attaches (one HDF5
  trajectory row per step, flushed every step; checkpoints every 10 steps).

The variants are timed in interleaved rounds (plain, otf, otf+log, plain, ...), one warm-up round
then ``--repeats`` rounds of ``--steps`` steps, so load from other processes falls on all of them
alike; the JSON keeps the minimum (least disturbed) and the median per-step time, and the ratios
of the minima ``otf / plain`` (target ≤ 1.10) and ``otf+log / plain``. Torch runs on
``--threads`` threads; the load average at the start and end is recorded.

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
import statistics
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
    settings = {"n_members": 3, "train_config": {"max_epochs": 5, "batch_size": 2}} if head == "ensemble" else {}
    learner = Learner.from_frames(
        frames, n=steps * len(atoms), head=head, head_settings=settings, val_fraction=0.34,
        model=ModelConfig(species=("Cu",), num_features=16, num_layers=2, l_max=1, radial_mlp_width=32, r_max=4.5),
        train=TrainConfig(max_epochs=5, batch_size=2))
    # every step trusted: the benchmark measures the screening, not labelling
    learner.cutoffs = dataclasses.replace(learner.cutoffs, minimum=float("inf"), maximum=float("inf"))
    return learner, labeler


def _time_md(atoms, calc, steps: int, seed: int, recorder_path: Path | None = None) -> float:
    """Milliseconds per step of ``steps`` Langevin steps with ``calc`` (optionally recorded)."""
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
        dyn.attach(RunRecorder(log, dyn, calc, checkpoint_every=10, rng=rng), interval=1)
    work.get_forces()
    start = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - start
    if log is not None:
        log.close()
    return 1000.0 * elapsed / steps


def _interleaved(atoms, variants: dict, steps: int, repeats: int, tmp: Path) -> dict[str, list[float]]:
    """Time every variant once per round, rounds in turn (noise from other processes hits all alike);
    round 0 warms up and is discarded."""
    times = {name: [] for name in variants}
    for r in range(repeats + 1):
        for name, (calc, record) in variants.items():
            ms = _time_md(atoms, calc, steps, seed=r, recorder_path=tmp / f"{name}.h5" if record else None)
            if r:
                times[name].append(ms)
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
                otf_calc = OTFCalculator(learner, labeler)
                times = _interleaved(atoms, {"plain": (learner.potential.calculator(), False),
                                             "otf": (otf_calc, False), "otf_log": (otf_calc, True)},
                                     args.steps, args.repeats, Path(tmp))
                plain, otf, otf_log = times["plain"], times["otf"], times["otf_log"]
                assert labeler.n_calls == 6, "a trusted-step benchmark must not label"
                case = {
                    "n_atoms": size, "head": head,
                    "plain_ms_per_step": {"min": min(plain), "median": statistics.median(plain)},
                    "otf_ms_per_step": {"min": min(otf), "median": statistics.median(otf)},
                    "otf_log_ms_per_step": {"min": min(otf_log), "median": statistics.median(otf_log)},
                    "ratio_otf": min(otf) / min(plain),
                    "ratio_otf_log": min(otf_log) / min(plain),
                }
                cases.append(case)
                print(f"{size:4d} atoms {head:9s} plain {min(plain):7.2f} ms  otf {min(otf):7.2f} ms "
                      f"({case['ratio_otf']:.3f}x)  otf+log {min(otf_log):7.2f} ms ({case['ratio_otf_log']:.3f}x)")
    result = {
        "benchmark": "OTF step time on trusted steps vs plain ASE MD with the same NequIP calculator",
        "target_ratio": 1.10,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "load_average_start": load_start, "load_average_end": list(os.getloadavg())},
        "settings": {"steps": args.steps, "repeats": args.repeats, "model": "NequIP 2 layers, l_max 1, 16 features, "
                     "r_max 4.5 Å, float32", "dynamics": "Langevin 2 fs", "system": "fcc Cu"},
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
