"""`moshi-tui bench step|codec|pipeline|soak|turns`: where the time goes, one command away.

    bench step     [model options] [--steps N]                 LmGen.step in a server process
    bench codec    [--mimi-weight PATH | model options] [--frames N]   Mimi per frame
    bench pipeline [model options] [--seconds N] [--input ..]  floor + a full headless session
    bench soak     [model options] [--minutes N] [--input ..]  a long session, minute by minute
    bench turns    [model options] [--scenario S] [--repeats N]  turn-taking on scripted speech

Each prints an aligned table (progress goes to stderr) and, with `--json PATH`, writes the
figures with the machine, the versions and the exact options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engine.bench.report import format_codec, format_codec_mlx, format_pipeline, format_step
from engine.cli.options import _Parser, add_model_options, model_options
from engine.errors import UsageError
from engine.files.outputs import check_writable, write_json_atomic
from engine.pipeline.codec import choose_codec
from engine.telemetry.stats import machine_info


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


def _cmd_step(args, argv) -> int:
    from engine.bench.measure import run_step
    from engine.model.source import resolve

    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    check_writable(args.json, "--json")
    out = _envelope("step", args, argv)
    resolved = resolve(model_options(args), progress=lambda s: _progress(f"model: {s}"))
    r = run_step(resolved, args.steps, max_steps=args.max_steps, lm_mode=args.lm_step,
                 progress=_progress)
    out["model"] = resolved.label
    out["result"] = r
    print(format_step(r, resolved.label))
    if args.json:
        write_json_atomic(args.json, out)
    return 0


def _mimi_path(args) -> tuple[str, str]:
    from engine.model.source import resolve

    if args.mimi_weight:
        p = Path(args.mimi_weight).expanduser()
        if not p.is_file():
            raise UsageError(f"mimi weights not found: {p}")
        return str(p), p.name
    resolved = resolve(model_options(args), progress=lambda s: _progress(f"model: {s}"))
    return str(resolved.mimi_weight), resolved.label


def _cmd_codec(args, argv) -> int:
    from engine.bench.measure import run_codec

    if args.frames < 1:
        raise UsageError("--frames must be at least 1")
    check_writable(args.json, "--json")
    out = _envelope("codec", args, argv)
    path, label = _mimi_path(args)
    out["model"] = label
    if choose_codec(args.codec) == "mlx":
        from engine.bench.codec_mlx import run_codec_mlx

        _progress(f"codec: MLX's Mimi, {args.frames} frames")
        r = run_codec_mlx(path, args.frames, compare_rustymimi=True)
        print(format_codec_mlx(r))
    else:
        r = run_codec(path, args.frames, wav=args.wav, progress=_progress)
        print(format_codec(r))
    out["result"] = r
    if args.json:
        write_json_atomic(args.json, out)
    return 0


def _report_session(args, out: dict, r: dict, text: str) -> int:
    """Print a session bench's table, write its JSON, and exit non-zero if the session failed."""
    out.update(r)
    print(text)
    if args.json:
        write_json_atomic(args.json, out)
    if r["error"]:
        print(f"moshi-tui: error: {r['error']}", file=sys.stderr)
        return r["exit_code"] or 1
    if r.get("summary", {}).get("interrupted"):
        return 130  # (its figures printed and written all the same)
    return 0


def _cmd_pipeline(args, argv) -> int:
    from engine.bench.pipeline import run_pipeline

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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moshi-tui bench", description="Measure where the time goes.")
    sub = p.add_subparsers(dest="command", metavar="step|codec|pipeline|soak|turns")
    sub.required = True

    s = sub.add_parser("step", help="LmGen.step in a server process, on dummy codes")
    add_model_options(s)
    s.add_argument("--steps", type=int, default=200, help="timed steps after warmup (200)")
    s.add_argument("--max-steps", type=int, help="LM context length (as a session's --max-steps)")
    s.add_argument("--json", metavar="PATH", help="write the figures as JSON")

    c = sub.add_parser("codec", help="Mimi encode/decode per 80 ms frame (rustymimi or MLX)")
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
    t = sub.add_parser("turns", help="turn-taking on scripted conversations, in real time")
    add_model_options(t)
    t.add_argument("--scenario", action="append", metavar="NAME",
                   help="question, pause, interrupt or backchannel (repeatable; default: all)")
    t.add_argument("--repeats", type=int, default=3, help="times each scenario is played (3)")
    t.add_argument("--output", "-o", metavar="DEV|FILE.wav", default="null",
                   help="output device, WAV file, or 'null' (null)")
    t.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    return p


def _cmd_turns(args, argv) -> int:
    from engine.bench.turns import SCENARIOS, format_turns, run_turns

    check_writable(args.json, "--json")
    out = _envelope("turns", args, argv)
    r = run_turns(model_options(args), scenarios=args.scenario or list(SCENARIOS),
                  repeats=args.repeats, output_spec=args.output, progress=_progress)
    if args.demo:
        out["note"] = "the demo model babbles random audio: its turn figures say nothing about Moshi"
    text = format_turns(r) + (f"\n{out['note']}" if args.demo else "")
    return _report_session(args, out, r, text)


def _cmd_soak(args, argv) -> int:
    from engine.bench.soak import HEADER, format_soak, run_soak

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
           "soak": _cmd_soak, "turns": _cmd_turns}[args.command]
    return cmd(args, argv)
