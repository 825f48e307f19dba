"""Labeller faults in real runs (issue 10): an absurd energy, a hung calculator (interruptible and
not), a labeller that always fails; plus two runs on one output folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT

from otf_statcut.config import load_run_config
from otf_statcut.engine.label_policy import LabelFailuresError
from otf_statcut.engine.run import run_otf
from otf_statcut.io.runlog import RunLog, read_dataset, read_table
from otf_statcut.labelers import Labeler
from conftest import small_cu_run

pytestmark = pytest.mark.slow


class FaultyEMT(Labeler):
    """EMT labels; MD labels listed in ``faults`` (counted after the ``initial`` ones) misbehave:
    ``"energy"`` adds 1e6 eV, ``"hang"`` sleeps ``hang_s`` first, ``"fail"`` raises."""

    name = "faulty-emt"

    def __init__(self, faults: dict, initial: int = 4, hang_s: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.faults, self.initial, self.hang_s = faults, initial, hang_s
        self.calls = 0

    def _compute(self, atoms):
        self.calls += 1
        fault = self.faults.get(self.calls - self.initial) or self.faults.get("always" if self.calls > self.initial
                                                                               else None)
        if fault == "hang":
            time.sleep(self.hang_s)
        if fault == "fail":
            raise RuntimeError("injected failure")
        atoms.calc = EMT()
        energy = atoms.get_potential_energy() + (1e6 if fault == "energy" else 0.0)
        return {"energy": energy, "forces": atoms.get_forces(), "stress": atoms.get_stress()}


def config(tmp_path, **changes):
    path = tmp_path / "input.yaml"
    data = small_cu_run(**{"labeler.retries": 0, "cutoffs.max_error": float("inf"), "md.steps": 20, **changes})
    data["output"]["folder"] = str(tmp_path / "out")
    path.write_text(yaml.safe_dump(data))
    return load_run_config(path)


def test_a_label_with_an_absurd_energy_never_enters_the_data_set(tmp_path):
    summary = run_otf(config(tmp_path), labeler=FaultyEMT({1: "energy", 2: "energy"}, retries=0), comm=None)
    frames = read_dataset(summary.path)
    per_atom = np.array([f.get_potential_energy() / len(f) for f in frames])
    assert np.ptp(per_atom) < 1.0  # no 1e6 eV label in the data set
    failures = read_table(summary.path, "failures")
    assert sum("max_energy_deviation" in m for m in failures["message"]) == 2
    assert summary.status == "finished"


def test_a_hung_calculator_is_a_failed_label_and_the_run_goes_on(tmp_path):
    start = time.perf_counter()
    summary = run_otf(config(tmp_path, **{"labeler.timeout_s": 1.0}), labeler=FaultyEMT({1: "hang"}, retries=2),
                      comm=None)
    assert time.perf_counter() - start < 120
    failures = read_table(summary.path, "failures")
    assert len(failures["step"]) == 1 and "LabelTimeout" in failures["message"][0]
    assert failures["key"][0] and summary.status == "finished"


def test_a_labeller_that_always_fails_stops_the_run_resumably(tmp_path):
    cfg = config(tmp_path, **{"labeler.max_consecutive_failures": 3})
    with pytest.raises(LabelFailuresError, match="failed 3 times in a row"):
        run_otf(cfg, labeler=FaultyEMT({"always": "fail"}, retries=0), comm=None)
    path = tmp_path / "out" / "run.h5"
    with RunLog.open(path, "r") as log:
        assert log.status == "stopped" and "3 times in a row" in log.status_reason
    assert len(read_table(path, "failures")["step"]) == 3
    summary = run_otf(cfg, labeler=FaultyEMT({}), comm=None)  # fixed labeller: the run resumes
    assert summary.status == "finished" and summary.steps == 20


HARD_RUN = textwrap.dedent("""
    import sys, time
    from ase.calculators.emt import EMT
    from otf_statcut.config import load_run_config
    from otf_statcut.engine.run import run_otf
    from otf_statcut.labelers import Labeler

    class Stubborn(Labeler):  # the 1st MD label ignores the alarm: it cannot be interrupted
        name = "stubborn-emt"
        calls = 0
        def _compute(self, atoms):
            self.calls += 1
            if self.calls == 5:
                end = time.time() + 120
                while time.time() < end:
                    try:
                        time.sleep(0.05)
                    except BaseException:
                        pass
            atoms.calc = EMT()
            return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}

    run_otf(load_run_config(sys.argv[1]), labeler=Stubborn(retries=0), comm=None)
""")


def test_a_label_that_cannot_be_interrupted_stops_the_run_resumably(tmp_path):
    cfg = config(tmp_path, **{"labeler.timeout_s": 2.0})
    script = tmp_path / "hard.py"
    script.write_text(HARD_RUN)
    proc = subprocess.run([sys.executable, str(script), str(cfg.source)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "otf-statcut run: stopped:" in proc.stderr and "labeler.timeout_s" in proc.stderr
    path = tmp_path / "out" / "run.h5"
    with RunLog.open(path, "r") as log:
        assert log.status == "stopped" and "will not be labelled again" in log.status_reason
        assert log.health.resumable
    failures = read_table(path, "failures")
    assert list(failures["reason"]) == ["timeout"] and len(failures["key"][0]) == 40
    assert not (tmp_path / "out" / "run.lock").exists()  # released before the exit
    summary = run_otf(cfg, labeler=FaultyEMT({}), comm=None)
    assert summary.status == "finished" and summary.steps == 20


def test_a_second_run_on_the_same_output_folder_is_refused_by_name(tmp_path):
    cfg = config(tmp_path, **{"md.steps": 400})
    script = tmp_path / "first.py"
    script.write_text(textwrap.dedent("""
        import sys
        from otf_statcut.config import load_run_config
        from otf_statcut.engine.run import run_otf
        run_otf(load_run_config(sys.argv[1]), comm=None)
    """))
    first = subprocess.Popen([sys.executable, str(script), str(cfg.source)], stderr=subprocess.PIPE)
    try:
        lock = tmp_path / "out" / "run.lock"
        deadline = time.time() + 120
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists()
        proc = subprocess.run([sys.executable, "-m", "otf_statcut.cli", "run", str(cfg.source)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and f"pid {first.pid}" in err and "holds this output folder" in err
    finally:
        first.kill()
        first.wait()
