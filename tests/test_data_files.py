"""Reading and writing labelled frames: round trips, validation errors naming file and frame."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from otf_statcut.data import (
    frame_energy,
    frame_forces,
    frame_stress,
    has_stress,
    labelled_frame,
    read_frames,
    register_format,
    species_of,
    stack_forces,
    stack_symbols,
    supported_suffixes,
    validate_frame,
    write_frames,
)
from otf_statcut.errors import DataError, UserError


def make_frames(n: int = 3, stress: bool = True) -> list[Atoms]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True).repeat((2, 1, 1))
        atoms[0].symbol = "Mg" if i == 1 else "Li"
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(
            labelled_frame(
                atoms,
                energy=-1.9 * len(atoms) + 0.01 * i,
                forces=rng.normal(size=(len(atoms), 3)),
                stress=rng.normal(scale=1e-3, size=6) if stress else None,
                info={"group": "test", "index": i},
            )
        )
    return frames


@pytest.mark.parametrize("suffix", [".extxyz", ".db"])
def test_round_trip_keeps_labels_and_info(tmp_path, suffix):
    frames = make_frames()
    path = tmp_path / f"frames{suffix}"
    write_frames(path, frames)
    back = read_frames(path)
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)
        np.testing.assert_allclose(b.cell[:], a.cell[:], atol=1e-8)
        assert frame_energy(b) == pytest.approx(frame_energy(a), abs=1e-8)
        np.testing.assert_allclose(frame_forces(b), frame_forces(a), atol=1e-8)
        np.testing.assert_allclose(frame_stress(b), frame_stress(a), atol=1e-10)
        assert b.info["group"] == "test" and b.info["index"] == a.info["index"]


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "frames.db"
    write_frames(path, make_frames(3))
    write_frames(path, make_frames(2))
    assert len(read_frames(path)) == 2


def test_frames_without_stress_read_back_without_stress(tmp_path):
    path = tmp_path / "frames.extxyz"
    write_frames(path, make_frames(2, stress=False))
    back = read_frames(path)
    assert not any(has_stress(atoms) for atoms in back)
    assert frame_stress(back[0]) is None


def _write_raw_xyz(path, with_energy: bool, with_forces: bool, bad_frame: int):
    """Three frames; ``bad_frame`` lacks the label(s) switched off."""
    lines = []
    for i in range(3):
        energy = with_energy or i != bad_frame
        forces = with_forces or i != bad_frame
        props = "species:S:1:pos:R:3" + (":forces:R:3" if forces else "")
        header = f'Lattice="5 0 0 0 5 0 0 0 5" Properties={props} pbc="T T T"'
        if energy:
            header += " energy=-3.5"
        lines += ["2", header]
        for j in range(2):
            row = f"Li {j * 1.7:.3f} 0.0 0.0"
            lines.append(row + (" 0.1 0.0 0.0" if forces else ""))
    path.write_text("\n".join(lines) + "\n")


def test_missing_forces_names_file_and_frame(tmp_path):
    path = tmp_path / "bad.extxyz"
    _write_raw_xyz(path, with_energy=True, with_forces=False, bad_frame=2)
    with pytest.raises(DataError, match=r"bad\.extxyz: frame 2.*forces"):
        read_frames(path)


def test_missing_energy_names_file_and_frame(tmp_path):
    path = tmp_path / "bad.extxyz"
    _write_raw_xyz(path, with_energy=False, with_forces=True, bad_frame=1)
    with pytest.raises(DataError, match=r"bad\.extxyz: frame 1"):
        read_frames(path)


def test_unlabelled_db_row_is_refused(tmp_path):
    import ase.db

    path = tmp_path / "bad.db"
    with ase.db.connect(path) as db:
        db.write(make_frames(1)[0])
        db.write(bulk("Li", "bcc", a=3.44))  # no calculator, no labels
    with pytest.raises(DataError, match=r"bad\.db: frame 1"):
        read_frames(path)


def test_missing_unknown_empty_and_garbage_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_frames(tmp_path / "nope.extxyz")
    with pytest.raises(DataError, match=r"unknown data file type '\.csv'"):
        read_frames(tmp_path / "frames.csv")
    (tmp_path / "garbage.extxyz").write_text("this is not\nan xyz file\n")
    with pytest.raises(DataError, match=r"garbage\.extxyz"):
        read_frames(tmp_path / "garbage.extxyz")
    (tmp_path / "empty.db").touch()
    with pytest.raises(DataError, match=r"empty\.db"):
        read_frames(tmp_path / "empty.db")
    assert isinstance(DataError("x"), UserError)


def test_write_refuses_unlabelled_frames(tmp_path):
    with pytest.raises(DataError, match="frame 0"):
        write_frames(tmp_path / "x.extxyz", [bulk("Li", "bcc", a=3.44)])


def test_registered_format_is_dispatched_by_suffix(tmp_path):
    """The extension point the HDF5 reader will use: a reader registered for a suffix is called,
    and its frames are validated like any other."""
    calls = []

    def reader(path):
        calls.append(path)
        return make_frames(2)

    register_format((".testfmt",), "test format", reader)
    path = tmp_path / "data.testfmt"
    path.touch()
    assert len(read_frames(path)) == 2 and calls == [path]
    assert ".testfmt" in supported_suffixes()
    with pytest.raises(DataError, match="not supported"):
        write_frames(path, make_frames(1))


def test_run_file_dataset_is_readable(tmp_path):
    """``.h5`` run files written by :class:`otf_statcut.io.RunLog` read back as labelled frames."""
    from otf_statcut.io import RunLog

    frames = make_frames(2)
    with RunLog.create(tmp_path / "run.h5") as log:
        for i, frame in enumerate(frames):
            log.append_frame(frame, step=i, reason="initial", split=0)
        log.flush()
    back = read_frames(tmp_path / "run.h5")
    assert len(back) == 2
    np.testing.assert_allclose(frame_forces(back[1]), frame_forces(frames[1]))
    np.testing.assert_allclose(frame_stress(back[0]), frame_stress(frames[0]))
    (tmp_path / "other.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"other\.h5"):
        read_frames(tmp_path / "other.h5")
    with pytest.raises(DataError, match="not supported"):
        write_frames(tmp_path / "out.h5", frames)


def test_labelled_frame_copies_and_validates():
    atoms = bulk("Li", "bcc", a=3.44, cubic=True)
    frame = labelled_frame(atoms, -3.8, np.zeros((2, 3)), stress=np.eye(3) * 0.01)
    assert atoms.calc is None and frame is not atoms
    np.testing.assert_allclose(frame_stress(frame), [0.01, 0.01, 0.01, 0, 0, 0])
    assert frame.get_potential_energy() == -3.8
    frame.positions[0] += 0.1  # a moved frame no longer answers with the stale label
    with pytest.raises(Exception):
        frame.get_potential_energy()
    with pytest.raises(DataError, match="shape"):
        labelled_frame(atoms, -3.8, np.zeros((3, 3)))
    with pytest.raises(DataError, match="finite"):
        labelled_frame(atoms, float("nan"), np.zeros((2, 3)))
    with pytest.raises(DataError, match="stress"):
        labelled_frame(atoms, -3.8, np.zeros((2, 3)), stress=np.zeros(4))
    with pytest.raises(DataError, match="my frame"):
        validate_frame(atoms, where="my frame")


def test_per_atom_helpers():
    frames = make_frames(3)
    forces = stack_forces(frames)
    assert forces.shape == (sum(len(a) for a in frames), 3)
    np.testing.assert_array_equal(forces[: len(frames[0])], frame_forces(frames[0]))
    symbols = stack_symbols(frames)
    assert len(symbols) == len(forces) and symbols[len(frames[0])] == "Mg"
    assert species_of(frames) == ("Li", "Mg")
    assert stack_forces([]).shape == (0, 3)
