"""Cost of one warm retrain (a whole fit cycle: potential, ensemble head, calibration, cutoffs)
against the size of the labelled data set, before and after issue 11 (retraining that stays flat).

Protocol (per data set):

1. **Start state, shared by every scheme.** Shuffle the pool (seed 0). The data set of size N is
   the first N pool frames, every 3rd to validation (quickstart's ``val_fraction: 0.34``); its
   last ``min(10, N // 5)`` frames are its new labels. Cold-train a potential and a 3-member
   ensemble head (the settings of ``inputs/quickstart.yaml``: 16 features, 2 layers, l_max 1,
   r_max 4.5 Å, radial MLP 32) on the first ``max(sizes)`` pool frames *except every size's new
   labels*, and save them: in a run, the model that meets the new labels of a data set has been
   trained on its old frames by the earlier retrains, never on the new ones. Every timed retrain
   starts from this checkpoint, so all schemes and sizes start from the same weights (for the
   small sizes the start model has seen more frames than the data set holds; that is the same
   for every scheme).
2. **Timed retrain at N labelled frames.** Add the data set's new labels: the potential and the
   members are warm-retrained on the N frames. One :func:`~otf_statcut.fit_cycle.fit_cycle`
   with quickstart's retrain settings (``max_epochs 20, batch_size 4, patience 8,
   max_seconds 8`` for the potential and each member) is timed end to end (wall and process CPU
   time). Graph-cache lookups and member evaluations during the retrain are recorded too.
3. **Quality.** The cycle's validation force MAE (on the N-frame data set's validation frames),
   and the retrained potential's force MAE on held-out frames no data set contains.

Schemes:

- ``old``: the code before issue 11 (``--baseline-ref``, default 89cc961), extracted with
  ``git archive`` and run in a subprocess: every epoch over all training frames, budget checked
  after each epoch, graphs rebuilt at every fit, members' validation forces computed three
  times, training frames always predicted.
- ``full``: this code with replay off (``warm_replay_frames`` and ``warm_val_frames`` null):
  full-data epochs, but the per-step budget, graph cache and shared predictions. It is the
  "full retrain" reference for quality at the same time budget.
- ``new``: this code with its defaults (replay of 128 old training frames per epoch, 128 old
  validation frames monitored).

For ``full`` and ``new`` the graph cache holds the old frames' graphs before the timed retrain,
as the previous retrain would have left it.

GP head (``--gp``, on the first data set): after a warm retrain at 200 frames, refit the sparse-GP
head cold (1000 iterations + k-means) and warm (from the previous GP, 200 iterations); time and
calibrated validation NLL of both.

Data: FitSNAP W–Be DFT MD 300 K + 1000 K (Wood et al., Phys. Rev. B 99, 184305 (2019); 3360
frames of 48–54 atoms: sizes up to 2000, 100 held-out frames) and mlearn Li (Zuo et al., J. Phys.
Chem. A 124, 731 (2020); 241 training frames: sizes up to 200, held-out = its 29 test frames),
read from ``../shared/data``.

Run: ``python benchmarks/bench_retrain_scaling.py`` (W–Be 10/50/200/1000/2000 and Li 10/50/200,
three schemes, GP section: about 15 minutes on one core); writes
``benchmarks/results/retrain_scaling.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OTF_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results" / "retrain_scaling.json"
BASELINE_REF = "89cc961"

MODEL = dict(num_features=16, num_layers=2, l_max=1, r_max=4.5, radial_mlp_width=32)
#: quickstart: retrain.train and head.settings.train_config
RETRAIN = dict(max_epochs=20, batch_size=4, patience=8, max_seconds=8.0)
#: the shared start state: quickstart's first fit, with a longer budget (seconds per data set)
PRETRAIN = dict(max_epochs=60, batch_size=2, learning_rate=0.01, patience=15)
PRETRAIN_SECONDS = {"wbe": 75.0, "li": 40.0}
PRETRAIN_HEAD = dict(max_epochs=30, batch_size=4, patience=8)
PRETRAIN_HEAD_SECONDS = {"wbe": 25.0, "li": 15.0}
N_MEMBERS = 3
CUTOFF_N = 4800  # quickstart: 300 steps x 16 atoms
DATASETS = {"wbe": (10, 50, 200, 1000, 2000), "li": (10, 50, 200)}
SCHEMES = ("old", "full", "new")


# ------------------------------------------------------------------------------ data
def load_dataset(name: str):
    """(species, pool in shuffled order, held-out frames)."""
    import ase.io

    rng = np.random.default_rng(0)
    if name == "wbe":
        folder = SHARED / "fitsnap-WBe"
        frames = [a for part in ("DFT_MD_300K", "DFT_MD_1000K")
                  for a in ase.io.read(folder / f"{part}.extxyz", ":")]
        frames = [frames[i] for i in rng.permutation(len(frames))]
        return ("Be", "W"), frames[:-100], frames[-100:]
    if name == "li":
        folder = SHARED / "mlearn-Li"
        frames = ase.io.read(folder / "Li_training.extxyz", ":")
        frames = [frames[i] for i in rng.permutation(len(frames))]
        return ("Li",), frames, ase.io.read(folder / "Li_test.extxyz", ":")
    raise SystemExit(f"unknown data set {name!r}")


def split(frames):
    """Every 3rd frame to validation (quickstart's val_fraction 0.34)."""
    train = [f for i, f in enumerate(frames) if i % 3 != 2]
    val = [f for i, f in enumerate(frames) if i % 3 == 2]
    return train, val


def n_new(n: int) -> int:
    """New labels of the data set of size ``n`` (its last frames)."""
    return min(10, n // 5)


def force_mae(potential, frames) -> float:
    predictions = potential.predict(frames, stress=False, features=False)
    return float(np.mean(np.concatenate([np.abs(p.forces - f.get_forces()).ravel()
                                         for p, f in zip(predictions, frames)])))


def settings():
    from otf_statcut.fit_cycle import CutoffSettings

    return CutoffSettings(max_error=1.0, candidates=("maxwell", "gamma", "gengamma"))


# ------------------------------------------------------------------------------ start state
def pretrain(name: str, sizes, folder: Path) -> dict:
    """Cold fit cycle on the first max(sizes) pool frames except every size's new labels (split
    by pool index, as the data sets are); saves potential and head."""
    from otf_statcut.fit_cycle import fit_cycle
    from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
    from otf_statcut.uq import make_head

    species, pool, _ = load_dataset(name)
    top = min(max(sizes), len(pool))
    held = {i for n in sizes if n <= len(pool) for i in range(n - n_new(n), n)}
    train = [pool[i] for i in range(top) if i % 3 != 2 and i not in held]
    val = [pool[i] for i in range(top) if i % 3 == 2 and i not in held]
    potential = NequIPPotential.build(ModelConfig(species=species, **MODEL), train)
    head = make_head("ensemble", n_members=N_MEMBERS,
                     train_config=dict(PRETRAIN_HEAD, max_seconds=PRETRAIN_HEAD_SECONDS[name]))
    start = time.perf_counter()
    cycle = fit_cycle(potential, head, train, val, warm_start=False,
                      train_config=TrainConfig(**PRETRAIN, max_seconds=PRETRAIN_SECONDS[name]),
                      n={s: CUTOFF_N for s in species}, settings=settings())
    potential.save(folder / "potential")
    head.save(folder / "head")
    return {"seconds": time.perf_counter() - start, "val_force_mae": cycle.val_force_mae,
            "epochs": cycle.retrain.epochs, "stop_reason": potential.history.stop_reason,
            "frames_seen_first_epoch": potential.history.epochs[0].frames if potential.history.epochs else 0,
            "n_train": len(train), "n_val": len(val), "held_out_new_labels": len(held)}


# ------------------------------------------------------------------------------ one scheme
def worker(scheme: str, names: list[str], sizes: dict, ckpt: Path) -> list[dict]:
    """Timed retrains of one scheme (runs in its own process: ``old`` imports the baseline code)."""
    import torch

    torch.set_num_threads(1)
    import otf_statcut
    from otf_statcut.fit_cycle import fit_cycle
    from otf_statcut.mlip import NequIPPotential, TrainConfig
    from otf_statcut.uq import load_head

    print(f"[{scheme}] otf_statcut from {Path(otf_statcut.__file__).parent}", file=sys.stderr, flush=True)
    retrain = dict(RETRAIN)
    if scheme == "full":
        retrain.update(warm_replay_frames=None, warm_val_frames=None)
    rows = []
    for name in names:
        species, pool, test = load_dataset(name)
        for n in sizes[name]:
            if n > len(pool):
                continue
            frames = pool[:n]
            train, val = split(frames)
            new = frames[n - n_new(n):]
            potential = NequIPPotential.load(ckpt / name / "potential")
            head = load_head(compatible_head(ckpt / name / "head", TrainConfig), potential)
            head.train_config = TrainConfig(**retrain)
            cache = None
            if scheme != "old":
                from otf_statcut.mlip.graphs import GRAPH_CACHE

                cache = GRAPH_CACHE
                cache.clear()
                old = [f for f in frames if not any(f is g for g in new)]
                potential.converter.labelled_graphs(old)  # what the previous retrain left in the cache
                cache.hits = cache.misses = 0
            wall, cpu = time.perf_counter(), time.process_time()
            cycle = fit_cycle(potential, head, train, val, train_config=TrainConfig(**retrain),
                              warm_start=True, n={s: CUTOFF_N for s in species}, settings=settings(),
                              new_frames=new)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            graph_stats = None if cache is None else {"hits": cache.hits, "misses": cache.misses,
                                                      "graphs": len(cache)}
            history = potential.history
            members = [m.history for m in head.members_]
            row = {
                "dataset": name, "scheme": scheme, "n_frames": n, "n_train": len(train), "n_val": len(val),
                "n_new": len(new), "wall_s": wall, "cpu_s": cpu,
                "train_s": cycle.train_time_s, "head_s": cycle.head_time_s,
                "val_force_mae": cycle.val_force_mae, "test_force_mae": force_mae(potential, test),
                "new_error_before": cycle.retrain.new_error_before,
                "new_error_after": cycle.retrain.new_error_after,
                "learned": cycle.retrain.learned, "best_epoch": cycle.retrain.best_epoch,
                "epochs": len(history.epochs), "stop_reason": history.stop_reason,
                "potential_fit_s": history.seconds,
                "member_fit_s": [h.seconds for h in members],
                "member_epochs": [len(h.epochs) for h in members],
                "epoch_frames": getattr(history, "epoch_frames", len(train)),
                "monitor_frames": getattr(history, "monitor_frames", len(val)),
                "cutoffs_ok": cycle.cutoffs is not None,
            }
            if cache is not None:
                row["graph_cache"] = graph_stats  # lookups during the timed retrain
                row["member_evaluations"] = getattr(head, "member_evaluations_", None)
            rows.append(row)
            print(f"[{scheme}] {name} N={n}: {wall:.1f} s wall, {cpu:.1f} s cpu, "
                  f"val MAE {cycle.val_force_mae:.4f}, "
                  f"test MAE {row['test_force_mae']:.4f}, epochs {row['epochs']} ({history.stop_reason})",
                  file=sys.stderr, flush=True)
    return rows


def compatible_head(folder: Path, train_config_cls) -> Path:
    """``folder``, or a copy whose saved ``train_config`` holds only the keys this code's
    TrainConfig knows (the baseline code refuses the replay keys of a head saved by this code)."""
    import dataclasses
    import shutil

    meta = json.loads((folder / "head.json").read_text())
    known = {f.name for f in dataclasses.fields(train_config_cls)}
    saved = meta["settings"].get("train_config") or {}
    if set(saved) <= known:
        return folder
    copy = folder.parent / (folder.name + "_compatible")
    if not copy.exists():
        shutil.copytree(folder, copy)
        meta["settings"]["train_config"] = {k: v for k, v in saved.items() if k in known}
        (copy / "head.json").write_text(json.dumps(meta))
    return copy


def gp_section(name: str, ckpt: Path) -> dict:
    """Cold vs warm refit of the sparse-GP head after a warm retrain at 200 frames."""
    import torch

    torch.set_num_threads(1)
    from otf_statcut.mlip import NequIPPotential, TrainConfig
    from otf_statcut.uq import make_head

    species, pool, _ = load_dataset(name)
    potential = NequIPPotential.load(ckpt / name / "potential")
    frames = pool[:200]
    train, val = split(frames)
    old_train, old_val = split(frames[:190])
    head = make_head("gp", seed=0)
    wall = time.perf_counter()
    head.fit(potential, old_train, old_val)
    first = time.perf_counter() - wall
    potential.fit(train, val, TrainConfig(**RETRAIN), warm_start=True, new_frames=frames[190:])
    train_pred = potential.predict(train, stress=False, features=True)
    val_pred = potential.predict(val, stress=False, features=True)
    out = {"dataset": name, "n_frames": 200, "first_fit_s": first}
    for label, fitted in (("cold", make_head("gp", seed=0)), ("warm", head)):
        wall = time.perf_counter()
        fitted.fit(potential, train, val, train_predictions=train_pred, val_predictions=val_pred)
        out[label] = {"seconds": time.perf_counter() - wall, "val_nll": fitted.nll_calibrated_,
                      "warm_refit": bool(getattr(fitted, "warm_refit_", False))}
    return out


# ------------------------------------------------------------------------------ driver
def baseline_source(ref: str, folder: Path) -> Path:
    """The package at ``ref`` (git archive), for the ``old`` scheme."""
    target = folder / "baseline"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "otf_statcut"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_worker(scheme: str, names, sizes, ckpt: Path, work: Path, baseline: Path | None) -> list[dict]:
    out = work / f"{scheme}.json"
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", scheme, "--ckpt", str(ckpt),
               "--worker-out", str(out), "--datasets", *names,
               "--sizes-json", json.dumps({k: list(v) for k, v in sizes.items()})]
    subprocess.run(command, check=True, env=env, cwd=str(work))
    return json.loads(out.read_text())


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for name in sorted({r["dataset"] for r in rows}):
        block = {}
        for scheme in SCHEMES:
            mine = {r["n_frames"]: r for r in rows if r["dataset"] == name and r["scheme"] == scheme}
            if not mine:
                continue
            sizes = sorted(mine)
            entry = {"wall_s": {n: mine[n]["wall_s"] for n in sizes}}
            if 200 in mine and max(sizes) > 200:
                entry["wall_ratio_max_over_200"] = mine[max(sizes)]["wall_s"] / mine[200]["wall_s"]
                entry["cpu_ratio_max_over_200"] = mine[max(sizes)]["cpu_s"] / mine[200]["cpu_s"]
            block[scheme] = entry
        for reference in ("full", "old"):
            pairs = [(r, s) for r in rows for s in rows
                     if r["dataset"] == s["dataset"] == name and r["n_frames"] == s["n_frames"]
                     and r["scheme"] == "new" and s["scheme"] == reference]
            if pairs:
                block[f"new_vs_{reference}_val_mae_rel"] = {
                    r["n_frames"]: r["val_force_mae"] / s["val_force_mae"] - 1 for r, s in pairs}
                block[f"new_vs_{reference}_test_mae_rel"] = {
                    r["n_frames"]: r["test_force_mae"] / s["test_force_mae"] - 1 for r, s in pairs}
        summary[name] = block
    return summary


def print_table(rows: list[dict]) -> None:
    print(f"\n{'data':5} {'N':>5} {'scheme':6} {'wall s':>7} {'cpu s':>7} {'train s':>7} {'head s':>7} "
          f"{'epochs':>6} {'val MAE':>8} {'test MAE':>8} {'new err':>15}")
    for r in sorted(rows, key=lambda r: (r["dataset"], r["n_frames"], SCHEMES.index(r["scheme"]))):
        print(f"{r['dataset']:5} {r['n_frames']:5d} {r['scheme']:6} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} "
              f"{r['train_s']:7.1f} {r['head_s']:7.1f} {r['epochs']:6d} {r['val_force_mae']:8.4f} "
              f"{r['test_force_mae']:8.4f} {r['new_error_before']:7.3f}>{r['new_error_after']:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--sizes", nargs="+", type=int,
                        help="data-set sizes (default: 10 50 200 [1000 2000])")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the 'old' code")
    parser.add_argument("--gp", action=argparse.BooleanOptionalAction, default=True,
                        help="also time cold vs warm GP head refits")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    parser.add_argument("--worker", choices=list(SCHEMES), help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        sizes = {k: tuple(v) for k, v in json.loads(args.sizes_json).items()}
        rows = worker(args.worker, args.datasets, sizes, args.ckpt)
        args.worker_out.write_text(json.dumps(rows))
        return 0

    import torch

    torch.set_num_threads(1)
    sizes = {name: tuple(args.sizes) if args.sizes else DATASETS[name] for name in args.datasets}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_retrain_") as tmp:
        work = Path(tmp)
        pretrained = {}
        for name in args.datasets:
            print(f"pretraining {name} ...", file=sys.stderr, flush=True)
            pretrained[name] = pretrain(name, sizes[name], work / "ckpt" / name)
        rows = []
        for scheme in args.schemes:
            baseline = baseline_source(args.baseline_ref, work) if scheme == "old" else None
            rows += run_worker(scheme, args.datasets, sizes, work / "ckpt", work, baseline)
        gp = gp_section(args.datasets[0], work / "ckpt") if args.gp else None
    load = os.getloadavg()
    result = {
        "description": "wall time of one warm retrain (fit cycle: potential + 3-member ensemble + "
                       "calibration + cutoffs) against the labelled data-set size; old (before issue 11) "
                       "vs full (replay off) vs new (replay) schemes; see the module docstring of "
                       "benchmarks/bench_retrain_scaling.py",
        "settings": {"model": MODEL, "retrain": RETRAIN, "pretrain": PRETRAIN,
                     "pretrain_seconds": PRETRAIN_SECONDS,
                     "pretrain_head": PRETRAIN_HEAD, "pretrain_head_seconds": PRETRAIN_HEAD_SECONDS,
                     "n_members": N_MEMBERS, "sizes": sizes, "baseline_ref": args.baseline_ref},
        "data_sources": {
            "wbe": "FitSNAP W-Be DFT_MD_300K + DFT_MD_1000K (Wood et al., PRB 99, 184305 (2019))",
            "li": "mlearn Li (Zuo et al., J. Phys. Chem. A 124, 731 (2020)); 241 training frames, "
                  "so sizes stop at 200"},
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                    "platform": platform.platform(), "threads": 1, "cpus": os.cpu_count(),
                    "load_average_at_end": load},
        "total_seconds": time.perf_counter() - started,
        "pretrain": pretrained,
        "summary": summarise(rows),
        "gp_head": gp,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    args.output.write_text(json.dumps(clean(result), indent=1) + "\n")
    print_table(rows)
    print(json.dumps(clean(result["summary"]), indent=1))
    if gp:
        print(f"GP head refit after a warm retrain at 200 frames: cold {gp['cold']['seconds']:.1f} s "
              f"(NLL {gp['cold']['val_nll']:.4f}), warm {gp['warm']['seconds']:.1f} s "
              f"(NLL {gp['warm']['val_nll']:.4f})")
    print(f"total {result['total_seconds']:.0f} s; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
