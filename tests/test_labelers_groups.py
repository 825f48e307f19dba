"""Issue 12: labels in parallel over MPI. Rank 0 drives; ranks 1..N-1 label in groups, each group
on its own communicator, several labels at once (:class:`otf_statcut.labelers.groups.LabelGroups`).

The MPI tests run small scripts under ``mpiexec -n 3`` / ``-n 4`` and check the JSON they write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.labelers import ASECalculatorLabeler, Labeler, LabelingError, LabelTimeout
from otf_statcut.labelers.groups import LabelGroups, group_ranks
from test_engine_gpaw_mpi import mpiexec

# --- no MPI --------------------------------------------------------------------------------


def test_group_ranks_are_contiguous_blocks_differing_by_at_most_one():
    assert group_ranks(3, 2) == [[1], [2]]
    assert group_ranks(4, 1) == [[1, 2, 3]]
    assert group_ranks(6, 2) == [[1, 2, 3], [4, 5]]
    assert group_ranks(9, 3) == [[1, 2, 3], [4, 5, 6], [7, 8]]
    for size in range(2, 12):
        for n in range(1, size):
            groups = group_ranks(size, n)
            assert sum(groups, []) == list(range(1, size))
            assert max(map(len, groups)) - min(map(len, groups)) <= 1
    with pytest.raises(ValueError, match=r"n_groups = 3 label groups need at least 4 MPI ranks"):
        group_ranks(3, 3)
    with pytest.raises(ValueError, match="n_groups must be >= 1"):
        group_ranks(3, 0)


class _Slow(Labeler):
    """EMT after a pause; fails on one-atom configurations."""
    name = "slow-emt"

    def __init__(self, pause=0.0):
        super().__init__(retries=0)
        self.pause = pause

    def _compute(self, atoms):
        time.sleep(self.pause)
        if len(atoms) == 1:
            raise RuntimeError("boom: one atom")
        atoms.calc = EMT()
        return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}


def test_one_rank_labels_one_at_a_time_in_a_worker_thread():
    frames = [bulk("Cu", cubic=True) for _ in range(3)]
    for i, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=i)
    expected = [ASECalculatorLabeler(EMT).label(atoms).get_potential_energy() for atoms in frames]
    with LabelGroups(lambda comm: _Slow(0.2), None, n_groups=2) as groups:
        assert groups.is_driver and groups.n_groups == 1 and groups.settings()["name"] == "slow-emt"
        futures = [groups.submit(atoms) for atoms in frames]
        bad = groups.submit(bulk("Cu")[:1])
        frames[0].positions += 1.0  # submit copied the configuration
        time.sleep(0.1)
        assert groups.n_busy == 1 and not futures[-1].done()
        for energy, future in zip(expected, futures):
            labelled = future.result(timeout=10)
            assert labelled.info["label_group"] == 0 and labelled.info["label_attempts"] == 1
            assert labelled.get_potential_energy() == pytest.approx(energy, abs=1e-12)
        with pytest.raises(LabelingError, match="boom: one atom"):
            bad.result(timeout=10)
        with pytest.raises(LabelTimeout, match="waited more than 0.05 s"):
            groups.label(frames[1], timeout=0.05)
        assert groups.label(frames[1], timeout=10).get_potential_energy() == pytest.approx(expected[1])
        late = [groups.submit(frames[0]) for _ in range(3)]
        time.sleep(0.05)
    assert late[0].result(timeout=0).get_forces().shape == (4, 3)  # in flight at stop: finished
    with pytest.raises(CancelledError):
        late[-1].result(timeout=0)  # still queued at stop: cancelled
    with pytest.raises(RuntimeError, match="after stop"):
        groups.submit(frames[0])
    groups.stop()  # idempotent


# --- under mpiexec -------------------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from mpi4py import MPI
    from otf_statcut.labelers import ASECalculatorLabeler, Labeler, LabelingError, UnphysicalLabelError
    from otf_statcut.labelers.groups import LabelGroups, LabelGroupsError

    class Sleepy(Labeler):
        """EMT after a pause; one-atom configurations fail; collective: energy summed over the group."""
        name = "sleepy-emt"
        def __init__(self, comm, pause, collective):
            super().__init__(retries=1, max_force=50.0)
            self.comm, self.pause, self.collective = comm, pause, collective
        def settings(self):
            return {"name": self.name, "ranks": 1 if self.comm is None else self.comm.size}
        def _compute(self, atoms):
            time.sleep(self.pause)
            if len(atoms) == 1:
                raise RuntimeError("boom: one atom")
            atoms.calc = EMT()
            energy = atoms.get_potential_energy()
            if self.collective:  # every rank of the group takes part
                energy = self.comm.allreduce(energy) / self.comm.size
            return {"energy": energy, "forces": atoms.get_forces()}

    def frames(n):
        out = []
        for i in range(n):
            atoms = bulk("Cu", cubic=True).repeat((2, 1, 1))
            atoms.rattle(0.05, seed=i)
            out.append(atoms)
        return out

    mode, n_groups, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    comm = MPI.COMM_WORLD
    if mode == "bad-build":
        def make(c):
            if comm.rank == 2:
                raise OSError("no licence on this node")
            return Sleepy(c, 0.0, False)
    else:
        make = lambda c: Sleepy(c, 1.0 if mode == "sleepy" else 0.0, mode == "collective")
    try:
        groups = LabelGroups(make, comm, n_groups)
    except LabelGroupsError as exc:
        json.dump({"error": str(exc)}, open(out, "w"))
        sys.exit(0)
    if not groups.is_driver:
        groups.serve()
        groups.close()
        sys.exit(0)
    result = {"settings": groups.group_settings(), "ranks": groups.ranks}
    reference = ASECalculatorLabeler(EMT)
    with groups:
        if mode == "sleepy":
            todo = frames(4)
            start = time.perf_counter()
            futures = [groups.submit(a) for a in todo[:2]]
            deadline = time.perf_counter() + 0.8
            while groups.n_busy < 2 and time.perf_counter() < deadline:
                time.sleep(0.005)
            result["busy_with_two"] = groups.n_busy
            result["done_early"] = [f.done() for f in futures]
            futures += [groups.submit(a) for a in todo[2:]]
            labelled = [f.result(timeout=60) for f in futures]
            result["wall_4_labels"] = time.perf_counter() - start
        else:
            todo = frames(6)
            labelled = [f.result(timeout=60) for f in [groups.submit(a) for a in todo]]
        serial = [reference.label(a) for a in todo]  # EMT on rank 0, one at a time
        result["max_energy_error"] = max(abs(l.get_potential_energy() - s.get_potential_energy())
                                         for s, l in zip(serial, labelled))
        result["max_force_error"] = max(float(np.abs(l.get_forces() - s.get_forces()).max())
                                        for s, l in zip(serial, labelled))
        result["groups_used"] = sorted({l.info["label_group"] for l in labelled})
        result["attempts"] = [l.info["label_attempts"] for l in labelled]
        # a failure in one group is raised on the driver, and the group keeps serving
        errors = []
        for bad in (bulk("Cu")[:1], bulk("Cu", cubic=True)):
            if len(bad) > 1:
                bad.positions[1] = bad.positions[0] + [0.3, 0.0, 0.0]  # absurd forces
            try:
                groups.submit(bad).result(timeout=60)
            except LabelingError as exc:
                errors.append({"type": type(exc).__name__, "message": str(exc), "group": exc.group,
                               "attempts": len(exc.attempts)})
        result["errors"] = errors
        after = groups.submit(todo[0]).result(timeout=60)
        result["after_failure_group"] = after.info["label_group"]
        result["after_failure_error"] = abs(after.get_potential_energy() - labelled[0].get_potential_energy())
        result["done"] = groups.n_done
    groups.stop()  # idempotent
    json.dump(result, open(out, "w"))
''')


def run_mpi(tmp_path, n, *args, script=SCRIPT, timeout=180):
    path = tmp_path / "groups_script.py"
    path.write_text(script)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GPAW_MPI_BACKEND", None)
    proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable, str(path), *args, str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    leftover = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a rank outlived the run"
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.slow
@pytest.mark.mpi
def test_two_groups_of_one_label_concurrently_and_survive_failures(tmp_path):
    proc, result = run_mpi(tmp_path, 3, "sleepy", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert result["ranks"] == [[1], [2]]
    assert result["busy_with_two"] == 2 and result["done_early"] == [False, False]
    # 4 labels of 1 s on 2 groups: ~2 s, not ~4 s (slack for a loaded 2-core machine)
    assert 1.95 < result["wall_4_labels"] < 3.3, result["wall_4_labels"]
    assert result["groups_used"] == [0, 1]
    assert result["max_energy_error"] < 1e-10 and result["max_force_error"] < 1e-10
    assert result["attempts"] == [1, 1, 1, 1]
    (crash, absurd) = result["errors"]
    assert crash["type"] == "LabelingError" and "RuntimeError: boom: one atom" in crash["message"]
    assert crash["group"] == 0 and crash["attempts"] == 2  # retries=1: two attempts in the group
    assert absurd["type"] == "UnphysicalLabelError" and "exceeds max_force = 50 eV/Å" in absurd["message"]
    assert absurd["group"] == 0
    assert result["after_failure_group"] == 0 and result["after_failure_error"] < 1e-10
    assert result["done"] == 7


@pytest.mark.slow
@pytest.mark.mpi
def test_uneven_groups_collective_labeller_under_four_ranks(tmp_path):
    proc, result = run_mpi(tmp_path, 4, "collective", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert result["ranks"] == [[1, 2], [3]]
    assert [s["ranks"] for s in result["settings"]] == [2, 1]  # each labeller built on its group
    assert result["groups_used"] == [0, 1]
    assert result["max_energy_error"] < 1e-10 and result["max_force_error"] < 1e-10
    assert [e["type"] for e in result["errors"]] == ["LabelingError", "UnphysicalLabelError"]
    assert result["after_failure_error"] < 1e-10


@pytest.mark.slow
@pytest.mark.mpi
def test_a_labeller_that_cannot_be_built_is_reported_and_every_rank_exits(tmp_path):
    proc, result = run_mpi(tmp_path, 3, "bad-build", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "group 1 (ranks [2]): OSError: no licence on this node" in result["error"]


@pytest.mark.slow
@pytest.mark.mpi
def test_more_groups_than_serving_ranks_is_refused_on_every_rank(tmp_path):
    proc, result = run_mpi(tmp_path, 3, "sleepy", "3", timeout=60)
    assert proc.returncode != 0 and result is None
    assert "n_groups = 3 label groups need at least 4 MPI ranks" in proc.stderr


GPAW_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    from ase.build import bulk
    from mpi4py import MPI
    from otf_statcut.labelers import make_labeler

    SETTINGS = {"mode": "pw", "ecut": 200, "kpts": [2, 2, 2]}
    mode, out = sys.argv[1], sys.argv[2]
    atoms = bulk("Li", "bcc", a=3.44, cubic=True)
    atoms.rattle(0.05, seed=3)
    comm = MPI.COMM_WORLD
    if mode == "groups":
        from otf_statcut.labelers.groups import LabelGroups
        groups = LabelGroups(lambda c: make_labeler("gpaw", SETTINGS, comm=c), comm, 1)
        if not groups.is_driver:
            groups.serve()
            sys.exit(0)
        with groups:
            labelled = groups.submit(atoms).result(timeout=300)
            ranks = groups.settings()["ranks"]
    else:
        from otf_statcut.labelers.mpi import MPIDrivenLabeler
        driven = MPIDrivenLabeler(make_labeler("gpaw", SETTINGS), comm)
        if not driven.is_root:
            driven.serve()
            sys.exit(0)
        with driven:
            labelled = driven.label(atoms)
            ranks = driven.settings()["ranks"]
    np.savez(out, energy=labelled.get_potential_energy(), forces=labelled.get_forces(),
             stress=labelled.get_stress(), ranks=ranks)
''')


@pytest.mark.slow
@pytest.mark.mpi
def test_gpaw_on_a_group_of_two_equals_gpaw_on_two_ranks(tmp_path):
    env = {**os.environ}
    env.pop("GPAW_MPI_BACKEND", None)  # the labeller sets it
    env.pop("OMP_NUM_THREADS", None)
    path = tmp_path / "gpaw_script.py"
    path.write_text(GPAW_SCRIPT)
    results = {}
    for n, mode in ((3, "groups"), (2, "plain")):
        out = tmp_path / f"{mode}.npz"
        proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable, str(path), mode, str(out)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        results[mode] = np.load(out)
    leftover = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a rank outlived the run"
    groups, plain = results["groups"], results["plain"]
    assert int(groups["ranks"]) == 2 and int(plain["ranks"]) == 2
    assert abs(float(groups["energy"]) - float(plain["energy"])) < 1e-6
    np.testing.assert_allclose(groups["forces"], plain["forces"], atol=1e-6)
    np.testing.assert_allclose(groups["stress"], plain["stress"], atol=1e-7)
    assert 0.01 < np.abs(plain["forces"]).max() < 3.0  # a real, rattled label
