"""State-aware error cutoffs on pooled multi-state W–Be data: atoms above the error cutoff vs ≈1.

Writes ``benchmarks/results/multistate.json`` and prints markdown tables.

Data: FitSNAP W–Be AIMD (``../shared/data/fitsnap-WBe/DFT_MD_300K.extxyz`` and
``DFT_MD_1000K.extxyz``; Wood et al., PRB 99, 184305 (2019), GPL-2.0, read in place). A *state* is
temperature × composition (the formula: Be36W12, Be27W27, Be32W16; ``info['config_type']`` is
the file's group, DFT_MD_300K / DFT_MD_1000K), six states.

For each seed (a different split and model seed):

1. **Split**, stratified by state: ``--train`` training, ``--val`` validation and ``--sampling``
   held-out sampling frames per state, drawn at random from that state's frames.
2. **Model**: a small NequIP potential (``--features`` features, 2 layers, l_max 1, r_max 4.5 Å),
   ``--epochs`` epochs at ``--lr``. Its validation force MAE per state is recorded.
3. **Heads**: the sparse GP (``gp``, defaults) and a ``--members``-member ensemble (extra members
   trained like the potential), both calibrated by Maxwell NLL on the validation frames.
4. **Cutoffs** (``otf_statcut.stats.states.error_cutoffs``, validation fits, ``N`` = sampling atoms
   of the group, so ≈1 expected per group), and the sampling atoms above them, in total, per
   temperature and per state:

   - ``global``: one Maxwell; ``element``: one per element (head-independent);
   - ``sigma``: ``|ΔF|/σ`` per element, per-atom cutoff ``σ_i · z_cut`` (per head);
   - ``scaled_sigma``: per element ``Maxwell(s · (σ/σ̄)^β)``, β fitted (per head);
   - ``scaled_frame_sigma``: the same with the frame's RMS σ of the element (per head);
   - ``scaled_frame_force``: the same with the frame's RMS *predicted* force of the element
     (head-independent; the potential's own output);
   - ``state_T``: per (temperature, element); ``state``: per (temperature × composition, element).
     Both need state labels: benchmark diagnostics only.

   Each scheme is run with Maxwell fits (the method) and with ``family="best"`` (best of Maxwell /
   Gamma / generalized Gamma; keys ending ``/best``). Two *oracle* diagnostics, which use the
   sampling errors themselves and so are no cutoffs anyone could use, show where the excess comes
   from: ``oracle_state_insample`` fits each (state, element) group of the sampling errors
   itself; ``oracle_frame_error`` uses each frame's true RMS error per element as the ``scaled``
   covariate (a perfect frame-level state scale).

   For each scheme and head it also records how many of the scheme's flagged atoms the head's own
   minimum σ cutoff (best fit of validation σ, same N) would catch: a state-aware error cutoff that
   the uncertainty cannot see is of little use for active learning.
5. **Maxwell evidence**: KS p-values of Maxwell fits of the *validation* errors per element and
   per (state, element), and of the *sampling* errors per (state, element) (~300–1600 values):
   whether the true error is Maxwell within one state at all.

Usage::

    python benchmarks/bench_multistate.py [--seeds 0 1 2] [--train 8] [--val 3] [--sampling 30]
        [--features 16] [--epochs 40] [--lr 0.01] [--members 3] [--workdir DIR] [--output PATH]

``--workdir`` keeps each seed's per-atom arrays (``seed<k>.npz``); a second run with the same
directory reuses them and only redoes the statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "multistate.json"
DATA = Path(os.environ.get("OTF_SHARED_DATA", ROOT.parent / "shared" / "data")) / "fitsnap-WBe"
FILES = {"300K": "DFT_MD_300K.extxyz", "1000K": "DFT_MD_1000K.extxyz"}
HEADS = ("gp", "ensemble")
#: schemes that use no head (computed once per seed)
PLAIN_SCHEMES = ("global", "element", "scaled_frame_force", "state_T", "state")
#: schemes computed for each head
HEAD_SCHEMES = ("sigma", "scaled_sigma", "scaled_frame_sigma")
#: oracle diagnostics (need the sampling errors themselves; not cutoffs anyone could use)
ORACLE_SCHEMES = ("oracle_state_insample", "oracle_frame_error")
#: families fitted to each group (``error_cutoffs(family=...)``)
FAMILIES = ("maxwell", "best")


def _frames_by_state() -> dict[str, list]:
    import ase.io

    states: dict[str, list] = {}
    for temperature, name in FILES.items():
        for atoms in ase.io.read(DATA / name, ":"):
            states.setdefault(f"{temperature}/{atoms.get_chemical_formula()}", []).append(atoms)
    return dict(sorted(states.items()))


def _split(states: dict[str, list], seed: int, k_train: int, k_val: int, k_sampling: int):
    rng = np.random.default_rng(seed)
    out = {"train": [], "val": [], "sampling": []}
    labels = {"train": [], "val": [], "sampling": []}
    for state, frames in states.items():
        order = rng.permutation(len(frames))
        parts = {"train": order[:k_train], "val": order[k_train:k_train + k_val],
                 "sampling": order[k_train + k_val:k_train + k_val + k_sampling]}
        for part, idx in parts.items():
            out[part] += [frames[i] for i in idx]
            labels[part] += [state] * len(idx)
    return out, labels


def _per_atom(frames, predictions, frame_states) -> dict[str, np.ndarray]:
    errors = np.concatenate([np.linalg.norm(p.forces - a.get_forces(), axis=1)
                             for a, p in zip(frames, predictions)])
    return {
        "errors": errors,
        "force_norm": np.concatenate([np.linalg.norm(p.forces, axis=1) for p in predictions]),
        "symbols": np.concatenate([a.get_chemical_symbols() for a in frames]).astype(str),
        "states": np.concatenate([[s] * len(a) for a, s in zip(frames, frame_states)]).astype(str),
        "frame": np.concatenate([[i] * len(a) for i, a in enumerate(frames)]),
    }


def _run_seed(args, states, seed: int, workdir: Path | None) -> dict[str, np.ndarray]:
    """Train, fit heads, and return per-atom arrays (``val_*`` and ``samp_*``); cached in workdir."""
    cache = workdir / f"seed{seed}.npz" if workdir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            return {k: data[k] for k in data.files}
    import torch

    from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig
    from otf_statcut.uq import make_head

    torch.set_num_threads(args.threads)
    split, labels = _split(states, seed, args.train, args.val, args.sampling)
    train, val, sampling = split["train"], split["val"], split["sampling"]
    timings = {}
    start = time.perf_counter()
    model = ModelConfig(species=("Be", "W"), num_features=args.features, num_layers=2, l_max=1, r_max=4.5,
                        seed=seed)
    train_config = TrainConfig(max_epochs=args.epochs, learning_rate=args.lr, batch_size=4, patience=15,
                               seed=seed)
    potential = NequIPPotential.build(model, train).fit(train, val, train_config)
    timings["potential"] = time.perf_counter() - start
    preds = {part: potential.predict(split[part], stress=False, features=True) for part in split}
    out = {}
    for part, key in (("val", "val"), ("sampling", "samp")):
        for name, values in _per_atom(split[part], preds[part], labels[part]).items():
            out[f"{key}_{name}"] = values
    settings = {"gp": {"seed": seed},
                "ensemble": {"n_members": args.members,
                             "train_config": TrainConfig(max_epochs=args.epochs, learning_rate=args.lr,
                                                         batch_size=4,
                                                         patience=15, seed=seed)}}
    for head_name in HEADS:
        start = time.perf_counter()
        head = make_head(head_name, **settings[head_name]).fit(
            potential, train, val, train_predictions=preds["train"], val_predictions=preds["val"])
        timings[head_name] = time.perf_counter() - start
        out[f"val_sigma_{head_name}"] = np.concatenate(head.predict(val, preds["val"]))
        out[f"samp_sigma_{head_name}"] = np.concatenate(head.predict(sampling, preds["sampling"]))
    out["timings"] = np.array([timings["potential"], timings["gp"], timings["ensemble"]])
    out["epochs"] = np.array([len(potential.history.epochs)])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out


def _covariates(d: dict, prefix: str, head: str | None) -> dict[str, np.ndarray]:
    from otf_statcut.stats.states import frame_rms

    sym, frame = d[f"{prefix}_symbols"], d[f"{prefix}_frame"]
    cov = {"scaled_frame_force": frame_rms(d[f"{prefix}_force_norm"], frame, sym)}
    if head is not None:
        sigma = d[f"{prefix}_sigma_{head}"]
        cov |= {"sigma": sigma, "scaled_sigma": sigma, "scaled_frame_sigma": frame_rms(sigma, frame, sym)}
    return cov


def _temperature(states: np.ndarray) -> np.ndarray:
    return np.array([s.split("/")[0] for s in states])


def _scheme(d: dict, name: str, head: str | None, family: str):
    from otf_statcut.stats.states import error_cutoffs, frame_rms

    if name == "oracle_state_insample":  # the sampling set's own per-(state, element) fits
        return error_cutoffs(d["samp_errors"], d["samp_symbols"], d["samp_symbols"], None, "state",
                             val_states=d["samp_states"], sampling_states=d["samp_states"], family=family)
    plain = name if name in ("global", "element", "state") else "scaled"
    kind = {"sigma": "sigma", "state_T": "state"}.get(name, plain)
    kwargs = {}
    if name == "oracle_frame_error":  # each frame's true RMS error per element as the covariate
        kwargs = {"val_scale": frame_rms(d["val_errors"], d["val_frame"], d["val_symbols"]),
                  "sampling_scale": frame_rms(d["samp_errors"], d["samp_frame"], d["samp_symbols"])}
    elif kind in ("sigma", "scaled"):
        val_cov, samp_cov = _covariates(d, "val", head), _covariates(d, "samp", head)
        kwargs = {"val_scale": val_cov[name], "sampling_scale": samp_cov[name]}
    if kind == "state":
        relabel = _temperature if name == "state_T" else (lambda s: s)
        kwargs = {"val_states": relabel(d["val_states"]), "sampling_states": relabel(d["samp_states"])}
    return error_cutoffs(d["val_errors"], d["val_symbols"], d["samp_symbols"], None, kind, family=family,
                         **kwargs)


def _sigma_minimum(d: dict, head: str) -> np.ndarray:
    """Per sampling atom, whether the head's minimum σ cutoff (global best fit, N = all) flags it."""
    from otf_statcut.stats import fit_best

    n = d["samp_errors"].size
    return d[f"samp_sigma_{head}"] > fit_best(d[f"val_sigma_{head}"]).cutoff(n)


def _ks_evidence(d: dict) -> dict:
    from otf_statcut.stats import fit_distribution

    out = {"val_element": {}, "val_state_element": {}, "sampling_state_element": {}, "sampling_element": {}}
    for prefix, key_el, key_st in (("val", "val_element", "val_state_element"),
                                   ("samp", "sampling_element", "sampling_state_element")):
        e, sym, st = d[f"{prefix}_errors"], d[f"{prefix}_symbols"], d[f"{prefix}_states"]
        for symbol in np.unique(sym):
            fit = fit_distribution(e[sym == symbol], "maxwell")
            out[key_el][str(symbol)] = {"p": fit.ks_pvalue, "scale": fit.params[0], "n": fit.n}
            for state in np.unique(st):
                mask = (sym == symbol) & (st == state)
                fit = fit_distribution(e[mask], "maxwell")
                out[key_st][f"{state}|{symbol}"] = {"p": fit.ks_pvalue, "scale": fit.params[0], "n": fit.n}
    fit = fit_distribution(d["val_errors"], "maxwell")
    out["val_global"] = {"p": fit.ks_pvalue, "scale": fit.params[0], "n": fit.n}
    return out


def _count(d: dict, cut, temps: np.ndarray, caught: dict) -> dict:
    e = d["samp_errors"]
    mask = cut.above(e)
    return {
        "above": int(mask.sum()),
        "expected": cut.expected,
        "groups": len(cut.counts),
        "above_by_temperature": cut.count_above_by(e, temps),
        "above_by_state": cut.count_above_by(e, d["samp_states"]),
        "above_by_element": cut.count_above_by(e, d["samp_symbols"]),
        "caught_by_sigma_minimum": {h: int((mask & caught[h]).sum()) for h in HEADS},
        "exponents": cut.exponents,
        "fits": {g: {"name": f.name, "params": list(f.params), "ks_p": f.ks_pvalue, "n": f.n}
                 for g, f in cut.fits.items()},
    }


def _analyse(d: dict) -> dict:
    e = d["samp_errors"]
    temps = _temperature(d["samp_states"])
    result = {"n_sampling_atoms": int(e.size), "n_val_atoms": int(d["val_errors"].size), "schemes": {},
              "val_mae_by_state": {}, "ks": _ks_evidence(d),
              "timings_s": dict(zip(("potential", "gp", "ensemble"), map(float, d["timings"]))),
              "epochs": int(d["epochs"][0])}
    for state in np.unique(d["val_states"]):
        mask = d["val_states"] == state
        result["val_mae_by_state"][str(state)] = float(d["val_errors"][mask].mean())
    result["val_mae"] = float(d["val_errors"].mean())
    caught = {head: _sigma_minimum(d, head) for head in HEADS}
    result["sigma_minimum_flags"] = {head: int(caught[head].sum()) for head in HEADS}
    result["head_nll_z_scale"] = {
        head: float(np.sqrt(np.mean((d["val_errors"] / d[f"val_sigma_{head}"]) ** 2) / 3)) for head in HEADS}
    jobs = ([(name, None) for name in PLAIN_SCHEMES]
            + [(name, head) for head in HEADS for name in HEAD_SCHEMES]
            + [(name, None) for name in ORACLE_SCHEMES])
    for family in FAMILIES:
        for name, head in jobs:
            key = name if head is None else f"{name}[{head}]"
            key += "" if family == "maxwell" else f" /{family}"
            result["schemes"][key] = _count(d, _scheme(d, name, head, family), temps, caught)
    return result


def _mean_sd(values) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "values": a.tolist()}


def _summary(runs: list[dict]) -> dict:
    schemes = runs[0]["schemes"]
    out = {}
    for key, first in schemes.items():
        rows = [r["schemes"][key] for r in runs]
        out[key] = {
            "above": _mean_sd([r["above"] for r in rows]),
            "expected": _mean_sd([r["expected"] for r in rows]),
            "above_by_temperature": {t: _mean_sd([r["above_by_temperature"][t] for r in rows])
                                     for t in first["above_by_temperature"]},
            "above_by_state": {s: _mean_sd([r["above_by_state"][s] for r in rows])
                               for s in first["above_by_state"]},
            "above_by_element": {s: _mean_sd([r["above_by_element"][s] for r in rows])
                                 for s in first["above_by_element"]},
            "caught_by_sigma_minimum": {h: _mean_sd([r["caught_by_sigma_minimum"][h] for r in rows])
                                        for h in HEADS},
            "exponents": {g: _mean_sd([r["exponents"][g] for r in rows]) for g in first["exponents"]},
        }
    return out


def _fmt(m: dict) -> str:
    return f"{m['mean']:.1f} ± {m['sd']:.1f}"


def _table(summary: dict, runs: list[dict]) -> str:
    states = list(next(iter(summary.values()))["above_by_state"])
    head = (["scheme", "expected", "above", "300K", "1000K", "Be", "W"] + states
            + [f"σ-min catches ({h})" for h in HEADS])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, s in summary.items():
        cells = [key, f"{s['expected']['mean']:.0f}", _fmt(s["above"]),
                 _fmt(s["above_by_temperature"]["300K"]), _fmt(s["above_by_temperature"]["1000K"]),
                 _fmt(s["above_by_element"]["Be"]), _fmt(s["above_by_element"]["W"])]
        cells += [_fmt(s["above_by_state"][st]) for st in states]
        cells += [_fmt(s["caught_by_sigma_minimum"][h]) for h in HEADS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ks_table(runs: list[dict]) -> str:
    keys = list(runs[0]["ks"]["sampling_state_element"])
    lines = ["| state, element | val Maxwell p (median) | sampling Maxwell p (median) "
             "| sampling scale (eV/Å) | val MAE state |",
             "|---|---|---|---|---|"]
    for k in keys:
        vp = np.median([r["ks"]["val_state_element"][k]["p"] for r in runs])
        sp = np.median([r["ks"]["sampling_state_element"][k]["p"] for r in runs])
        sc = np.mean([r["ks"]["sampling_state_element"][k]["scale"] for r in runs])
        st = k.split("|")[0]
        mae = np.mean([r["val_mae_by_state"][st] for r in runs])
        lines.append(f"| {k} | {vp:.3g} | {sp:.3g} | {sc:.3f} | {mae:.3f} |")
    for what in ("val_global",):
        lines.append(f"| all (val, global) | {np.median([r['ks'][what]['p'] for r in runs]):.3g} | | | |")
    for el in runs[0]["ks"]["val_element"]:
        vp = np.median([r["ks"]["val_element"][el]["p"] for r in runs])
        sp = np.median([r["ks"]["sampling_element"][el]["p"] for r in runs])
        lines.append(f"| all states, {el} | {vp:.3g} | {sp:.3g} | | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=8, help="training frames per state (6 states)")
    parser.add_argument("--val", type=int, default=3, help="validation frames per state")
    parser.add_argument("--sampling", type=int, default=30, help="sampling frames per state")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    states = _frames_by_state()
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        data = _run_seed(args, states, seed, args.workdir)
        run = _analyse(data)
        run["seed"] = seed
        runs.append(run)
        print(f"seed {seed}: val MAE {run['val_mae']:.3f} eV/Å, {run['epochs']} epochs, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    summary = _summary(runs)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "data": {"source": "FitSNAP W-Be (Wood et al., PRB 99, 184305 (2019)), DFT_MD_300K + DFT_MD_1000K",
                 "states": {s: len(f) for s, f in states.items()}},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nSampling atoms above the error cutoff, mean ± sd over seeds {args.seeds} "
          f"(~{runs[0]['n_sampling_atoms']} sampling atoms; 'expected' = number of groups):\n")
    print(_table(summary, runs))
    print("\nMaxwell KS evidence (median over seeds):\n")
    print(_ks_table(runs))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
