"""scripts/compare_official.py: Kyutai's local.py and moshi-tui measured at the same points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

pytest_plugins = ["conftest_models"]

ROOT = Path(__file__).resolve().parent.parent


def test_compare_official_measures_both_pipelines(jack_server, demo_env, tmp_path):
    # (jack_server: skips where JACK cannot run; the script starts a JACK server of its own)
    out = tmp_path / "compare.json"
    r = subprocess.run(
        [sys.executable, "-m", "scripts.compare_official", "--seconds", "6",
         "--rounds", "1", "--floor-steps", "20", "--floor-frames", "5", "--whole-frames-too",
         "--json", str(out)],
        cwd=ROOT, env=demo_env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "official local.py" in r.stdout and "moshi-tui" in r.stdout
    rnd = json.loads(out.read_text())["rounds"][0]
    fl = rnd["floor"]
    assert fl["floor_ms"] == fl["encode_ms"] + fl["step_ms"] + fl["decode_ms"] > 0
    assert fl["floor_early_ms"] == fl["encode_rest_ms"] + fl["step_ms"] + fl["decode_ms"] > 0
    assert "moshi-tui --whole-frames" in r.stdout and rnd["whole"]["early_encodes"] == 0
    for who in ("official", "ours", "whole"):
        res = rnd[who]
        # ~6 s of 80 ms frames went through each pipeline and came out of the speaker
        assert res["frames_captured"] >= 50, (who, res)
        assert res["frames_processed"] >= 30 and res["frames_played"] >= 20, (who, res)
        for stage in ("processing", "playback"):
            p = res[stage]
            assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"], (who, stage, p)
        # the speaker plays a frame after its PCM is ready
        assert res["playback"]["p50"] >= res["processing"]["p50"], (who, res)
        assert res["processes"]["client"]["cpu_percent"] > 10, (who, res)
        assert res["processes"]["server"]["cpu_percent"] > 1, (who, res)


def test_real_size_weights_are_checked_before_anything_starts(tmp_path):
    """--moshi-weight (real-size weights for both sides) needs its Mimi and tokenizer, as files."""
    script = [sys.executable, "-m", "scripts.compare_official"]
    r = subprocess.run([*script, "--moshi-weight", str(tmp_path / "model.q4.safetensors")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "go together" in r.stderr.strip().splitlines()[-1]
    files = ["--moshi-weight", str(tmp_path / "model.q4.safetensors"),
             "--mimi-weight", str(tmp_path / "mimi.safetensors"),
             "--tokenizer", str(tmp_path / "tok.model"), "-q", "4"]
    r = subprocess.run([*script, *files], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(f"not a file: {tmp_path / 'model.q4.safetensors'}")
    assert "Traceback" not in r.stderr
