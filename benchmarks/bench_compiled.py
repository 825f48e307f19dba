"""Compiled (AOTInductor) vs eager MLIP evaluation in the trusted on-the-fly step (issue 11).

Writes ``benchmarks/results/compiled.json`` (``--out``) and prints a table.

* **Model.** The quickstart model (``inputs/quickstart.yaml``: 16 features, 2 layers, l_max 1,
  r_max 4.5 Å, radial MLP width 32, float32 by default; ``--dtype float64`` for the other),
  species Li, untrained weights (timings do not depend on the weights).
* **Step.** What a trusted step costs on the MLIP side: one ``PotentialCalculator`` calculation
  (graph + neighbour list, model call, energy/forces/stress and the latent features the heads
  read: the same call the engine's OTF calculator makes before its σ hook) on a rattled BCC Li
  cell, 3x3x3 (54 atoms) and 5x5x5 (250 atoms) conventional cells, positions rattled anew each
  step (no cached results). Eager and compiled take turns step by step (load from other processes
  falls on both alike); medians of wall time (``perf_counter``) and of process CPU time
  (``process_time``) over ``--steps`` timed steps after ``--warmup``. Ratio = eager / compiled.
* **Compile.** ``enable_compiled(mode="blocking")``: the compile time is the child process's wall
  time (snapshot, export, C++ build, load, check against eager). One compiled model serves both
  sizes (dynamic shapes).
* torch threads: ``--threads`` (default 1) in this process; the machine load (``/proc/loadavg``)
  is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _load() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--sizes", default="3,5", help="supercell repeats of the conventional BCC cell")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compiled.json"))
    args = parser.parse_args(argv)

    import torch
    from ase.build import bulk

    from otf_statcut.mlip import ModelConfig, NequIPPotential
    from otf_statcut.mlip.graphs import DataStatistics

    torch.set_num_threads(args.threads)
    load_before = _load()
    config = ModelConfig(species=("Li",), r_max=4.5, num_layers=2, l_max=1, num_features=16,
                         radial_mlp_width=32, model_dtype=args.dtype)
    stats = DataStatistics(energy_shifts={"Li": -1.9}, energy_scales={"Li": 0.3}, avg_num_neighbors=14.0)
    potential = NequIPPotential(config, stats)
    rng = np.random.default_rng(0)
    cells = {}
    for n in (int(s) for s in args.sizes.split(",")):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat((n, n, n))
        cells[len(atoms)] = atoms
    example = [cells[min(cells)]]

    start = time.perf_counter()
    manager = potential.enable_compiled(mode="blocking", example=example)
    enable_seconds = time.perf_counter() - start
    status = potential.compiled_status()
    if status["state"] != "ready":
        raise SystemExit(f"compilation failed: {status}")

    calc = potential.calculator()

    def step(atoms, compiled: bool):
        saved = potential._compiled
        potential._compiled = manager if compiled else None
        try:
            a = atoms.copy()
            a.positions += rng.normal(scale=0.05, size=a.positions.shape)
            calc.reset()
            w, c = time.perf_counter(), time.process_time()
            calc.calculate(a, ["energy", "forces", "stress"])
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            assert calc.results["features"].shape == (len(a), config.num_features)
            return wall, cpu
        finally:
            potential._compiled = saved

    rows = []
    for n_atoms, atoms in sorted(cells.items()):
        times = {"eager": [], "compiled": []}
        for i in range(args.warmup + args.steps):
            for kind in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
                wall, cpu = step(atoms, kind == "compiled")
                if i >= args.warmup:
                    times[kind].append((wall, cpu))
        row = {"n_atoms": n_atoms}
        for kind, values in times.items():
            arr = np.array(values)
            row[f"{kind}_wall_ms"] = float(np.median(arr[:, 0]) * 1e3)
            row[f"{kind}_cpu_ms"] = float(np.median(arr[:, 1]) * 1e3)
        row["speedup_wall"] = row["eager_wall_ms"] / row["compiled_wall_ms"]
        row["speedup_cpu"] = row["eager_cpu_ms"] / row["compiled_cpu_ms"]
        rows.append(row)
    # agreement compiled vs eager on the 250-atom cell (one configuration)
    atoms = cells[max(cells)].copy()
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    (pc,) = potential.predict(atoms)
    saved, potential._compiled = potential._compiled, None
    (pe,) = potential.predict(atoms)
    potential._compiled = saved
    agreement = {"max_abs_dF_eV_per_A": float(np.abs(pc.forces - pe.forces).max()),
                 "abs_dE_eV": abs(pc.energy - pe.energy),
                 "max_abs_dfeatures": float(np.abs(pc.features - pe.features).max())}
    result = {
        "benchmark": "compiled vs eager MLIP evaluation of a trusted OTF step (PotentialCalculator call)",
        "model": {"num_features": 16, "num_layers": 2, "l_max": 1, "r_max": 4.5, "radial_mlp_width": 32,
                  "model_dtype": args.dtype},
        "compile_seconds": status["compile_seconds"][0],
        "enable_blocking_seconds": enable_seconds,
        "compile_check": status["check"],
        "rows": rows,
        "agreement_250": agreement,
        "steps": args.steps, "warmup": args.warmup, "torch_threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": _load()},
    }
    potential.disable_compiled()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing[args.dtype] = result
    out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"model {args.dtype}; compile {result['compile_seconds']:.1f} s; load {load_before} -> {_load()}")
    print("| atoms | eager ms (wall/cpu) | compiled ms (wall/cpu) | speed-up wall | speed-up cpu |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n_atoms']} | {r['eager_wall_ms']:.1f} / {r['eager_cpu_ms']:.1f} | "
              f"{r['compiled_wall_ms']:.1f} / {r['compiled_cpu_ms']:.1f} | {r['speedup_wall']:.2f}x | "
              f"{r['speedup_cpu']:.2f}x |")
    print("agreement (250 atoms):", agreement)
    return result


if __name__ == "__main__":
    main()
