"""`--trace`: the Perfetto/Chrome JSON of a real headless session, parsed and checked.

One slice per frame and stage, on the process where the stage happens (encode/decode and the
waits in the client, the model step in the server), stamps in causal order, queue-depth counters.

Perfetto's own trace processor (`pip install perfetto`) is not used by default: on first use it
downloads a `trace_processor_shell` binary, which these offline machines cannot do (checked:
the download fails).  `test_loads_in_perfetto_trace_processor` runs when the `perfetto` package
is installed and MOSHI_TUI_TRACE_PROCESSOR names a local trace_processor_shell binary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from engine.telemetry.collect import Telemetry
from engine.telemetry.stages import FrameRecord
from engine.telemetry.trace import build_trace

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["conftest_models"]

CLIENT_SLICES = ("early encode (first 40 ms)", "input wait", "encode", "uplink", "downlink", "decode", "output wait")
SERVER_SLICES = ("server queue", "model step")
QUEUES = ("input", "c2s", "s2c", "output")
# Per frame, each slice starts no earlier than the previous one in this list ends.
CHAIN = ("early encode (first 40 ms)", "input wait", "encode", "uplink", "server queue", "model step", "downlink", "decode",
         "output wait")


@pytest.fixture(scope="module")
def traced(demo_env, tmp_path_factory):
    d = tmp_path_factory.mktemp("trace")
    trace, stats = d / "trace.json", d / "stats.json"
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--demo", "--headless", "--input", "silence:3",
         "--output", "null", "--no-save", "--trace", str(trace), "--stats-json", str(stats)],
        cwd=ROOT, env=demo_env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(trace.read_text()), json.loads(stats.read_text()), trace


def _processes(ev) -> dict[str, int]:
    """process name -> pid, from the metadata events."""
    return {e["args"]["name"]: e["pid"] for e in ev
            if e["ph"] == "M" and e["name"] == "process_name"}


def _slices(ev) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for e in ev:
        if e["ph"] == "X":
            out[e["name"]].append(e)
    return out


def test_trace_is_chrome_json(traced):
    data, _, path = traced
    assert isinstance(data["traceEvents"], list) and data["traceEvents"]
    assert data.get("displayTimeUnit") == "ms"
    for e in data["traceEvents"]:
        assert e["ph"] in ("M", "X", "i", "C", "b", "e", "n"), e
        assert isinstance(e["pid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert e["dur"] >= 0, e
    assert path.stat().st_size > 0


def test_two_processes_named(traced):
    ev = traced[0]["traceEvents"]
    procs = _processes(ev)
    assert len(procs) == 2 and len(set(procs.values())) == 2, procs
    client = next(p for n, p in procs.items() if "client" in n)
    server = next(p for n, p in procs.items() if "server" in n)
    assert client != server
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
               if e["ph"] == "M" and e["name"] == "thread_name"}
    # every slice track is named, so Perfetto shows "encode", "model step"... not bare tids
    for e in ev:
        if e["ph"] == "X":
            assert (e["pid"], e["tid"]) in threads, e


def test_slices_per_stage_on_their_process(traced):
    ev, stats = traced[0]["traceEvents"], traced[1]
    procs = _processes(ev)
    client = next(p for n, p in procs.items() if "client" in n)
    server = next(p for n, p in procs.items() if "server" in n)
    by = _slices(ev)
    for name in CLIENT_SLICES + SERVER_SLICES:
        assert by.get(name), f"no '{name}' slices"
    for name in CLIENT_SLICES:
        assert {e["pid"] for e in by[name]} == {client}, name
    for name in SERVER_SLICES:
        assert {e["pid"] for e in by[name]} == {server}, name
    # one model slice per step, steps unique; every step of the session is there (the last
    # one or two may still have been in flight when it stopped)
    steps = [e["args"]["step"] for e in by["model step"]]
    assert len(steps) == len(set(steps))
    # every played frame is there (frames still in flight when the session stopped may not be:
    # see test_build_trace_includes_frames_in_flight)
    assert stats["frames"]["played"] <= len(steps) <= stats["frames"]["steps"]
    assert len(by["output wait"]) == stats["frames"]["played"]
    # decode slices exist only for steps that gave audio: all but the codebook-delay steps
    assert len(by["decode"]) <= len(steps) - stats["frames"]["delay_steps"]


def test_slice_durations_are_the_telemetry_stages(traced):
    """The trace's model slices are the telemetry's model stage, frame for frame: the same
    count and the same percentiles as stats.json (both come from the same stamps)."""
    import numpy as np

    ev, stats = traced[0]["traceEvents"], traced[1]
    by = _slices(ev)
    model = [e["dur"] / 1000.0 for e in by["model step"]]
    st = stats["stages_ms"]["model"]
    assert len(model) == st["n"]
    for q in (50, 95, 99):
        assert round(float(np.percentile(model, q)), 3) == pytest.approx(st[f"p{q}"], abs=2e-3)
    assert round(max(model), 3) == pytest.approx(st["max"], abs=2e-3)


def test_frames_in_causal_order(traced):
    ev = traced[0]["traceEvents"]
    frames: dict[int, dict[str, dict]] = defaultdict(dict)
    for e in ev:
        if e["ph"] == "X" and e.get("cat") == "frame":
            frames[e["args"]["frame"]][e["name"]] = e
    complete = 0
    for f, sl in frames.items():
        present = [n for n in CHAIN if n in sl]
        for a, b in zip(present, present[1:]):
            end_a = sl[a]["ts"] + sl[a]["dur"]
            assert sl[b]["ts"] >= end_a - 0.002, (f, a, b, sl[a], sl[b])
        steps = {sl[n]["args"]["step"] for n in present}
        assert len(steps) == 1, (f, steps)  # aligned by step, not by arrival
        complete += len(present) == len(CHAIN)
    assert complete >= 5, "too few frames went all the way from capture to playback"


def test_capture_instants(traced):
    ev = traced[0]["traceEvents"]
    caps = [e for e in ev if e["ph"] == "i" and e["name"] == "capture"]
    assert caps
    slices_frames = {e["args"]["frame"] for e in ev if e["ph"] == "X" and e.get("cat") == "frame"}
    cap_frames = {e["args"]["frame"] for e in caps}
    assert slices_frames <= cap_frames


def test_queue_depth_counters(traced):
    ev, stats = traced[0]["traceEvents"], traced[1]
    counters = [e for e in ev if e["ph"] == "C"]
    assert counters, "no counter events"
    assert {e["name"] for e in counters} == {"queue depth"}
    for e in counters:
        assert set(e["args"]) == set(QUEUES), e
        assert all(isinstance(v, int) and v >= 0 for v in e["args"].values()), e
    ts = [e["ts"] for e in counters]
    assert ts == sorted(ts)
    # sampled once per captured frame
    assert abs(len(counters) - stats["frames"]["captured"]) <= 2
    for q in QUEUES:
        assert max(e["args"][q] for e in counters) <= stats["queues_max"][q]


# ---------------------------------------------------------------------------------------
# Overlapping frames on one track (a loaded machine: frame n+1 waits while frame n encodes).


def _overlapping_telemetry() -> Telemetry:
    """Recorded stamps of four frames on a loaded client: each frame is submitted to the
    encoder at once, but the encoder (140 ms a frame, FIFO) falls behind, so the encode slices
    (submission -> result) of consecutive frames overlap, as do their decodes."""
    tel = Telemetry()
    tel.keep_records = True
    ms = 1_000_000
    t0 = tel.t_launch + 100 * ms
    for i in range(4):
        cap = t0 + i * 80 * ms
        rec = FrameRecord(frame=i, step=i, t_head=cap - 40 * ms, t_cap=cap)
        rec.t_enc0 = cap + 1 * ms
        rec.t_enc = t0 + (i + 1) * 140 * ms
        rec.t_srv_in = rec.t_enc + 1 * ms
        rec.t_step0 = rec.t_srv_in
        rec.t_step1 = rec.t_step0 + 15 * ms
        rec.t_dec0 = rec.t_step1 + 1 * ms
        rec.t_dec = rec.t_dec0 + 100 * ms + i * 50 * ms
        rec.t_play = rec.t_dec + 10 * ms
        tel.done_frames.append(rec)
    return tel


def test_build_trace_keeps_every_frame():
    ev = build_trace(_overlapping_telemetry())["traceEvents"]
    by = _slices(ev)
    for name in CHAIN:
        assert sorted(e["args"]["frame"] for e in by[name]) == [0, 1, 2, 3], name


def test_no_overlapping_slices_on_a_track():
    """The JSON trace format requires duration events on one thread to nest; Perfetto drops
    (or, before v40-ish, corrupts) the ones that do not.  Overlapping frames need lanes."""
    ev = build_trace(_overlapping_telemetry())["traceEvents"]
    tracks: dict[tuple, list] = defaultdict(list)
    for e in ev:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append(e)
    for key, sl in tracks.items():
        sl.sort(key=lambda e: e["ts"])
        for a, b in zip(sl, sl[1:]):
            nested = b["ts"] + b["dur"] <= a["ts"] + a["dur"]
            assert b["ts"] >= a["ts"] + a["dur"] or nested, (key, a, b)


def test_build_trace_includes_frames_in_flight():
    tel = _overlapping_telemetry()
    last = tel.done_frames.pop()
    last.t_play = 0  # decoded, not yet played when the session stopped
    tel.frames[last.frame] = last
    by = _slices(build_trace(tel)["traceEvents"])
    assert 3 in {e["args"]["frame"] for e in by["model step"]}


def test_loads_in_perfetto_trace_processor(traced):
    tp_bin = os.environ.get("MOSHI_TUI_TRACE_PROCESSOR")
    if not tp_bin:
        pytest.skip("set MOSHI_TUI_TRACE_PROCESSOR to a trace_processor_shell binary: the "
                    "perfetto package downloads one on first use, which offline machines cannot")
    perfetto_tp = pytest.importorskip("perfetto.trace_processor")
    data, _, path = traced
    config = perfetto_tp.TraceProcessorConfig(bin_path=tp_bin)
    with perfetto_tp.TraceProcessor(trace=str(path), config=config) as tp:
        n = next(iter(tp.query("select count(*) as n from slice"))).n
        dropped = list(tp.query(
            "select name, value from stats where value > 0 and severity in ('error', 'data_loss')"
        ))
    n_x = sum(1 for e in data["traceEvents"] if e["ph"] == "X")
    assert not dropped, [(r.name, r.value) for r in dropped]
    assert n == n_x


def test_playout_replay_reads_the_sessions_frames(traced):
    """scripts.playout_replay replays a trace's frames through the jitter buffer: the
    processing times it reads are the session's processing stage (count, p50 and max as in
    stats.json), and it prints the default policy beside the one asked for."""
    import numpy as np

    from scripts import playout_replay

    stats, path = traced[1], traced[2]
    proc = playout_replay.processing_ms(path)
    st = stats["stages_ms"]["processing"]
    assert len(proc) == st["n"]
    assert round(float(np.median(proc)), 3) == pytest.approx(st["p50"], abs=2e-3)
    assert round(max(proc), 3) == pytest.approx(st["max"], abs=2e-3)
    r = subprocess.run([sys.executable, "-m", "scripts.playout_replay", str(path),
                        "--policy", "min_margin_ms=0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines()[2:]]
    assert rows == ["default", "min_margin_ms=0"], r.stdout
