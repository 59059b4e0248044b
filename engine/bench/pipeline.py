"""`moshi-tui bench pipeline`: the compute floor, then a full headless session, side by side.

Order matters on a shared machine: the isolated codec and step benches run first, in this same
run, so the floor and the session are measured under the same conditions.  The session is a
real `Session` (spawned server, four client loops, paced source and sink); only its source is
chosen here: a WAV input (by default the bundled speech) is looped so `--seconds` sets the length.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Callable

from engine.audio import FRAME_MS
from engine.bench.codec_mlx import run_codec_mlx_isolated
from engine.bench.measure import run_codec_isolated, run_step
from engine.model.source import ModelOptions, resolve
from engine.pipeline.codec import choose_codec
from engine.telemetry.diagnose import diagnose
from engine.telemetry.stages import percentiles

Progress = Callable[[str], None]
SAMPLE_EVERY_S = 1.0  # CPU/RSS sampling period during the session
STATUS_EVERY_S = 5.0  # progress status line period


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _p50(d: dict | None) -> float | None:
    return None if not d else d.get("p50")


def _sum(*xs):
    return None if any(x is None for x in xs) else round(sum(xs), 3)


def _sub(a, b):
    return None if a is None or b is None else round(a - b, 3)


def looped_endpoints(input_spec: str | None, output_spec: str | None):
    """A bench session's (source, sink): a WAV input (by default the bundled speech) is looped,
    so the bench's length is the session's."""
    from engine.audio import BUNDLED_SPEECH
    from engine.audio.devices import open_sink, open_source

    return (open_source(input_spec or str(BUNDLED_SPEECH), loop=True),
            open_sink(output_spec, input_spec=input_spec))


def frame_breakdown(records) -> dict:
    """Per-frame figures from complete FrameRecords (ms percentiles).

    `encode_work` / `decode_work` run from submission to result: with a second frame already
    waiting inside rustymimi they include that wait.  rustymimi works one frame at a time per
    direction (FIFO), so a frame's codec work cannot start before the previous frame's result:
    `*_service` starts at max(submission, previous result) -- the codec's own time.
    `plumbing` = processing - (encode_service + model + decode_service), per frame.
    """
    names = ("input_wait", "encode_service", "downlink_wait", "decode_service", "output_wait",
             "plumbing")
    parts: dict[str, list[float]] = {k: [] for k in names}
    enc_start: dict[int, int] = {}
    dec_start: dict[int, int] = {}
    prev = 0
    for r in sorted((r for r in records if r.t_enc0 and r.t_enc), key=lambda r: r.t_enc0):
        enc_start[r.frame] = max(r.t_enc0, prev)
        prev = r.t_enc
    prev = 0
    for r in sorted((r for r in records if r.t_dec0 and r.t_dec), key=lambda r: r.t_dec0):
        dec_start[r.frame] = max(r.t_dec0, prev)
        prev = r.t_dec
    for r in records:
        if r.t_cap and r.t_enc0:
            parts["input_wait"].append((r.t_enc0 - r.t_cap) / 1e6)
        if r.frame in enc_start:
            parts["encode_service"].append((r.t_enc - enc_start[r.frame]) / 1e6)
        if r.t_step1 and r.t_dec0:
            parts["downlink_wait"].append((r.t_dec0 - r.t_step1) / 1e6)
        if r.frame in dec_start:
            parts["decode_service"].append((r.t_dec - dec_start[r.frame]) / 1e6)
        if r.t_dec and r.t_play:
            parts["output_wait"].append((r.t_play - r.t_dec) / 1e6)
        if r.t_cap and r.t_step0 and r.t_step1 and r.frame in enc_start and r.frame in dec_start:
            work = ((r.t_enc - enc_start[r.frame]) + (r.t_step1 - r.t_step0)
                    + (r.t_dec - dec_start[r.frame]))
            parts["plumbing"].append(((r.t_dec - r.t_cap) - work) / 1e6)
    out = {k: percentiles(v) for k, v in parts.items()}
    out["_sums_s"] = {
        "encode_service": round(sum(parts["encode_service"]) / 1000.0, 3),
        "decode_service": round(sum(parts["decode_service"]) / 1000.0, 3),
    }
    return out


def _growth(series: list[float]) -> dict | None:
    if not series:
        return None
    first, last = series[0], series[-1]
    return {"first_mb": first, "last_mb": last, "max_mb": max(series),
            "growth_percent": round(100.0 * (last - first) / first, 2) if first else None,
            "samples": len(series)}


def _rss_summary(samples: list[dict], segment_at_s: float | None = None) -> dict:
    """RSS (and what MLX holds: GPU memory on a GPU) of each process, first to last sample,
    over the session and over its first segment (before `segment_at_s`)."""
    out = {}
    for proc in ("client", "server"):
        ours = [s for s in samples if proc in s]
        figures = {}
        for key in ("rss_mb", "mlx_active_mb"):
            series = [s[proc][key] for s in ours if s[proc].get(key)]
            first = [s[proc][key] for s in ours if s[proc].get(key)
                     and (segment_at_s is None or s["t_s"] < segment_at_s)]
            whole = _growth(series)
            if whole is None:
                continue
            name = key.removesuffix("_mb")
            figures[name] = {**whole, "first_segment": _growth(first)}
        if figures:
            rss = figures.get("rss", {})
            out[proc] = {**{k: v for k, v in rss.items() if k != "first_segment"},
                         "first_segment_growth_percent": (rss.get("first_segment") or {}).get(
                             "growth_percent"), **({"mlx": figures["mlx_active"]}
                                                   if "mlx_active" in figures else {})}
    return out


def run_pipeline(
    mopts: ModelOptions,
    *,
    input_spec: str | None = None,
    output_spec: str | None = "null",
    seconds: float = 30.0,
    floor_steps: int = 100,
    floor_frames: int = 50,
    max_steps: int | None = None,
    trace: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Run the floor benches then a session; returns the JSON-ready result (raises on bad input)."""
    from engine.session.config import SessionConfig
    from engine.session.local import Session
    from engine.session.runner import Every, SessionRunner
    from engine.telemetry.late_frames import underrun_text
    from engine.telemetry.stats import status_line

    resolved = resolve(mopts, progress=lambda s: _say(progress, f"model: {s}"))
    # Open (validate) the endpoints before spending a minute on benches.
    endpoints = looped_endpoints(input_spec, output_spec)

    backend = choose_codec(mopts.codec)
    floor = run_codec_mlx_isolated if backend == "mlx" else run_codec_isolated
    codec = floor(resolved.mimi_weight, floor_frames, progress=progress)
    step = run_step(resolved, floor_steps, max_steps=max_steps, lm_mode=mopts.lm_step,
                    progress=progress)

    cfg = SessionConfig(model=mopts, input=input_spec, output=output_spec, seconds=seconds,
                        max_steps=max_steps, keep_records=True, save=False, aec="off")
    session = Session(cfg)  # its Telemetry's launch stamp: startup is measured from here
    session.prepare(endpoints)
    source, sink = session.source, session.sink
    samples: list[dict] = []
    _say(progress, f"session: {seconds:g} s, input {source.label}, output {sink.label}")
    # Ctrl+C or SIGTERM (a time limit) ends the session early; what it measured is reported
    runner = SessionRunner(session)
    sampling, status = Every(SAMPLE_EVERY_S), Every(STATUS_EVERY_S)
    told = 0

    def hook(now: float) -> None:
        nonlocal told
        if runner.interrupted.is_set() or not session.live.is_set():
            return
        if sampling.due(now):
            figs = session.process_figures()
            if figs:
                t0 = session.tel.t_start
                figs["t_s"] = round((time.monotonic_ns() - t0) / 1e9, 2) if t0 else 0.0
                samples.append(figs)
        if status.due(now):
            _say(progress, status_line(session.snapshot()))
        explained = session.tel.underruns_explained
        while told < len(explained):  # each as it happens: a run cut short keeps them
            _say(progress, underrun_text(explained[told]))
            told += 1

    runner.run(hook, signals=("SIGINT", "SIGTERM"), on_interrupt=lambda: _say(
        progress, "interrupted: stopping the session, reporting what it measured"))
    interrupted = runner.interrupted

    tel = session.tel
    stats = session.stats(options={"seconds": seconds, "input": source.label,
                                   "output": sink.label})
    stats.pop("transcript", None)
    stats["text_tokens"] = len(tel.tokens)
    records = list(tel.done_frames) + list(tel.frames.values())
    breakdown = frame_breakdown(records)
    st = stats["stages_ms"]

    # The floor follows how the session encoded: with early encode (most frames), only the rest
    # of a frame after its first 40 ms is on the critical path.
    c = stats["counters"]
    encoded = (st.get("encode_work") or {}).get("n") or 0
    early_share = round(c.get("early_encodes", 0) / encoded, 3) if encoded else 0.0
    enc_key = "encode_rest_ms" if early_share >= 0.5 else "encode_ms"
    enc_sync, dec_sync = _p50(codec["sync"][enc_key]), _p50(codec["sync"]["decode_ms"])
    enc_stream, dec_stream = _p50(codec["stream"][enc_key]), _p50(codec["stream"]["decode_ms"])
    step_p50 = _p50(step["step_ms"])
    floor = _sum(enc_sync, step_p50, dec_sync)
    floor_stream = _sum(enc_stream, step_p50, dec_stream)
    floor_whole = _sum(_p50(codec["sync"]["encode_ms"]), step_p50, dec_sync)
    proc = st["processing"]
    work_p50 = _sum(_p50(st["encode_work"]), _p50(st["model"]), _p50(st["decode_work"]))
    out_lat = float(tel.info.output_latency_ms or 0.0)
    play_p50 = _p50(st["playback"])
    duration = stats["duration_s"] or 0.0
    first_proc = tel.stage_all["processing"][0] if len(tel.stage_all["processing"]) else None
    busy = {}
    if duration > 0:
        sums = breakdown.pop("_sums_s")
        busy = {
            "client_codec_work_percent": round(
                100.0 * (sums["encode_service"] + sums["decode_service"]) / duration, 1),
            "server_model_work_percent": round(
                100.0 * sum(tel.stage_all["model"]) / 1000.0 / duration, 1),
        }
    else:
        breakdown.pop("_sums_s")
    # CPU one frame needs at full speed: codec CPU time (all rustymimi threads) + model step.
    demand = None
    codec_cpu = codec["sync"].get("cpu_ms_per_frame")
    if codec_cpu is not None and step_p50 is not None and step.get("cpu_percent") is not None:
        demand = round((codec_cpu + step_p50 * step["cpu_percent"] / 100.0) / FRAME_MS, 2)
    summary = {
        "interrupted": interrupted.is_set(),
        "cpu_demand_cores": demand,
        "cpus": os.cpu_count(),
        "early_encode_share": early_share,
        "floor_encode": "rest" if enc_key == "encode_rest_ms" else "whole",
        "floor_ms": floor,
        "floor_stream_ms": floor_stream,
        "floor_whole_frame_ms": floor_whole,
        "processing_p50_ms": proc["p50"],
        "processing_p99_ms": proc["p99"],
        "overhead_ms": _sub(proc["p50"], floor),
        "processing_over_floor": (round(proc["p50"] / floor, 3)
                                  if proc["p50"] is not None and floor else None),
        "in_session_work_p50_ms": work_p50,
        "plumbing_ms": _sub(proc["p50"], work_p50),  # as defined: difference of the p50s
        "plumbing_per_frame_p50_ms": breakdown["plumbing"]["p50"],
        "playback_p50_ms": play_p50,
        "device_output_latency_ms": out_lat,
        "playback_with_device_p50_ms": None if play_p50 is None else round(play_p50 + out_lat, 3),
        "underruns": c.get("underruns", 0),
        # what made each underrun's frame late: the stage that took longer than usual
        "underrun_stages": dict(Counter(
            e["stage"] or ("drops" if e.get("dropped_before") else "none")
            for e in tel.underruns_explained)),
        "drops": {k: c.get(k, 0) for k in ("drops_input", "drops_decode", "drops_output")},
        "startup_ms": stats["startup"]["launch_to_first_frame_ms"],
        "first_live_frame_processing_ms": None if first_proc is None else round(first_proc, 3),
        "first_capture_to_first_output_ms": stats["startup"]["first_capture_to_first_output_ms"],
        "processes": session.cpu,
        "work_share": busy,
        "rss": _rss_summary(samples, (session.tel.segment_times or [None])[0]),
    }
    if trace:
        from engine.files.outputs import write_trace

        write_trace(trace, tel)
    verdicts = diagnose({"session": stats, "frame_breakdown_ms": breakdown, "summary": summary})
    return {
        "model": resolved.label,
        "floor": {"codec": codec, "step": step},
        "summary": summary,
        "frame_breakdown_ms": breakdown,
        "session": stats,
        "verdicts": [{"level": v.level, "text": v.text, "rule": v.rule} for v in verdicts],
        "error": tel.error,
        "exit_code": session.exit_code if tel.error else 0,
    }
