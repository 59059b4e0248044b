"""The session summary written by --stats-json (and used by the bench and the exports)."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from .telemetry import QUEUES, Snapshot, Telemetry


def status_line(s: Snapshot) -> str:
    st = s.stage_stats
    proc, model = st.get("processing", {}), st.get("model", {})

    def f(v):
        return "  -  " if v is None else f"{v:5.1f}"

    q = s.queues
    c = s.counters
    line = (
        f"{s.elapsed_s:6.1f}s frames {s.frames_processed:5d} | processing p50 {f(proc.get('p50'))}"
        f" p95 {f(proc.get('p95'))} ms | model p50 {f(model.get('p50'))} ms"
        f" | queues in {q['input']} c2s {q['c2s']} s2c {q['s2c']} out {q['output']}"
        f" | underruns {c['underruns']} drops {c['drops_input'] + c['drops_output'] + c['drops_decode']}"
    )
    return line


def build_stats(tel: Telemetry, *, options: dict | None = None, processes: dict | None = None,
                end_reason: str = "") -> dict:
    snap = tel.snapshot()
    stats = {
        "version": 1,
        "started_at": tel.started_at,
        "state": snap.state,
        "end_reason": end_reason,
        "error": snap.error,
        "model": {k: v for k, v in snap.info.items() if k == "model" or k.startswith("server_")},
        "audio": {**{k: snap.info.get(k) for k in ("input", "output", "output_latency_ms",
                                                   "early_encode")},
                  # (the jitter buffer's aim, median over the session's played frames)
                  "playout_ms": tel.playout_p50(full=True) or snap.info.get("playout_ms")},
        "options": options or {},
        "duration_s": round(snap.elapsed_s, 3),
        "frames": {
            "captured": snap.frames_captured,
            "processed": snap.frames_processed,
            "played": snap.frames_played,
            "steps": snap.steps,
            "delay_steps": snap.delay_steps,
        },
        "startup": {
            "launch_to_first_frame_ms": _r(snap.startup_ms),
            "first_capture_to_first_output_ms": _r(snap.first_frame_ms),
            "codec_warmup_ms": snap.info.get("codec_warmup_ms"),
        },
        "stages_ms": tel.stage_stats(full=True),
        "counters": snap.counters,
        "underrun_times_s": list(tel.underrun_times),
        "queues_max": dict(tel.queue_max),
        "queues_now": {q: snap.queues[q] for q in QUEUES},
        "processes": processes or {},
        "warnings": snap.warnings,
        "transcript": {
            "text": snap.text,
            "tokens": [
                {"text": t.text, "id": t.token_id, "step": t.step, "t_ms": round(t.t_ms, 1),
                 "segment": t.segment}
                for t in tel.tokens
            ],
        },
        "machine": machine_info(),
    }
    from .diagnose import diagnose

    # the diagnosis the app and the headless status show, over the whole session
    stats["diagnosis"] = [{"level": v.level, "text": v.text, "rule": v.rule} for v in diagnose(stats)]
    return stats


def _r(v):
    return None if v is None else round(v, 1)


def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("moshi_mlx", "mlx", "rustymimi", "sounddevice", "textual", "numpy"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "versions": vers,
    }


def check_writable(path: str | None, what: str) -> None:
    """Fail at start-up, not after the session, when an output file cannot be written."""
    from .errors import UsageError

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
    from .export import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
