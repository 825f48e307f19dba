"""Speed of the statistical-cutoff core on one core; writes ``benchmarks/results/stats.json``.

Targets (issue 2): fit + KS + cutoff on 10⁶ values under 0.5 s; the F1 sweep on 10⁶ points over a
100 × 100 grid of cutoffs under 2 s. Each case runs once to warm up, then ``--repeats`` times; the
JSON records the minimum and median wall times.

Usage::

    python benchmarks/bench_stats.py [--size 1000000] [--grid 100] [--repeats 5] [--output PATH]
"""

from __future__ import annotations

import os

# one core: BLAS/OpenMP threads off before NumPy loads, process pinned to one CPU where possible
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402

from otf_statcut.stats import fit_best, fit_distribution, statistical_cutoffs, sweep  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "stats.json"


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time(func, repeats: int) -> dict:
    func()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return {"min_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--grid", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    pinning = _pin_one_core()

    rng = np.random.default_rng(0)
    n = args.size
    errors = np.linalg.norm(rng.normal(0.0, 0.05, (n, 3)), axis=1)  # Maxwell, scale 0.05 eV/Å
    sigmas = 0.6 * errors + rng.gamma(2.0, 0.01, n)  # correlated, Gamma-like uncertainties
    error_grid = np.linspace(0.0, errors.max(), args.grid)
    sigma_grid = np.linspace(0.0, sigmas.max(), args.grid)

    def maxwell_fit_ks_cutoff():
        fit_distribution(errors, "maxwell").cutoff(n)

    def maxwell_fit_full_ks_cutoff():
        fit_distribution(errors, "maxwell", ks_sample_size=n).cutoff(n)

    def best_of_three_fit_ks_cutoff():
        fit_best(sigmas).cutoff(n)

    def robust_maxwell_fit_ks_cutoff():
        fit_distribution(errors, "maxwell", robust=True).cutoff(n)

    def cutoff_set():
        statistical_cutoffs(errors, sigmas, n)

    def f1_sweep():
        grid = sweep(errors, sigmas, error_grid, sigma_grid)
        grid.f1(), grid.precision(), grid.recall()

    cases = {
        "maxwell_fit_ks_cutoff": (maxwell_fit_ks_cutoff, 0.5,
                                  f"Maxwell fit + KS + cutoff on {n} values"),
        "maxwell_fit_full_ks_cutoff": (maxwell_fit_full_ks_cutoff, None,
                                       f"as above but KS on all {n} values instead of the 2000 subsample"),
        "best_of_3_fit_ks_cutoff": (best_of_three_fit_ks_cutoff, 0.5,
                                    f"maxwell, gamma, gengamma fits + KS each + cutoff on {n} values"),
        "robust_maxwell_fit_ks_cutoff": (robust_maxwell_fit_ks_cutoff, None,
                                         f"robust (trimmed) Maxwell fit + KS + cutoff on {n} values"),
        "statistical_cutoffs": (cutoff_set, None,
                                f"statistical_cutoffs: error fit + 3 uncertainty fits + map, "
                                f"{n} + {n} values"),
        "f1_sweep": (f1_sweep, 2.0,
                     f"confusion sweep + F1/precision/recall, {n} points x {args.grid}x{args.grid} grid"),
    }
    results = {}
    for name, (func, target, what) in cases.items():
        timing = _time(func, args.repeats)
        timing.update({"what": what, "target_s": target,
                       "meets_target": None if target is None else timing["min_s"] < target})
        results[name] = timing
        flag = "" if target is None else f"  target < {target} s: {'yes' if timing['meets_target'] else 'NO'}"
        print(f"{name:<30} min {timing['min_s']:.4f} s  median {timing['median_s']:.4f} s{flag}")

    report = {
        "benchmark": "otf_statcut.stats",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_model(), "cores_used": 1, "pinning": pinning,
                    "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__},
        "size": n,
        "grid": args.grid,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
