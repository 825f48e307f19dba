"""``otf-statcut export-model RUN.h5 [--model N] --format package|aotinductor|lammps -o PATH``:
a model of a run in a form nequip's tools, nequip's ASE calculator or LAMMPS read.

Formats (the output suffix is the one nequip's tools require):

* ``package``: ``.nequip.zip``, a nequip package made by ``nequip-package build`` (the archival
  form: ``nequip-compile``, ``nequip-prepare-lmp-mliap``, ``ModelFromPackage`` and
  ``mlip.model: {from: ...}`` of a new run read it), or ``.ckpt``, a nequip checkpoint (its
  example frames beside it as ``<name>.example.extxyz``);
* ``aotinductor``: ``.nequip.pt2`` from ``nequip-compile --mode aotinductor --target ase``, for
  ``nequip.integrations.ase.NequIPCalculator.from_compiled_model`` (needs a C++ compiler; on the CPU);
* ``lammps``: ``.nequip.lmp.pt`` for ``pair_style mliap unified FILE 0`` (LAMMPS with ML-IAP
  built with Python support), or ``.nequip.pt2`` compiled for ``pair_style nequip`` (a LAMMPS
  with the pair_nequip plugin).

Every written model is checked against the run's model on the run's first labelled frame (see
:mod:`otf_statcut.mlip.nequip_native`). User mistakes (no run file, no such model, an output path
into a missing folder, onto a folder, or with the wrong suffix) are one line, exit status 2; a
nequip tool that fails is one line, exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError, UserError

FORMATS = ("package", "aotinductor", "lammps")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export-model`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "export-model", help="export a run's model for nequip's tools, ASE (AOTInductor) or LAMMPS",
        description="Write a trained model of a run as a nequip package (.nequip.zip) or checkpoint (.ckpt), "
                    "an AOTInductor-compiled model for nequip's ASE calculator (.nequip.pt2), or a LAMMPS "
                    "ML-IAP file (.nequip.lmp.pt; or .nequip.pt2 for pair_nequip).")
    p.add_argument("run_file", help="run.h5 written by `otf-statcut run` (or its folder)")
    p.add_argument("--model", type=int, default=None, metavar="N",
                   help="model id (the 'model' column of the run's models table; default: the last model)")
    p.add_argument("--format", choices=FORMATS, default="package", help="what to write (default: package)")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="output file: .nequip.zip or .ckpt (package), .nequip.pt2 (aotinductor), "
                        ".nequip.lmp.pt or .nequip.pt2 (lammps)")
    p.add_argument("--no-compile", action="store_true",
                   help="lammps ML-IAP only: LAMMPS runs the eager model instead of torch.compile-ing it")
    p.set_defaults(func=run)
    return p


def model_folder(run_file: Path, model: int | None) -> tuple[int, Path]:
    """``(model id, folder)`` of a run's model (the last one by default).

    Raises
    ------
    UserError
        No trained model, an unknown id, or a missing model folder (one line).
    """
    import numpy as np

    from ..io.runlog import read_table

    table = read_table(run_file, "models")
    ids = np.asarray(table.get("model", []), dtype=int)
    if ids.size == 0:
        raise DataError(f"{run_file}: the run has no trained model yet")
    if model is None:
        row = ids.size - 1
    else:
        rows = np.flatnonzero(ids == model)
        if not rows.size:
            raise UserError(f"--model {model}: out of range; {run_file} has models {ids.min()}..{ids.max()}")
        row = int(rows[-1])
    folder = run_file.parent / str(table["path"][row])
    if not (folder / "potential").is_dir():
        raise DataError(f"{folder / 'potential'}: model {int(ids[row])}'s saved potential is missing")
    return int(ids[row]), folder


def run(args) -> int:
    from ..io.runlog import RunLog
    from ..mlip import NequIPPotential
    from ..mlip.nequip_native import FORMATS as SUFFIXES
    from ..mlip.nequip_native import NequIPToolError, export_potential
    from .export import check_output_file, run_file_of

    path = run_file_of(args.run_file)
    out = check_output_file(args.output, "-o")
    suffixes = SUFFIXES[args.format]
    if not out.name.endswith(suffixes):
        raise UserError(f"-o {out}: --format {args.format} writes a file ending with {' or '.join(suffixes)}")
    model_id, folder = model_folder(path, args.model)
    potential = NequIPPotential.load(folder / "potential")
    with RunLog.open(path, "r") as runlog:
        example = runlog.read_frames([0]) if runlog.rows("dataset") else []
    try:
        written = export_potential(potential, out, args.format, example=example, compile=not args.no_compile)
    except NequIPToolError as exc:
        print(f"otf-statcut export-model: error: {exc}", file=sys.stderr)
        return 1
    species = " ".join(potential.species)
    config = potential.config
    print(f"wrote model {model_id} ({species}, r_max {config.r_max:g} Å, {config.model_dtype}) as "
          f"{args.format} to {written}")
    if args.format == "lammps" and written.name.endswith(".nequip.lmp.pt"):
        print(f"LAMMPS: pair_style mliap unified {written} 0 / pair_coeff * * <elements in LAMMPS type "
              f"order, from {species}>")
    elif args.format == "lammps":
        print(f"LAMMPS (pair_nequip plugin): pair_style nequip / pair_coeff * * {written} <elements>")
    elif args.format == "aotinductor":
        print(f"ASE: nequip.integrations.ase.NequIPCalculator.from_compiled_model({str(written)!r})")
    else:
        print(f"new run from it: mlip: {{model: {{from: {written}}}}}")
    return 0
