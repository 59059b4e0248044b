"""A recorded session's frames through jitter-buffer policies, side by side.

    .venv/bin/python -m scripts.playout_replay SESSION.trace.json[.gz] \
        [--policy min_margin_ms=0] [--policy window_s=60,min_margin_ms=10] [--json out.json]

Reads each frame's processing time (capture -> decoded PCM) from a session's Perfetto trace
(`--trace PATH` of any session or `bench pipeline`), replays them through
engine.pipeline.playout.Playout on a simulated speaker (engine.pipeline.playout.replay) with
the default policy and each --policy (keyword arguments of Playout), and prints what each
would have done: underruns, drops, trims, silent gaps and the mic-to-speaker delay.  The
simulated speaker pulls in 20 ms blocks and adds no device latency, so compare the rows with
each other, not with the recorded session's figures.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import sys
from pathlib import Path

import numpy as np

from engine.bench.report import table
from engine.pipeline.playout import Playout, replay


class Usage(Exception):
    pass


def processing_ms(path: Path) -> list[float]:
    """Per frame, in frame order: decode end - capture (ms), for the frames that have both."""
    try:
        raw = path.read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except OSError as e:
        raise Usage(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, EOFError) as e:
        raise Usage(f"{path} is not a JSON trace: {e}") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise Usage(f"{path} has no traceEvents: not a moshi-tui trace")
    capture, decoded = {}, {}
    for e in events:
        if not isinstance(e, dict) or not isinstance(e.get("args"), dict):
            continue
        frame = e["args"].get("frame")
        if e.get("name") == "capture" and frame is not None:
            capture[frame] = e["ts"]
        elif e.get("name") == "decode" and e.get("ph") == "X" and frame is not None:
            decoded[frame] = e["ts"] + e["dur"]
    frames = sorted(set(capture) & set(decoded))
    if not frames:
        raise Usage(f"{path} has no frame with both a capture and a decode: "
                    "is it a session's --trace?")
    return [(decoded[f] - capture[f]) / 1000.0 for f in frames]


def parse_policy(text: str) -> dict:
    names = set(inspect.signature(Playout).parameters)
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise Usage(f"--policy {text!r}: each item is NAME=NUMBER, NAME one of "
                        f"{', '.join(sorted(names))}")
        try:
            out[key] = float(value)
        except ValueError:
            raise Usage(f"--policy {text!r}: {value!r} is not a number") from None
    return out


def figures(r: dict) -> dict:
    d = np.array(r["delays"], float)
    return {"underruns": r["underruns"], "drops": r["drops"], "trims": r["trims"],
            "gap_ms_total": round(float(sum(r["gaps"])), 1),
            "delay_ms_p50": round(float(np.median(d)), 1) if d.size else None,
            "delay_ms_mean": round(float(d.mean()), 1) if d.size else None,
            "delay_ms_max": round(float(d.max()), 1) if d.size else None, "played": int(d.size)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--policy", action="append", default=[],
                    help="NAME=NUMBER[,NAME=NUMBER]: Playout's keyword arguments (repeatable)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        policies = [("default", {})] + [(p, parse_policy(p)) for p in args.policy]
        proc = processing_ms(args.trace)
    except Usage as e:
        print(f"playout_replay.py: error: {e}", file=sys.stderr)
        return 2
    p = np.array(proc)
    rows, results = [], []
    for name, kw in policies:
        f = figures(replay(proc, **kw))
        results.append({"policy": name, "kwargs": kw, **f})
        rows.append([name, f["underruns"], f["drops"], f["trims"], f["gap_ms_total"],
                     f["delay_ms_p50"], f["delay_ms_mean"], f["delay_ms_max"]])
    print(f"{args.trace.name}: {len(proc)} frames, processing p50 {np.median(p):.1f} / "
          f"p99 {np.percentile(p, 99):.1f} / max {p.max():.1f} ms")
    print(table(["policy", "underruns", "drops", "trims", "gaps ms", "delay p50", "mean", "max"],
                rows))
    if args.json:
        from engine.files.outputs import write_json_atomic

        write_json_atomic(args.json, {"trace": str(args.trace), "frames": len(proc),
                                      "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
