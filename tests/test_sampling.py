"""Sampling controls (engine.model.sampling): Kyutai's defaults, checked values, the web UI's
query parameters, and a seed that makes the model's choices reproducible -- in the model
process as it starts and at each `Configure`, and where users set them: a session's `--seed`,
serve's query parameters, `--remote`'s options (the model's tokens, not what the metadata
says)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import UsageError
from engine.model.sampling import Sampling
from tests.conftest import ROOT

pytest_plugins = ["conftest_models"]


def test_defaults_are_kyutais():
    from moshi_mlx import utils

    s = Sampling()
    text, audio = s.samplers()
    ref = utils.Sampler()
    for got in (text, audio):
        assert (got.temp, got.top_p, got.top_k) == (ref.temp, ref.top_p, ref.top_k)
    assert s.describe() == "text t=0.8 top-p 0.95, audio t=0.8 top-p 0.95"


@pytest.mark.parametrize("kw", [dict(text_temperature=-1), dict(audio_top_k=-3),
                                dict(text_top_p=0), dict(seed=-1), dict(audio_top_k=2.5)])
def test_bad_values_are_refused(kw):
    with pytest.raises(UsageError):
        Sampling(**kw)


def test_query_parameters_round_trip():
    """Every setting travels in the query string (--remote sends it so), exactly."""
    s = Sampling(text_temperature=0.123456789, text_top_k=25, text_top_p=0.3,
                 audio_temperature=1.5, audio_top_k=7, audio_top_p=0.01, seed=9)
    assert all(getattr(s, f) != getattr(Sampling(), f) for f in s.as_dict())
    back, applied, ignored = Sampling().with_query({**s.to_query(), "pad_mult": "0"})
    assert back == s and ignored == ["pad_mult"] and "text_topk" in applied


def test_the_model_process_seeds_when_it_starts_and_at_each_conversation(demo_files, monkeypatch):
    """The model process's own start (load, warm, then the seed of its WorkerOptions) and its
    `Configure` (each conversation of serve): the same seed gives the same tokens, another
    seed other tokens, and at temperature 0 the seed does not matter (the new sampling is the
    one the step samples with)."""
    from engine.model.messages import WorkerOptions
    from engine.model.source import ModelOptions, resolve
    from engine.model.worker import _load_and_warm

    # (the process's MLX settings are its own: this one's environment stays as it is)
    monkeypatch.setattr("engine.model.mlx_env.tune_mlx_env", lambda environ=None: {})
    resolved = resolve(ModelOptions(demo=True))
    codes = np.zeros((8, 1), np.uint32)

    def started(sampling):
        options = WorkerOptions(max_steps=200, sampling=sampling)
        return _load_and_warm(resolved, options, lambda msg: None)[0]

    def tokens(st):
        out = [st.step(codes)[:2] for _ in range(40)]
        return [(int(t), None if a is None else a.tolist()) for t, a in out]

    a = tokens(started(Sampling(seed=7)))
    st = started(Sampling(seed=7))
    assert tokens(st) == a
    st.configure(Sampling(seed=7))  # the same sampling: a fresh LM, seeded again
    assert tokens(st) == a
    st.configure(Sampling(seed=8))
    assert tokens(st) != a
    st.configure(Sampling(seed=7))
    assert tokens(st) == a
    greedy = dict(text_temperature=0.0, audio_temperature=0.0)
    st.configure(Sampling(**greedy, seed=1))
    g1 = tokens(st)
    st.configure(Sampling(**greedy, seed=2))
    assert tokens(st) == g1 != a
    st.lm.restore()


def test_a_bad_value_on_the_command_line_is_one_line():
    r = subprocess.run([sys.executable, "-m", "tui.cli", "--demo", "--headless",
                        "--text-temperature", "-2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "moshi-tui: error: text temperature must be between 0 and 10, not -2.0"


# ------------------------------------------------------------------ where users set it
# Input frames a loaded host drops never reach the model, and every later code changes (the
# codec's stream skips them): each test below compares what the model saw the same input for.
CLIP_S = 3.0
TRIES, LEAST = 3, 8  # a session's runs: tries, and steps of the same input compared at least


@pytest.fixture(scope="module")
def clip(speech_wav, tmp_path_factory):
    """The first seconds of the bundled speech: the same input for every run."""
    from engine.audio.wavio import read_wav, write_wav

    path = tmp_path_factory.mktemp("sampling") / "speech3s.wav"
    write_wav(path, read_wav(speech_wav)[: int(24000 * CLIP_S)])
    return path


def _headless(env, tmp_path, *args) -> tuple[dict, dict | None]:
    """A `moshi-tui --headless` run: its stats.json, and its trace with --trace."""
    k = len(list(tmp_path.glob("stats-*")))
    stats, trace = tmp_path / f"stats-{k}.json", tmp_path / f"trace-{k}.json"
    more = ("--trace", str(trace)) if "--remote" not in args else ()
    r = subprocess.run([sys.executable, "-m", "tui.cli", "--headless", "--output", "null",
                        "--no-save", "--stats-json", str(stats), *more, *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(stats.read_text()), json.loads(trace.read_text()) if more else None


def _common(a: list, b: list, least: int) -> int:
    """How many leading tokens two runs both have (one may end a step or two sooner, or drop
    a frame sooner): at least `least`."""
    n = min(len(a), len(b))
    assert n >= least, (a, b)
    return n


def test_a_session_with_a_seed_gives_the_same_text_and_another_seed_other_text(
        demo_env, clip, tmp_path):
    """`moshi-tui --seed N` with an input WAV: the model process seeds its sampling, so the
    same seed gives the same text tokens (id and step) twice, another seed other ones, over
    the steps before the run's first dropped frame (the trace says which frame each step
    stepped).  The demo model's text is random tokens at Kyutai's temperature."""

    def run(seed):
        for _ in range(TRIES):  # (a run that dropped one of its first frames is run again)
            stats, trace = _headless(demo_env, tmp_path, "--demo", "--input", str(clip),
                                     "--seconds", str(CLIP_S + 1), "--seed", str(seed))
            frame_of = {e["args"]["step"]: e["args"]["frame"] for e in trace["traceEvents"]
                        if e.get("name") == "model step"}
            same_input = 0  # steps 0..same_input-1 stepped frames 0..same_input-1
            while frame_of.get(same_input) == same_input:
                same_input += 1
            if same_input >= LEAST:
                return [(t["step"], t["id"]) for t in stats["transcript"]["tokens"]
                        if t["step"] < same_input]
        pytest.fail(f"--seed {seed}: a frame among the first {LEAST} dropped in {TRIES} runs "
                    "in a row (a host too loaded for the same input to reach the model)")

    a, b, c = run(7), run(7), run(8)
    n = _common(a, b, LEAST // 2)
    assert a[:n] == b[:n]
    m = _common(a, c, LEAST // 2)
    assert a[:m] != c[:m]
    assert len({tok for _, tok in a[:n]}) >= 3, a  # not one repeated token


@pytest.fixture(scope="module")
def serve(demo_env):
    from tests.test_serve import ServeProcess

    sp = ServeProcess(demo_env)
    try:
        sp.url = sp.wait_for(r"listening on (ws://127\.0\.0\.1:\d+/api/chat)",
                             timeout=120)[0].group(1)
        yield sp
    finally:
        sp.stop()


AHEAD = 2  # frames the test client sends ahead of the audio it got back


def test_serves_query_parameters_change_what_the_model_process_samples(serve, clip):
    """Kyutai's web UI's sampling in the websocket URL reaches the model process for that
    conversation: the same `text_seed` gives the same text twice (the seed is applied when the
    conversation starts, not only at start-up), another seed other text, and at temperature 0
    the seed no longer matters (the temperature reached the sampler).  The client sends the
    speech as fast as serve answers it (never more than AHEAD frames ahead), so serve drops
    nothing whatever this host's speed: every conversation hears the same input."""
    import aiohttp

    from engine.audio.wavio import read_wav
    from tests.test_serve import FRAME, SpecClient, _until

    x = read_wav(clip)
    frames = x[: x.size // FRAME * FRAME].reshape(-1, FRAME)
    ended = r"conversation \d+ ended: .*, drops (\d+),"

    async def conversation(query: str) -> list[str]:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(serve.url + query) as ws:
                c = SpecClient(ws)
                await c.first(2)
                rx = asyncio.create_task(c.receive_all())
                for i, f in enumerate(frames):
                    assert await _until(lambda: i - c.samples // FRAME <= AHEAD, 30), i
                    await c.send_audio(f[None], pace_s=0.0)
                await _until(lambda: c.samples >= (len(frames) - AHEAD) * FRAME, 30)
                await ws.close()
                await asyncio.wait_for(rx, 10)
                assert c.errors == []
                return c.texts

    def run(query: str) -> list[str]:
        done = len([ln for ln in serve.lines if re.search(ended, ln)])
        texts = asyncio.run(conversation(query))
        drops = serve.wait_for(ended, count=done + 1, timeout=20)[done].group(1)
        assert drops == "0", serve.log[-2000:]
        return texts

    seeded = [run(f"?text_seed={s}&audio_seed={s}") for s in (5, 5, 6)]
    n = _common(seeded[0], seeded[1], 20)
    assert seeded[0][:n] == seeded[1][:n]
    m = _common(seeded[0], seeded[2], 20)
    assert seeded[0][:m] != seeded[2][:m]
    assert len(set(seeded[0][:n])) >= 10, seeded[0]
    greedy = [run(f"?text_temperature=0&audio_temperature=0&text_seed={s}") for s in (5, 6)]
    k = _common(*greedy, 20)
    assert greedy[0][:k] == greedy[1][:k]


def test_remote_sends_the_users_sampling_and_serve_applies_it(serve, demo_env, tmp_path):
    """`moshi-tui --remote` puts every sampling option in the URL and serve's model process
    samples with it: `--seed` twice gives the same text, and with the same seed
    `--text-topp/--audio-topp 0.2` other text (a smaller nucleus to sample from).  The input
    is silence, paced in real time: every frame of it gives the model the same codes, so the
    frames a loaded serve drops change nothing but how many steps there are."""

    def run(*args) -> list[str]:
        stats, _ = _headless(demo_env, tmp_path, "--remote", serve.url, "--input", "silence",
                             "--seconds", str(CLIP_S), *args)
        return [t["text"] for t in stats["transcript"]["tokens"]]

    a, b = run("--seed", "3"), run("--seed", "3")
    n = _common(a, b, 10)
    assert a[:n] == b[:n] and len(set(a[:n])) >= 5, a
    c = run("--seed", "3", "--text-topp", "0.2", "--audio-topp", "0.2")
    m = _common(a, c, 10)
    assert a[:m] != c[:m]
