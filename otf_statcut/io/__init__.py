"""HDF5 files of the project: the run log (:mod:`.runlog`) and the benchmark results
(:mod:`.benchmark_results`). Only these modules write HDF5.

Importing this package imports neither h5py nor the submodules; the names below are loaded on
first use (``from otf_statcut.io import RunLog`` works as usual).
"""

from __future__ import annotations

_LAZY = {
    "RunLog": "runlog",
    "Checkpoint": "runlog",
    "read_dataset": "runlog",
    "read_trajectory": "runlog",
    "read_table": "runlog",
    "export_extxyz": "runlog",
    "configuration_key": "runlog",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    # An explicit import of the one fixed module (no import by computed name), loaded late.
    if _LAZY.get(name) == "runlog":
        from . import runlog

        return getattr(runlog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
