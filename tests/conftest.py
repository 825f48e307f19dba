"""Fixtures shared by the whole suite."""

from __future__ import annotations

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
