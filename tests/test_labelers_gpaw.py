"""GPAW labels under ``mpiexec -n 2``: rank 0 drives, rank 1 serves; SCF failure injection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.mpi]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from ase.build import bulk
    from otf_statcut.labelers import LabelingError, SCFConvergenceError
    from otf_statcut.labelers.gpaw import GPAWLabeler, GPAWSettings
    from otf_statcut.labelers.mpi import MPIDrivenLabeler

    fast = GPAWSettings(mode="pw", ecut=200.0, kpts=(2, 2, 2), width=0.05)
    good = MPIDrivenLabeler(GPAWLabeler(fast, retries=0))
    # Too few SCF iterations: a real non-convergence, raised by GPAW on every rank.
    bad = MPIDrivenLabeler(GPAWLabeler(GPAWSettings(kpts=(2, 2, 2), maxiter=2), retries=1))
    atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    if good.rank != 0:
        good.serve()
        bad.serve()
        sys.exit(0)
    out = {"size": good.size, "settings": good.settings()}
    with good:
        frame = good.label(atoms)
        out["energy"] = frame.get_potential_energy()
        out["forces"] = frame.get_forces().tolist()
        out["stress"] = frame.get_stress().tolist()
        moved = atoms.copy()
        moved.positions[0] += 0.05
        out["energy2"] = good.label(moved).get_potential_energy()
    with bad:
        try:
            bad.label(atoms)
            out["scf"] = "converged?!"
        except SCFConvergenceError as exc:
            out["scf"] = type(exc).__name__
            out["attempts"] = len(exc.attempts)
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def test_gpaw_labels_on_two_ranks(tmp_path: Path):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists():
        mpiexec = shutil.which("mpiexec")
    assert mpiexec, "mpiexec not found beside the Python executable nor on PATH"
    script = tmp_path / "gpaw_label.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GPAW_MPI_BACKEND", None)  # the labeller must set it itself
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script), str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["size"] == 2 and out["settings"]["ranks"] == 2
    assert out["settings"]["mode"] == "pw" and out["settings"]["ecut"] == 200.0
    forces = np.array(out["forces"])
    assert forces.shape == (16, 3)
    assert abs(forces.sum(axis=0)).max() < 0.05  # translation invariance (PW grid noise)
    assert 0.01 < abs(forces).max() < 2.0
    assert -2.2 < out["energy"] / 16 < -1.5  # PBE Li, GPAW reference energies
    assert len(out["stress"]) == 6
    assert out["energy2"] != out["energy"]
    assert out["scf"] == "SCFConvergenceError" and out["attempts"] == 2
