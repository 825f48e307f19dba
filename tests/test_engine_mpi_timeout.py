"""Issue 10: a label that hangs on one MPI rank cannot be interrupted (rank 0 waits in a
collective); the watchdog records it and ends every rank, and the run resumes under mpiexec."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from otf_statcut.io.runlog import RunLog, read_table
from conftest import small_cu_run
from test_engine_gpaw_mpi import mpiexec

pytestmark = [pytest.mark.slow, pytest.mark.mpi]

SCRIPT = textwrap.dedent("""
    import sys, time
    from ase.calculators.emt import EMT
    from mpi4py import MPI
    from otf_statcut.config import load_run_config
    from otf_statcut.engine.run import run_otf
    from otf_statcut.labelers import Labeler

    class CollectiveEMT(Labeler):
        '''EMT on every rank with a collective sum; rank 1 hangs on call ``hang`` (0: never).'''
        name = "collective-emt"
        collective = True
        def __init__(self, hang):
            super().__init__(retries=0)
            self.hang, self.calls = hang, 0
        def _compute(self, atoms):
            self.calls += 1
            if MPI.COMM_WORLD.rank == 1 and self.calls == self.hang:
                time.sleep(3600)
            atoms.calc = EMT()
            energy = MPI.COMM_WORLD.allreduce(atoms.get_potential_energy()) / MPI.COMM_WORLD.size
            return {"energy": energy, "forces": atoms.get_forces()}

    run_otf(load_run_config(sys.argv[1]), labeler=CollectiveEMT(int(sys.argv[2])))
""")


def test_a_hang_on_one_rank_ends_every_rank_and_the_run_resumes(tmp_path):
    data = small_cu_run(**{"md.steps": 12, "labeler.timeout_s": 3.0, "labeler.retries": 0,
                           "cutoffs.max_error": float("inf")})
    data["output"]["folder"] = str(tmp_path / "out")
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [mpiexec(), "-n", "2", sys.executable, str(tmp_path / "run.py"), str(tmp_path / "input.yaml")]
    hung = subprocess.run(command + ["5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert hung.returncode != 0 and "labeler.timeout_s" in hung.stderr, hung.stderr[-3000:]
    path = tmp_path / "out" / "run.h5"
    with RunLog.open(path, "r") as log:
        assert log.health.resumable and log.status == "stopped"
    failures = read_table(path, "failures")
    assert list(failures["reason"]) == ["timeout"] and "could not be interrupted" in failures["message"][0]
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "run.py")], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a rank outlived the abort"
    done = subprocess.run(command + ["0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with RunLog.open(path, "r") as log:
        assert log.status == "finished" and log.read_checkpoint().step == 12
