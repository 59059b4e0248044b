"""`moshi-tui bench turns --demo` (CI): a short scenario through the real pipeline in real time.
The demo babbles random audio, so Moshi's figures mean nothing; what the user relies on here is
the machinery: the scripted user speech is heard where the script put it, the table and the
JSON carry every scenario's figures, and bad options fail in one line."""

from __future__ import annotations

import json

import pytest

from engine.bench.turns import SCENARIOS, make_script, summarise
from tests.test_bench import bench

pytest_plugins = ["conftest_models"]


def test_bench_turns_demo_runs_a_scenario_and_reports_it(demo_env, tmp_path):
    out = tmp_path / "turns.json"
    r = bench(["turns", "--demo", "--scenario", "pause", "--repeats", "1", "--json", str(out)],
              demo_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:3] == ["scenario", "runs", "takeover"]
    assert "pause" in r.stdout and "babbles random audio" in r.stdout
    data = json.loads(out.read_text())
    assert data["bench"] == "turns" and data["error"] is None and "note" in data
    s = data["scenarios"]["pause"]
    assert s["repeats"] == 1 and 0.0 <= s["takeover_rate"] <= 1.0
    assert set(s["response_ms"]) == {"p50", "p90", "n"} and set(s["stop_ms"]) == {"p50", "p90", "n"}
    # the user's two stretches, a pause shorter than the end of a turn between them, were heard
    # where the script put them (times since the first capture, 80 ms after the file's start)
    (a0, a1), (b0, b1) = s["user_speech_s"]
    heard = s["user_heard_s"]
    assert heard and abs(heard[0][0] - (a0 - 0.08)) <= 0.25
    assert abs(heard[-1][1] - (b1 - 0.08)) <= 0.3
    assert data["lag_ms"] == {"onset": 0.0, "offset": 100.0}


def test_the_scripts_hold_what_they_say(tmp_path):
    for name in SCENARIOS:
        info = make_script(name, 2, tmp_path / f"{name}.wav", use_espeak=False)
        says = sum(item[0] == "say" for item in SCENARIOS[name])
        assert len(info["user_speech_s"]) == 2 * says
        assert info["speech"].startswith("bundled speech")
    spans = make_script("pause", 1, tmp_path / "p.wav", use_espeak=False)["user_speech_s"]
    assert spans[1][0] - spans[0][1] == pytest.approx(0.35, abs=0.01)


def test_summary_counts_takeovers_per_repetition():
    turns = [{"kind": "takeover", "latency_ms": None}, {"kind": "response", "latency_ms": 700.0},
             {"kind": "response", "latency_ms": 900.0}, {"kind": "stop", "latency_ms": 300.0}]
    s = summarise(turns, 4)
    assert s["takeover_rate"] == 0.25 and s["response_ms"]["n"] == 2
    assert s["response_ms"]["p50"] == 800.0 and s["stop_ms"]["p50"] == 300.0


@pytest.mark.parametrize("args, line", [
    (["--scenario", "nope"], "unknown scenario 'nope'"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_options_fail_in_one_line(demo_env, args, line):
    r = bench(["turns", "--demo", *args], demo_env, timeout=120)
    assert r.returncode != 0 and line in r.stderr and "Traceback" not in r.stderr
