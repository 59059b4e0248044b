"""The benches' printed tables: the same figures as their JSON, for people."""

from __future__ import annotations

STAGE_ROWS = ("encode", "encode_work", "uplink", "queue", "model", "decode", "decode_work",
              "processing", "playback")


BREAKDOWN_ROWS = ("input_wait", "encode_service", "downlink_wait", "decode_service",
                  "output_wait", "plumbing")


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


def format_step(r: dict, label: str) -> str:
    lines = [
        f"bench step: {label}, {r['steps']} steps after warmup ({r['mlx_device']}, "
        f"LM step: {r.get('lm_mode', '?')})",
        table(["", *PCT_HEAD], [pct_row("step ms", r["step_ms"])]),
        f"steps/s {fmt(r['steps_per_s'])}  (wall {fmt(r['wall_s'], 2)} s, server CPU "
        f"{fmt(r['cpu_percent'])} %, RSS {fmt(r['rss_mb'])} MB)",
        f"load {fmt(r['load_ms'], 0)} ms, warmup {fmt(r['warmup_ms'], 0)} ms; "
        f"{r['audio_none_steps']} step(s) without audio (codebook delays)",
    ]
    return "\n".join(lines)


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


def format_codec_mlx(r: dict) -> str:
    rows = [pct_row("encode", r["encode_ms"]), pct_row("  first 40 ms", r["head_ms"]),
            pct_row("  rest after it", r["rest_ms"]), pct_row("decode", r["decode_ms"])]
    lines = [
        f"bench codec: MLX's Mimi on {r.get('mlx_device')}, {r['mimi']}, {r['frames']} frames",
        table(["ms per 80 ms frame", *PCT_HEAD], rows),
        f"client CPU {fmt(r.get('cpu_ms_per_frame'))} ms/frame (encode + decode); load "
        f"{fmt(r['load_s'], 2)} s, warmup {fmt(r['warm_ms'], 0)} ms",
    ]
    if "rustymimi_ms" in r:
        rm = r["rustymimi_ms"]
        lines.append(f"rustymimi on the same speech: encode p50 {fmt(rm['encode']['p50'])} ms, "
                     f"decode p50 {fmt(rm['decode']['p50'])} ms")
        lines.append(f"codes equal to rustymimi's: {fmt(100 * r['codes_equal_to_rustymimi']['all'])} %;"
                     f" decoded SNR {fmt(r['decoded_vs_rustymimi']['snr_db'])} dB")
    return "\n".join(lines)


def _mlx_memory(g: dict) -> str:
    mlx = g.get("mlx")
    if not mlx:
        return ""
    seg = (mlx.get("first_segment") or {}).get("growth_percent")
    return (f"; MLX {fmt(mlx['last_mb'])} MB (growth {fmt(mlx['growth_percent'], 2)} %, first "
            f"segment {fmt(seg, 2)} %)")


def format_pipeline(r: dict) -> str:
    s = r["summary"]
    st = r["session"]["stages_ms"]
    fl = r["floor"]
    lines = [f"bench pipeline: {r['model']}, {fmt(r['session']['duration_s'])} s live"
             f"{' (interrupted)' if s.get('interrupted') else ''}, "
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
         f"{s['drops']['drops_output']}"
         + (f"  (waiting on: {', '.join(f'{k} {n}' for k, n in s['underrun_stages'].items())})"
            if s.get("underrun_stages") else "")],
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
            f"RSS {fmt(p.get('rss_mb'))} MB (growth {fmt(g.get('growth_percent'), 2)} %, first "
            f"segment {fmt(g.get('first_segment_growth_percent'), 2)} %)" + _mlx_memory(g),
        ])
    m = r["session"].get("model") or {}
    sum_rows.insert(0, ["model / codec", f"{m.get('model')} on {m.get('server_mlx_device')}, LM step "
                                         f"{m.get('server_lm_mode')}; codec {m.get('codec')}"])
    lines.append(table(["summary", ""], sum_rows, left=(0, 1)))
    lines.append("")
    lines.append("diagnosis:")
    for v in r["verdicts"]:
        lines.append(f"  [{v['level']}] {v['text']}")
    return "\n".join(lines)
