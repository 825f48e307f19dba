"""Read and write labelled frames: extended XYZ and ASE databases, chosen by file suffix.

Every frame read is validated (energy and forces present, right shapes, finite); a bad frame
raises :class:`~otf_statcut.errors.DataError` naming the file and the frame index.

Other formats plug in through :func:`register_format`, so callers only ever use
:func:`read_frames` / :func:`write_frames`. ``.h5``/``.hdf5`` files are read (not written) as
the labelled data set of an otf-statcut run file, through :class:`otf_statcut.io.RunLog`, the
one owner of the HDF5 layout (imported only when such a file is read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ase import Atoms

from otf_statcut.errors import DataError

from .frames import labelled_frame, validate_frame

__all__ = ["read_frames", "write_frames", "register_format", "supported_suffixes"]

Reader = Callable[[Path], list[Atoms]]
Writer = Callable[[Path, Sequence[Atoms]], None]


@dataclass(frozen=True)
class _Format:
    name: str
    reader: Reader
    writer: Writer | None


_FORMATS: dict[str, _Format] = {}


def register_format(suffixes: Sequence[str], name: str, reader: Reader, writer: Writer | None = None) -> None:
    """Register a reader (and optionally a writer) for file suffixes.

    Parameters
    ----------
    suffixes : sequence of str
        Lower-case suffixes including the dot, e.g. ``(".h5", ".hdf5")``.
    name : str
        Format name used in error messages.
    reader : callable
        ``reader(path) -> list[Atoms]``; frames it returns are validated by :func:`read_frames`.
    writer : callable, optional
        ``writer(path, frames) -> None``. Without one, :func:`write_frames` refuses the suffix.
    """
    fmt = _Format(name, reader, writer)
    for suffix in suffixes:
        _FORMATS[suffix.lower()] = fmt


def supported_suffixes() -> tuple[str, ...]:
    """Suffixes :func:`read_frames` understands, sorted."""
    return tuple(sorted(_FORMATS))


def _format_for(path: Path) -> _Format:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown data file type {path.suffix!r}; "
            f"expected one of {', '.join(supported_suffixes())}"
        )
    return fmt


def read_frames(path: str | Path) -> list[Atoms]:
    """Read all labelled frames from a file.

    Parameters
    ----------
    path : str or Path
        An ``.extxyz``/``.xyz`` file or an ASE database (``.db``); other suffixes if a reader was
        registered with :func:`register_format`.

    Returns
    -------
    list of ase.Atoms
        Frames with a :class:`SinglePointCalculator` holding energy, forces and, when the file
        has it, stress.

    Raises
    ------
    DataError
        If the file is missing, unreadable, of an unknown type, empty, or a frame lacks a label
        (the message names the file and the 0-based frame index).
    """
    path = Path(path)
    fmt = _format_for(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        frames = fmt.reader(path)
    except DataError:
        raise
    except Exception as exc:  # a parser error of any kind: say which file, keep the cause
        raise DataError(f"{path}: cannot read as {fmt.name}: {exc}") from exc
    if not frames:
        raise DataError(f"{path}: no frames found")
    for index, atoms in enumerate(frames):
        validate_frame(atoms, where=f"{path}: frame {index}")
    return frames


def write_frames(path: str | Path, frames: Sequence[Atoms]) -> None:
    """Write labelled frames to a file (format from the suffix); an existing file is replaced.

    Raises
    ------
    DataError
        If the suffix is unknown or read-only, or a frame lacks a label.
    """
    path = Path(path)
    fmt = _format_for(path)
    if fmt.writer is None:
        raise DataError(f"{path}: writing {fmt.name} files is not supported")
    for index, atoms in enumerate(frames):
        validate_frame(atoms, where=f"frame {index} to be written to {path}")
    if path.exists():
        path.unlink()
    fmt.writer(path, frames)


# --- extended XYZ ------------------------------------------------------------------------------


def _read_extxyz(path: Path) -> list[Atoms]:
    import ase.io

    return list(ase.io.read(path, index=":", format="extxyz"))


def _write_extxyz(path: Path, frames: Sequence[Atoms]) -> None:
    import ase.io

    ase.io.write(path, list(frames), format="extxyz")


# --- ASE database ------------------------------------------------------------------------------


def _read_db(path: Path) -> list[Atoms]:
    import ase.db

    frames = []
    with ase.db.connect(path, type="db") as db:
        for row in db.select():
            atoms = row.toatoms()
            results = dict(atoms.calc.results) if atoms.calc is not None else {}
            info = dict(row.get("data", {}).get("info", {}))
            info.update(row.key_value_pairs)
            atoms.info.update(info)
            if "energy" in results and "forces" in results:
                atoms = labelled_frame(atoms, results["energy"], results["forces"], results.get("stress"))
            frames.append(atoms)
    return frames


def _write_db(path: Path, frames: Sequence[Atoms]) -> None:
    import ase.db

    with ase.db.connect(path, type="db", append=False) as db:
        for atoms in frames:
            db.write(atoms, data={"info": _plain_info(atoms.info)})


def _plain_info(info: dict) -> dict:
    """The JSON-storable part of ``atoms.info`` (numbers, strings, bools, lists of those)."""
    plain = {}
    for key, value in info.items():
        if isinstance(value, (str, int, float, bool)):
            plain[key] = value
        elif hasattr(value, "tolist"):
            plain[key] = value.tolist()
        elif isinstance(value, (list, tuple)):
            plain[key] = list(value)
    return plain


# --- otf-statcut run files (HDF5) ----------------------------------------------------------------


def _read_run_dataset(path: Path) -> list[Atoms]:
    from otf_statcut.io.runlog import RunLog

    with RunLog.open(path, "r") as log:
        return log.read_frames()


register_format((".extxyz", ".xyz"), "extended XYZ", _read_extxyz, _write_extxyz)
register_format((".db",), "ASE database", _read_db, _write_db)
register_format((".h5", ".hdf5"), "otf-statcut run file (HDF5)", _read_run_dataset)
