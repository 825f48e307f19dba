"""On-the-fly loop: the per-step decision, the OTF ASE calculator, retraining, the run driver.

Only :mod:`otf_statcut.engine.decision` (pure NumPy, shared with the benchmark) is imported
eagerly; the calculator, learner and run driver (torch, NequIP, a labeller) load on first use::

    from otf_statcut.engine import Learner, OTFCalculator      # Python use with any ASE dynamics
    from otf_statcut.engine import run_otf                     # a whole run from a RunConfig
"""

from __future__ import annotations

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
    # Explicit imports (no import by computed name): the modules are fixed, only loaded late.
    module = _LAZY.get(name)
    if module == "calculator":
        from . import calculator as loaded
    elif module == "learner":
        from . import learner as loaded
    elif module == "observers":
        from . import observers as loaded
    elif module == "run":
        from . import run as loaded
    elif module == "dynamics":
        from . import dynamics as loaded
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(loaded, name)
