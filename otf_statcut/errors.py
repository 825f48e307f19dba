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
