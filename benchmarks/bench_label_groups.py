"""Label throughput of :class:`~otf_statcut.labelers.groups.LabelGroups`: 2 groups of 1 rank vs 1 group of 2.

Writes ``benchmarks/results/label_groups.json`` and prints a markdown table.

* **Labels.** GPAW, 16-atom BCC Li (a = 3.44 Å, 2×2×2 conventional cells), PBE, plane waves
  200 eV, 2×2×2 k-points, Methfessel-Paxton 0.05 eV (``inputs/quickstart.yaml``); each frame the
  crystal rattled by 0.05 Å with its own seed (the same frames in every case). Each label group
  keeps its GPAW calculator between labels, as in a run.
* **Cases** (each its own ``mpiexec``, started from this script):
  ``groups-2x1``: ``mpiexec -n 3``, rank 0 drives, 2 groups of 1 rank label concurrently;
  ``groups-1x2``: ``mpiexec -n 3``, rank 0 drives, 1 group of 2 ranks (GPAW parallel over both);
  ``plain-n2``: ``mpiexec -n 2`` with :class:`~otf_statcut.labelers.mpi.MPIDrivenLabeler` (today's
  scheme: rank 0 labels too, with rank 1), for reference.
* **Timing.** The driver first labels one warm-up frame per group (GPAW set-up, PAW files), then
  submits ``--labels`` frames at once and waits for all; wall time from the first submit to the
  last result (``perf_counter``); throughput = labels / wall time × 60. The cases run in turn,
  ``--repeats`` rounds (ABCABC), so load from other processes falls on all alike; the table gives
  the median round.
* **Machine.** ``--n 3`` ranks on a machine with fewer cores oversubscribes it: the driver rank
  polls (sleeping 1.5 ms between polls) and takes little CPU, but it is scheduled too. The result
  records the core count and the load average before each case.

Usage::

    python benchmarks/bench_label_groups.py [--labels 8] [--repeats 2] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {"mode": "pw", "ecut": 200, "kpts": [2, 2, 2], "xc": "PBE",
            "smearing": "methfessel-paxton", "width": 0.05}
CASES = {  # name -> (mpiexec ranks, groups or None for the plain scheme)
    "groups-2x1": (3, 2),
    "groups-1x2": (3, 1),
    "plain-n2": (2, None),
}


def frames(n: int, offset: int = 0):
    from ase.build import bulk

    out = []
    for i in range(n):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=1000 + offset + i)
        out.append(atoms)
    return out


def worker(case: str, n_labels: int, out: str) -> None:
    """Runs on every rank under mpiexec."""
    from mpi4py import MPI

    from otf_statcut.labelers import make_labeler

    comm = MPI.COMM_WORLD
    _, n_groups = CASES[case]
    if n_groups is None:
        from otf_statcut.labelers.mpi import MPIDrivenLabeler

        driven = MPIDrivenLabeler(make_labeler("gpaw", SETTINGS), comm)
        if not driven.is_root:
            driven.serve()
            return
        with driven:
            driven.label(frames(1, offset=500)[0])  # warm-up
            start = time.perf_counter()
            labelled = [driven.label(atoms) for atoms in frames(n_labels)]
            wall = time.perf_counter() - start
            settings = [driven.settings()]
    else:
        from otf_statcut.labelers.groups import LabelGroups

        groups = LabelGroups(lambda c: make_labeler("gpaw", SETTINGS, comm=c), comm, n_groups)
        if not groups.is_driver:
            groups.serve()
            groups.close()
            return
        with groups:
            for future in [groups.submit(a) for a in frames(n_groups, offset=500)]:  # warm-up
                future.result()
            start = time.perf_counter()
            futures = [groups.submit(atoms) for atoms in frames(n_labels)]
            labelled = [f.result() for f in futures]
            wall = time.perf_counter() - start
            settings = groups.group_settings()
    record = {
        "case": case, "mpi_ranks": comm.size, "groups": n_groups or 1,
        "ranks_per_group": [s["ranks"] for s in settings],
        "labels": n_labels, "wall_s": wall, "labels_per_min": 60.0 * n_labels / wall,
        "label_wall_s": [float(a.info["label_wall_time"]) for a in labelled],
        "label_group": [int(a.info.get("label_group", 0)) for a in labelled],
        "energies": [float(a.get_potential_energy()) for a in labelled],
    }
    Path(out).write_text(json.dumps(record))


def run_case(case: str, n_labels: int) -> dict:
    ranks, _ = CASES[case]
    mpiexec = Path(sys.executable).with_name("mpiexec")
    env = dict(os.environ)
    env.pop("GPAW_MPI_BACKEND", None)  # the labeller sets it
    env.pop("OMP_NUM_THREADS", None)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        proc = subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, __file__, "--worker", case,
                               "--labels", str(n_labels), "--output", str(out)],
                              capture_output=True, text=True, timeout=1800, cwd=tmp, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{case} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        record = json.loads(out.read_text())
    record["load_avg_1min_before"] = load
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--output", default=str(HERE / "results" / "label_groups.json"))
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.labels, args.output)
        return
    runs = []
    for round_ in range(args.repeats):
        for case in args.cases:
            record = run_case(case, args.labels)
            record["round"] = round_
            runs.append(record)
            print(f"round {round_} {case}: {record['labels_per_min']:.1f} labels/min "
                  f"({record['wall_s']:.1f} s for {record['labels']})", flush=True)
    summary = {}
    for case in args.cases:
        mine = [r for r in runs if r["case"] == case]
        summary[case] = {
            "mpi_ranks": mine[0]["mpi_ranks"], "groups": mine[0]["groups"],
            "ranks_per_group": mine[0]["ranks_per_group"],
            "labels_per_min_median": statistics.median(r["labels_per_min"] for r in mine),
            "labels_per_min_all": [r["labels_per_min"] for r in mine],
            "label_wall_s_median": statistics.median(t for r in mine for t in r["label_wall_s"]),
        }
    cores = os.cpu_count()
    result = {
        "benchmark": "bench_label_groups",
        "system": "16-atom BCC Li (a = 3.44 Å, 2x2x2 conventional), rattled 0.05 Å",
        "gpaw_settings": SETTINGS,
        "labels_per_case": args.labels, "repeats": args.repeats,
        "machine": {"cpu_count": cores, "platform": platform.platform(), "python": platform.python_version()},
        "note": (f"{cores} CPU core(s), shared with other processes: mpiexec -n 3 oversubscribes it "
                 "(the driver rank polls and sleeps, so 2 ranks compute)" if cores and cores < 3 else ""),
        "summary": summary, "runs": runs,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    base = summary.get("groups-1x2", {}).get("labels_per_min_median")
    print(f"\n| case | mpiexec -n | groups x ranks | labels/min (median) | per label (s, median) | vs 1x2 |")
    print("|---|---|---|---|---|---|")
    for case, s in summary.items():
        shape = " + ".join(str(r) for r in s["ranks_per_group"])
        rel = f"{s['labels_per_min_median'] / base:.2f}x" if base else ""
        print(f"| {case} | {s['mpi_ranks']} | {s['groups']} ({shape}) | {s['labels_per_min_median']:.1f} "
              f"| {s['label_wall_s_median']:.2f} | {rel} |")
    if result["note"]:
        print(f"\nNote: {result['note']}.")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
