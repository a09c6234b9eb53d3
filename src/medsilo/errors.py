"""Errors that users can act on.

Every error medsilo raises on bad input is a :class:`MedsiloError`: its message names
*what* is wrong (file, field, row, value), *the rule* broken, and *what to do*. The CLI
turns it into a message and exit code :data:`EXIT_BAD_INPUT` with no traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class MedsiloError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    exit_code: int = EXIT_BAD_INPUT


class ConfigError(MedsiloError):
    """A study file or a parameter breaks a rule."""


class DataError(MedsiloError):
    """A data file, column, row or value cannot be used."""


class RunDirError(MedsiloError):
    """A run directory is missing, incomplete or belongs to another study."""
