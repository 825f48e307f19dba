"""Fixtures shared by the whole suite."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The shared, read-only data sets (CI has ../shared beside the clone). Override with OTF_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("OTF_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Keep the 2-core machine responsive: tests set torch's thread count themselves if they need more.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips (with the reason) when the folder is absent."""
    if not (SHARED_DATA / "mlearn-Li" / "Li_training.extxyz").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set OTF_SHARED_DATA or put ../shared beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mlearn_li(shared_data: Path) -> dict:
    """The mlearn Li frames: ``{"train": [...], "test": [...]}`` as ASE Atoms with energies and forces."""
    import ase.io

    folder = shared_data / "mlearn-Li"
    return {
        "train": ase.io.read(folder / "Li_training.extxyz", ":"),
        "test": ase.io.read(folder / "Li_test.extxyz", ":"),
    }


#: A small, fast on-the-fly run (32-atom Cu, ASE's EMT labels, 2-member ensemble of tiny NequIP
#: models): the base input of the engine's end-to-end tests.
SMALL_CU_RUN = {
    "system": {"builder": {"element": "Cu", "lattice": "fcc", "supercell": [2, 2, 1]}},
    "md": {"ensemble": "langevin", "temperature_K": 800, "timestep_fs": 2.0, "steps": 30, "friction": 0.02,
           "seed": 3},
    "initial_data": {"rattled": 4, "rattle_stdev": 0.08, "val_fraction": 0.5},
    "mlip": {"model": {"num_features": 8, "num_layers": 1, "l_max": 1, "radial_mlp_width": 8, "r_max": 4.0},
             "train": {"max_epochs": 8, "batch_size": 2, "patience": 5}, "threads": 1},
    "head": {"name": "ensemble",
             "settings": {"n_members": 2, "train_config": {"max_epochs": 8, "batch_size": 2}}},
    "labeler": {"name": "emt"},
    "cutoffs": {"n": 20},
    "retrain": {"every": 3, "train": {"max_epochs": 4}},
    "output": {"folder": "out", "checkpoint_every": 5, "progress": False},
}


def small_cu_run(**changes) -> dict:
    """A deep copy of :data:`SMALL_CU_RUN` with dotted-key changes, e.g. ``**{"md.steps": 120}``."""
    data = copy.deepcopy(SMALL_CU_RUN)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return data



def cu_cells(n: int, seed: int, rattle: float = 0.05, repeat=(2, 1, 1)) -> list:
    """Rattled fcc Cu cells (8 atoms by default) labelled with ASE's EMT (energy, forces, stress)."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from otf_statcut.data import labelled_frame

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        atoms.calc = EMT()
        labels = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(labelled_frame(atoms, *labels))
    return frames
