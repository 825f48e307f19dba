"""Issue 10's bad inputs through the CLI, as a user meets them: every user mistake is one line and
exit status 2, every environment failure (unwritable path, disk full) one line naming the path
and exit status 4; a damaged run file is refused without a byte written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_statcut.cli import main
from otf_statcut.io.checkpoint import Checkpoint
from otf_statcut.io.runlog import RunLog
from otf_statcut.labelers import ASECalculatorLabeler
from conftest import small_cu_run


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


def write_input(tmp_path, data) -> Path:
    path = tmp_path / "input.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def labelled_run_file(path: Path) -> None:
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    frame = ASECalculatorLabeler(EMT()).label(atoms)
    with RunLog.create(path, n_atoms=len(frame)) as log:
        log.append_frame(frame, step=-1, reason="initial", split=0)
        log.write_checkpoint(Checkpoint(step=0, time_fs=0.0, positions=frame.positions, momenta=np.zeros((4, 3)),
                                        cell=frame.cell[:], numbers=frame.numbers, pbc=frame.pbc, model=0))


def test_output_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    data = small_cu_run(**{"output.folder": str(tmp_path / "taken")})
    assert main(["run", str(write_input(tmp_path, data))]) == 2
    err = one_line(capsys)
    assert "output.folder: " in err and "is a file, not a folder" in err


@pytest.mark.parametrize("folder", ["/proc/otf-statcut-out", "/proc/self/status/out"])
def test_unwritable_output_folder_names_the_path(tmp_path, capsys, folder):
    data = small_cu_run(**{"output.folder": folder})
    assert main(["run", str(write_input(tmp_path, data))]) == 4
    err = one_line(capsys)
    assert folder in err or "/proc" in err


def test_export_to_a_missing_folder_a_folder_and_a_full_disk(tmp_path, capsys):
    run_file = tmp_path / "run.h5"
    labelled_run_file(run_file)
    assert main(["export", str(run_file), str(tmp_path / "absent" / "data.extxyz")]) == 2
    assert f"the folder {tmp_path / 'absent'} does not exist" in one_line(capsys)
    assert main(["export", str(run_file), str(tmp_path)]) == 2
    assert "is a folder" in one_line(capsys)
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is absent: cannot simulate a full disk")
    assert main(["export", str(run_file), "/dev/full"]) == 4
    err = one_line(capsys)
    assert "/dev/full" in err and "no space left" in err
    assert main(["export", str(run_file), str(tmp_path / "ok.extxyz")]) == 0


def test_a_damaged_run_file_is_refused_on_one_line_and_left_untouched(tmp_path, capsys):
    data = small_cu_run(**{"output.folder": str(tmp_path / "out")})
    (tmp_path / "out").mkdir()
    run_file = tmp_path / "out" / "run.h5"
    labelled_run_file(run_file)
    import h5py

    with h5py.File(run_file, "a") as f:  # an older label torn: fails its checksum, the checkpoint counts it
        f["dataset/forces"][0, 0] += 1.0
    # the stored config differs from this input, but damage is reported first: nothing to compare with
    before = run_file.read_bytes()
    assert main(["run", str(write_input(tmp_path, data))]) == 2
    err = one_line(capsys)
    assert "damaged" in err and "Recoverable: 0 labelled frame(s) of 1" in err
    assert run_file.read_bytes() == before
    assert not (tmp_path / "out" / "run.lock").exists()  # the lock is released


def test_a_corrupt_run_file_that_is_not_hdf5_is_one_line(tmp_path, capsys):
    data = small_cu_run(**{"output.folder": str(tmp_path / "out")})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert main(["run", str(write_input(tmp_path, data))]) == 2
    assert "cannot open the run file" in one_line(capsys)


@pytest.mark.slow
def test_a_full_disk_while_saving_a_model_is_one_line_and_the_run_stays_resumable(tmp_path, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is absent: cannot simulate a full disk")
    out = tmp_path / "out"
    weights = out / "models" / "0000" / "potential" / "weights.pt"
    weights.parent.mkdir(parents=True)
    weights.symlink_to("/dev/full")  # writing the first model's weights hits "no space left"
    data = small_cu_run(**{"output.folder": str(out), "md.steps": 5})
    path = write_input(tmp_path, data)
    assert main(["run", str(path)]) == 4
    err = one_line(capsys)
    assert "no space left" in err or "write failed" in err
    with RunLog.open(out / "run.h5", "r") as log:
        assert log.health.resumable and log.rows("dataset") == 4  # the initial labels are kept
        assert log.status == "stopped"
    weights.unlink()  # space again: the same command resumes and finishes
    assert main(["run", str(path)]) == 0
