"""The Kyutai models this app talks with (Moshi, Hibiki), told apart by their config.json, and
the ones it refuses with one line saying what they are."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.errors import ModelSourceError
from engine.model.demo import DEMO_HIBIKI_CONFIG, DEMO_LM_CONFIG
from engine.model.kind import model_kind
from tests.conftest import ROOT

pytest_plugins = ["conftest_models"]


def test_moshi_and_hibiki():
    assert (model_kind(None).name, model_kind(None).mode, model_kind(None).codebooks) == (
        "moshi", "conversation", 8)
    assert model_kind(DEMO_LM_CONFIG).mode == "conversation"
    k = model_kind(DEMO_HIBIKI_CONFIG)
    assert (k.name, k.mode, k.codebooks) == ("hibiki", "translation", 16)


@pytest.mark.parametrize("changes, what", [
    ({"model_type": "stt"}, "a speech-to-text model"),
    ({"model_type": "tts"}, "a text-to-speech model"),
    ({"model_type": "helium"}, "a text-only language model (Helium)"),
    ({"dep_q": 0}, "a speech-to-text model"),
    ({"n_q": 0}, "a text-only language model"),
])
def test_models_that_do_not_listen_and_talk_back_are_refused(tmp_path, demo_env, changes, what):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**DEMO_LM_CONFIG, **changes}))
    with pytest.raises(ModelSourceError) as e:
        model_kind({**DEMO_LM_CONFIG, **changes})
    assert what in str(e.value) and e.value.exit_code == 2
    r = subprocess.run([sys.executable, "-m", "tui.cli", "--demo", "--headless", "--lm-config",
                        str(cfg), "--seconds", "1"], cwd=ROOT, env=demo_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and what in lines[0] and "moshi-tui runs Moshi and Hibiki" in lines[0]


def test_the_hibiki_demo_translates_headless(demo_env, speech_wav, tmp_path):
    """The whole pipeline with the Hibiki-shaped demo: 16 codebooks each way through the codec,
    a conditioned LM; audio and text come back."""
    from engine.audio.wavio import read_wav

    st, out = tmp_path / "st.json", tmp_path / "out.wav"
    r = subprocess.run([sys.executable, "-m", "tui.cli", "--demo", "hibiki", "--headless",
                        "-i", str(speech_wav), "-o", str(out), "--seconds", "5", "--no-save",
                        "--stats-json", str(st)], cwd=ROOT, env=demo_env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    s = json.loads(st.read_text())
    assert s["model"]["model"] == "demo Hibiki (bf16)" and s["model"]["mode"] == "translation"
    assert s["frames"]["processed"] >= 10 and s["transcript"]["tokens"]
    assert abs(read_wav(out)).max() > 0
