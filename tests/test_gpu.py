"""What only a GPU can show: full-size Moshi, the MLX codec at full speed, clean exits.

Every test here carries the `gpu` marker: collected everywhere, skipped with the reason where
MLX has no GPU (tests/conftest.py).  Run them alone with `pytest -m gpu`.

- The session's LM step mode ("auto": layered on CUDA) against moshi_mlx's own `LmGen.step`,
  step for step, on full-size random Moshi q4 (fixed seed), over more steps than two
  256-position KV blocks and across a segment reset.  On CUDA the tokens leave LmGen's at
  step 255, the last position of the first cache block, with TensorFloat-32 on or off: an open
  defect, held by a strict xfail (the test fails once the tokens agree, to be made plain).
- MLX's Mimi against rustymimi on looped speech, well past the 250-step attention window, at
  the precision MLX runs with (see MIN_DECODE_SNR_DB).
- A 60 s full-size session with the MLX codec drops nothing and processes every frame within
  the 80 ms frame (p99).
- `bench codec --codec mlx`, the app and serve exit with 0, without an abort, 20 times in a
  row (a codec worker thread that ended at exit once aborted them: engine.pipeline.codec_mlx).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.audio import FRAME_MS
from tests.conftest import ROOT
from tests.test_codec_mlx import _decode_all, _encode_all, _snr_db

pytest_plugins = ["conftest_models"]
pytestmark = pytest.mark.gpu

STEPS = 660  # past the 256-position KV block in each segment, across the reset at step 399
MAX_STEPS = 400
MIMI_FRAMES = 420  # 33.6 s of speech; the 250-step window of the 25 Hz transformer is 125 frames
# rustymimi computes in float32 on the CPU.  MLX on an NVIDIA GPU runs float32 matrix products
# on TensorFloat-32 units unless MLX_ENABLE_TF32=0 (its default is on): their 10-bit mantissa
# lowers the decoded SNR from full float32's ~120 dB to ~80 dB, and a code whose two nearest
# centroids are that close flips, which flips the later codebooks of its frame with it (the
# quantizer is residual).  Full float32: every code equal, an SNR floor 20 dB under what it
# gives; TF32: at most 1 % of the codes differ, a floor 10 dB under what it gives.
FULL_F32 = os.environ.get("MLX_ENABLE_TF32", "1") == "0"
MAX_CODES_DIFFERING = 0 if FULL_F32 else MIMI_FRAMES * 8 // 100
MIN_DECODE_SNR_DB = 100.0 if FULL_F32 else 70.0
EXIT_RUNS = 20
ABORT = "terminate called"


def _mlx_env(env: dict) -> dict:
    return {**env, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def fullsize_q4():
    from engine.model import fullsize

    return fullsize.build_lm(None, "q4", materialize=True)


def _tokens(model, mode: str, seed: int = 7) -> tuple[list, str]:
    """(text token, audio tokens, new segment) per step through the session's Stepper."""
    import mlx.core as mx

    from engine.model.worker import Stepper

    stepper = Stepper(model, MAX_STEPS, mode)
    mx.random.seed(seed)
    out = []
    try:
        for t in range(STEPS):
            codes = np.array([[(t * 37 + k * 11) % 2048] for k in range(8)], dtype=np.uint32)
            text, audio, segment = stepper.step(codes)
            out.append((text, None if audio is None else audio.tolist(), segment))
        return out, stepper.lm.mode
    finally:
        stepper.lm.restore()


def _cuda() -> bool:
    import mlx.core as mx

    cuda = getattr(mx, "cuda", None)
    return cuda is not None and bool(cuda.is_available())


@pytest.mark.xfail(condition="_cuda()", strict=True,
                   reason="on CUDA the session's step modes leave LmGen's tokens at step 255")
def test_fullsize_q4_session_steps_are_lmgens(fullsize_q4):
    from engine.model.graph import lm_step

    stock, mode = _tokens(fullsize_q4, "stock")
    assert mode == "stock"
    session, mode = _tokens(fullsize_q4, "auto")
    assert mode == lm_step.auto_mode()
    assert [s[2] for s in session].index(True) == MAX_STEPS - 1  # the reset is inside the run
    first_diff = next((i for i, (a, b) in enumerate(zip(stock, session)) if a != b), None)
    assert first_diff is None, f"{mode}: tokens differ from LmGen's from step {first_diff}"
    assert len(session) == STEPS


@pytest.fixture(scope="module")
def long_speech():
    from engine.bench.measure import speech_frames

    return speech_frames(MIMI_FRAMES)


def test_mlx_mimi_equals_rustymimi_past_the_attention_window(demo_files, long_speech):
    import rustymimi

    from engine.bench.codec_mlx import _device as mlx_device
    from engine.pipeline.codec_mlx import MlxMimiCodec

    tok = rustymimi.StreamTokenizer(str(demo_files.mimi))
    ref_codes = _encode_all(tok, long_speech)
    ref_pcm = _decode_all(tok, ref_codes)
    with MlxMimiCodec(demo_files.mimi) as codec:
        assert codec.run_in_worker(mlx_device).startswith("Device(gpu")
        codes = _encode_all(codec, long_speech)
        codec.reset()
        pcm = _decode_all(codec, ref_codes)
    differ = codes != ref_codes
    print(f"codes differing: {int(differ.sum())} of {differ.size}; decoded SNR "
          f"{_snr_db(ref_pcm, pcm):.1f} dB")  # (pytest -rA shows it)
    assert int(differ.sum()) <= MAX_CODES_DIFFERING, (
        f"{int(differ.sum())} of {differ.size} codes differ (frame, codebook): "
        f"{list(zip(*np.nonzero(differ.T)))[:10]}")
    assert _snr_db(ref_pcm, pcm) >= MIN_DECODE_SNR_DB
    tail = slice(300 * 1920, None)  # frames 300 on: well past the window alone
    assert _snr_db(ref_pcm[tail], pcm[tail]) >= MIN_DECODE_SNR_DB


def test_a_60_s_fullsize_session_on_the_mlx_codec_keeps_up(tmp_path, demo_env):
    out = tmp_path / "pipeline.json"
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "bench", "pipeline", "--random", "-q", "4",
         "--codec", "mlx", "--seconds", "60", "--json", str(out)],
        cwd=ROOT, env=_mlx_env(demo_env), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(out.read_text())["summary"]
    print({k: s[k] for k in ("processing_p50_ms", "processing_p99_ms", "drops", "underruns")})
    assert s["drops"] == {"drops_input": 0, "drops_decode": 0, "drops_output": 0}, s["drops"]
    assert s["processing_p99_ms"] is not None and s["processing_p99_ms"] <= FRAME_MS, s


def _no_abort(runs: list[tuple[int, str]]) -> None:
    bad = [(i, rc, text[-300:]) for i, (rc, text) in enumerate(runs)
           if rc != 0 or ABORT in text]
    assert not bad, f"{len(bad)} of {len(runs)} runs did not exit cleanly: {bad[:3]}"


def _runs(once, n: int = EXIT_RUNS, width: int = 4) -> list[tuple[int, str]]:
    """once(i) -> (exit code, output) for i < n, `width` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(once, range(n)))


def test_bench_codec_mlx_exits_cleanly_every_time(demo_env):
    cmd = [sys.executable, "-m", "tui.cli", "bench", "codec", "--demo", "--codec", "mlx",
           "--frames", "10"]
    env = _mlx_env(demo_env)

    def once(_i):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return r.returncode, r.stdout + r.stderr

    _no_abort(_runs(once))


def _read(fd: int, until, timeout_s: float) -> bytes:
    """What the file descriptor gives until `until(text so far)` holds, it closes, or time
    runs out."""
    import select

    text = b""
    deadline = time.monotonic() + timeout_s
    while not until(text) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # (a pseudo-terminal whose other side has closed)
                break
            if not chunk:
                break
            text += chunk
    return text


def _serve_once(env: dict, port: int, speech_wav) -> tuple[int, str]:
    """serve --codec mlx, one remote conversation through it, then SIGINT: (exit code, output)."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--demo", "--codec", "mlx", "--port",
         str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        text = _read(serve.stdout.fileno(), lambda t: b"ws://" in t, 120)
        client = subprocess.run(
            [sys.executable, "-m", "tui.cli", "--remote", f"ws://127.0.0.1:{port}/api/chat",
             "--headless", "-i", str(speech_wav), "-o", "null", "--no-save", "--seconds", "3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        serve.send_signal(signal.SIGINT)
        rest, _ = serve.communicate(timeout=60)
        if client.returncode != 0:
            return client.returncode, "client: " + client.stdout + client.stderr
        return serve.returncode, (text + rest).decode(errors="replace")
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_serve_on_the_mlx_codec_exits_cleanly_every_time(demo_env, speech_wav):
    env = _mlx_env(demo_env)
    _no_abort(_runs(lambda i: _serve_once(env, 18900 + i, speech_wav)))


def _app_once(env: dict, speech_wav) -> tuple[int, str]:
    """The app (a pseudo-terminal its screen) on the MLX codec, live, then SIGTERM, its quit."""
    import pty

    master, slave = pty.openpty()
    app = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--demo", "--codec", "mlx", "-i", str(speech_wav),
         "-o", "null", "--no-save"],
        cwd=ROOT, env={**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        text = _read(master, lambda t: app.poll() is not None, 12.0)  # loaded, then live
        app.send_signal(signal.SIGTERM)
        text += _read(master, lambda t: app.poll() is not None, 60)
        return app.wait(timeout=10), text.decode(errors="replace")
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        os.close(master)


def test_the_app_on_the_mlx_codec_exits_cleanly_every_time(demo_env, speech_wav):
    env = _mlx_env(demo_env)
    _no_abort(_runs(lambda _i: _app_once(env, speech_wav)))
