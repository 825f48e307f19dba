"""Uncertainty heads on mlearn Li: per-MD-step cost, calibration and out-of-distribution ratios.

Writes ``benchmarks/results/heads.json`` and prints markdown tables.

1. **Training** (bulk only). A NequIP potential (``ModelConfig`` defaults: 2 layers, l_max 1,
   32 features, r_max 4.5 Å, float32) is trained on ``--frames`` bulk AIMD-NVT frames of
   ``Li_training.extxyz`` at 300 and 408 K (10 more for validation; ``--epochs`` at ``--lr``);
   then every head is fitted at its defaults: ensemble (``--members`` models, member 0 = the
   potential, the others trained like it), sparse GP (1000 iterations; also with
   ``prior_mean="mean"``, the paper's GP, as ``gp_mean_prior``), latent distance, oracle, random.
2. **Calibration.** Validation Maxwell NLL before and after each head's calibration.
3. **Out of distribution** (``otf_statcut.uq.evaluation.sigma_ratios``; the same experiment as
   ``tests/test_uq_out_of_distribution.py``). Reference: the held-out bulk AIMD-NVT frames at
   300–408 K (both files); groups: every Vacancy and Surface frame. Ratios of the mean per-frame
   maximum σ (what the engine thresholds) and of the mean per-atom σ, for each head; the oracle's
   are the true error's. ``unmatched`` repeats the pooled ratios against all the test file's
   bulk frames (300–907 K): the Vacancy frames have 300 K disorder whatever their label, so there
   the comparison measures temperature.
4. **Cost per MD step** on 54- and 250-atom BCC Li cells (3×3×3 and 5×5×5 conventional cells,
   a = 3.44 Å, positions rattled anew for each step): ``plain`` is the potential's energy+forces
   call (``predict(stress=False, features=False)``); each head's variant is the same call (with the
   latent features if the head needs them) followed by ``head.predict(frames, predictions)``. The
   variants are called in turn on the same configuration, step after step, so that load from other
   processes falls on all alike; medians over ``--steps`` steps after 10 warm-up steps. The
   ``head.predict`` part of each step is also timed alone (``1 + head / plain``), which separates
   the head's own cost from the load-dependent noise of the NequIP calls on a shared machine.
   Targets: distance and GP ≤ 1.15× plain; an ensemble of n ≤ 1.05·n× plain.
5. **Nearest-neighbour scaling.** Distance-head σ for a 250-atom cell against reference sets of
   2 000 – 50 000 real latent vectors (rattled bulk frames), with the KD-tree and the blocked
   brute-force search.

Usage::

    python benchmarks/bench_heads.py [--frames 60] [--epochs 150] [--lr 0.005] [--members 4]
                                     [--steps 200] [--threads 1] [--workdir DIR] [--output PATH]

``--workdir`` keeps the trained potential and heads; a second run with the same directory loads
them instead of training again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import re

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "heads.json"
DATA = Path(os.environ.get("OTF_SHARED_DATA", ROOT.parent / "shared" / "data")) / "mlearn-Li"
HEAD_NAMES = ("ensemble", "gp", "gp_mean_prior", "distance", "oracle", "random")
TIMED_HEADS = ("distance", "gp", "ensemble", "random")  # the oracle needs reference forces: no MD use
CELLS = {54: 3, 250: 5}


def _temperature(atoms) -> int:
    """The AIMD temperature in K from an mlearn frame's description ('... at 300 K')."""
    return int(re.search(r"at (\d+) K", atoms.info["description"]).group(1))


def _frames():
    """``bulk_pool``: training-file bulk frames at 300–408 K (shuffled by ``_train``); the others
    are held out: ``vacancy``, ``surface`` (both files), ``bulk_test`` (test file, all temperatures)."""
    import ase.io

    train_file, test_file = ase.io.read(DATA / "Li_training.extxyz", ":"), ase.io.read(DATA / "Li_test.extxyz", ":")
    everything = train_file + test_file
    return {
        "bulk_pool": [a for a in train_file if a.info["group"] == "AIMD-NVT" and _temperature(a) <= 408],
        "bulk_test": [a for a in test_file if a.info["group"] == "AIMD-NVT"],
        "vacancy": [a for a in everything if a.info["group"] == "Vacancy"],
        "surface": [a for a in everything if a.info["group"] == "Surface"],
    }


def _train(args, data, workdir: Path):
    """The potential and fitted heads (loaded from ``workdir`` when present), with fit times."""
    from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
    from otf_statcut.uq import load_head, make_head

    order = np.random.default_rng(0).permutation(len(data["bulk_pool"]))
    train = [data["bulk_pool"][i] for i in order[: args.frames]]
    val = [data["bulk_pool"][i] for i in order[args.frames : args.frames + 10]]
    data["reference"] = [a for a in data["bulk_test"] if _temperature(a) <= 408] + [
        data["bulk_pool"][i] for i in order[args.frames + 10 :]]
    train_config = TrainConfig(max_epochs=args.epochs, batch_size=4, learning_rate=args.lr, seed=0)
    record = workdir / "fit_seconds.json"
    seconds = json.loads(record.read_text()) if record.is_file() else {}
    if (workdir / "potential").is_dir():
        potential = NequIPPotential.load(workdir / "potential")
    else:
        start = time.perf_counter()
        potential = NequIPPotential.build(ModelConfig(species=("Li",)), train).fit(train, val, train_config)
        seconds["potential"] = time.perf_counter() - start
        potential.save(workdir / "potential")
        record.write_text(json.dumps(seconds, indent=2))
    settings = {"ensemble": {"n_members": args.members, "train_config": train_config}, "gp": {},
                "gp_mean_prior": {"prior_mean": "mean"}, "distance": {}, "oracle": {}, "random": {"seed": 0}}
    heads = {}
    for name in HEAD_NAMES:
        folder = workdir / f"head_{name}"
        if folder.is_dir():
            heads[name] = load_head(folder, potential)
            continue
        start = time.perf_counter()
        heads[name] = make_head(name.split("_")[0], **settings[name]).fit(potential, train, val)
        seconds[name] = time.perf_counter() - start
        heads[name].save(folder)
        record.write_text(json.dumps(seconds, indent=2))
    return potential, heads, {"train_frames": len(train), "val_frames": len(val), "fit_seconds": seconds}


def _ood(potential, heads, data) -> dict:
    from otf_statcut.uq.evaluation import sigma_ratios

    groups = {"vacancy": data["vacancy"], "surface": data["surface"]}
    out = {}
    for name, head in heads.items():
        out[name] = sigma_ratios(head, potential, data["reference"], groups)
        out[name]["unmatched"] = sigma_ratios(head, potential, data["bulk_test"], groups)["pooled"]
    out["frames"] = {"reference": len(data["reference"]), "bulk_test": len(data["bulk_test"])} | {
        g: len(f) for g, f in groups.items()}
    return out


def _cells(n_atoms: int, steps: int) -> list:
    from ase.build import bulk

    base = bulk("Li", "bcc", a=3.44, cubic=True).repeat(CELLS[n_atoms])
    assert len(base) == n_atoms
    rng = np.random.default_rng(n_atoms)
    cells = []
    for _ in range(steps):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        cells.append(atoms)
    return cells


def _timings(potential, heads, n_atoms: int, steps: int, warmup: int = 10) -> dict:
    """Median ms per step of the plain call and of the call plus each timed head, interleaved.

    Each head variant's step is timed as a whole and in its two parts (the potential's call,
    then ``head.predict`` with those predictions), so the head's own cost can be read apart from
    the load-dependent noise of the NequIP call.
    """
    variants = {"plain": None} | {name: heads[name] for name in TIMED_HEADS}
    total = {name: [] for name in variants}
    head_only = {name: [] for name in TIMED_HEADS}
    for i, atoms in enumerate(_cells(n_atoms, steps + warmup)):
        for name, head in variants.items():
            start = time.perf_counter()
            if head is None:
                potential.predict([atoms], stress=False, features=False)
                middle = time.perf_counter()
            else:
                predictions = potential.predict([atoms], stress=False, features=head.needs_features)
                middle = time.perf_counter()
                head.predict([atoms], predictions)
            end = time.perf_counter()
            if i >= warmup:
                total[name].append(1000.0 * (end - start))
                if head is not None:
                    head_only[name].append(1000.0 * (end - middle))
    med = {name: float(np.median(t)) for name, t in total.items()}
    head_med = {name: float(np.median(t)) for name, t in head_only.items()}
    return {
        "n_atoms": n_atoms,
        "steps": steps,
        "ms_per_step_median": med,
        "ms_per_step_p10": {name: float(np.percentile(t, 10)) for name, t in total.items()},
        "head_predict_ms_median": head_med,
        "ratio_to_plain": {name: med[name] / med["plain"] for name in TIMED_HEADS},
        "ratio_plain_plus_head_predict": {name: 1.0 + head_med[name] / med["plain"] for name in TIMED_HEADS},
    }


def _nn_scaling(potential, data, sizes=(2_000, 10_000, 50_000), repeats=20) -> list[dict]:
    """Distance-head σ for one 250-atom cell against growing reference sets of real latent features.

    The references are the potential's latent features of bulk training frames with fresh random
    displacements (σ = 0.05 Å), so they have the intrinsic dimension real training sets have.
    """
    from otf_statcut.uq import LatentDistance

    rng = np.random.default_rng(1)
    frames = []
    while sum(len(a) for a in frames) < max(sizes):
        atoms = data["bulk_pool"][len(frames) % len(data["bulk_pool"])].copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    reference = np.concatenate([p.features for p in potential.predict(frames, batch_size=32, stress=False)])
    query = potential.predict(_cells(250, 1), stress=False)[0].features
    rows = []
    for size in sizes:
        for method in ("kdtree", "brute"):
            model = LatentDistance(search=method).fit_reference(reference[:size], np.full(size, 3))
            model.sigma(query, np.full(len(query), 3))
            start = time.perf_counter()
            for _ in range(repeats):
                model.sigma(query, np.full(len(query), 3))
            rows.append({"reference_atoms": size, "query_atoms": len(query), "search": method,
                         "ms": 1000.0 * (time.perf_counter() - start) / repeats})
    return rows


def _markdown(result: dict) -> str:
    lines = ["| head | NLL uncalibrated | NLL calibrated | per frame: vacancy | surface | pooled "
             "| per atom: vacancy | surface | pooled | pooled per frame vs 300–907 K bulk |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ood, cal = result["out_of_distribution"], result["calibration"]
    for name in HEAD_NAMES:
        o = ood[name]
        nll = (f"{cal[name]['nll_uncalibrated']:.3f} | {cal[name]['nll_calibrated']:.3f}" if name in cal
               else "– | –")
        cells = [f"{o[g][k]:.2f}" for k in ("frame", "atom") for g in ("vacancy", "surface", "pooled")]
        lines.append(f"| {name} | {nll} | " + " | ".join(cells) + f" | {o['unmatched']['frame']:.2f} |")
    lines += ["", "Per MD step, median ms (× plain as measured end to end; in brackets 1 + head.predict / plain)",
              "", "| atoms | plain (ms) | " + " | ".join(f"{h}" for h in TIMED_HEADS) + " |",
              "|---|---|" + "---|" * len(TIMED_HEADS)]
    for case in result["timings"]:
        med, ratio, parts = case["ms_per_step_median"], case["ratio_to_plain"], case["ratio_plain_plus_head_predict"]
        lines.append(f"| {case['n_atoms']} | {med['plain']:.1f} | "
                     + " | ".join(f"{med[h]:.1f} ({ratio[h]:.2f}×) [{parts[h]:.2f}×]" for h in TIMED_HEADS) + " |")
    lines += ["", "| reference atoms | search | distance σ for 250 atoms (ms) |", "|---|---|---|"]
    lines += [f"| {row['reference_atoms']} | {row['search']} | {row['ms']:.2f} |"
              for row in result["nearest_neighbour_scaling"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="bulk AIMD training frames (300–408 K)")
    parser.add_argument("--epochs", type=int, default=150, help="epochs for the potential and each member")
    parser.add_argument("--lr", type=float, default=0.005, help="learning rate for the potential and each member")
    parser.add_argument("--members", type=int, default=4, help="ensemble size n (member 0 = the potential)")
    parser.add_argument("--steps", type=int, default=200, help="timed MD steps per cell size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_heads")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = _frames()
    potential, heads, training = _train(args, data, args.workdir)
    calibration = {name: {"nll_uncalibrated": h.nll_uncalibrated_, "nll_calibrated": h.nll_calibrated_,
                          "scale": h.scale_} for name, h in heads.items() if name != "oracle"}
    result = {
        "benchmark": "uncertainty heads on mlearn Li: MD-step cost, Maxwell-NLL calibration, OOD ratios",
        "targets": {"distance": "<= 1.15x plain", "gp": "<= 1.15x plain",
                    "ensemble": f"<= {1.05 * args.members:.2f}x plain (1.05 n, n = {args.members})"},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__},
        "settings": {"train_frames": training["train_frames"], "val_frames": training["val_frames"],
                     "epochs": args.epochs, "learning_rate": args.lr, "members": args.members,
                     "model": repr(potential),
                     "training": "bulk AIMD-NVT frames of Li_training.extxyz at 300 and 408 K only"},
        "fit_seconds": training["fit_seconds"],
        "calibration": calibration,
        "out_of_distribution": _ood(potential, heads, data),
        "timings": [_timings(potential, heads, n, args.steps) for n in CELLS],
        "nearest_neighbour_scaling": _nn_scaling(potential, data),
    }
    result["machine"]["load_average_start"] = load_start
    result["machine"]["load_average_end"] = list(os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
