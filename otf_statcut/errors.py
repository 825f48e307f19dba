"""Exception classes shared by the whole package.

Library code raises; only :mod:`otf_statcut.cli` prints and exits. A :class:`UserError` is a
mistake the user can fix (bad file, bad key, bad value): the CLI prints its message on one line,
without a traceback, and exits with status 2.
"""

from __future__ import annotations


class OTFStatcutError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(OTFStatcutError, ValueError):
    """Bad input from the user: the message names the file, key or value and what is expected."""


class ConfigError(UserError):
    """An input YAML file is invalid (unknown key, wrong type, value out of range)."""


class DataError(UserError):
    """A data file is missing, unreadable, or holds values the method cannot use."""


class FitError(OTFStatcutError, RuntimeError):
    """A distribution could not be fitted to the values given."""


class EnvironmentFailure(OTFStatcutError, OSError):
    """The machine refused what the run needs (disk full, quota, read-only or unwritable path).

    The CLI prints its message (which names the path) on one line and exits with status 4.
    Nothing labelled is lost: the run file holds everything up to the last flush.
    """


#: errno values (and the words in messages of libraries that hide the errno: HDF5, torch) of
#: failures that the environment, not the program or the input, is responsible for.
_ENVIRONMENT_ERRNOS = {28: "no space left on the device", 122: "disk quota exceeded", 30: "read-only file system",
                       13: "permission denied", 1: "operation not permitted", 27: "file too large",
                       5: "write failed (input/output error, or the disk is full)"}
_ENVIRONMENT_WORDS = {"no space left": 28, "errno = 28": 28, "disk quota": 122, "read-only file system": 30,
                      "permission denied": 13, "file too large": 27, "file write failed": 5}


def environment_failure(exc: BaseException, where: str) -> EnvironmentFailure | None:
    """An :class:`EnvironmentFailure` naming the path if ``exc`` is one (disk full, unwritable,
    ...), else None. ``where`` names the path when the exception does not."""
    errno = getattr(exc, "errno", None)
    if errno not in _ENVIRONMENT_ERRNOS:
        text = str(exc).lower()
        errno = next((code for words, code in _ENVIRONMENT_WORDS.items() if words in text), None)
    if errno is None:
        return None
    path = getattr(exc, "filename", None) or where
    return EnvironmentFailure(
        f"{path}: {_ENVIRONMENT_ERRNOS[errno]} ({type(exc).__name__}); everything up to the last checkpoint "
        "is in the run file: free space or fix the permissions, then re-run the same command to resume")
