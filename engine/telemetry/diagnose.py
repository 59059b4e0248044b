"""The question this app exists for -- "is the model slow, or the plumbing?" -- answered in
plain words.

`diagnose(x)` takes live telemetry (an engine.telemetry.collect.Snapshot: rolling-window
percentiles) or a statistics dict (engine.telemetry.stats.build_stats: whole-session
percentiles; a `bench pipeline` JSON works too) and returns `Verdict`s, worst first.  Every
rule reads the stage percentiles of the telemetry (engine.telemetry.stages) against the 80 ms
frame budget; the thresholds are the constants below.  A remote session (engine.session.remote)
cannot time a frame end to end: it is judged on what it measures (the network round trip, the
web client's end-to-end estimate, the server's step when the server sends it, the Opus work).

For a status line: `verdict_line(diagnose(snap))`, or a `Diagnoser` kept across snapshots,
which also notices drops and underruns *rising* (not just having happened once at start-up):
    d = Diagnoser(); ...; print(d.line(session.snapshot()))
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass

from engine.audio import FRAME_MS
from engine.telemetry.voice import answer_of, answer_verdict

# --- thresholds (milliseconds unless named otherwise) ---------------------------------------
BUDGET_MS = FRAME_MS  # one 80 ms frame: every stage must keep up with this to stay real time
MIN_FRAMES = 10  # a stage is judged only once it has this many samples
HEADROOM_FRACTION = 0.75  # model/codec p50 above this share of the budget: little headroom
INPUT_WAIT_WARN_MS = 10.0  # encode - encode_work p50: a frame waits for the encoder
INPUT_WAIT_BAD_MS = 25.0
UPLINK_WARN_MS = 10.0  # t_srv_in - t_enc p50: codes wait to reach the model
SERVER_QUEUE_WARN_MS = 10.0  # t_step0 - t_srv_in p50
DOWNLINK_WARN_MS = 10.0  # decode - decode_work p50: tokens wait for the decoder
PLUMBING_WARN_MS = 5.0  # processing - (encode_work + model + decode_work) p50 (issue target: 2)
JITTER_WARN_MS = 15.0  # processing p99 - p50 (issue target)
BACKLOG_WARN_FRAMES = 1  # (playback - processing) p50 // 80 ms: frames waiting to be played
BACKLOG_BAD_FRAMES = 2
RISING_WINDOW_S = 5.0  # Diagnoser: drops/underruns counted over this many seconds
STALL_FRAMES = 25  # Diagnoser: this many frames captured (2 s) and none processed: stalled
THROUGHPUT_WARN = 0.95  # processed / captured below this (after start-up): frames are lost
THROUGHPUT_BAD = 0.8
INFLIGHT_SLACK = 8  # frames that may legitimately be in flight or in the codebook delay
CPU_DEMAND_WARN_FRACTION = 0.7  # bench: codec + model CPU per frame above this share of the cores
CPU_DEMAND_BAD_FRACTION = 1.0
DEVICE_LATENCY_WARN_MS = 100.0  # the output device's own latency (Bluetooth: 150-300 ms)
# remote sessions
RTT_MIN_SAMPLES = 3  # the round trip is pinged once a second: judged from this many pongs
RTT_WARN_MS = 100.0  # rtt p50: the network alone adds this to every reply
RTT_BAD_MS = 250.0
RTT_JITTER_WARN_MS = 50.0  # rtt p95 - p50: the jitter buffer must hold back this much more
E2E_WARN_MS = 400.0  # end-to-end estimate p50 (Moshi's own delay is 160-200 ms of it)
E2E_BAD_MS = 1000.0
LEVELS = ("ok", "warn", "bad")
_RANK = {lvl: i for i, lvl in enumerate(LEVELS)}
DROP_COUNTERS = ("drops_input", "drops_decode", "drops_output")


@dataclass(frozen=True)
class Verdict:
    level: str  # "ok" | "warn" | "bad"
    text: str
    rule: str = ""  # which rule produced it (stable names, for tests and UI styling)

    def __str__(self) -> str:
        return f"[{self.level}] {self.text}"


@dataclass
class _View:
    stages: dict  # stage -> {"p50", "p95", "p99", "max", "n", ...}
    counters: dict
    error: str | None
    elapsed_s: float
    model_label: str
    cpu_demand: tuple[float, int] | None = None  # (cores one frame needs, cores), bench only
    captured: int = 0
    processed: int = 0
    playout_ms: float | None = None  # the jitter buffer's aim, median over recent/all frames
    output_latency_ms: float | None = None  # the output device's own latency
    mlx_device: str = ""  # where the model runs: "Device(gpu, 0)", "Device(cpu, 0)"
    lm_mode: str = ""  # how it steps (engine.model.graph.lm_step)
    answer: tuple | None = None  # (response latency p50, its pipeline part p50), ms, when measured
    remote: bool = False  # a remote session: the model runs on a server


def _view(x) -> _View:
    if hasattr(x, "stage_stats"):  # telemetry.Snapshot
        return _View(
            stages=x.stage_stats or {},
            counters=dict(x.counters or {}),
            error=x.error,
            elapsed_s=float(x.elapsed_s or 0.0),
            model_label=str(x.info.model or ""),
            captured=int(x.frames_captured or 0),
            processed=int(x.frames_processed or 0),
            playout_ms=x.info.playout_ms,
            output_latency_ms=x.info.output_latency_ms,
            mlx_device=str(x.info.server.get("mlx_device") or ""),
            lm_mode=str(x.info.server.get("lm_mode") or ""),
            answer=answer_of(x.turns.response, x.turns.pipeline) if x.turns is not None else None,
            remote=x.info.remote_url is not None,
        )
    if isinstance(x, dict):
        breakdown = x.get("frame_breakdown_ms") or {}
        summary = x.get("summary") or {}
        demand = None
        if summary.get("cpu_demand_cores") is not None and summary.get("cpus"):
            demand = (float(summary["cpu_demand_cores"]), int(summary["cpus"]))
        if "stages_ms" not in x and isinstance(x.get("session"), dict):
            x = x["session"]  # a bench pipeline result
        stages = dict(x.get("stages_ms") or x.get("stage_stats") or {})
        # A bench pipeline result also has the codec *service* times (submission waits inside
        # rustymimi removed): the better measure of codec work.
        for work, service in (("encode_work", "encode_service"), ("decode_work", "decode_service")):
            if (breakdown.get(service) or {}).get("n"):
                stages[work] = breakdown[service]
        label = str((x.get("model") or {}).get("model", ""))
        return _View(
            stages=stages,
            counters=dict(x.get("counters") or {}),
            error=x.get("error"),
            elapsed_s=float(x.get("duration_s") or x.get("elapsed_s") or 0.0),
            model_label=label,
            cpu_demand=demand,
            captured=int((x.get("frames") or {}).get("captured") or 0),
            processed=int((x.get("frames") or {}).get("processed") or 0),
            playout_ms=(x.get("audio") or {}).get("playout_ms"),
            output_latency_ms=(x.get("audio") or {}).get("output_latency_ms"),
            mlx_device=str((x.get("model") or {}).get("server_mlx_device") or ""),
            lm_mode=str((x.get("model") or {}).get("server_lm_mode") or ""),
            answer=answer_of(*(((x.get("turns") or {}).get("summary") or {}).get(k)
                             for k in ("response_ms", "response_pipeline_ms"))),
            remote=label.startswith("remote ") or bool((stages.get("rtt") or {}).get("n")),
        )
    raise TypeError(f"diagnose() needs a Snapshot or a stats dict, not {type(x).__name__}")


# The LM step mode auto picks on CUDA (engine.model.graph.lm_step.CUDA_MODE; the telemetry layer
# does not import the model's, tests/test_diagnose.py checks they agree).
CUDA_FASTEST_STEP = "layered"


def _model_hint(v: _View) -> str:
    """What to try when the step is slow, from where the model runs (measured: on a CPU the
    quantized steps are slower than bf16; on CUDA bf16, q8 and q4 step alike, bound by the
    host building each step, so only a step with less host work helps; on Metal q4 reads fewer
    bytes).  A remote server's model is out of this client's hands."""
    if v.remote:
        where = f" ({v.mlx_device})" if v.mlx_device else ""
        return f"the server{where} needs a faster machine or a smaller model"
    quantized = any(q in v.model_label for q in ("q4", "q8"))
    if "cpu" in v.mlx_device:
        if quantized:
            return ("on a CPU quantized weights step slower than bf16: try without -q "
                    "(`moshi-tui bench step` with and without -q compares them)")
        return "a GPU (CUDA or Apple silicon) is needed for this model in real time"
    if "gpu" in v.mlx_device and sys.platform.startswith("linux"):
        if v.lm_mode and v.lm_mode != CUDA_FASTEST_STEP:
            return (f"try --lm-step {CUDA_FASTEST_STEP} (the fastest step on CUDA, "
                    "what auto picks there)")
        return "a faster GPU is needed: on CUDA -q 4, q8 and bf16 step at the same speed"
    if "q4" in v.model_label:
        return "a faster machine or a smaller model is needed"
    return "try -q 4"


def _p(v: _View, stage: str, q: str = "p50", min_n: int = MIN_FRAMES) -> float | None:
    st = v.stages.get(stage) or {}
    if (st.get("n") or 0) < min_n:
        return None
    val = st.get(q)
    return None if val is None else float(val)


def _ms(x: float) -> str:
    return f"{x:.0f} ms" if abs(x) >= 10 else f"{x:.1f} ms"


def diagnose(x, previous=None) -> list[Verdict]:
    """Verdicts for a Snapshot or stats dict, worst first (always at least one).

    With `previous` (an earlier snapshot or stats of the same session) drops and underruns are
    judged by how many happened since then ("rising"); without it, by their totals.
    """
    v = _view(x)
    out: list[Verdict] = []
    add = lambda level, rule, text: out.append(Verdict(level, text, rule))  # noqa: E731

    if v.error:
        add("bad", "error", f"session failed: {v.error}")

    # --- compute: each stage must fit in one frame -------------------------------------------
    model = _p(v, "model")
    if model is not None:
        hint = _model_hint(v)
        step, where = (("server step", "on the server") if v.remote
                       else ("model step", "on this machine"))
        if model > BUDGET_MS:
            add("bad", "model_budget",
                f"{step} {_ms(model)} > {BUDGET_MS:.0f} ms frame budget: the model is too "
                f"slow for real time {where} — {hint}")
        elif model > HEADROOM_FRACTION * BUDGET_MS:
            add("warn", "model_headroom",
                f"{step} {_ms(model)} uses {100 * model / BUDGET_MS:.0f}% of the "
                f"{BUDGET_MS:.0f} ms frame budget: little headroom — {hint}")
        else:
            m95 = _p(v, "model", "p95")
            if m95 is not None and m95 > BUDGET_MS:
                add("warn", "model_p95",
                    f"{step} p95 {_ms(m95)} > {BUDGET_MS:.0f} ms budget: some frames are late")
    codec_ok = True
    for stage, what in (("encode_work", "encode"), ("decode_work", "decode")):
        w = _p(v, stage)
        if w is None:
            continue
        if w > BUDGET_MS:
            codec_ok = False
            add("bad", f"{what}_budget",
                f"{what} {_ms(w)} > {BUDGET_MS:.0f} ms frame budget: the audio codec cannot keep "
                "up on this machine (the client is short of CPU)")
        elif w > HEADROOM_FRACTION * BUDGET_MS:
            add("warn", f"{what}_headroom",
                f"{what} {_ms(w)} uses {100 * w / BUDGET_MS:.0f}% of the {BUDGET_MS:.0f} ms "
                "frame budget: little headroom for the codec")
    enc_w, dec_w = _p(v, "encode_work"), _p(v, "decode_work")
    if None not in (enc_w, model, dec_w) and codec_ok and model <= BUDGET_MS:
        total = enc_w + model + dec_w
        if total > BUDGET_MS:
            add("warn", "compute_sum",
                f"encode + model + decode = {_ms(total)} > {BUDGET_MS:.0f} ms: the machine cannot "
                "run codec + model in one frame (real time holds only while the stages overlap)")

    if v.cpu_demand is not None:
        need, cores = v.cpu_demand
        if need > CPU_DEMAND_WARN_FRACTION * cores:
            add("bad" if need > CPU_DEMAND_BAD_FRACTION * cores else "warn", "cpu_demand",
                f"codec + model need {need:.1f} of the {cores} CPU cores every frame (isolated "
                "figures): no headroom for real time on this machine")

    # --- waiting: time spent between the work ----------------------------------------------
    waits = False
    enc = _p(v, "encode")
    if enc is not None and enc_w is not None:
        wait = enc - enc_w
        if wait > INPUT_WAIT_WARN_MS:
            waits = True
            add("bad" if wait > INPUT_WAIT_BAD_MS else "warn", "input_wait",
                f"encode waits {_ms(wait)} in the input queue: the client is starved of CPU")
    up = _p(v, "uplink")
    if up is not None and up > UPLINK_WARN_MS:
        waits = True
        add("warn", "uplink_wait",
            f"codes wait {_ms(up)} to reach the model (uplink): the server is busy with earlier "
            "frames or short of CPU")
    sq = _p(v, "queue")
    if sq is not None and sq > SERVER_QUEUE_WARN_MS:
        waits = True
        add("warn", "server_queue",
            f"frames wait {_ms(sq)} in the server before their step: the model is behind")
    dec = _p(v, "decode")
    if dec is not None and dec_w is not None:
        wait = dec - dec_w
        if wait > DOWNLINK_WARN_MS:
            waits = True
            add("warn", "downlink_wait",
                f"audio tokens wait {_ms(wait)} for the decoder: the client is busy")
    proc = _p(v, "processing")
    if not waits and None not in (proc, enc_w, model, dec_w):
        plumbing = proc - (enc_w + model + dec_w)
        if plumbing > PLUMBING_WARN_MS:
            add("warn", "plumbing",
                f"plumbing adds {_ms(plumbing)} to the codec and model work (queues, polling, "
                "pipes)")
    p99 = _p(v, "processing", "p99")
    if proc is not None and p99 is not None and p99 - proc > JITTER_WARN_MS:
        add("warn", "jitter",
            f"processing p99 {_ms(p99)} is {_ms(p99 - proc)} above its p50: some frames are late")

    # --- playback: frames waiting in the output queue ---------------------------------------
    play = _p(v, "playback")
    if play is not None and proc is not None:
        wait = play - proc
        backlog = int(wait // BUDGET_MS)
        if v.playout_ms is not None and play <= v.playout_ms + BUDGET_MS / 2:
            # Held on purpose: the jitter buffer waits for the slowest recent frame.
            if wait >= BUDGET_MS:
                add("warn", "jitter_buffer",
                    f"jitter buffer adds {_ms(wait)} to mic-to-speaker to absorb late frames "
                    f"(it aims at {_ms(v.playout_ms)}: the slowest recent frame + a margin)")
        elif backlog >= BACKLOG_WARN_FRAMES:
            add("bad" if backlog >= BACKLOG_BAD_FRAMES else "warn", "output_backlog",
                f"output queue holds a {backlog}-frame backlog: +{backlog * BUDGET_MS:.0f} ms "
                "mic-to-speaker")

    dev_ms = v.output_latency_ms
    if dev_ms is not None and dev_ms >= DEVICE_LATENCY_WARN_MS:
        add("warn", "device_latency",
            f"the output device adds {_ms(dev_ms)} after the speaker stage (Bluetooth or a large "
            "buffer): a wired device makes the conversation snappier")

    if v.remote:
        _network(v, add)

    # --- counters -------------------------------------------------------------------------
    _counters(v, _view(previous) if previous is not None else None, add)
    if v.answer is not None:  # how long Moshi takes to answer: the pipeline, the model
        add(*answer_verdict(*v.answer))

    if not any(vd.level != "ok" for vd in out):
        if v.remote:
            add("ok", *_remote_ok(v, model, enc_w, dec_w))
        elif proc is None:
            n = (v.stages.get("processing") or {}).get("n") or 0
            add("ok", "measuring", f"measuring: {n} frame{'s' if n != 1 else ''} processed so far")
        else:
            parts = [f"processing p50 {_ms(proc)}"]
            if model is not None:
                parts.append(f"model {_ms(model)}")
            if enc_w is not None and dec_w is not None:
                parts.append(f"codec {_ms(enc_w)} + {_ms(dec_w)}")
            add("ok", "all_ok", "all stages within budget: " + ", ".join(parts))
    out.sort(key=lambda vd: -_RANK[vd.level])
    return out


def _network(v: _View, add) -> None:
    """A remote session's own measures: the round trip and the end-to-end estimate."""
    rtt = _p(v, "rtt", min_n=RTT_MIN_SAMPLES)
    if rtt is not None and rtt > RTT_WARN_MS:
        add("bad" if rtt > RTT_BAD_MS else "warn", "rtt",
            f"network round trip {_ms(rtt)}: every reply reaches you that much later (a server "
            "nearer to you, or a faster network, helps)")
    elif rtt is not None:
        r95 = _p(v, "rtt", "p95", min_n=RTT_MIN_SAMPLES)
        if r95 is not None and r95 - rtt > RTT_JITTER_WARN_MS:
            add("warn", "rtt_jitter",
                f"network round trip p95 {_ms(r95)} is {_ms(r95 - rtt)} above its p50: an "
                "uneven network or a busy server (the jitter buffer holds back more audio)")
    e2e = _p(v, "e2e")
    if e2e is not None and e2e > E2E_WARN_MS:
        add("bad" if e2e > E2E_BAD_MS else "warn", "e2e",
            f"end-to-end estimate {_ms(e2e)} > {E2E_WARN_MS:.0f} ms: replies come late (the "
            "network, the server or the model are behind)")


def _remote_ok(v: _View, model, enc_w, dec_w) -> tuple[str, str]:
    """(rule, text) of a remote session with nothing wrong: what was measured, or that nothing
    has come back yet."""
    rtt, e2e = _p(v, "rtt", min_n=RTT_MIN_SAMPLES), _p(v, "e2e")
    parts = []
    if rtt is not None:
        parts.append(f"round trip p50 {_ms(rtt)}")
    if e2e is not None:
        parts.append(f"end-to-end estimate {_ms(e2e)}")
    if model is not None:
        parts.append(f"server step {_ms(model)}")
    if enc_w is not None and dec_w is not None:
        parts.append(f"Opus {_ms(enc_w)} + {_ms(dec_w)}")
    if not parts or e2e is None:
        got = f"{v.processed} frame{'s' if v.processed != 1 else ''} back from the server"
        return "measuring", f"measuring: {got} so far" + (f" ({', '.join(parts)})" if parts else "")
    return "all_ok", "all measured within budget: " + ", ".join(parts)


def _counters(v: _View, prev: _View | None, add) -> None:
    c = v.counters
    p = prev.counters if prev is not None else {}
    span = v.elapsed_s - prev.elapsed_s if prev is not None else None
    since = f" in the last {span:.0f} s" if span else " in the last moments"

    def delta(name: str) -> int:
        return int(c.get(name, 0) or 0) - int(p.get(name, 0) or 0)

    under = delta("underruns")
    if under > 0:
        if prev is not None:
            add("bad", "underruns_rising",
                f"underruns rising: +{under}{since} (the speaker ran out of audio)")
        else:
            add("warn", "underruns", f"{under} underrun{'s' if under != 1 else ''} since playback "
                "started (the speaker ran out of audio)")
    drops = {name: delta(name) for name in DROP_COUNTERS}
    total = sum(d for d in drops.values() if d > 0)
    if total > 0:
        where = ", ".join(f"{k.removeprefix('drops_')} {d}" for k, d in drops.items() if d > 0)
        if prev is not None:
            add("bad", "drops_rising",
                f"frames dropped: +{total}{since} ({where}): the pipeline is behind real time")
        else:
            add("warn", "drops",
                f"{total} frame{'s' if total != 1 else ''} dropped ({where})")
    if prev is not None:
        got, out_ = v.captured - prev.captured, v.processed - prev.processed
        if got >= STALL_FRAMES and out_ == 0:
            what = ("the server has stopped answering (its model or the network)" if v.remote
                    else "a stage has stopped (codec or model)")
            add("bad", "stalled",
                f"nothing came out of the pipeline{since} while {got} frames were captured: {what}")
    elif v.captured >= 4 * STALL_FRAMES:
        share = (v.processed + INFLIGHT_SLACK) / v.captured
        if share < THROUGHPUT_WARN:
            add("bad" if share < THROUGHPUT_BAD else "warn", "throughput",
                f"only {100 * v.processed / v.captured:.0f}% of the captured frames were processed "
                f"({v.processed} of {v.captured}): the pipeline loses frames")
    dev = delta("overruns") + delta("underflows")
    if dev > 0:
        add("warn", "device_xruns",
            f"the audio device reported {dev} over/underflow{'s' if dev != 1 else ''}")


def worst(verdicts: list[Verdict]) -> str:
    """The worst level of a list of verdicts ("ok" for an empty list)."""
    return max((vd.level for vd in verdicts), key=lambda lvl: _RANK[lvl], default="ok")


def verdict_line(verdicts: list[Verdict]) -> str:
    """One line: the worst verdict, and how many more problems there are."""
    if not verdicts:
        return "ok: no data"
    first = verdicts[0]
    more = sum(1 for vd in verdicts[1:] if vd.level != "ok")
    tail = f" (+{more} more)" if more else ""
    return f"{first.level}: {first.text}{tail}"


class Diagnoser:
    """Keeps recent snapshots so that drops and underruns are judged as *rising* or not."""

    def __init__(self, window_s: float = RISING_WINDOW_S):
        self.window_s = window_s
        self._hist: deque = deque()

    def update(self, snap) -> list[Verdict]:
        v = _view(snap)
        # Baseline: the newest snapshot at least window_s old (or the oldest one there is).
        while len(self._hist) >= 2 and v.elapsed_s - self._hist[1][0] >= self.window_s:
            self._hist.popleft()
        prev = self._hist[0][1] if self._hist else None
        self._hist.append((v.elapsed_s, snap))
        if prev is None:
            return diagnose(snap)  # first look: counters are judged by their totals
        return diagnose(snap, previous=prev)

    def line(self, snap) -> str:
        return verdict_line(self.update(snap))
