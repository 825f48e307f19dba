"""A short real on-the-fly run with GPAW labels under ``mpiexec -n 2`` (rank 0 drives the MD and
the MLIP, both ranks run GPAW), and a bad input under mpiexec (one error line, exit status 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.mpi]

CONFIG = {
    "system": {"builder": {"element": "Li", "lattice": "bcc", "a": 3.44, "supercell": [2, 2, 2]}},
    "md": {"ensemble": "langevin", "temperature_K": 600, "timestep_fs": 2.0, "steps": 6, "friction": 0.02,
           "seed": 0},
    "initial_data": {"rattled": 3, "rattle_stdev": 0.1, "val_fraction": 0.34},
    "mlip": {"model": {"num_features": 8, "num_layers": 1, "l_max": 1, "radial_mlp_width": 8},
             "train": {"max_epochs": 6, "batch_size": 2}},
    "head": {"name": "ensemble",
             "settings": {"n_members": 2, "train_config": {"max_epochs": 6, "batch_size": 2}}},
    "labeler": {"name": "gpaw", "settings": {"mode": "pw", "ecut": 200, "kpts": [2, 2, 2]}},
    "cutoffs": {"n": 6},
    "retrain": {"every": 2, "train": {"max_epochs": 3}},
    "output": {"folder": "out", "progress": False},
}


def mpiexec() -> str:
    path = Path(sys.executable).with_name("mpiexec")
    found = str(path) if path.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found beside the Python executable nor on PATH"
    return found


def run_cli(tmp_path, *args, timeout=400):
    env = dict(os.environ)
    env.pop("GPAW_MPI_BACKEND", None)  # the program sets it itself
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "otf_statcut.cli", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_gpaw_run_under_mpiexec(tmp_path):
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(CONFIG))
    proc = run_cli(tmp_path, "run", "input.yaml")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("MD steps: 6/6") == 1  # rank 0 alone prints
    with h5py.File(tmp_path / "out" / "run.h5", "r") as f:
        steps = f["dataset/step"][:]
        labeler = json.loads(f["dataset/labeler"][0])
        assert (steps == -1).sum() == 3
        assert labeler["name"] == "gpaw" and labeler["ranks"] == 2 and labeler["kpts"] == [2, 2, 2]
        np.testing.assert_array_equal(f["trajectory/step"][:], np.arange(7))
        forces = f["dataset/forces"][:]
        assert np.isfinite(forces).all() and 0.01 < np.abs(forces).max() < 3.0
        energies = f["dataset/energy"][:] / 16
        assert ((-2.2 < energies) & (energies < -1.5)).all()  # PBE lithium, eV/atom (GPAW references)
        assert np.isfinite(f["dataset/stress"][:]).all()
        md_rows = np.flatnonzero(steps >= 0)
        for row in md_rows:  # an MD label: the step integrated the GPAW forces
            t = int(np.flatnonzero(f["trajectory/step"][:] == steps[row])[0])
            lo = int(f["dataset/offset"][row])
            np.testing.assert_allclose(f["trajectory/forces"][t], forces[lo:lo + 16])
        assert f["status"][()] == b"finished"


def test_bad_input_under_mpiexec_is_one_line(tmp_path):
    bad = dict(CONFIG, md={**CONFIG["md"], "temprature_K": 600})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = run_cli(tmp_path, "run", "bad.yaml", timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "unknown key md.temprature_K; did you mean 'temperature_K'?" in lines[0]
