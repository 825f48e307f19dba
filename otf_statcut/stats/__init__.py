"""The statistical-cutoff method: distribution fits, cutoffs, classification metrics, calibration.

NumPy and SciPy only (no torch, no ASE): arrays in, values out. Units: force errors and
uncertainties σ in eV/Å.

* :mod:`.magnitudes`    per-atom force-error magnitudes
* :mod:`.distributions` Maxwell / Gamma / generalized-Gamma fits with ``loc = 0``, KS evidence,
  credibility checks and the exponential-tail fallback
* :mod:`.cutoffs`       minimum cutoff (CDF = 1 - 1/n), maximum cutoff (error bound mapped onto σ)
* :mod:`.metrics`       confusion counts, precision / recall / F1 and their sweeps over cutoff grids
* :mod:`.calibration`   calibration curves, miscalibration area, Maxwell negative log-likelihood
"""

from .calibration import (
    CalibrationCurve,
    calibration_curve,
    gaussian_calibration,
    gaussian_pit,
    maxwell_calibration,
    maxwell_nll,
    maxwell_pit,
    maxwell_scale_factor,
    miscalibration_area,
)
from .cutoffs import (
    DEFAULT_MAX_ERROR,
    CutoffSet,
    ElementCutoff,
    error_to_uncertainty,
    group_by_symbol,
    maximum_cutoff,
    per_element_cutoffs,
    per_element_statistical_cutoffs,
    statistical_cutoffs,
)
from .distributions import (
    DEFAULT_CANDIDATES,
    DISTRIBUTIONS,
    EXTRAPOLATION_FACTOR,
    FALLBACK,
    KS_SAMPLE_SIZE,
    KS_THRESHOLD,
    MIN_VALUES,
    PARAM_NAMES,
    PASS_LEVEL,
    BestFit,
    DistributionFit,
    Rejection,
    TailDistribution,
    check_credibility,
    extrapolation_limit,
    fit_best,
    fit_distribution,
    fit_tail,
)
from .magnitudes import force_error_magnitudes
from .metrics import (
    Confusion,
    ConfusionGrid,
    confusion,
    cutoff_grid,
    f1_score,
    precision,
    recall,
    sweep,
)

__all__ = [
    "BestFit",
    "CalibrationCurve",
    "Confusion",
    "ConfusionGrid",
    "CutoffSet",
    "DEFAULT_CANDIDATES",
    "DEFAULT_MAX_ERROR",
    "DISTRIBUTIONS",
    "DistributionFit",
    "ElementCutoff",
    "EXTRAPOLATION_FACTOR",
    "FALLBACK",
    "KS_SAMPLE_SIZE",
    "KS_THRESHOLD",
    "MIN_VALUES",
    "PARAM_NAMES",
    "PASS_LEVEL",
    "Rejection",
    "TailDistribution",
    "calibration_curve",
    "check_credibility",
    "confusion",
    "cutoff_grid",
    "error_to_uncertainty",
    "extrapolation_limit",
    "f1_score",
    "fit_best",
    "fit_distribution",
    "fit_tail",
    "force_error_magnitudes",
    "gaussian_calibration",
    "gaussian_pit",
    "group_by_symbol",
    "maximum_cutoff",
    "maxwell_calibration",
    "maxwell_nll",
    "maxwell_pit",
    "maxwell_scale_factor",
    "miscalibration_area",
    "per_element_cutoffs",
    "per_element_statistical_cutoffs",
    "precision",
    "recall",
    "statistical_cutoffs",
    "sweep",
]
