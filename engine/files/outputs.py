"""Writing result files: checked before a session starts, written atomically, reported in one
line when a write fails."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def check_writable(path: str | None, what: str) -> None:
    """Fail at start-up, not after the session, when an output file cannot be written."""
    from engine.errors import UsageError

    if not path:
        return
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"cannot write {what} {path}: it is a folder (give a file name)")
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {path}: folder {parent} does not exist")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"cannot write {what} {path}: permission denied")
    # The file is written beside itself and renamed over: try that now (read-only mounts,
    # /proc and the like pass os.access).
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise UsageError(f"cannot write {what} {path}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def write_outputs(items) -> list[str]:
    """Write the files asked for at the end of a session, each on its own: `items` are
    (what, path, write(path)) with path None for "not asked".  Returns one line per failure,
    so that a file that cannot be written never hides the others or the transcript."""
    errors = []
    for what, path, write in items:
        if not path:
            continue
        try:
            write(path)
        except OSError as e:
            errors.append(f"could not write {what} {path}: {e.strerror or e}")
    return errors


def write_json_atomic(path: str | Path, data) -> None:
    """Write to a temp file beside the target, then rename: a crash never leaves half a file."""
    from engine.files.export import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_trace(path, tel) -> None:
    """The session's Perfetto trace (engine.telemetry.trace) as a JSON file."""
    from engine.telemetry.trace import build_trace

    write_json_atomic(path, build_trace(tel))
