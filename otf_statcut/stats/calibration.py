"""Calibration of per-atom uncertainties: calibration curves, miscalibration area, Maxwell NLL.

Calibration curve (Tran et al., *Mach. Learn.: Sci. Technol.* 1, 025006 (2020)): each error is
normalised by its predicted σ and passed through the predicted CDF, giving its probability
integral transform (PIT) ``u_i = F(error_i / σ_i)``. For a calibrated model the PIT values are
uniform on [0, 1], so the observed fraction of ``u_i <= p`` equals the expected proportion ``p`` for
every ``p``; the curve plots observed against expected, and the **miscalibration area** is the
area between the curve and the diagonal, ``∫₀¹ |F_n(p) - p| dp`` with ``F_n`` the empirical CDF
of the PIT values, computed exactly (no grid).

Two readings of σ, both in eV/Å:

* **Gaussian components**: each force-error component (x, y, z) is N(0, σ²), PIT = Φ(r / σ).
* **Maxwell magnitudes**: the error magnitude is Maxwell with scale σ (σ is the per-component
  standard deviation, mean magnitude 2σ√(2/π)), PIT = F_Maxwell(|e| / σ).

The Maxwell negative log-likelihood is what the uncertainty heads minimise to calibrate σ; its
minimiser over a common factor ``A`` (σ → Aσ) has the closed form of :func:`maxwell_scale_factor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from ..errors import DataError
from ._validate import as_finite, as_nonnegative, as_positive

#: Default number of expected proportions on a calibration curve (0, 0.01, ..., 1).
CURVE_POINTS = 101


@dataclass(frozen=True)
class CalibrationCurve:
    """Observed against expected proportions, and the miscalibration area.

    Attributes
    ----------
    expected : ndarray (m,)
        Expected proportions ``p`` in [0, 1].
    observed : ndarray (m,)
        Fraction of PIT values ``<= p``.
    area : float
        Miscalibration area (exact, from all PIT values), in [0, 0.5].
    """

    expected: np.ndarray
    observed: np.ndarray
    area: float


def _pit_check(pit) -> np.ndarray:
    u = as_finite(pit, "PIT values")
    if (u < 0).any() or (u > 1).any():
        raise DataError("PIT values: expected probabilities in [0, 1]")
    return u


def calibration_curve(pit, num: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Expected proportions ``linspace(0, 1, num)`` and the observed fraction of ``pit <= p``."""
    u = np.sort(_pit_check(pit))
    expected = np.linspace(0.0, 1.0, int(num))
    observed = np.searchsorted(u, expected, side="right") / u.size
    return expected, observed


def miscalibration_area(pit) -> float:
    """Exact area between the empirical CDF of the PIT values and the diagonal, ``∫|F_n(p) - p| dp``.

    0 for perfect calibration (the PIT values uniform); at most 0.5.
    """
    u = np.sort(_pit_check(pit))
    n = u.size
    edges = np.concatenate(([0.0], u, [1.0]))
    a, b = edges[:-1], edges[1:]  # on [a_k, b_k) the empirical CDF is k / n
    c = np.arange(n + 1) / n
    below = ((b - c) ** 2 - (a - c) ** 2) / 2  # c <= a: the diagonal is above the constant
    above = ((c - a) ** 2 - (c - b) ** 2) / 2  # c >= b: the constant is above the diagonal
    inside = ((c - a) ** 2 + (b - c) ** 2) / 2  # a < c < b: they cross
    area = np.where(c <= a, below, np.where(c >= b, above, inside))
    return float(area.sum())


def _errors_and_sigmas(errors, sigmas, *, nonnegative: bool) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(errors, dtype=np.float64)
    s = np.asarray(sigmas, dtype=np.float64)
    if e.ndim == 2 and s.ndim == 1 and e.shape[0] == s.shape[0]:
        s = np.repeat(s, e.shape[1])  # one σ per atom for all its components
    e = as_nonnegative(e, "errors") if nonnegative else as_finite(e, "residuals")
    s = as_positive(s, "sigmas")
    if e.size != s.size:
        raise DataError(f"{e.size} errors but {s.size} sigmas; expected one σ per error (or per atom)")
    return e, s


def gaussian_pit(residuals, sigmas) -> np.ndarray:
    """PIT of signed force-error components under N(0, σ²): Φ(r / σ).

    ``residuals`` may be (n_atoms, 3) with ``sigmas`` (n_atoms,): each atom's σ serves its three
    components.
    """
    r, s = _errors_and_sigmas(residuals, sigmas, nonnegative=False)
    return special.ndtr(r / s)


def maxwell_pit(errors, sigmas) -> np.ndarray:
    """PIT of force-error magnitudes under Maxwell(scale σ): F_Maxwell(e / σ)."""
    e, s = _errors_and_sigmas(errors, sigmas, nonnegative=True)
    return stats.maxwell.cdf(e / s)


def _curve(pit: np.ndarray, num: int) -> CalibrationCurve:
    expected, observed = calibration_curve(pit, num)
    return CalibrationCurve(expected=expected, observed=observed, area=miscalibration_area(pit))


def gaussian_calibration(residuals, sigmas, num: int = CURVE_POINTS) -> CalibrationCurve:
    """Calibration curve and miscalibration area of force-error components, σ as Gaussian std."""
    return _curve(gaussian_pit(residuals, sigmas), num)


def maxwell_calibration(errors, sigmas, num: int = CURVE_POINTS) -> CalibrationCurve:
    """Calibration curve and miscalibration area of force-error magnitudes, σ as Maxwell scale."""
    return _curve(maxwell_pit(errors, sigmas), num)


def maxwell_nll(errors, sigmas, *, include_constant: bool = True) -> float:
    """Mean negative log-likelihood per atom of error magnitudes under Maxwell(scale σ).

    .. math:: -\\log f(e; σ) = -\\tfrac12\\log\\tfrac{2}{π} - 2\\log e + 3\\log σ + \\frac{e^2}{2σ^2}

    Parameters
    ----------
    errors : array_like
        Force-error magnitudes, eV/Å (>= 0).
    sigmas : array_like
        Per-atom Maxwell scales σ, eV/Å (> 0), same length.
    include_constant : bool, default True
        Include the σ-independent terms. An exact zero error has density 0, so the full NLL is
        ``inf``; with ``include_constant=False`` only ``3 log σ + e²/(2σ²)`` is averaged, which has the
        same minimiser in σ and stays finite, the objective to use for calibrating σ.
    """
    e, s = _errors_and_sigmas(errors, sigmas, nonnegative=True)
    ratio = e / s
    nll = 3.0 * np.log(s) + 0.5 * ratio * ratio
    if include_constant:
        with np.errstate(divide="ignore"):
            nll = nll - 0.5 * np.log(2.0 / np.pi) - 2.0 * np.log(e)
    return float(nll.mean())


def maxwell_scale_factor(errors, sigmas) -> float:
    """The factor ``A`` minimising ``maxwell_nll(errors, A * sigmas)``: ``sqrt(mean((e/σ)²) / 3)``."""
    e, s = _errors_and_sigmas(errors, sigmas, nonnegative=True)
    ratio = e / s
    factor = float(np.sqrt(np.mean(ratio * ratio) / 3.0))
    if not factor > 0:
        raise DataError("errors: all zero; a scale factor cannot be estimated")
    return factor
