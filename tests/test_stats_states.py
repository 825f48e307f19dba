"""State-aware error cutoffs (otf_statcut.stats.states) on synthetic data with known answers.

The synthetic multi-state set: errors of each atom are Maxwell with the scale of its state (and
element); the head's σ is that scale times a little log-normal noise, i.e. a calibrated head that
tracks the state. Then the atoms above the cutoff are counted against the ≈1 per group that
CDF = 1 - 1/N promises.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from otf_statcut.errors import DataError, UserError
from otf_statcut.stats.states import SCHEMES, ErrorCutoffs, error_cutoffs, fit_exponent, frame_rms

COLD, HOT = 0.05, 0.15  # eV/Å: the hot state's error scale is 3x the cold one's
ELEMENT_FACTOR = {"A": 1.0, "B": 2.0}


def maxwell(scale, rng):
    scale = np.asarray(scale, dtype=float)
    return np.linalg.norm(rng.normal(size=scale.shape + (3,)), axis=-1) * scale


def multistate(n, rng, elements=("A",), sigma_noise=0.0):
    """Per-atom errors, σ, symbols and states of a 50/50 cold/hot mixture.

    σ is the atom's true error scale times log-normal noise of relative size ``sigma_noise``.
    """
    states = np.where(rng.random(n) < 0.5, "cold", "hot")
    symbols = np.asarray(elements)[rng.integers(len(elements), size=n)]
    scale = np.where(states == "cold", COLD, HOT) * np.vectorize(ELEMENT_FACTOR.get)(symbols)
    sigma = scale * np.exp(sigma_noise * rng.normal(size=n))
    return maxwell(scale, rng), sigma, symbols, states


def run(scheme, seed, elements=("A",), n_val=3000, n_samp=20000, sigma_noise=0.0, **kw):
    rng = np.random.default_rng(seed)
    ve, vs, vsym, vst = multistate(n_val, rng, elements, sigma_noise)
    se, ss, ssym, sst = multistate(n_samp, rng, elements, sigma_noise)
    cut = error_cutoffs(ve, vsym, ssym, None, scheme, val_scale=vs, sampling_scale=ss, val_states=vst,
                        sampling_states=sst, **kw)
    return cut, se, sst


# -- the mixture: global over-flags the hot state, per element does not fix it, σ-normalised does --
SEEDS = range(12)


def test_global_cutoff_over_flags_the_hot_state_of_a_mixture():
    for seed in SEEDS[:3]:
        cut, se, sst = run("global", seed)
        by_state = cut.count_above_by(se, sst)
        assert by_state.get("hot", 0) > 30  # ~1 expected
        assert by_state.get("cold", 0) == 0


def test_per_element_does_not_fix_a_state_mixture():
    above = []
    for seed in SEEDS[:4]:
        cut, se, sst = run("element", seed, elements=("A", "B"))
        assert cut.expected == pytest.approx(2.0)
        by_state = cut.count_above_by(se, sst)
        above.append(cut.count_above(se))
        assert by_state.get("hot", 0) >= 0.9 * above[-1]
    assert np.mean(above) > 20  # ~2 expected


@pytest.mark.parametrize("scheme", ["sigma", "scaled", "state"])
def test_state_aware_schemes_give_about_the_expected_count(scheme):
    counts, expected, hot_share = [], [], []
    for seed in SEEDS:
        cut, se, sst = run(scheme, seed, elements=("A", "B"))
        counts.append(cut.count_above(se))
        expected.append(cut.expected)
    expected = float(np.mean(expected))
    assert expected == pytest.approx(4.0 if scheme == "state" else 2.0)
    # Poisson(2) over 12 seeds: the mean lies within [1.2, 2.8] with probability > 0.99
    assert 0.6 * expected <= np.mean(counts) <= 1.4 * expected, counts


def test_sigma_scheme_flags_both_states_alike():
    cold = hot = 0
    for seed in SEEDS:
        cut, se, sst = run("sigma", seed)
        by_state = cut.count_above_by(se, sst)
        cold, hot = cold + by_state.get("cold", 0), hot + by_state.get("hot", 0)
    assert cold + hot <= 30
    assert cold >= 2 and hot >= 2  # neither state is singled out


def frames_multistate(n_frames, rng, sigma_noise, atoms_per_frame=50):
    """Like :func:`multistate`, but every frame (``atoms_per_frame`` atoms) is in one state."""
    states = np.repeat(np.where(rng.random(n_frames) < 0.5, "cold", "hot"), atoms_per_frame)
    frames = np.repeat(np.arange(n_frames), atoms_per_frame)
    scale = np.where(states == "cold", COLD, HOT)
    sigma = scale * np.exp(sigma_noise * rng.normal(size=scale.size))
    return maxwell(scale, rng), sigma, np.full(scale.size, "A"), states, frames


def test_noisy_sigma_breaks_the_sigma_scheme_and_a_frame_level_scale_repairs_it():
    """With 30 % per-atom σ noise, |ΔF|/σ is a scale mixture again: the sigma scheme over-flags
    (worse than per element), the fitted exponent shrinks below 1 but cannot repair it, and the
    frame RMS of σ (noise averaged over 50 atoms, state kept) gives ≈1 again."""
    counts = {"element": [], "sigma": [], "scaled": [], "frame": []}
    betas = []
    for seed in range(8):
        rng = np.random.default_rng(200 + seed)
        ve, vs, vsym, _, vf = frames_multistate(60, rng, 0.3)
        se, ss, ssym, _, sf = frames_multistate(400, rng, 0.3)
        for scheme in ("element", "sigma", "scaled"):
            cut = error_cutoffs(ve, vsym, ssym, None, scheme, val_scale=vs, sampling_scale=ss)
            counts[scheme].append(cut.count_above(se))
            if scheme == "scaled":
                betas.append(cut.exponents["A"])
        cut = error_cutoffs(ve, vsym, ssym, None, "scaled", val_scale=frame_rms(vs, vf, vsym),
                            sampling_scale=frame_rms(ss, sf, ssym))
        counts["frame"].append(cut.count_above(se))
    mean = {k: float(np.mean(v)) for k, v in counts.items()}
    assert mean["element"] > 20 and mean["sigma"] > 20 and mean["scaled"] > 10, mean
    assert 0.5 < np.mean(betas) < 0.95
    assert 0.4 <= mean["frame"] <= 2.5, mean


def test_per_element_handles_two_elements_with_different_scales():
    counts = {"A": [], "B": []}
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        vsym = np.repeat(["A", "B"], 2000)
        ssym = np.repeat(["A", "B"], 20000)
        factor = {"A": 0.058, "B": 0.133}  # the Li / Al scales of the issue
        ve = maxwell(np.vectorize(factor.get)(vsym), rng)
        se = maxwell(np.vectorize(factor.get)(ssym), rng)
        glob = error_cutoffs(ve, vsym, ssym, None, "global")
        elem = error_cutoffs(ve, vsym, ssym, None, "element")
        assert glob.count_above_by(se, ssym).get("B", 0) > 20
        for symbol, c in elem.count_above_by(se, ssym).items():
            counts[symbol].append(c)
        assert elem.n == {"A": 20000, "B": 20000}
    for symbol in counts:
        assert 0.4 <= np.mean(counts[symbol]) <= 1.8, counts


def test_family_best_handles_errors_that_are_not_maxwell_within_a_group():
    """Per-atom error scales spread log-normally (one state, one element, no covariate): the Maxwell
    cutoff over-flags the heavy tail, the best of Maxwell / Gamma / generalized Gamma does not."""
    maxwell_counts, best_counts = [], []
    for seed in range(6):
        rng = np.random.default_rng(300 + seed)
        ve = maxwell(0.1 * np.exp(0.4 * rng.normal(size=4000)), rng)
        se = maxwell(0.1 * np.exp(0.4 * rng.normal(size=20000)), rng)
        sym_v, sym_s = np.full(ve.size, "A"), np.full(se.size, "A")
        maxwell_counts.append(error_cutoffs(ve, sym_v, sym_s, None, "element").count_above(se))
        best = error_cutoffs(ve, sym_v, sym_s, None, "element", family="best")
        assert best.family == "best" and best.fits["A"].name != "maxwell"
        best_counts.append(best.count_above(se))
    assert np.mean(maxwell_counts) > 30, maxwell_counts
    assert np.mean(best_counts) <= 4, best_counts


# -- exact values ----------------------------------------------------------------------------
def test_global_and_element_cutoffs_are_the_maxwell_isf():
    rng = np.random.default_rng(0)
    ve = maxwell(np.full(500, 0.1), rng)
    vsym = np.array(["A"] * 300 + ["B"] * 200)
    ssym = np.array(["A"] * 700 + ["B"] * 300)
    glob = error_cutoffs(ve, vsym, ssym, None, "global")
    scale = np.sqrt(np.sum(ve**2) / (3 * ve.size))
    assert glob.per_atom == pytest.approx(np.full(1000, stats.maxwell.isf(1e-3, scale=scale)))
    assert glob.groups.tolist() == ["all"] * 1000 and glob.expected == pytest.approx(1.0)
    elem = error_cutoffs(ve, vsym, ssym, None, "element")
    scale_b = np.sqrt(np.sum(ve[300:] ** 2) / 600)
    assert elem.per_atom[700:] == pytest.approx(np.full(300, stats.maxwell.isf(1 / 300, scale=scale_b)))
    assert elem.n == {"A": 700, "B": 300}


def test_sigma_scheme_cutoff_is_sigma_times_z_cutoff():
    rng = np.random.default_rng(1)
    vs = rng.uniform(0.05, 0.2, 400)
    ve = maxwell(vs, rng)
    vsym = np.array(["A", "B"] * 200)
    ss = rng.uniform(0.05, 0.2, 1000)
    ssym = np.array(["A", "B"] * 500)
    cut = error_cutoffs(ve, vsym, ssym, None, "sigma", val_scale=vs, sampling_scale=ss)
    for symbol in ("A", "B"):
        z = ve[vsym == symbol] / vs[vsym == symbol]
        z_cut = stats.maxwell.isf(1 / 500, scale=np.sqrt(np.sum(z**2) / (3 * z.size)))
        assert cut.per_atom[ssym == symbol] == pytest.approx(ss[ssym == symbol] * z_cut)
        assert cut.exponents[symbol] == 1.0


def test_n_splits_the_total_by_the_groups_share():
    rng = np.random.default_rng(2)
    ve = maxwell(np.full(400, 0.1), rng)
    vsym = np.array(["A", "B"] * 200)
    ssym = np.array(["A"] * 3 + ["B"])  # one frame of an MD run: 3 A, 1 B
    cut = error_cutoffs(ve, vsym, ssym, 4000, "element")
    assert cut.n == {"A": 3000, "B": 1000}
    assert cut.expected == pytest.approx(3 / 3000 + 1 / 1000)
    bigger = error_cutoffs(ve, vsym, ssym, 40000, "element")
    assert np.all(bigger.per_atom > cut.per_atom)


# -- the scaled scheme -----------------------------------------------------------------------
def test_fit_exponent_recovers_the_power():
    rng = np.random.default_rng(3)
    c = np.exp(rng.uniform(-1, 1, 20000))
    for beta in (0.0, 0.5, 1.0, 2.0):
        assert fit_exponent(maxwell(0.1 * c**beta, rng), c) == pytest.approx(beta, abs=0.05)
    assert fit_exponent(maxwell(np.full(100, 0.1), rng), np.ones(100)) == 0.0


def test_scaled_scheme_ignores_an_uninformative_covariate():
    rng = np.random.default_rng(4)
    ve, se = maxwell(np.full(5000, 0.1), rng), maxwell(np.full(20000, 0.1), rng)
    vc, sc = rng.uniform(0.5, 2.0, 5000), rng.uniform(0.5, 2.0, 20000)
    sym_v, sym_s = np.full(5000, "A"), np.full(20000, "A")
    scaled = error_cutoffs(ve, sym_v, sym_s, None, "scaled", val_scale=vc, sampling_scale=sc)
    element = error_cutoffs(ve, sym_v, sym_s, None, "element")
    assert abs(scaled.exponents["A"]) < 0.1
    assert np.median(scaled.per_atom) == pytest.approx(element.per_atom[0], rel=0.03)


def test_frame_rms_is_per_frame_and_element():
    values = np.array([3.0, 4.0, 1.0, 2.0, 2.0])
    frames = np.array([0, 0, 0, 1, 1])
    symbols = np.array(["A", "A", "B", "A", "A"])
    assert frame_rms(values, frames, symbols) == pytest.approx(
        [np.sqrt(12.5), np.sqrt(12.5), 1.0, 2.0, 2.0])
    with pytest.raises(DataError, match="one per atom"):
        frame_rms(values, frames[:4], symbols)


# -- bookkeeping and bad input -----------------------------------------------------------------
def test_result_counts_and_serialises():
    cut, se, sst = run("state", 0, elements=("A", "B"), n_samp=2000)
    assert isinstance(cut, ErrorCutoffs)
    assert set(cut.fits) == {"cold|A", "cold|B", "hot|A", "hot|B"}
    assert sum(cut.counts.values()) == 2000
    assert cut.count_above(se) == sum(cut.count_above_by(se, sst).values())
    text = json.dumps(cut.to_dict())
    assert '"scheme": "state"' in text
    with pytest.raises(DataError, match="sampling errors has 3 values"):
        cut.above([0.1, 0.2, 0.3])


GOOD = dict(val_errors=np.full(20, 0.1) + np.linspace(0, 0.1, 20), val_symbols=["A"] * 20,
            sampling_symbols=["A"] * 5)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"scheme": "bogus"}, UserError, "unknown error-cutoff scheme 'bogus'"),
        ({"family": "weibull"}, UserError, "unknown error-cutoff family 'weibull'"),
        ({"val_errors": [np.nan] + [0.1] * 19}, DataError, "validation errors: 1 NaN"),
        ({"val_errors": [-0.1] + [0.1] * 19}, DataError, "validation errors: 1 negative"),
        ({"val_symbols": ["A"] * 19}, DataError, "validation symbols has 19 entries but there are 20 atoms"),
        ({"sampling_symbols": ["A", "B"]}, DataError, "group 'B': 0 validation values"),
        ({"val_symbols": ["A"] * 5 + ["B"] * 15}, DataError, "group 'A': 5 validation values, at least 10"),
        ({"sampling_symbols": []}, DataError, "sampling symbols: empty"),
        ({"n": 1}, UserError, "n = 1"),
        ({"n": 2.5}, UserError, "expected an integer >= 2"),
        ({"scheme": "sigma"}, UserError, "scheme 'sigma' needs validation σ"),
        ({"scheme": "sigma", "val_scale": [0.0] * 20, "sampling_scale": [1.0] * 5}, DataError,
         "validation σ: 20 entries <= 0"),
        ({"scheme": "scaled", "val_scale": [1.0] * 20, "sampling_scale": [1.0] * 4}, DataError,
         "sampling scale covariates has 4 values but there are 5 atoms"),
        ({"scheme": "state"}, UserError, "validation states are needed"),
        ({"scheme": "state", "val_states": ["a|b"] * 20, "sampling_states": ["a"] * 5}, DataError,
         r"validation states: entry 0 \('a\|b'\) contains '\|'"),
    ],
)
def test_bad_input_names_the_problem(changes, error, message):
    kwargs = dict(GOOD, scheme="element", n=None) | changes
    with pytest.raises(error, match=message):
        error_cutoffs(**kwargs)


def test_every_scheme_runs_on_clean_input():
    rng = np.random.default_rng(5)
    ve, vs, vsym, vst = multistate(400, rng, ("A", "B"))
    _, ss, ssym, sst = multistate(100, rng, ("A", "B"))
    for scheme in SCHEMES:
        cut = error_cutoffs(ve, vsym, ssym, None, scheme, val_scale=vs, sampling_scale=ss, val_states=vst,
                            sampling_states=sst)
        assert cut.per_atom.shape == (100,) and np.all(cut.per_atom > 0)
