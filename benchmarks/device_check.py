"""Does the NequIP potential run, train and agree on a CUDA GPU, and how fast is it there?

A short end-to-end check of :mod:`otf_statcut.mlip`'s device option (under 2 minutes on an H100
including imports):

1. prints torch / CUDA / GPU versions;
2. labels rattled, strained bcc Li cells with a cheap real ASE calculator (a Morse potential),
   builds a small NequIP potential (float32 weights) on ``cuda`` and trains it a few epochs;
3. saves it, loads the same weights on the CPU, and compares CPU and CUDA predictions (energy,
   forces, stress, latent features) on the validation cells and on 54/250/1024-atom cells, and
   the CUDA calculator against CUDA ``predict``;
4. times ``predict`` on one frame (graph build on the CPU included) for each cell size, on CPU
   and on CUDA, and the graph build (neighbour list) alone;
5. writes every number to ``--out`` (JSON) and exits 1 if an agreement check fails.

Without CUDA (a CPU-only torch build, or no visible GPU) it says so, trains and times on the CPU
only, records ``"status": "cpu-only"`` and exits 0.

Tolerances (float32 weights, TF32 off as NequIP sets it): CUDA and CPU differ only in summation
order, ~1e-7 relative; checked: max |ΔF| <= 1e-4 eV/Å, max |ΔE|/N <= 1e-5 eV/atom, max |Δσ| <=
1e-5 eV/Å³, max |Δfeature| <= 1e-4 (features are O(1)).

Usage::

    python benchmarks/device_check.py [--out benchmarks/results/device_check.json]
                                      [--epochs 5] [--sizes 54 250 1024] [--threads N]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the wall time reported includes the imports

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without an (editable) install too
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "device_check.json"
TOLERANCES = {"forces": 1e-4, "energy_per_atom": 1e-5, "stress": 1e-5, "features": 1e-4}
LATTICE = 3.44  # Å, bcc Li


def li_cell(n_atoms: int, rng: np.random.Generator, rattle: float = 0.08, strain: float = 0.02):
    """A rattled, strained bcc Li cell of ``n_atoms = 2 k³`` atoms (unlabelled)."""
    from ase.build import bulk

    k = round((n_atoms / 2) ** (1 / 3))
    atoms = bulk("Li", "bcc", a=LATTICE, cubic=True).repeat(k)
    atoms.set_cell(atoms.cell @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def labelled(atoms):
    """``atoms`` labelled by a Morse potential (energy, forces, stress)."""
    from ase.calculators.morse import MorsePotential

    from otf_statcut.data import labelled_frame

    atoms = atoms.copy()
    atoms.calc = MorsePotential(epsilon=0.1, r0=3.0, rho0=4.0, rcut1=4.0, rcut2=5.0)
    return labelled_frame(atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())


def versions() -> dict:
    import ase
    import e3nn
    import nequip

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nequip": getattr(nequip, "__version__", "?"),
        "e3nn": e3nn.__version__,
        "ase": ase.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": None,
        "gpu_memory_gib": None,
        "cpu_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def compare(predictions_a, predictions_b, frames) -> dict:
    """Largest differences between two prediction lists of the same frames."""
    de = max(abs(a.energy - b.energy) for a, b in zip(predictions_a, predictions_b))
    de_atom = max(abs(a.energy - b.energy) / len(f) for a, b, f in zip(predictions_a, predictions_b, frames))
    df = max(float(np.abs(a.forces - b.forces).max()) for a, b in zip(predictions_a, predictions_b))
    ds = max(float(np.abs(a.stress - b.stress).max()) for a, b in zip(predictions_a, predictions_b))
    dh = max(float(np.abs(a.features - b.features).max()) for a, b in zip(predictions_a, predictions_b))
    f_scale = max(float(np.abs(a.forces).max()) for a in predictions_a)
    return {"max_abs_dE_eV": de, "max_abs_dE_per_atom_eV": de_atom, "max_abs_dF_eV_per_A": df,
            "max_abs_dstress_eV_per_A3": ds, "max_abs_dfeature": dh, "max_abs_F_eV_per_A": f_scale}


def within_tolerance(diff: dict) -> bool:
    return (diff["max_abs_dF_eV_per_A"] <= TOLERANCES["forces"]
            and diff["max_abs_dE_per_atom_eV"] <= TOLERANCES["energy_per_atom"]
            and diff["max_abs_dstress_eV_per_A3"] <= TOLERANCES["stress"]
            and diff["max_abs_dfeature"] <= TOLERANCES["features"])


def time_predict(potential, atoms, budget_s: float = 1.5) -> dict:
    """Milliseconds per ``predict`` of one frame (2 warm-up calls, then 3..20 timed calls)."""
    for _ in range(2):
        potential.predict(atoms)
    start = time.perf_counter()
    potential.predict(atoms)
    first = time.perf_counter() - start
    repeats = int(min(20, max(3, budget_s / max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        potential.predict(atoms)  # returns NumPy arrays: the device has finished
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "repeats": repeats}


def time_graph(potential, atoms, repeats: int = 5) -> float:
    """Median milliseconds to build one frame's graph (neighbour list) on the CPU."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        potential.converter.graph(atoms)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[54, 250, 1024],
                        help="cell sizes (atoms, 2·k³) to time (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    for n in args.sizes:
        if n < 2 or 2 * round((n / 2) ** (1 / 3)) ** 3 != n:
            parser.error(f"--sizes: {n} is not 2·k³ atoms (a cubic bcc supercell); "
                         "try 16, 54, 128, 250, 1024")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    info = versions()
    print(f"torch {info['torch']} (CUDA build: {info['torch_cuda']}), nequip {info['nequip']}, "
          f"e3nn {info['e3nn']}, ase {info['ase']}, python {info['python']}, "
          f"{info['cpu_threads']} CPU threads")
    if info["torch_cuda"] is None:
        print(f"CUDA: absent -- torch {info['torch']} is a CPU-only build (torch.version.cuda is None); "
              "install a CUDA build of torch to run the GPU checks. Running the CPU checks only.")
    elif not info["cuda_available"]:
        print(f"CUDA: absent -- torch is built for CUDA {info['torch_cuda']} but torch.cuda.is_available() "
              "is False (no GPU visible or driver too old). Running the CPU checks only.")
    else:
        print(f"CUDA: {info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {info['torch_cuda']}, "
              f"cuDNN {info['cudnn']}")
    cuda = bool(info["cuda_available"])
    device = "cuda" if cuda else "cpu"

    from otf_statcut.mlip import ModelConfig, NequIPPotential, TrainConfig

    # --- data and training -----------------------------------------------------------------
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    train = [labelled(li_cell(54, rng)) for _ in range(12)]
    val = [labelled(li_cell(54, rng)) for _ in range(4)]
    label_s = time.perf_counter() - start
    config = ModelConfig(species=("Li",), num_features=32, num_layers=2, l_max=1, model_dtype="float32",
                         seed=0)
    potential = NequIPPotential.build(config, train, device=device)
    train_config = TrainConfig(max_epochs=args.epochs, batch_size=4, learning_rate=0.01, patience=50)
    potential.fit(train, val, train_config)
    history = potential.history
    training = {
        "device": str(potential.device),
        "frames": {"train": len(train), "val": len(val), "atoms_per_frame": 54},
        "labelling_seconds": label_s,
        "epochs": len(history.epochs),
        "seconds": history.seconds,
        "seconds_per_epoch": [e.seconds for e in history.epochs],
        "initial_val_loss": history.initial_val_loss,
        "best_val_loss": history.best_val_loss,
        "val_forces_rmse_eV_per_A": [e.val_forces_rmse for e in history.epochs],
        "loss_lowered": history.best_val_loss < history.initial_val_loss,
    }
    print(f"fit on {potential.device}: {training['epochs']} epochs in {history.seconds:.2f} s, val loss "
          f"{history.initial_val_loss:.4g} -> {history.best_val_loss:.4g}")

    # --- same weights on the CPU (through save/load), agreement -----------------------------
    cells = {n: li_cell(n, np.random.default_rng(n), rattle=0.05) for n in args.sizes}
    agreement = None
    with tempfile.TemporaryDirectory() as tmp:
        cpu = NequIPPotential.load(potential.save(Path(tmp) / "model"), device="cpu")
    frames = list(val) + list(cells.values())
    if cuda:
        on_cuda, on_cpu = potential.predict(frames, batch_size=1), cpu.predict(frames, batch_size=1)
        agreement = compare(on_cuda, on_cpu, frames)
        atoms = val[0].copy()
        atoms.calc = potential.calculator()
        calc_vs_predict = float(np.abs(atoms.get_forces() - on_cuda[0].forces).max())
        agreement["calculator_vs_predict_max_abs_dF_eV_per_A"] = calc_vs_predict
        agreement["tolerances"] = dict(TOLERANCES)
        agreement["passed"] = within_tolerance(agreement) and calc_vs_predict <= TOLERANCES["forces"]
        agreement["frames_atoms"] = [len(f) for f in frames]
        a = agreement
        print(f"cuda vs cpu, same weights, {len(frames)} frames ({sorted({len(f) for f in frames})} atoms): "
              f"max|dE| {a['max_abs_dE_eV']:.3g} eV ({a['max_abs_dE_per_atom_eV']:.3g} eV/atom), "
              f"max|dF| {a['max_abs_dF_eV_per_A']:.3g} eV/A (|F| up to {a['max_abs_F_eV_per_A']:.3g}), "
              f"max|dstress| {a['max_abs_dstress_eV_per_A3']:.3g} eV/A^3, "
              f"max|dfeature| {a['max_abs_dfeature']:.3g}; calculator vs predict {calc_vs_predict:.3g} eV/A "
              f"-> {'PASS' if a['passed'] else 'FAIL'}")

    # --- timings ---------------------------------------------------------------------------
    timings = []
    for n, atoms in cells.items():
        row = {"n_atoms": n, "graph_build_cpu_ms": time_graph(cpu, atoms), "cpu": time_predict(cpu, atoms)}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            row["cuda"] = time_predict(potential, atoms)
            row["cuda_peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
            row["speedup_cuda_over_cpu"] = row["cpu"]["median_ms"] / row["cuda"]["median_ms"]
        timings.append(row)
        line = f"predict, {n:5d} atoms: cpu {row['cpu']['median_ms']:8.2f} ms"
        if cuda:
            line += f", cuda {row['cuda']['median_ms']:7.2f} ms (x{row['speedup_cuda_over_cpu']:.1f})"
        print(line + f"; graph build (cpu) {row['graph_build_cpu_ms']:.2f} ms")

    passed = training["loss_lowered"] and (agreement is None or agreement["passed"])
    if not passed:
        status = "failed"
    else:
        status = "passed" if cuda else "cpu-only"
    result = {
        "benchmark": "device_check",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": status,
        "versions": info,
        "model": config.to_dict(),
        "training": training,
        "cuda_vs_cpu": agreement,
        "predict_one_frame": timings,
        "wall_seconds": time.perf_counter() - T0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"status: {status}; wrote {args.out} ({result['wall_seconds']:.1f} s)")
    return 0 if status in ("passed", "cpu-only") else 1


if __name__ == "__main__":
    sys.exit(main())
