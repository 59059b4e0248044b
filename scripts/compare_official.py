"""moshi-tui against Kyutai's official `moshi_mlx/local.py`, side by side in one run.

Both run on the demo model (bf16 LM, full-size random Mimi), or on real-size weights given with
--moshi-weight/--mimi-weight/--tokenizer (-q N: their bits), through real sounddevice callbacks
on a private JACK dummy sound card (24 kHz, 80 ms periods or `--period N` samples) with the speaker looped back into
the microphone, one after the other, alternating which goes first in each round, so that the
machine's load weighs on both alike.  Kyutai's code runs unchanged (scripts/official_probe.py
says what is wrapped around it to measure it at the same points as our telemetry).  The
compute floor (isolated encode + step + decode p50) is measured before each round with
`moshi-tui bench codec` and `bench step`.

    .venv/bin/python -m scripts.compare_official --seconds 60 --rounds 2 --json compare.json

Prints one table per round and one over all rounds; --json writes every figure.
Needs jackd (apt-get install jackd2) and the JACK-Client package (installed by setup.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from engine.bench.codec_mlx import as_floor
from engine.bench.report import table
from engine.files.outputs import write_json_atomic
from engine.model.demo import ensure_demo
from engine.telemetry.procfigs import ProcessFigures
from engine.telemetry.stages import percentiles
from engine.telemetry.stats import machine_info
from scripts import jackdummy

ROOT = Path(__file__).resolve().parent.parent

CLI = [sys.executable, "-m", "tui.cli"]


def measure_floor(env: dict, work: Path, steps: int, frames: int,
                  model: tuple = ("--demo",)) -> dict:
    step_json, codec_json = work / "step.json", work / "codec.json"
    subprocess.run([*CLI, "bench", "step", *model, "--steps", str(steps), "--json", str(step_json)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    codec_json.unlink(missing_ok=True)
    r = subprocess.run([*CLI, "bench", "codec", *model, "--frames", str(frames), "--json",
                        str(codec_json)], cwd=ROOT, env=env, capture_output=True)
    if r.returncode != 0:
        if not codec_json.exists():
            raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        print(f"(bench codec exited {r.returncode} after writing its figures, which are kept: "
              f"{tail[0]})", file=sys.stderr)
    step = json.loads(step_json.read_text())["result"]["step_ms"]["p50"]
    codec = json.loads(codec_json.read_text())["result"]
    codec = codec["stream"] if "stream" in codec else as_floor(codec)["stream"]  # (MLX's Mimi)
    enc, dec = codec["encode_ms"]["p50"], codec["decode_ms"]["p50"]
    rest = codec["encode_rest_ms"]["p50"]  # what early encode leaves once a frame is complete
    return {"encode_ms": enc, "step_ms": step, "decode_ms": dec, "floor_ms": enc + step + dec,
            "encode_rest_ms": rest, "floor_early_ms": rest + step + dec}


class CpuWatch(ProcessFigures):
    """CPU % and RSS of the given processes (role -> psutil.Process), as a session reports its own."""

    def __init__(self, roles: dict[str, psutil.Process]):
        self.roles = roles

    def _procs(self):
        return self.roles


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before going live")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[:3]}: not live after {timeout:.0f} s")
        time.sleep(0.1)


def run_official(jack, model: list[str], seconds: float, env: dict, work: Path) -> dict:
    """Kyutai's local.py on `model`: [DEMO_DIR] or ["--files", MOSHI, MIMI, TOKENIZER, BITS?]."""
    rec_path = work / "official.json"
    env = dict(env, OFFICIAL_PROBE_OUT=str(rec_path),
               OFFICIAL_PROBE_INPUT=str(jackdummy.device_index("input")),
               OFFICIAL_PROBE_OUTPUT=str(jackdummy.device_index("output")))
    with open(work / "official.log", "w") as log:
        p = subprocess.Popen([sys.executable, "-m", "scripts.official_probe", *model], cwd=work,
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_file(rec_path, p, 600)  # the client writes it once a second from warm-up on
        jack.connect_loopback(timeout=30)
        main = psutil.Process(p.pid)
        kids = main.children()
        client_pid = json.loads(rec_path.read_text())["pid"]
        roles = {"main (printer)": main}
        for k in kids:
            roles["client" if k.pid == client_pid else "server"] = k
        watch = CpuWatch(roles)
        watch._cpu_start()
        time.sleep(seconds)
        cpu = watch.process_figures()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # Ctrl+C: local.py terminates its two processes
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            for k in psutil.Process(p.pid).children(recursive=True):
                k.kill()
            p.kill()
            p.wait(10)
    r = json.loads(rec_path.read_text())
    cap = np.array(r["cap"], dtype=np.int64)
    dec = np.array(r["dec"][r["warm_dec"]:], dtype=np.int64)
    play = np.array(r["play"], dtype=np.int64)
    n = min(len(cap), len(dec))
    m = min(len(cap), len(play))
    processing = (dec[:n] - cap[:n]) / 1e6
    playback = (play[:m] - cap[:m]) / 1e6
    return {
        "processing": percentiles(processing),
        "playback": percentiles(playback),
        "frames_captured": int(len(cap)),
        "frames_processed": int(len(dec)),
        "frames_played": int(len(play)),
        "underruns": int(r["underruns"]),
        "drops": 0,  # local.py's queues are unbounded: it never drops, latency grows instead
        "output_backlog_end": int(len(r["out_put"]) - len(play)),
        "processes": cpu,
    }


def run_ours(jack, seconds: float, env: dict, work: Path, extra: tuple = (),
             name: str = "ours", model: tuple = ("--demo",)) -> dict:
    stats_path = work / f"{name}.json"
    dev_in, dev_out = jackdummy.device_index("input"), jackdummy.device_index("output")
    cmd = [*CLI, "--headless", *model, "--input", str(dev_in), "--output", str(dev_out),
           "--seconds", str(seconds + 2), "--stats-json", str(stats_path), "--no-save", *extra]
    with open(work / f"{name}.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        jack.connect_loopback(timeout=600)
        if p.wait(seconds + 120) != 0:
            raise RuntimeError(f"moshi-tui exited with {p.returncode}: see {work / 'ours.log'}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    s = json.loads(stats_path.read_text())
    st = s["stages_ms"]
    c = s["counters"]
    return {
        "processing": st["processing"],
        "playback": st["playback"],
        "frames_captured": s["frames"]["captured"],
        "frames_processed": s["frames"]["processed"],
        "frames_played": s["frames"]["played"],
        "underruns": c["underruns"],
        "drops": c["drops_input"] + c["drops_output"] + c["drops_decode"],
        "output_backlog_end": s["queues_now"]["output"],
        "processes": s["processes"],
        "output_latency_ms": s["audio"].get("output_latency_ms"),
        "early_encodes": c.get("early_encodes", 0),
    }


def _f(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def format_round(floor: dict, official: dict, ours: dict, whole: dict | None = None) -> str:
    """One round's table; `whole`: our session with --whole-frames, when it ran."""
    fl = floor["floor_ms"]
    cols = [("official", official), ("ours", ours)] + ([("whole", whole)] if whole else [])
    rows = []
    for key, label in (("processing", "processing (capture → PCM)"), ("playback", "mic → speaker")):
        for q in ("p50", "p95", "p99"):
            a = official[key][q]
            vals = [r[key][q] for _, r in cols]
            rows.append([f"{label} {q} ms", *map(_f, vals),
                         _f(ours[key][q] / a, 2) if a and ours[key][q] else "-"])
    rows.append(["processing p50 / floor", *(_f(r["processing"]["p50"] / fl, 2) for _, r in cols),
                 ""])
    for key in ("underruns", "drops", "output_backlog_end"):
        rows.append([key.replace("_", " "), *(str(r[key]) for _, r in cols), ""])
    rows.append(["frames encoded early", "-", *(str(r.get("early_encodes", 0)) for _, r in cols[1:]),
                 ""])
    for role in ("client", "server"):
        for what, unit in (("cpu_percent", "CPU %"), ("rss_mb", "RSS MB")):
            rows.append([f"{role} {unit}",
                         *(_f(r["processes"].get(role, {}).get(what)) for _, r in cols), ""])
    pm = official["processes"].get("main (printer)", {})
    rows.append(["3rd process (printer) CPU %", _f(pm.get("cpu_percent")),
                 *(["none"] * (len(cols) - 1)), ""])
    head = (f"floor {fl:.1f} ms = encode {floor['encode_ms']:.1f} + step {floor['step_ms']:.1f}"
            f" + decode {floor['decode_ms']:.1f} (isolated p50, measured just before); with early"
            f" encode {floor['floor_early_ms']:.1f} ms (rest of a frame after its first 40 ms "
            f"{floor['encode_rest_ms']:.1f})")
    names = ["official local.py", "moshi-tui"] + (["moshi-tui --whole-frames"] if whole else [])
    return head + "\n" + table(["", *names, "ratio"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="live seconds per session")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--floor-steps", type=int, default=200, help="steps of the floor's step bench")
    ap.add_argument("--floor-frames", type=int, default=60, help="frames of the floor's codec bench")
    ap.add_argument("--period", type=int, default=jackdummy.JACK_PERIOD,
                    help="the sound card's period in samples at 24 kHz (default 1920 = 80 ms; "
                         "480 = 20 ms, like most real devices)")
    ap.add_argument("--whole-frames-too", action="store_true",
                    help="also run moshi-tui --whole-frames (frames encoded whole, as local.py) "
                         "in each round")
    ap.add_argument("--moshi-weight", help="real-size Moshi v0.1 weights instead of the demo"
                    " (with --mimi-weight and --tokenizer), e.g. random ones written by"
                    " `moshi-tui bench step --random -q 4 --save-weights DIR/model.q4.safetensors`")
    ap.add_argument("--mimi-weight")
    ap.add_argument("--tokenizer")
    ap.add_argument("-q", "--quantized", type=int, choices=[4, 8],
                    help="the bits of --moshi-weight (local.py builds the quantized layers first)")
    ap.add_argument("--work", metavar="DIR", help="keep every log and figure in DIR"
                    " (default: a temporary folder, removed at the end)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if args.period <= 0:
        ap.error("--period must be a positive number of samples")
    files = (args.moshi_weight, args.mimi_weight, args.tokenizer)
    if any(files) and not all(files):
        ap.error("--moshi-weight, --mimi-weight and --tokenizer go together")
    if all(files):
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            ap.error(f"not a file: {missing[0]}")
        ours_model = ("--moshi-weight", args.moshi_weight, "--mimi-weight", args.mimi_weight,
                      "--tokenizer", args.tokenizer)
        official_model = ["--files", *files] + ([str(args.quantized)] if args.quantized else [])
    else:
        ours_model = ("--demo",)
        official_model = [str(ensure_demo().root)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    results = []
    with tempfile.TemporaryDirectory(prefix="compare-official-") as tmp:
        if args.work:
            tmp = args.work
            Path(tmp).mkdir(parents=True, exist_ok=True)
        jack = jackdummy.start(Path(tmp), args.period)
        env.update({k: os.environ[k] for k in jackdummy.ENV_KEYS})
        try:
            for i in range(args.rounds):
                work = Path(tmp) / f"round{i}"
                work.mkdir(exist_ok=True)
                print(f"[round {i + 1}/{args.rounds}] compute floor ...", flush=True)
                floor = measure_floor(env, work, args.floor_steps, args.floor_frames, ours_model)
                order = ["official", "ours"] + (["whole"] if args.whole_frames_too else [])
                order = order[i % len(order):] + order[:i % len(order)]  # rotate per round
                got = {}
                for who in order:
                    print(f"[round {i + 1}/{args.rounds}] {who}: {args.seconds:.0f} s ...", flush=True)
                    if who == "official":
                        got[who] = run_official(jack, official_model, args.seconds, env, work)
                    elif who == "whole":
                        got[who] = run_ours(jack, args.seconds, env, work, ("--whole-frames",),
                                            name="whole", model=ours_model)
                    else:
                        got[who] = run_ours(jack, args.seconds, env, work, model=ours_model)
                    time.sleep(1.0)
                results.append({"floor": floor, "order": list(order), **got})
                print(format_round(floor, got["official"], got["ours"], got.get("whole")),
                      flush=True)
        finally:
            jackdummy.shutdown(jack)
    if args.json:
        write_json_atomic(args.json, {"kind": "compare_official", "options": vars(args),
                                      "machine": machine_info(), "rounds": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
