"""The project's exceptions.

Every mistake a user can make (bad data, a malformed search space, an unknown backbone, an unusable storage URL)
raises a subclass of :class:`AutomlError`; the CLI turns it into one line on stderr and exit code 2. Anything
else is a bug and exits 1. Messages name the thing that is wrong and the fix, on one line.
"""

from __future__ import annotations


class AutomlError(Exception):
    """Base class of every user-facing error: one line, names the problem and the fix; CLI exit code 2."""

    exit_code = 2


class UsageError(AutomlError):
    """A command-line flag or combination of flags that cannot work."""


class DataError(AutomlError):
    """The labeled data cannot be used as given (missing, empty, unreadable, one class, bad columns...)."""


class SearchSpaceError(AutomlError):
    """A search-space YAML file is malformed; the message names the file and the key."""


class BackboneError(AutomlError):
    """A backbone name that no registry entry, timm, Hugging Face or local path can resolve."""


class StorageError(AutomlError):
    """An Optuna storage URL or run directory that cannot be used."""


class ModelDirError(AutomlError):
    """An exported model directory that is missing files or was written by another version."""


class KernelUnavailableError(AutomlError):
    """A kernel backend was requested explicitly where it cannot run (e.g. Triton on a CPU without the interpreter)."""


class SearchFailedError(AutomlError):
    """The search ran but left no model to export (every trial failed, or none meets --max-latency-ms); the
    message says why and what to change. CLI exit code 1: the command itself was valid."""

    exit_code = 1
