"""`moshi-tui bench step|codec|pipeline` with tiny counts: structure and sanity, never wall-clock
limits (the machine is shared: only relations that hold by construction are asserted)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.bench.report import PCT_HEAD, table
from engine.telemetry.diagnose import LEVELS
from engine.telemetry.stages import ALL_STAGES, STAGES

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["conftest_models"]


def bench(args, env, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "bench", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def ordered(st: dict, what: str = "") -> None:
    assert st["n"] > 0, what
    assert 0 <= st["p50"] <= st["p95"] <= st["p99"] <= st["max"], (what, st)
    assert st["mean"] <= st["max"], (what, st)


def envelope(data: dict, kind: str) -> None:
    assert data["bench"] == kind
    m = data["machine"]
    assert m["cpus"] >= 1 and m["python"] and m["platform"]
    for pkg in ("mlx", "moshi_mlx", "rustymimi", "numpy"):
        assert m["versions"][pkg], pkg
    assert data["options"]["demo"] is True
    assert data["argv"][:2] == ["bench", kind]


@pytest.fixture(scope="module")
def step_run(demo_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "step.json"
    r = bench(["step", "--demo", "--steps", "10", "--json", str(out)], demo_env)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text())


@pytest.fixture(scope="module")
def codec_run(demo_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "codec.json"
    r = bench(["codec", "--demo", "--frames", "5", "--json", str(out)], demo_env)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text())


@pytest.fixture(scope="module")
def pipeline_run(demo_env, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out, trace = d / "pipeline.json", d / "trace.json"
    r = bench(["pipeline", "--demo", "--seconds", "3", "--floor-steps", "10", "--floor-frames",
               "5", "--json", str(out), "--trace", str(trace)], demo_env)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text()), trace


# ----------------------------------------------------------------------------------- step


def test_step_json(step_run):
    _, data = step_run
    envelope(data, "step")
    assert data["options"]["steps"] == 10
    res = data["result"]
    assert res["steps"] == 10
    ordered(res["step_ms"], "step")
    assert res["step_ms"]["n"] == 10
    assert res["steps_per_s"] > 0
    assert res["load_ms"] > 0 and res["warmup_ms"] > 0
    # the first step after warmup gives no audio (Moshi's codebook delay of 1)
    assert res["audio_none_steps"] == 1
    assert "cpu" in res["mlx_device"].lower() or "gpu" in res["mlx_device"].lower()
    assert data["model"].startswith("demo")


def test_step_runs_in_its_own_process(step_run):
    import os

    _, data = step_run
    assert data["result"]["pid"] != os.getpid()


def test_step_table(step_run):
    r, data = step_run
    lines = r.stdout.splitlines()
    assert lines[0].startswith("bench step: demo")
    head = lines[1].split()
    assert head == PCT_HEAD
    row = lines[2].split()
    assert row[:2] == ["step", "ms"]
    assert float(row[2]) == pytest.approx(data["result"]["step_ms"]["p50"], abs=0.06)
    assert "steps/s" in r.stdout


# ----------------------------------------------------------------------------------- codec


def test_codec_json(codec_run):
    _, data = codec_run
    envelope(data, "codec")
    res = data["result"]
    for api in ("sync", "stream"):
        for key in ("encode_ms", "decode_ms", "encode_decode_ms"):
            ordered(res[api][key], f"{api} {key}")
            assert res[api][key]["n"] == 5
        assert res[api]["cpu_ms_per_frame"] > 0
        # every frame is also encoded in two halves, as a session's early encode does
        ordered(res[api]["encode_rest_ms"], f"{api} encode_rest_ms")
        assert res[api]["encode_rest_ms"]["n"] == 5
        assert res[api]["encode_split_cpu_ms_per_frame"] > 0
    ordered(res["sync"]["encode_head_ms"], "sync encode_head_ms")
    shapes = res["sync"]["shapes"]
    assert shapes["encode_in"] == [[1, 1, 1920], "float32"]
    assert shapes["encode_out"] == [[1, 8, 1], "uint32"]
    assert shapes["decode_out"] == [[1, 1, 1920], "float32"]
    assert res["mimi_weight"].endswith(".safetensors")


def test_codec_table(codec_run):
    r, _ = codec_run
    for row in ("encode (sync)", "decode (sync)", "encode (stream)", "decode (stream)",
                "first 40 ms (sync)", "rest after it (sync)", "rest after it (stream)"):
        assert row in r.stdout


def test_codec_with_mimi_weight_only(demo_files, demo_env):
    r = bench(["codec", "--mimi-weight", str(demo_files.mimi), "--frames", "2"], demo_env)
    assert r.returncode == 0, r.stderr
    assert "encode (sync)" in r.stdout


# ----------------------------------------------------------------------------------- pipeline


def test_pipeline_stages(pipeline_run):
    _, data, _ = pipeline_run
    envelope(data, "pipeline")
    assert data["options"]["seconds"] == 3
    stages = data["session"]["stages_ms"]
    assert set(ALL_STAGES) <= set(stages)
    for name in ALL_STAGES:
        if name != "aec":
            ordered(stages[name], name)
    assert stages["aec"]["n"] == 0  # no echo cancellation with null output
    # waits, codec service times and plumbing are all >= 0 by construction
    for name, st in data["frame_breakdown_ms"].items():
        ordered(st, name)
    assert data["session"]["frames"]["processed"] > 0


def test_pipeline_floor_and_overhead(pipeline_run):
    r, data, trace = pipeline_run
    s = data["summary"]
    floor = data["floor"]
    assert floor["step"]["steps"] == 10 and floor["codec"]["sync"]["frames"] == 5
    ordered(floor["step"]["step_ms"], "floor step")
    assert s["floor_ms"] > 0 and s["processing_p50_ms"] > 0
    # The floor's encode follows how the session encoded: the rest of a frame after its first
    # 40 ms when most frames went in early, else whole frames (a host too slow for real time
    # encodes whole: frames wait); the whole-frame floor (Kyutai's CLI) is reported beside it.
    # The share is the session's: its frames that went in early (each one in the trace) over
    # those it encoded.
    early = data["session"]["counters"].get("early_encodes", 0)
    encoded = data["session"]["stages_ms"]["encode_work"]["n"]
    in_trace = {e["args"]["frame"] for e in json.loads(trace.read_text())["traceEvents"]
                if e["name"] == "early encode (first 40 ms)" and e["ph"] == "X"}
    assert len(in_trace) == early
    share = s["early_encode_share"]
    assert share == round(early / encoded, 3)
    assert f"early encode: {100 * share:.1f} % of frames" in r.stdout
    assert s["floor_encode"] == ("rest" if share >= 0.5 else "whole")
    sync, step = floor["codec"]["sync"], floor["step"]["step_ms"]["p50"]
    enc = "encode_rest_ms" if share >= 0.5 else "encode_ms"
    expected = sync[enc]["p50"] + step + sync["decode_ms"]["p50"]
    assert s["floor_ms"] == pytest.approx(expected, abs=0.01)
    whole = sync["encode_ms"]["p50"] + step + sync["decode_ms"]["p50"]
    assert s["floor_whole_frame_ms"] == pytest.approx(whole, abs=0.01)
    assert s["overhead_ms"] == pytest.approx(s["processing_p50_ms"] - s["floor_ms"], abs=0.01)
    # Per frame, processing contains the disjoint encode, model and decode service spans.
    plumbing = data["frame_breakdown_ms"]["plumbing"]
    assert plumbing["n"] > 0 and plumbing["p50"] >= 0
    # a played frame is played after it was decoded (output_wait >= 0, checked above)
    assert data["frame_breakdown_ms"]["output_wait"]["n"] == data["session"]["frames"]["played"]
    assert s["playback_with_device_p50_ms"] >= s["playback_p50_ms"]


def test_pipeline_counters_processes_startup(pipeline_run):
    _, data, _ = pipeline_run
    s = data["summary"]
    assert isinstance(s["underruns"], int) and s["underruns"] >= 0
    assert set(s["drops"]) == {"drops_input", "drops_decode", "drops_output"}
    for proc in ("client", "server"):
        p = s["processes"][proc]
        assert p["cpu_percent"] is not None and p["cpu_percent"] >= 0
        assert p["rss_mb"] > 0
    # the client's CPU split: its Python threads (loops, polling, pacing) are a part of it
    client = s["processes"]["client"]
    assert 0 < client["python_cpu_percent"] <= client["cpu_percent"] + 1.0
    assert "python_cpu_percent" not in s["processes"]["server"]
    assert s["startup_ms"] > 0
    assert 0 < s["first_live_frame_processing_ms"] <= s["first_capture_to_first_output_ms"]
    assert s["work_share"]["client_codec_work_percent"] > 0
    assert s["cpu_demand_cores"] > 0 and s["cpus"] >= 1


def test_pipeline_verdicts_and_table(pipeline_run):
    r, data, trace = pipeline_run
    assert data["verdicts"]
    for v in data["verdicts"]:
        assert v["level"] in LEVELS and v["text"] and v["rule"]
    out = r.stdout
    for name in STAGES:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert "compute floor" in out and "pipeline overhead" in out and "plumbing" in out
    assert "mic-to-speaker p50" in out and "diagnosis:" in out
    assert json.loads(trace.read_text())["traceEvents"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pipeline_stopped_early_still_reports_what_it_measured(demo_env, tmp_path, sig):
    """A time limit (SIGTERM) or Ctrl+C during the session ends it early: the table, the JSON
    and the trace of what was measured are still written, and the exit status says so (130)."""
    out, trace = tmp_path / "p.json", tmp_path / "t.json"
    p = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "bench", "pipeline", "--demo", "--seconds", "600",
         "--floor-steps", "5", "--floor-frames", "3", "--json", str(out), "--trace", str(trace)],
        cwd=ROOT, env=demo_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        for line in p.stdout:  # until frames flow through the session
            m = re.search(r"frames\s+(\d+)", line)
            if (m and int(m.group(1)) > 0) or time.monotonic() > deadline:
                break
        p.send_signal(sig)
        rest, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, rest[-2000:]
    assert "Traceback" not in rest
    assert "(interrupted)" in rest and "compute floor" in rest
    data = json.loads(out.read_text())
    assert data["summary"]["interrupted"] is True
    assert 0 < data["session"]["duration_s"] < 600 and data["session"]["frames"]["processed"] > 0
    assert json.loads(trace.read_text())["traceEvents"]


# ----------------------------------------------------------------------------------- usage


@pytest.mark.parametrize("args, needle", [
    ([], "moshi-tui bench"),
    (["nope"], "invalid choice"),
    (["step", "--demo", "--steps", "0"], "--steps"),
    (["codec", "--mimi-weight", "/nonexistent/mimi.safetensors"], "not found"),
    (["pipeline", "--demo", "--seconds", "0"], "--seconds"),
    (["pipeline", "--demo", "--json", "/nonexistent/dir/x.json"], "does not exist"),
])
def test_bad_usage_one_line_exit_2(demo_env, args, needle):
    r = bench(args, demo_env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


def test_table_alignment():
    t = table(["name", "a", "b"], [["x", 1.25, None], ["longer", 10.0, 3]])
    lines = t.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["x", "1.2", "-"]  # 1.25 -> "1.2" (round half to even)
    assert lines[2].endswith("3")
