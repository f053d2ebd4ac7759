"""Errors a user can act on.

The CLI prints the message of any :class:`TrainingError` (no traceback) and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TrainingError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class DataError(TrainingError):
    """A dataset could not be read: missing path, corrupt file, inconsistent labels, ..."""


class ConfigError(TrainingError):
    """Options that cannot work together (e.g. more clusters than images)."""


class ExportError(TrainingError):
    """A bundle could not be written where it was asked to go."""
