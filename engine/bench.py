"""`moshi-tui bench step|codec|pipeline`: where the time goes, one command away.

    bench step     [model options] [--steps N]                 LmGen.step in a server process
    bench codec    [--mimi-weight PATH | model options] [--frames N]   rustymimi per frame
    bench pipeline [model options] [--seconds N] [--input ..]  floor + a full headless session

Each prints an aligned table (progress goes to stderr) and, with `--json PATH`, writes the
figures with the machine, the versions and the exact options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import UsageError
from .options import _Parser, add_model_options, model_options
from .stats import check_writable, machine_info, write_json_atomic

STAGE_ROWS = ("encode", "encode_work", "uplink", "queue", "model", "decode", "decode_work",
              "processing", "playback")
BREAKDOWN_ROWS = ("input_wait", "encode_service", "downlink_wait", "decode_service",
                  "output_wait", "plumbing")


# ----------------------------------------------------------------------------------- tables


def fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(headers: list[str], rows: list[list], left: tuple[int, ...] = (0,)) -> str:
    """An aligned text table: the `left` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        out = []
        for i, (c, w) in enumerate(zip(r, widths)):
            out.append(c.ljust(w) if i in left else c.rjust(w))
        lines.append("  ".join(out).rstrip())
    return "\n".join(lines)


PCT_HEAD = ["p50", "p95", "p99", "max", "mean", "n"]


def pct_row(name: str, st: dict | None) -> list:
    st = st or {}
    return [name] + [st.get(k) for k in ("p50", "p95", "p99", "max", "mean", "n")]


# ----------------------------------------------------------------------------------- output


def _progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _envelope(kind: str, args, argv: list[str]) -> dict:
    machine = machine_info()
    try:
        machine["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        machine["loadavg"] = None
    opts = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    return {
        "bench": kind,
        "version": 1,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "options": opts,
        "argv": ["bench", *argv],
    }


# ----------------------------------------------------------------------------------- step


def format_step(r: dict, label: str) -> str:
    lines = [
        f"bench step: {label}, {r['steps']} steps after warmup ({r['mlx_device']})",
        table(["", *PCT_HEAD], [pct_row("step ms", r["step_ms"])]),
        f"steps/s {fmt(r['steps_per_s'])}  (wall {fmt(r['wall_s'], 2)} s, server CPU "
        f"{fmt(r['cpu_percent'])} %, RSS {fmt(r['rss_mb'])} MB)",
        f"load {fmt(r['load_ms'], 0)} ms, warmup {fmt(r['warmup_ms'], 0)} ms; "
        f"{r['audio_none_steps']} step(s) without audio (codebook delays)",
    ]
    return "\n".join(lines)


def _cmd_step(args, argv) -> int:
    from .bench_measure import run_step
    from .model_source import resolve

    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    check_writable(args.json, "--json")
    out = _envelope("step", args, argv)
    resolved = resolve(model_options(args), progress=lambda s: _progress(f"model: {s}"))
    r = run_step(resolved, args.steps, max_steps=args.max_steps, progress=_progress)
    out["model"] = resolved.label
    out["result"] = r
    print(format_step(r, resolved.label))
    if args.json:
        write_json_atomic(args.json, out)
    return 0


# ----------------------------------------------------------------------------------- codec


def format_codec(r: dict) -> str:
    rows = []
    for api in ("sync", "stream"):
        d = r[api]
        rows.append(pct_row(f"encode ({api})", d["encode_ms"]))
        if "encode_head_ms" in d:
            rows.append(pct_row(f"  first 40 ms ({api})", d["encode_head_ms"]))
        rows.append(pct_row(f"  rest after it ({api})", d["encode_rest_ms"]))
        rows.append(pct_row(f"decode ({api})", d["decode_ms"]))
        rows.append(pct_row(f"enc+dec ({api})", d["encode_decode_ms"]))
    sy, st = r["sync"], r["stream"]
    lines = [
        f"bench codec: {r['mimi_weight']}, {sy['frames']} frames of 80 ms speech",
        table(["ms per 80 ms frame", *PCT_HEAD], rows),
        f"sync   = {sy['api']}: CPU {fmt(sy['cpu_ms_per_frame'])} ms/frame",
        f"stream = {st['api']}: CPU {fmt(st['cpu_ms_per_frame'])} ms/frame",
        f"         (waits ~85 % of its median, then polls every {fmt(st['poll_ms'], 2)} ms)",
        "encode split in two (first 40 ms, then the rest 40 ms later, as a session's early encode"
        f" does it): CPU {fmt(sy['encode_split_cpu_ms_per_frame'])} ms/frame vs "
        f"{fmt(sy['encode_cpu_ms_per_frame'])} whole (sync)",
        "(the two APIs alternate frame by frame, so machine load weighs on both alike)",
    ]
    return "\n".join(lines)


def _mimi_path(args) -> tuple[str, str]:
    from .model_source import resolve

    if args.mimi_weight:
        p = Path(args.mimi_weight).expanduser()
        if not p.is_file():
            raise UsageError(f"mimi weights not found: {p}")
        return str(p), p.name
    resolved = resolve(model_options(args), progress=lambda s: _progress(f"model: {s}"))
    return str(resolved.mimi_weight), resolved.label


def _cmd_codec(args, argv) -> int:
    from .bench_measure import run_codec

    if args.frames < 1:
        raise UsageError("--frames must be at least 1")
    check_writable(args.json, "--json")
    out = _envelope("codec", args, argv)
    path, label = _mimi_path(args)
    r = run_codec(path, args.frames, wav=args.wav, progress=_progress)
    out["model"] = label
    out["result"] = r
    print(format_codec(r))
    if args.json:
        write_json_atomic(args.json, out)
    return 0


# ----------------------------------------------------------------------------------- pipeline


def format_pipeline(r: dict) -> str:
    s = r["summary"]
    st = r["session"]["stages_ms"]
    fl = r["floor"]
    lines = [f"bench pipeline: {r['model']}, {fmt(r['session']['duration_s'])} s live, "
             f"input {r['session']['audio']['input']}, output {r['session']['audio']['output']}"]
    rows = [pct_row(name, st.get(name)) for name in STAGE_ROWS]
    rows += [pct_row(f"({name})", r["frame_breakdown_ms"].get(name)) for name in BREAKDOWN_ROWS]
    lines.append(table(["stage ms", *PCT_HEAD], rows))
    lines.append("")
    cs, cst, sp = fl["codec"]["sync"], fl["codec"]["stream"], fl["step"]["step_ms"]
    rest = s.get("floor_encode") == "rest"
    ek = "encode_rest_ms" if rest else "encode_ms"
    floor_rows = [
        ["isolated encode p50" + (" (after the first 40 ms)" if rest else ""),
         cs[ek]["p50"], cst[ek]["p50"]],
        ["isolated step p50", sp["p50"], sp["p50"]],
        ["isolated decode p50", cs["decode_ms"]["p50"], cst["decode_ms"]["p50"]],
        ["compute floor", s["floor_ms"], s["floor_stream_ms"]],
    ]
    if rest:
        floor_rows.append(["  frames encoded whole (Kyutai's CLI)", s["floor_whole_frame_ms"], None])
    lines.append(table(["floor ms (same run)", "sync codec", "StreamTokenizer"], floor_rows))
    lines.append(f"early encode: {fmt(100.0 * (s.get('early_encode_share') or 0.0))} % of frames "
                 "had their first 40 ms encoded while the rest was captured")
    if s.get("cpu_demand_cores") is not None:
        lines.append(f"CPU one frame needs at full speed: {fmt(s['cpu_demand_cores'], 2)} of "
                     f"{s.get('cpus')} cores (codec CPU {fmt(cs['cpu_ms_per_frame'])} ms + step)")
    lines.append("")
    procs = s["processes"] or {}
    rss = s["rss"] or {}
    sum_rows = [
        ["processing p50 / p99 ms", f"{fmt(s['processing_p50_ms'])} / {fmt(s['processing_p99_ms'])}"],
        ["pipeline overhead (processing p50 - floor)",
         f"{fmt(s['overhead_ms'])} ms  (x{fmt(s['processing_over_floor'], 3)} floor)"],
        ["plumbing (processing - enc/model/dec work, p50s)",
         f"{fmt(s['plumbing_ms'])} ms  (per frame, codec service times: p50 "
         f"{fmt(s['plumbing_per_frame_p50_ms'])} ms)"],
        ["mic-to-speaker p50", f"{fmt(s['playback_p50_ms'])} ms  (+ device "
         f"{fmt(s['device_output_latency_ms'])} ms = {fmt(s['playback_with_device_p50_ms'])} ms)"],
        ["underruns / drops (input, decode, output)",
         f"{s['underruns']} / {s['drops']['drops_input']}, {s['drops']['drops_decode']}, "
         f"{s['drops']['drops_output']}"],
        ["startup (session start to first frame)", f"{fmt(s['startup_ms'])} ms"],
        ["first live frame processing",
         f"{fmt(s['first_live_frame_processing_ms'])} ms  (first capture to first output "
         f"{fmt(s['first_capture_to_first_output_ms'])} ms)"],
    ]
    for proc in ("client", "server"):
        p = procs.get(proc) or {}
        g = rss.get(proc) or {}
        work = s["work_share"].get(
            "client_codec_work_percent" if proc == "client" else "server_model_work_percent")
        py = (f"; Python threads {fmt(p['python_cpu_percent'])} %: loops, polling, pacing"
              if p.get("python_cpu_percent") is not None else "")
        sum_rows.append([
            f"{proc} process",
            f"CPU {fmt(p.get('cpu_percent'))} % ({'codec' if proc == 'client' else 'model'} "
            f"busy {fmt(work)} % of wall{py}), "
            f"RSS {fmt(p.get('rss_mb'))} MB (growth {fmt(g.get('growth_percent'), 2)} %)",
        ])
    lines.append(table(["summary", ""], sum_rows, left=(0, 1)))
    lines.append("")
    lines.append("diagnosis:")
    for v in r["verdicts"]:
        lines.append(f"  [{v['level']}] {v['text']}")
    return "\n".join(lines)


def _report_session(args, out: dict, r: dict, text: str) -> int:
    """Print a session bench's table, write its JSON, and exit non-zero if the session failed."""
    out.update(r)
    print(text)
    if args.json:
        write_json_atomic(args.json, out)
    if r["error"]:
        print(f"moshi-tui: error: {r['error']}", file=sys.stderr)
        return r["exit_code"] or 1
    return 0


def _cmd_pipeline(args, argv) -> int:
    from .bench_pipeline import run_pipeline

    if args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    if args.floor_steps < 1 or args.floor_frames < 1:
        raise UsageError("--floor-steps and --floor-frames must be at least 1")
    check_writable(args.json, "--json")
    check_writable(args.trace, "--trace")
    out = _envelope("pipeline", args, argv)
    r = run_pipeline(
        model_options(args), input_spec=args.input, output_spec=args.output,
        seconds=args.seconds, floor_steps=args.floor_steps, floor_frames=args.floor_frames,
        max_steps=args.max_steps, trace=args.trace, progress=_progress,
    )
    return _report_session(args, out, r, format_pipeline(r))


# ----------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moshi-tui bench", description="Measure where the time goes.")
    sub = p.add_subparsers(dest="command", metavar="step|codec|pipeline|soak")
    sub.required = True

    s = sub.add_parser("step", help="LmGen.step in a server process, on dummy codes")
    add_model_options(s)
    s.add_argument("--steps", type=int, default=200, help="timed steps after warmup (200)")
    s.add_argument("--max-steps", type=int, help="LM context length (as a session's --max-steps)")
    s.add_argument("--json", metavar="PATH", help="write the figures as JSON")

    c = sub.add_parser("codec", help="rustymimi encode/decode per 80 ms frame")
    add_model_options(c)
    c.add_argument("--frames", type=int, default=100, help="timed frames after warmup (100)")
    c.add_argument("--wav", metavar="FILE.wav", help="speech to encode (the bundled speech)")
    c.add_argument("--json", metavar="PATH", help="write the figures as JSON")

    q = sub.add_parser("pipeline", help="compute floor + a full headless session")
    add_model_options(q)
    q.add_argument("--input", "-i", metavar="DEV|FILE.wav",
                   help="input device, WAV file (looped) or 'silence' "
                   "(default: the bundled speech, looped)")
    q.add_argument("--output", "-o", metavar="DEV|FILE.wav", default="null",
                   help="output device, WAV file, or 'null' (null)")
    q.add_argument("--seconds", type=float, default=30.0, help="live seconds (30)")
    q.add_argument("--floor-steps", type=int, default=100, help="steps of the floor's step bench (100)")
    q.add_argument("--floor-frames", type=int, default=50, help="frames of the floor's codec bench (50)")
    q.add_argument("--max-steps", type=int, help="LM context length before a new segment")
    q.add_argument("--trace", metavar="PATH", help="also write the session's Perfetto trace")
    q.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    k = sub.add_parser("soak", help="a long session, reported minute by minute")
    add_model_options(k)
    k.add_argument("--minutes", type=float, default=10.0, help="session length (10)")
    k.add_argument("--input", "-i", metavar="DEV|FILE.wav",
                   help="input (default: the bundled speech, looped)")
    k.add_argument("--output", "-o", metavar="DEV|FILE.wav", default="null")
    k.add_argument("--max-steps", type=int, help="LM context length before a new segment")
    k.add_argument("--minute-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    k.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    return p


def _cmd_soak(args, argv) -> int:
    from .bench_soak import HEADER, format_soak, run_soak

    if args.minutes <= 0:
        raise UsageError("--minutes must be positive")
    check_writable(args.json, "--json")
    out = _envelope("soak", args, argv)
    print(HEADER, file=sys.stderr, flush=True)
    r = run_soak(model_options(args), minutes=args.minutes, input_spec=args.input,
                 output_spec=args.output, max_steps=args.max_steps,
                 minute_s=args.minute_seconds, progress=_progress)
    return _report_session(args, out, r, format_soak(r))


def main(argv: list[str]) -> int:
    argv = list(argv)
    args = build_parser().parse_args(argv)
    cmd = {"step": _cmd_step, "codec": _cmd_codec, "pipeline": _cmd_pipeline,
           "soak": _cmd_soak}[args.command]
    return cmd(args, argv)
