"""The session summary written by --stats-json (and used by the bench and the exports)."""

from __future__ import annotations

import os
import platform
import sys

from engine.telemetry.collect import Snapshot, Telemetry
from engine.telemetry.stages import QUEUES


def status_line(s: Snapshot) -> str:
    """One line of the headless status: the frame's stages of a local session; the round trip,
    the end-to-end estimate, the server's step (once the server sends one) and the Opus work of
    a remote session, which cannot time a frame end to end."""
    st = s.stage_stats

    def f(stage: str, q: str = "p50") -> str:
        v = (st.get(stage) or {}).get(q)
        return "  -  " if v is None else f"{v:5.1f}"

    q = s.queues
    c = s.counters
    drops = c["drops_input"] + c["drops_output"] + c["drops_decode"] + c.get("drops_offline", 0)
    if s.info.remote_url is None:
        timing = (f"processing p50 {f('processing')} p95 {f('processing', 'p95')} ms"
                  f" | model p50 {f('model')} ms")
    else:
        server = f" | server step p50 {f('model')} ms" if (st.get("model") or {}).get("n") else ""
        timing = (f"rtt p50 {f('rtt')} e2e p50 {f('e2e')} ms{server}"
                  f" | opus {f('encode_work').strip()} + {f('decode_work').strip()} ms")
    return (
        f"{s.elapsed_s:6.1f}s frames {s.frames_processed:5d} | {timing}"
        f" | queues in {q['input']} c2s {q['c2s']} s2c {q['s2c']} out {q['output']}"
        f" | underruns {c['underruns']} drops {drops}"
    )


def build_stats(tel: Telemetry, *, options: dict | None = None, processes: dict | None = None,
                end_reason: str = "") -> dict:
    snap = tel.snapshot()
    info = snap.info.to_dict()
    stats = {
        "version": 1,
        "started_at": tel.started_at,
        "state": snap.state,
        "end_reason": end_reason,
        "error": snap.error,
        "model": {k: v for k, v in info.items()
                  if k in ("model", "mode", "codec") or k.startswith("server_")},
        "audio": {**{k: info.get(k) for k in ("input", "output", "output_latency_ms", "aec",
                                                   "early_encode")},
                  # (the jitter buffer's aim, median over the session's played frames)
                  "playout_ms": tel.playout_p50(full=True) or snap.info.playout_ms},
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
            "codec_warmup_ms": snap.info.codec_warmup_ms,
        },
        "stages_ms": tel.stage_stats(full=True),
        "counters": snap.counters,
        "underrun_times_s": list(tel.underrun_times),
        "underruns_explained": list(tel.underruns_explained),
        "slowest_frames": tel.slowest.frames(),
        "gc": {**({"client": tel.gc_watch.summary()} if tel.gc_watch is not None else {}),
               **tel.gc},
        "queues_max": dict(tel.queue_max),
        "queues_now": {q: snap.queues[q] for q in QUEUES},
        "processes": processes or {},
        "warnings": snap.warnings,
        "transcript": {
            "text": snap.text,
            "tokens": [
                {"text": t.text, "id": t.token_id, "step": t.step, "t_ms": round(t.t_ms, 1),
                 "segment": t.segment, "segment_reason": t.segment_reason}
                for t in tel.tokens
            ],
        },
        "machine": machine_info(),
        # voice activity of both sides and every turn (engine.telemetry.voice), when measured
        "turns": tel.voice.record(tel.t_start) if tel.voice is not None else None,
    }
    from engine.telemetry.diagnose import diagnose

    # the diagnosis the app and the headless status show, over the whole session
    stats["diagnosis"] = [{"level": v.level, "text": v.text, "rule": v.rule} for v in diagnose(stats)]
    return stats


def _r(v):
    return None if v is None else round(v, 1)


def _mlx_device() -> str | None:
    """Where MLX computes by default here: "Device(gpu, 0)" (CUDA, Metal) or "Device(cpu, 0)"."""
    try:
        import mlx.core as mx

        return str(mx.default_device())
    except Exception:
        return None


def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("moshi_mlx", "mlx", "mlx-cuda-13", "mlx-cuda-12", "mlx-metal", "mlx-cpu",
                "rustymimi", "sounddevice", "textual", "numpy"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "mlx_device": _mlx_device(),
        "mlx_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MLX_")},
        "versions": vers,
    }
