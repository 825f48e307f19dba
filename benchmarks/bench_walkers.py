"""Steps per second of K walkers evaluated in one batched NequIP call vs one after another.

K = 1, 2, 4, 8, 16 walkers of bcc Li (16- and 54-atom cells) at 600 K under Langevin, every step
trusted (cutoffs at infinity: the cost measured is the MD step with the MLIP and the uncertainty
head, no labels), through the engine's own machinery (:class:`MultiWalkerDriver`: one thread per
walker, lock-step barrier, :class:`BatchEvaluator`). ``one-by-one`` is the same driver with
batching off (each configuration evaluated alone), i.e. the cost of running the walkers one after
another. Model as ``inputs/quickstart.yaml`` (16 features, 2 layers), head: ensemble of 3 (the
quickstart's) or ``--head distance``. Labels for the initial model: Lennard-Jones (only the timing
matters here). One torch thread.

Run: ``python benchmarks/bench_walkers.py`` (about 5 minutes on one core); writes
``benchmarks/results/walkers.json``. On a GPU (``--device cuda``) add ``--k 1 2 4 8 16 32 64``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def learner_for(supercell: int, head: str, device: str):
    import dataclasses

    from ase.build import bulk
    from ase.calculators.lj import LennardJones

    from otf_statcut.engine import Learner
    from otf_statcut.labelers import ASECalculatorLabeler
    from otf_statcut.mlip import ModelConfig, TrainConfig

    labeler = ASECalculatorLabeler(LennardJones(sigma=2.7, epsilon=0.1, rc=6.0), stress=False)
    frames = []
    for seed in range(4):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat(supercell)
        atoms.rattle(0.05, seed=seed)
        frames.append(labeler.label(atoms))
    settings = {"n_members": 3, "train_config": {"max_epochs": 2}} if head == "ensemble" else {}
    learner = Learner.from_frames(
        frames, n=1000, head=head, head_settings=settings,
        model=ModelConfig(species=("Li",), num_features=16, num_layers=2, l_max=1, r_max=4.5,
                          radial_mlp_width=32),
        train=TrainConfig(max_epochs=2, batch_size=2), val_fraction=0.5)
    learner.cutoffs = dataclasses.replace(learner.cutoffs, minimum=np.inf, maximum=np.inf)
    if device != "cpu":
        learner.potential.to(device)
        if hasattr(learner.head, "members_"):
            for m in learner.head.members_:
                m.to(device)
    return learner, labeler


def run(learner, labeler, supercell: int, k: int, steps: int, batched: bool, folder: Path) -> float:
    from otf_statcut.config import parse_run_config
    from otf_statcut.engine.label_policy import LabelPolicy
    from otf_statcut.engine.system import build_structure
    from otf_statcut.engine.walkers import MultiWalkerDriver, MultiWalkerRun, start_walkers
    from otf_statcut.io.runlog import RunLog

    data = {"system": {"builder": {"element": "Li", "lattice": "bcc", "a": 3.44, "supercell": [supercell] * 3}},
            "md": {"temperature_K": 600, "timestep_fs": 1.0, "steps": steps, "friction": 0.02},
            "labeler": {"name": "lj"}, "output": {"folder": str(folder), "checkpoint_every": 1000,
                                                   "flush_every": 1000},
            "walkers": {"product": {"temperature_K": [600.0 + i for i in range(k)]}}}
    config = parse_run_config(data)
    run = MultiWalkerRun(config, labeler)
    run.policy = LabelPolicy(labeler)
    starts = [build_structure(w.system, "bench") for w in config.walker_list()]
    path = folder / f"run_{k}_{batched}.h5"
    runlog = RunLog.create(path, overwrite=True)
    walkers = start_walkers(config, starts)
    driver = MultiWalkerDriver(run, runlog, learner, walkers, [{}] * k, batched=batched)
    start = time.perf_counter()
    driver.run_all()
    elapsed = time.perf_counter() - start
    runlog.close()
    path.unlink()
    return k * (steps + 1) / elapsed  # walker-steps per second (the first evaluation included)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--cells", type=int, nargs="+", default=[2, 3], help="bcc supercell n (16, 54 atoms)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--head", default="ensemble", choices=("ensemble", "distance"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "walkers.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            learner, labeler = learner_for(cell, args.head, args.device)
            run(learner, labeler, cell, 1, 2, True, Path(tmp))  # warm-up
            for k in args.k:
                batched = run(learner, labeler, cell, k, args.steps, True, Path(tmp))
                serial = run(learner, labeler, cell, k, args.steps, False, Path(tmp))
                row = {"atoms": 2 * cell ** 3, "k": k, "batched_steps_per_s": batched,
                       "one_by_one_steps_per_s": serial, "speedup": batched / serial}
                rows.append(row)
                print(f"{row['atoms']:4d} atoms  K={k:3d}  batched {batched:7.2f}  one-by-one {serial:7.2f} "
                      f"walker-steps/s  speedup {batched / serial:5.2f}", flush=True)
    one = {r["atoms"]: r["batched_steps_per_s"] for r in rows if r["k"] == 1}
    for r in rows:  # step time of K batched walkers over the step time of one walker
        r["step_time_vs_one_walker"] = (r["k"] / r["batched_steps_per_s"]) / (1 / one[r["atoms"]])
    record = {"settings": vars(args) | {"out": str(args.out)}, "machine": {
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "load": os.getloadavg()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
