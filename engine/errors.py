"""Errors the engine reports to the user as one line, with the process exit code to use.

Exit codes follow the CLI contract: 2 for bad input or usage (a path that does not exist,
an invalid config), 1 for a runtime failure (network down, a device that vanished).
"""

from __future__ import annotations


class MoshiTuiError(Exception):
    """Base class: the message is one line meant for the user, no traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(MoshiTuiError):
    """The command line itself is wrong."""

    exit_code = 2


class ModelSourceError(MoshiTuiError):
    """Where the model comes from cannot be resolved (missing path, bad config, hub down)."""

    exit_code = 2


class ModelLoadError(MoshiTuiError):
    """The model files exist but cannot be loaded (corrupt, truncated, wrong shapes)."""

    exit_code = 2


class AudioError(MoshiTuiError):
    """An audio device or file cannot be opened or fails while running."""

    exit_code = 1
