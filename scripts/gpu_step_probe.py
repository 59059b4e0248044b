#!/usr/bin/env python3
"""Time the LM step of the model server, variant by variant, on full-size random Moshi.

    python3 scripts/gpu_step_probe.py --json probe.json                  # GPU: q4, 7B
    python3 scripts/gpu_step_probe.py --quant q4,bf16 --json probe.json  # + bf16 (stock, compiled)
    python3 scripts/gpu_step_probe.py --demo --json /tmp/p.json          # CPU: the demo model

Each variant runs in its own process (fresh MLX caches, its own stderr): it builds the model
(engine.model.fullsize, random weights, nothing downloaded), prepares it exactly as the server does
(engine.model.worker.Stepper with an engine.model.lmcache mode, then warm()), and times
`Stepper.step` -- the span the session's "model" stage measures -- for `--steps` steps from
a fresh conversation (crossing the 256-position blocks where moshi_mlx's caches grow), then
again after a reset (`--second-pass` steps), and, for `--segment-variants`, once more for
`--segment-steps` steps, which crosses a segment start (the Stepper resets at max_steps - 1).

Printed per variant: build/warm-up time, p50/p90/p99/max of the step, the slowest steps'
indices, steps over 2x p50, and any "Cache thrashing" line MLX wrote to stderr (mlx 0.32
throws it as an error once a cache missed twice its capacity). `--json` gets everything,
every step's time included; it is rewritten after each variant, so a run cut short keeps
what it measured. `--budget-s` stops starting variants when the time is up.

A variant is a mode of engine.model.lmcache (stock, prealloc, onesync, fixed, compiled, hybrid,
layered), optionally with environment settings for its process: `compiled@MLX_USE_CUDA_GRAPHS=0` (several: joined
by `+`).
`PROBE_PACE_MS=80` starts its steps on an 80 ms clock, as a conversation does (idle gaps
between steps), instead of back to back: `hybrid@PROBE_PACE_MS=80`; with `PROBE_SPIN=1` the
gaps are spent spinning on the clock instead of sleeping (is the slowdown the idle CPU's?):
`layered@PROBE_PACE_MS=80+PROBE_SPIN=1`.  More settings of a variant's process:
`PROBE_PIN=2-5` pins it (and every thread MLX starts) to those CPUs; `PROBE_CONTEXT=2600`
runs that many untimed steps first, so the timed ones read a long context;
`PROBE_EVAL_EVERY=8` sets engine.model.lmcache.EVAL_EVERY_LAYERS, `PROBE_LEAN=0` its
LEAN_GRAPH; `PROBE_SPLIT=1` adds a
pass of 100 steps (hybrid, layered) that times, per step, building its graph in Python,
handing it to MLX (async_eval) and waiting for its tokens.
`PROBE_CODEC=process` (or `thread`) runs the client's GPU codec beside the steps, on a session's
schedule: before each step the rest of a frame is encoded (the step waits for its codes), after
it the step's codes are decoded, and 40 ms after the encode the next frame's head goes in --
MLX's Mimi (engine.pipeline.codec_mlx, the Mimi weights at `PROBE_CODEC_MIMI`) in a process of
its own, as in a session (two CUDA contexts), or in a thread of the probe's (one context).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAIN_VARIANTS = "stock,prealloc,onesync,fixed,compiled"
OTHER_VARIANTS = "stock,compiled"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", action="store_true",
                    help="the demo config (tiny, CPU), few steps, max_steps 40")
    ap.add_argument("--config", default=None,
                    help="v0_1 (default), demo, or a Kyutai config.json path")
    ap.add_argument("--quant", default=None,
                    help="comma list of bf16,q8,q4 (default q4; --demo: bf16); the first gets"
                         " --variants, the others --other-variants")
    ap.add_argument("--variants", default=MAIN_VARIANTS)
    ap.add_argument("--other-variants", default=OTHER_VARIANTS)
    ap.add_argument("--extra-variants", default="",
                    help="run last, for the first quant, if the budget allows"
                         " (e.g. compiled@MLX_USE_CUDA_GRAPHS=0)")
    ap.add_argument("--steps", type=int, default=None, help="first pass (default 600)")
    ap.add_argument("--second-pass", type=int, default=None,
                    help="steps after a reset (default 280)")
    ap.add_argument("--other-steps", type=int, default=300,
                    help="first pass for the other quants (no second pass)")
    ap.add_argument("--segment-steps", type=int, default=None,
                    help="a third pass this long, for --segment-variants (default 0;"
                         " 3100 crosses a 3000-step segment)")
    ap.add_argument("--segment-variants", default="compiled")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="segment length (default the config's context: 3000)")
    ap.add_argument("--warm-steps", type=int, default=6)
    ap.add_argument("--budget-s", type=float, default=0.0, help="0: no limit")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.demo:
        args.config = args.config or "demo"
        args.quant = args.quant or "bf16"
        args.steps = 40 if args.steps is None else args.steps
        args.second_pass = 20 if args.second_pass is None else args.second_pass
        args.max_steps = args.max_steps or 40
        args.segment_steps = 45 if args.segment_steps is None else args.segment_steps
    args.quant = args.quant or "q4"
    args.steps = 600 if args.steps is None else args.steps
    args.second_pass = 280 if args.second_pass is None else args.second_pass
    args.segment_steps = args.segment_steps or 0

    if args.child:
        return child(args)
    return parent(args)


# ----------------------------------------------------------------------------- parent


def plan(args) -> list[dict]:
    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    seg = {v.strip() for v in args.segment_variants.split(",") if v.strip()}
    runs = []
    for i, q in enumerate(quants):
        names = args.variants if i == 0 else args.other_variants
        for v in (x.strip() for x in names.split(",") if x.strip()):
            runs.append({
                "quant": q, "variant": v,
                "steps": args.steps if i == 0 else args.other_steps,
                "second_pass": args.second_pass if i == 0 else 0,
                "segment_steps": args.segment_steps if (i == 0 and v in seg) else 0,
            })
    for v in (x.strip() for x in args.extra_variants.split(",") if x.strip()):
        runs.append({"quant": quants[0], "variant": v, "steps": args.steps,
                     "second_pass": 0, "segment_steps": 0})
    return runs


def parent(args) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.budget_s if args.budget_s > 0 else None
    report = {"probe": "gpu_step_probe", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "argv": sys.argv[1:], "host": platform.node(), "python": sys.version.split()[0],
              "config": args.config or "v0_1", "runs": []}
    runs = plan(args)
    print(f"{len(runs)} run(s): " + ", ".join(f"{r['quant']}/{r['variant']}" for r in runs),
          flush=True)
    for r in runs:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < 25:
            r["skipped"] = f"budget ({left:.0f} s left)"
            report["runs"].append(r)
            print(f"-- {r['quant']}/{r['variant']}: skipped, {r['skipped']}", flush=True)
            continue
        r.update(run_child(args, r, left))
        report["runs"].append(r)
        print_run(r)
        if args.json:
            write_json(args.json, report)
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    print_summary(report["runs"])
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in report["runs"]) else 1


def run_child(args, r: dict, left: float | None) -> dict:
    mode, _, env_spec = r["variant"].partition("@")
    env = dict(os.environ)
    extra_env = {}
    for item in filter(None, env_spec.split("+")):
        k, _, v = item.partition("=")
        extra_env[k] = v
    env.update(extra_env)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
           "--quant", r["quant"], "--steps", str(r["steps"]),
           "--second-pass", str(r["second_pass"]), "--segment-steps", str(r["segment_steps"]),
           "--warm-steps", str(args.warm_steps)]
    if args.config:
        cmd += ["--config", args.config]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    t0 = time.monotonic()
    out: dict = {"mode": mode, "env": extra_env, "passes": []}
    timeout = None if left is None else max(10.0, left - 3)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        stdout, stderr, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = None
        out["error"] = f"timed out after {timeout:.0f} s (budget)"
    out["wall_s"] = round(time.monotonic() - t0, 1)
    for line in stdout.splitlines():
        if line.startswith("PROBE "):
            msg = json.loads(line[6:])
            if msg.get("kind") == "pass":
                out["passes"].append(msg)
            else:
                out.update({k: v for k, v in msg.items() if k != "kind"})
    out["stderr_thrashing"] = [ln for ln in stderr.splitlines() if "thrash" in ln.lower()]
    out["stderr_tail"] = stderr.splitlines()[-15:]
    if rc not in (0, None) and "error" not in out:
        out["error"] = f"exit {rc}: " + (stderr.strip().splitlines() or ["?"])[-1]
    return out


def stats(times: list[float]) -> dict:
    if not times:
        return {}
    s = sorted(times)

    def q(p):
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    p50 = q(0.5)
    slow = sorted(range(len(times)), key=lambda i: -times[i])[:8]
    return {"n": len(times), "p50": round(p50, 2), "p90": round(q(0.9), 2),
            "p99": round(q(0.99), 2), "max": round(s[-1], 2),
            "mean": round(sum(times) / len(times), 2),
            "slowest": [[i, round(times[i], 1)] for i in slow],
            "over_2x_p50": sum(t > 2 * p50 for t in times),
            "over_100ms": sum(t > 100 for t in times)}


def print_run(r: dict) -> None:
    head = f"-- {r['quant']}/{r['variant']}"
    if r.get("error"):
        print(f"{head}: ERROR {r['error']}", flush=True)
    info = []
    for k in ("device", "build_s", "warm_ms", "lm_mode", "host_syncs_per_step"):
        if k in r:
            info.append(f"{k} {r[k]}")
    if "ops" in r:
        info.append(f"ops/step {r['ops']['compute']} compute of {r['ops']['total']}")
    print(f"{head}: " + ", ".join(info) + f", wall {r.get('wall_s')} s", flush=True)
    for p in r.get("passes", []):
        st = p["stats"]
        if not st:
            continue
        print(f"   pass {p['pass']} ({st['n']} steps, segments at {p['segments']}): "
              f"p50 {st['p50']} p90 {st['p90']} p99 {st['p99']} max {st['max']} ms; "
              f">2xp50 {st['over_2x_p50']}, >100ms {st['over_100ms']}; slowest "
              + " ".join(f"#{i}:{t}" for i, t in st["slowest"][:6]), flush=True)
        if "split" in p:
            print("      split p50 (max): " + ", ".join(
                f"{k} {v['p50']} ({v['max']})" for k, v in p["split"].items()), flush=True)
    for ln in r.get("stderr_thrashing", []):
        print(f"   stderr: {ln}", flush=True)


def print_summary(runs: list[dict]) -> None:
    print("\nsummary (ms; pass 1 = fresh conversation, pass 2 = after a reset)")
    print(f"{'run':<34}{'p50':>8}{'p99':>9}{'max':>9}{'p50/2':>8}{'max/2':>9}  thrash")
    for r in runs:
        name = f"{r['quant']}/{r['variant']}"
        if r.get("skipped"):
            print(f"{name:<34}  skipped: {r['skipped']}")
            continue
        p = {x["pass"]: x["stats"] for x in r.get("passes", [])}
        a, b = p.get(1, {}), p.get(2, {})
        print(f"{name:<34}{a.get('p50', '-'):>8}{a.get('p99', '-'):>9}{a.get('max', '-'):>9}"
              f"{b.get('p50', '-'):>8}{b.get('max', '-'):>9}  "
              f"{len(r.get('stderr_thrashing', []))}" + (f"  ERROR {r['error']}"
                                                        if r.get("error") else ""))


def write_json(path: str, report: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- child


def emit(kind: str, **msg) -> None:
    print("PROBE " + json.dumps({"kind": kind, **msg}), flush=True)


VIEW_OPS = {"Broadcast", "Reshape", "Squeeze", "ExpandDims", "Transpose", "Slice",
            "AsStrided", "StopGradient", "Depends", "Split", "Unflatten", "Flatten"}


def count_ops(stepper) -> dict:
    """Primitives in one step's model graph (MLX's export_to_dot): `compute` leaves out views
    (reshape, slice, broadcast, ...), which launch no kernel when no copy is needed."""
    import io
    import re
    from collections import Counter

    import mlx.core as mx

    from engine.model import lmcache

    every, lmcache.EVAL_EVERY_LAYERS = lmcache.EVAL_EVERY_LAYERS, 0  # the whole step's graph
    try:
        out = stepper.lm.lazy_step()
    finally:
        lmcache.EVAL_EVERY_LAYERS = every
    buf = io.StringIO()
    mx.export_to_dot(buf, out)
    mx.eval(out)
    stepper.reset()
    labels = Counter(re.findall(r'label ="([^"]+)", shape=rectangle', buf.getvalue()))
    total = sum(labels.values())
    compute = sum(n for k, n in labels.items() if k not in VIEW_OPS)
    return {"total": total, "compute": compute, "top": labels.most_common(12)}


def _cpus(spec: str) -> set[int]:
    """"2-5,8" -> {2, 3, 4, 5, 8}"""
    out: set[int] = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _codec_companion(conn, mimi_path: str) -> None:
    """The client's codec work on a session's schedule, driven by the probe (see the docstring):
    "E" -> encode a frame's rest, answer "ok"; "D" -> decode the step's codes, then the next
    frame's head 40 ms after the encode began; "stop" -> close."""
    import numpy as np

    from engine.bench.measure import speech_frames
    from engine.pipeline.codec_mlx import STEP, MlxMimiCodec

    codec = MlxMimiCodec(mimi_path)
    codec.warm()
    pcm = speech_frames(50)

    def wait(getter):
        while True:
            out = getter()
            if out is not None:
                return out
            time.sleep(0.0002)

    k, codes, t_enc = 0, None, 0.0
    codec.encode(pcm[0][:STEP])
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "E":
            t_enc = time.perf_counter()
            codec.encode(pcm[k % len(pcm)][STEP:])
            codes = wait(codec.get_encoded)
            conn.send("ok")
        elif msg == "D":
            codec.decode(np.asarray(codes).reshape(-1)[:8].reshape(1, 8))
            wait(codec.get_decoded)
            k += 1
            time.sleep(max(0.0, t_enc + 0.040 - time.perf_counter()))
            codec.encode(pcm[k % len(pcm)][:STEP])
            codec.run_in_worker(lambda s: None)
        else:
            codec.close()
            conn.send("closed")
            return


def _start_companion(kind: str):
    """A connection to a codec companion (`kind` process or thread), once it is ready."""
    import multiprocessing as mp
    import threading

    path = os.environ.get("PROBE_CODEC_MIMI") or ""
    if not Path(path).is_file():
        raise SystemExit(f"PROBE_CODEC_MIMI={path!r}: no such Mimi weights file")
    if kind == "thread":
        a, b = mp.Pipe()
        threading.Thread(target=_codec_companion, args=(b, path), daemon=True).start()
    else:
        a, b = mp.get_context("spawn").Pipe()
        mp.get_context("spawn").Process(target=_codec_companion, args=(b, path),
                                        daemon=True).start()
    if a.recv() != "ready":
        raise SystemExit("the codec companion did not start")
    return a


def child(args) -> int:
    if os.environ.get("PROBE_PIN"):  # before MLX starts its threads: they inherit it
        os.sched_setaffinity(0, _cpus(os.environ["PROBE_PIN"]))
    from engine.model.lmcache import tune_mlx_env

    tune_mlx_env()  # the server's MLX settings (a variant's own settings win)
    import mlx.core as mx
    import numpy as np

    from engine.model import fullsize, lmcache
    from engine.model.worker import Stepper, warm

    if os.environ.get("PROBE_EVAL_EVERY"):
        lmcache.EVAL_EVERY_LAYERS = int(os.environ["PROBE_EVAL_EVERY"])
    if os.environ.get("PROBE_LEAN"):
        lmcache.LEAN_GRAPH = os.environ["PROBE_LEAN"] == "1"

    mode = args.child
    config = args.config
    if config and config not in ("v0_1", "demo"):
        config = json.loads(Path(config).read_text())
    emit("info", device=str(mx.default_device()), mlx=getattr(mx, "__version__", "?"),
         mlx_env={k: v for k, v in os.environ.items() if k.startswith("MLX_")})
    t0 = time.perf_counter()
    model = fullsize.build_lm(config, args.quant, materialize=True)
    build_s = time.perf_counter() - t0
    cfg = model.cfg
    max_steps = args.max_steps or cfg.transformer.context
    stepper = Stepper(model, max_steps, mode)
    warm_ms = warm(stepper, args.warm_steps)
    emit("info", build_s=round(build_s, 2), warm_ms=round(warm_ms, 1), lm_mode=stepper.mode,
         note=stepper.lm.note, max_steps=max_steps, capacity=stepper.lm.capacity,
         host_syncs_per_step=lmcache.HOST_SYNCS_PER_STEP[stepper.mode],
         params=fullsize.count_params(model))

    emit("info", ops=count_ops(stepper))

    n_other = cfg.audio_codebooks - cfg.depformer.num_slices
    card = cfg.audio_vocab_size - 1
    step_no = 0

    pace_s = float(os.environ.get("PROBE_PACE_MS") or 0) / 1000.0
    spin = os.environ.get("PROBE_SPIN") == "1"
    companion = None
    if os.environ.get("PROBE_CODEC"):
        companion = _start_companion(os.environ["PROBE_CODEC"])
        emit("info", codec=os.environ["PROBE_CODEC"])

    def run_pass(k: int, n: int) -> None:
        nonlocal step_no
        times, segments, texts = [], [], []
        syncs0 = stepper.lm.host_syncs
        tick = t_pass = time.perf_counter()
        for i in range(n):
            if pace_s:
                tick += pace_s
                if spin:
                    while time.perf_counter() < tick:
                        pass
                else:
                    time.sleep(max(0.0, tick - time.perf_counter()))
            codes = np.array([[(step_no * 37 + j * 11) % card] for j in range(n_other)],
                             dtype=np.uint32)
            step_no += 1
            if companion is not None:
                companion.send("E")
                companion.recv()
            a = time.perf_counter()
            text, _audio, segment = stepper.step(codes)
            times.append((time.perf_counter() - a) * 1000.0)
            if companion is not None:
                companion.send("D")
            texts.append(text)
            if segment:
                segments.append(i)
        emit("pass", **{"pass": k, "steps": n, "segments": segments, "stats": stats(times),
                        "times_ms": [round(t, 3) for t in times],
                        "host_syncs": stepper.lm.host_syncs - syncs0,
                        "pace_ms": pace_s * 1000.0,
                        "wall_s": round(time.perf_counter() - t_pass, 3),
                        "text_head": texts[:8]})

    def split_pass(k: int, n: int) -> None:
        """Build / hand over / wait, per step (the tail modes' step, as LmSteps.step runs it)."""
        lm = stepper.lm
        build, submit, wait = [], [], []
        tick = time.perf_counter()
        for i in range(n):
            if pace_s:
                tick += pace_s
                time.sleep(max(0.0, tick - time.perf_counter()))
            if lm.step_idx >= max_steps - 1:
                stepper.reset()
            other = np.array([(i * 37 + j * 11) % card for j in range(n_other)], np.uint32)
            a = time.perf_counter()
            out = lm._hybrid_step(mx.array(lm._tokens.inputs(other)))
            b = time.perf_counter()
            mx.async_eval(out)
            c = time.perf_counter()
            host = np.array(out)
            d = time.perf_counter()
            lm._tokens.record(int(host[0]), host[1:])
            build.append((b - a) * 1e3)
            submit.append((c - b) * 1e3)
            wait.append((d - c) * 1e3)
        emit("pass", **{"pass": k, "steps": n, "segments": [], "pace_ms": pace_s * 1000.0,
                        "stats": stats([x + y + z for x, y, z in zip(build, submit, wait)]),
                        "split": {"build": stats(build), "submit": stats(submit),
                                  "wait": stats(wait)}})

    context = int(os.environ.get("PROBE_CONTEXT") or 0)
    if context:
        codes = np.zeros((n_other, 1), np.uint32)
        for _ in range(context):
            stepper.step(codes)
        emit("info", context=stepper.lm.step_idx)
    mx.random.seed(1234)
    run_pass(1, args.steps)
    if args.second_pass:
        stepper.reset()
        run_pass(2, args.second_pass)
    if args.segment_steps:
        stepper.reset()
        run_pass(3, args.segment_steps)
    if os.environ.get("PROBE_SPLIT") == "1" and stepper.lm.mode in lmcache.TAIL_MODES:
        stepper.reset()
        split_pass(4, 100)
    if companion is not None:
        companion.send("stop")
        companion.recv()
    try:
        peak = mx.get_peak_memory() / 2**30
    except AttributeError:  # older MLX
        peak = mx.metal.get_peak_memory() / 2**30 if hasattr(mx, "metal") else None
    emit("info", peak_memory_gib=None if peak is None else round(peak, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
