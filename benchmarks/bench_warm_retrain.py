"""Warm-start retraining schemes, measured on real DFT data: does a warm retrain after new labels
use them?

Protocol (per data set and seed):

1. Cold-train a small NequIP model on ``--k`` frames (2 validation frames); settings mirror
   ``inputs/quickstart.yaml`` (initial fit: batch 2, learning rate 0.01; retrains: 20 epochs,
   batch 4, patience 8).
2. ``--transitions`` retrain iterations, as in the on-the-fly loop: rank the candidate pool by
   mean per-atom force error under the cold model; transition t adds the frames ranked
   ``[t·new, (t+1)·new)`` (the same frames for every scheme, so schemes are compared on paired
   data) and warm-retrains. Transitions alternate between two kinds:
   ``train_only`` (all new frames go to training, the validation set is unchanged: the user's
   reproduction) and ``val_new`` (one of the new frames goes to validation).
3. Per retrain: whether the returned weights are unchanged, per-atom |ΔF| on the new frames
   before/after, validation force MAE before/after (on that retrain's validation set), force
   MAE on held-out test frames before/after, wall time.

Schemes: ``today`` (the behaviour before this change: fresh Adam at 0.01, epoch 0 may be
returned) against warm fits with selection among epochs >= 1 and a lower learning rate, a ramp,
and/or the Adam state carried over. Data: mlearn Li AIMD-NVT (Zuo et al., J. Phys. Chem. A 124,
731 (2020)) and FitSNAP W–Be DFT MD 300 K / 1000 K (Wood et al., Phys. Rev. B 99, 184305 (2019)),
read from ``../shared/data``.

Run: ``python benchmarks/bench_warm_retrain.py`` (seeds 0 and 1: about 8 minutes on one core);
writes ``benchmarks/results/warm_retrain.json``. The recorded result is from
``--seeds 0 1 2 3`` (about 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from otf_statcut.data import frame_forces  # noqa: E402
from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OTF_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results" / "warm_retrain.json"

MODEL = dict(num_features=16, num_layers=2, l_max=1, r_max=4.5, radial_mlp_width=32)
#: warm_carry_optimizer only makes the cold fit keep its Adam state (for the "carry" schemes)
COLD = TrainConfig(max_epochs=30, batch_size=2, learning_rate=0.01, patience=15, lr_patience=4,
                   warm_carry_optimizer=True)
WARM_BASE = dict(max_epochs=20, batch_size=4, learning_rate=0.01, patience=8, lr_patience=4)

#: name -> TrainConfig changes of the warm fit; "today" trains the warm fit with the cold rules
#: (fresh Adam at learning_rate, epoch 0 eligible), which was the behaviour before this change.
#: "ge1" = selection among epochs >= 1; every key is set, so the schemes do not depend on the
#: TrainConfig defaults (ge1_lr1e-2_carry is what the defaults are).
SCHEMES: dict[str, dict | None] = {
    "today": None,
    "ge1_lr1e-2": dict(warm_learning_rate=None, warm_ramp_epochs=0, warm_carry_optimizer=False),
    "ge1_lr3e-3": dict(warm_learning_rate=0.003, warm_ramp_epochs=0, warm_carry_optimizer=False),
    "ge1_lr1e-3": dict(warm_learning_rate=0.001, warm_ramp_epochs=0, warm_carry_optimizer=False),
    "ge1_lr1e-2_ramp5": dict(warm_learning_rate=None, warm_ramp_epochs=5, warm_carry_optimizer=False),
    "ge1_lr1e-2_carry": dict(warm_learning_rate=None, warm_ramp_epochs=0, warm_carry_optimizer=True),
    "ge1_lr1e-2_carry_ramp3": dict(warm_learning_rate=None, warm_ramp_epochs=3, warm_carry_optimizer=True),
}
DEFAULT_SCHEME = "ge1_lr1e-2_carry"


def load_li():
    frames = ase.io.read(SHARED / "mlearn-Li" / "Li_training.extxyz", ":")
    aimd = [a for a in frames if a.info.get("group") == "AIMD-NVT"]
    return ("Li",), aimd, aimd


def load_wbe():
    folder = SHARED / "fitsnap-WBe"
    cool = ase.io.read(folder / "DFT_MD_300K.extxyz", "::6")
    hot = ase.io.read(folder / "DFT_MD_1000K.extxyz", "::6")
    # initial data at 300 K; the candidates (and test frames) mix 300 K and 1000 K, all compositions
    return ("Be", "W"), cool, cool + hot


DATASETS = {"li_aimd": load_li, "wbe_md": load_wbe}


def mean_atom_errors(potential, frames) -> np.ndarray:
    """Per frame, mean per-atom |ΔF| (eV/Å)."""
    return np.array([float(np.mean(e)) for e in potential.force_errors(frames)])


def force_mae(potential, frames) -> float:
    """Force-component MAE (eV/Å), as the learner's ``val_force_mae``."""
    predictions = potential.predict(frames, stress=False, features=False)
    return float(np.mean(np.concatenate([np.abs(p.forces - frame_forces(a)).ravel()
                                         for p, a in zip(predictions, frames)])))


def measure(potential, new_train, new_val, val, test) -> dict:
    """Mean per-atom |ΔF| on the new training / validation frames; force MAE on validation and test."""
    return dict(new_train=float(np.mean(mean_atom_errors(potential, new_train))),
                new_val=float(np.mean(mean_atom_errors(potential, new_val))) if new_val else math.nan,
                val_mae=force_mae(potential, val), test_mae=force_mae(potential, test))


def warm_fit(potential, train, val, scheme: dict | None, seed: int):
    if scheme is None:
        config = TrainConfig(**WARM_BASE, seed=seed)
        potential.trained = False  # the old rules: warm weights, cold training settings
    else:
        config = TrainConfig(**WARM_BASE, seed=seed, **scheme)
    start = time.perf_counter()
    potential.fit(train, val, config, warm_start=True)
    return time.perf_counter() - start


def run_chain(name, species, initial, candidates, seed, cold_epochs, args):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(initial))
    train0 = [initial[i] for i in order[: args.k]]
    val0 = [initial[i] for i in order[args.k : args.k + 2]]
    used = {id(a) for a in train0 + val0}
    rest = [a for a in candidates if id(a) not in used]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    test, pool0 = rest[: args.test], rest[args.test : args.test + args.pool]

    cold = NequIPPotential.build(ModelConfig(species=species, seed=seed, **MODEL), train0)
    start = time.perf_counter()
    cold.fit(train0, val0, TrainConfig(**{**COLD.to_dict(), "seed": seed, "max_epochs": cold_epochs}),
             warm_start=False)
    cold_seconds = time.perf_counter() - start
    regime = f"cold{cold_epochs}"
    print(f"[{name} seed {seed} {regime}] cold fit {cold_seconds:.1f} s, "
          f"best epoch {cold.history.best_epoch}, val F-RMSE {cold.history.best_val_forces_rmse:.3f}, "
          f"test MAE {force_mae(cold, test):.3f}", flush=True)

    ranking = np.argsort(mean_atom_errors(cold, pool0))[::-1]
    rows = []
    for scheme_name, scheme in SCHEMES.items():
        potential = cold.copy()
        train, val = list(train0), list(val0)
        for t in range(args.transitions):
            kind = "train_only" if t % 2 == 0 else "val_new"
            new = [pool0[i] for i in ranking[t * args.new : (t + 1) * args.new]]
            new_train, new_val = (new, []) if kind == "train_only" else (new[:-1], new[-1:])
            train, val = train + new_train, val + new_val
            before = measure(potential, new_train, new_val, val, test)
            seconds = warm_fit(potential, train, val, scheme, seed=seed + 100 * t)
            history = potential.history
            after = measure(potential, new_train, new_val, val, test)
            rows.append(dict(
                dataset=name, seed=seed, regime=regime, scheme=scheme_name, transition=t, kind=kind,
                n_train=len(train), n_val=len(val), seconds=seconds, epochs=len(history.epochs),
                best_epoch=history.best_epoch, stop_reason=history.stop_reason,
                unchanged=not history.weights_changed, max_weight_change=history.max_weight_change,
                optimizer_state_carried=history.optimizer_state_carried,
                initial_val_loss=history.initial_val_loss, returned_val_loss=history.best_val_loss,
                **{f"{k}_before": v for k, v in before.items()},
                **{f"{k}_after": v for k, v in after.items()},
            ))
            r = rows[-1]
            print(f"  {scheme_name:22s} t{t} {kind:10s} best_epoch {r['best_epoch']:2d} "
                  f"dW {r['max_weight_change']:.2e} "
                  f"new {r['new_train_before']:.3f}->{r['new_train_after']:.3f} "
                  f"val {r['val_mae_before']:.4f}->{r['val_mae_after']:.4f} "
                  f"test {r['test_mae_before']:.4f}->{r['test_mae_after']:.4f} {seconds:.1f} s", flush=True)
    return rows, dict(dataset=name, seed=seed, regime=regime, seconds=cold_seconds,
                      best_epoch=cold.history.best_epoch, test_mae=force_mae(cold, test))


def _mean(values):
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def summarise(rows):
    """Per scheme (all data sets, and per data set / transition kind)."""
    last = max(r["transition"] for r in rows)

    def block(selection):
        ratio = lambda key: _mean([r[f"{key}_after"] / r[f"{key}_before"] for r in selection  # noqa: E731
                                   if r[f"{key}_before"] > 0])
        return dict(
            n_retrains=len(selection),
            fraction_unchanged=_mean([float(r["unchanged"]) for r in selection]),
            new_train_error_before=_mean([r["new_train_before"] for r in selection]),
            new_train_error_after=_mean([r["new_train_after"] for r in selection]),
            new_train_error_ratio=ratio("new_train"),
            new_val_error_before=_mean([r["new_val_before"] for r in selection]),
            new_val_error_after=_mean([r["new_val_after"] for r in selection]),
            val_mae_before=_mean([r["val_mae_before"] for r in selection]),
            val_mae_after=_mean([r["val_mae_after"] for r in selection]),
            val_mae_ratio=ratio("val_mae"),
            test_mae_before=_mean([r["test_mae_before"] for r in selection]),
            test_mae_after=_mean([r["test_mae_after"] for r in selection]),
            test_mae_ratio=ratio("test_mae"),
            fraction_test_worse=_mean([float(r["test_mae_after"] > r["test_mae_before"]) for r in selection]),
            final_test_mae=_mean([r["test_mae_after"] for r in selection if r["transition"] == last]),
            fraction_val_loss_worse=_mean([float(r["returned_val_loss"] > r["initial_val_loss"])
                                           for r in selection]),
            mean_best_epoch=_mean([r["best_epoch"] for r in selection]),
            mean_seconds=_mean([r["seconds"] for r in selection]),
        )

    summary = {}
    for scheme in SCHEMES:
        mine = [r for r in rows if r["scheme"] == scheme]
        summary[scheme] = {"all": block(mine)}
        for dataset in sorted({r["dataset"] for r in mine}):
            summary[scheme][dataset] = block([r for r in mine if r["dataset"] == dataset])
        for regime in sorted({r["regime"] for r in mine}):
            summary[scheme][regime] = block([r for r in mine if r["regime"] == regime])
        for kind in ("train_only", "val_new"):
            summary[scheme][kind] = block([r for r in mine if r["kind"] == kind])
    return summary


def print_table(summary, key="all"):
    print(f"\n{key}: scheme, unchanged, new-frame |dF| before->after (ratio), val MAE ratio, test MAE ratio, "
          "test worse, final test MAE, val loss worse, best epoch, s/fit")
    for scheme, blocks in summary.items():
        b = blocks[key]
        print(f"  {scheme:22s} {b['fraction_unchanged']:.2f}  {b['new_train_error_before']:.3f}->"
              f"{b['new_train_error_after']:.3f} ({b['new_train_error_ratio']:.2f})  "
              f"{b['val_mae_ratio']:.3f}  "
              f"{b['test_mae_ratio']:.3f}  {b['fraction_test_worse']:.2f}  {b['final_test_mae']:.4f}  "
              f"{b['fraction_val_loss_worse']:.2f}  {b['mean_best_epoch']:.1f}  "
              f"{b['mean_seconds']:.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--k", type=int, default=8, help="initial training frames")
    parser.add_argument("--cold-epochs", type=int, nargs="+", default=[30, 150],
                        help="epochs of the cold fit, one chain per value (30: an under-trained starting "
                             "model; 150: converged, the regime of the user's report)")
    parser.add_argument("--new", type=int, default=3, help="new frames per retrain")
    parser.add_argument("--transitions", type=int, default=3, help="retrains per chain")
    parser.add_argument("--pool", type=int, default=40, help="candidate frames")
    parser.add_argument("--test", type=int, default=16, help="held-out test frames")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in list(SCHEMES):
        if name not in args.schemes:
            del SCHEMES[name]

    start = time.perf_counter()
    rows, colds = [], []
    for dataset in args.datasets:
        species, initial, candidates = DATASETS[dataset]()
        for seed in args.seeds:
            for cold_epochs in args.cold_epochs:
                chain_rows, cold = run_chain(dataset, species, initial, candidates, seed, cold_epochs, args)
                rows += chain_rows
                colds.append(cold)
    summary = summarise(rows)
    for key in ["all", *args.datasets, *(f"cold{e}" for e in args.cold_epochs), "train_only", "val_new"]:
        print_table(summary, key)
    result = dict(
        description=__doc__.splitlines()[0],
        protocol=dict(model=MODEL, cold=COLD.to_dict(), warm_base=WARM_BASE, schemes=SCHEMES,
                      seeds=args.seeds, datasets=args.datasets, cold_epochs=args.cold_epochs, k=args.k,
                      new=args.new, transitions=args.transitions, pool=args.pool, test=args.test, threads=1),
        data_sources=dict(
            li_aimd="mlearn Li, AIMD-NVT frames of Li_training.extxyz "
                    "(Zuo et al., J. Phys. Chem. A 124, 731 (2020))",
            wbe_md="FitSNAP W-Be DFT_MD_300K (initial) + DFT_MD_1000K (candidates/test), every 6th frame "
                   "(Wood et al., Phys. Rev. B 99, 184305 (2019))"),
        machine=dict(python=sys.version.split()[0], torch=torch.__version__, platform=platform.platform()),
        default_scheme=DEFAULT_SCHEME,
        train_config_warm_defaults={k: v for k, v in TrainConfig().to_dict().items()
                                    if k.startswith("warm_")},
        total_seconds=time.perf_counter() - start,
        cold_fits=colds,
        summary=summary,
        rows=rows,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    args.output.write_text(json.dumps(clean(result), indent=1) + "\n")
    print(f"\nwrote {args.output} ({result['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
