"""On-the-fly loop: the per-step decision, the OTF ASE calculator, retraining, the run driver.

Only :mod:`otf_statcut.engine.decision` (pure NumPy, shared with the benchmark) is imported
eagerly; the calculator, learner and run driver (torch, NequIP, a labeller) load on first use::

    from otf_statcut.engine import Learner, OTFCalculator      # Python use with any ASE dynamics
    from otf_statcut.engine import run_otf                     # a whole run from a RunConfig
"""

from __future__ import annotations

import importlib

from .decision import Action, Decision, decide

_LAZY = {
    "OTFCalculator": "calculator",
    "HaltError": "calculator",
    "Learner": "learner",
    "sampling_size": "learner",
    "RunRecorder": "observers",
    "ProgressBar": "observers",
    "OTFRun": "run",
    "RunSummary": "run",
    "run_otf": "run",
    "make_dynamics": "dynamics",
    "ENSEMBLE_BUILDERS": "dynamics",
}

__all__ = ["Action", "Decision", "decide", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
