"""On-the-fly loop: the per-step decision, the OTF ASE calculator, retraining, the run driver.

Only :mod:`otf_statcut.engine.decision` is imported here: it is pure NumPy and shared with the
benchmark. The calculator and the loop (which need torch, NequIP and a labeller) are imported
from their own modules.
"""

from .decision import Action, Decision, decide

__all__ = ["Action", "Decision", "decide"]
