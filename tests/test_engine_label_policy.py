"""The run's label policy: time limit (alarm, and the watchdog when the label cannot be
interrupted), energy sanity, consecutive failures, configurations that timed out before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.engine.label_policy import LabelFailuresError, LabelPolicy
from otf_statcut.labelers import ASECalculatorLabeler, Labeler, LabelTimeout, UnphysicalLabelError


class SlowEMT(Labeler):
    """EMT that sleeps first (a hung calculator when ``seconds`` is large)."""

    name = "slow-emt"

    def __init__(self, seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def _compute(self, atoms):
        time.sleep(self.seconds)
        atoms.calc = EMT()
        return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}


def cu(seed=0):
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_a_hung_label_is_interrupted_and_not_retried():
    labeler = SlowEMT(60.0, retries=3)
    policy = LabelPolicy(labeler, timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(LabelTimeout, match="timeout_s = 0.5 s"):
        policy.label(cu())
    assert time.perf_counter() - start < 5
    assert labeler.n_failed_attempts == 0  # the retries were not spent on it
    # the alarm is gone: a quick label afterwards is not interrupted
    fast = LabelPolicy(SlowEMT(0.0), timeout_s=0.5)
    fast.label(cu())
    time.sleep(0.7)


def test_energy_far_from_the_expectation_is_a_failed_label():
    policy = LabelPolicy(ASECalculatorLabeler(EMT()), max_energy_deviation=1.0)
    atoms = cu()
    true = policy.label(atoms).get_potential_energy()
    policy.label(atoms, expected_energy=true + 0.9 * len(atoms))  # 0.9 eV/atom: accepted
    with pytest.raises(UnphysicalLabelError, match=r"eV/atom from the expected .*max_energy_deviation = 1"):
        policy.label(atoms, expected_energy=true - 1e6)
    assert LabelPolicy.expected_initial_energy([], atoms) is None
    frames = [policy.label(cu(s)) for s in range(3)]
    median = sorted(f.get_potential_energy() / len(f) for f in frames)[1]
    assert LabelPolicy.expected_initial_energy(frames, atoms) == pytest.approx(median * len(atoms))


def test_consecutive_failures_stop_at_the_limit_and_a_success_resets_them():
    policy = LabelPolicy(ASECalculatorLabeler(EMT()), max_consecutive_failures=3)
    policy.failed("a")
    policy.failed("b")
    policy.label(cu())  # success: the count starts again
    policy.failed("c")
    policy.failed("d")
    with pytest.raises(LabelFailuresError, match=r"failed 3 times in a row .*last: e"):
        policy.failed("e")


def test_a_configuration_that_timed_out_before_is_not_sent_again():
    labeler = SlowEMT(0.0)
    policy = LabelPolicy(labeler, known_timeouts={"abc"})
    with pytest.raises(LabelTimeout, match="earlier session"):
        policy.label(cu(), key="abc")
    assert labeler.n_calls == 0
    policy.label(cu(), key="other")
    assert labeler.n_calls == 1


HARD = textwrap.dedent("""
    import os, sys, time
    from ase.build import bulk
    from otf_statcut.engine.label_policy import LabelPolicy
    from otf_statcut.labelers import Labeler

    class Stubborn(Labeler):  # swallows the alarm and keeps going: cannot be interrupted
        name = "stubborn"
        def _compute(self, atoms):
            end = time.time() + 60
            while time.time() < end:
                try:
                    time.sleep(0.05)
                except BaseException:
                    pass

    def hard(message, key):
        with open(sys.argv[1], "w") as f:
            f.write(key + "|" + message)
        os._exit(3)

    policy = LabelPolicy(Stubborn(), timeout_s=float(sys.argv[2]), interruptible=sys.argv[3] == "1",
                         on_hard_timeout=hard)
    policy.label(bulk("Cu", cubic=True), key="k1")
""")


@pytest.mark.parametrize("interruptible, limit", [(True, 1.0), (False, 1.0)])
def test_a_label_that_cannot_be_interrupted_ends_the_process_through_the_callback(tmp_path, interruptible, limit):
    script = tmp_path / "hard.py"
    script.write_text(HARD)
    record = tmp_path / "record.txt"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), str(record), str(limit), "1" if interruptible else "0"],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 3, proc.stderr[-2000:]
    key, message = record.read_text().split("|", 1)
    assert key == "k1" and "could not be interrupted" in message
    # alarm + grace (as long again) when interruptible, the limit alone when not; plus start-up
    assert elapsed < (2 * limit if interruptible else limit) + 20
