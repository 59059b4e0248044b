"""Keep stray stderr output from garbling the full-screen app.

Textual draws on `sys.__stderr__`. The model server process (spawned: it inherits fd 2) and C
libraries in this process (PortAudio, MLX) write to fd 2 directly, which would print over the
screen. While the app runs, fd 2 points at a log file in the session folder, and Textual draws
on a duplicate of the terminal descriptor instead.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def stderr_to_file(path: Path):
    try:
        sys.stderr.flush()
        term_fd = os.dup(2)
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # no fd 2, or the folder is not writable: run without the guard
        yield
        return
    term = os.fdopen(term_fd, "w", encoding=getattr(sys.__stderr__, "encoding", None) or "utf-8",
                     errors="replace", closefd=False)
    saved = sys.__stderr__, sys.stderr
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.__stderr__ = sys.stderr = term
    try:
        yield
    finally:
        try:
            term.flush()
        except OSError:
            pass
        os.dup2(term_fd, 2)
        os.close(term_fd)
        sys.__stderr__, sys.stderr = saved


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker before Textual captures sys.stderr.

    The tracker starts lazily at the first `spawn` and passes `sys.stderr.fileno()` to the child;
    under Textual that is a capture object whose fileno() is -1, and spawning fails with
    "bad value(s) in fds_to_keep".
    """
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception:  # noqa: BLE001 - not available on this platform: nothing to prepare
        pass
