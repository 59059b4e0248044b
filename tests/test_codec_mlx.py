"""engine.pipeline.codec_mlx: MLX's Mimi behind rustymimi.StreamTokenizer's interface.

What a user relies on: swapping the codec changes nothing the model hears or the speaker
plays (the same codes and, within float rounding, the same PCM as rustymimi), early encode
still gives the codes of whole frames, memory stays flat over a segment however long, and the
pipeline's loops can use it as they use rustymimi (submit never blocks, results in order).

Runs on the demo Mimi (full size, random weights), f32, against rustymimi on the bundled
speech, over 16 frames (32 steps of the transformers).  Stock moshi_mlx
(`Mimi.encode_step/decode_step`, which masks nothing within a call) differs from rustymimi in
frame 0: the bounds below (at most 2 codes of 128 differ, SNR >= 90 dB) catch that.

The 250-step attention window (125 frames) is not reached here: past it, on a CPU, MLX's Mimi
takes about a quarter of a second or more per frame each way, minutes for the comparison.
The comparison past the window (codes and decoded audio over hundreds of frames) is the gpu
marker's (tests/test_gpu.py); here the window's bookkeeping is checked with a window of 3 and 4 against
moshi_mlx's growing cache and its transformer (test_bounded_caches_stay_flat_and_change_nothing,
test_transformer_step_is_stock_moshi_mlx_for_single_steps).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from engine.audio import FRAME, HEAD
from engine.bench.measure import speech_frames

pytest_plugins = ["conftest_models"]

N_FRAMES = 16  # 1.28 s
MAX_CODES_DIFFERING = 2  # of N_FRAMES * 8 (measured: 0)
MIN_DECODE_SNR_DB = 90.0  # the same codes decoded by both (measured: 124 dB)


def _wait(getter, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        out = getter()
        if out is not None:
            return out
        assert time.monotonic() < deadline, "no result from the codec"
        time.sleep(0.002)


def _encode_all(codec, frames, halves=False) -> np.ndarray:
    """(8, n) codes, one frame at a time, as the pipeline's loops do."""
    out = []
    for f in frames:
        if halves:
            codec.encode(f[:HEAD])
            codec.encode(f[HEAD:])
        else:
            codec.encode(f)
        c = _wait(codec.get_encoded)
        assert c.shape == (8, 1) and c.dtype == np.uint32
        out.append(c)
    return np.concatenate(out, axis=1)


def _decode_all(codec, codes) -> np.ndarray:
    out = []
    for i in range(codes.shape[1]):
        codec.decode(np.ascontiguousarray(codes[:, i:i + 1].T))  # (1, 8), as LmGen gives
        pcm = _wait(codec.get_decoded)
        out.append(np.asarray(pcm, dtype=np.float32).reshape(-1))  # what the pipeline does
    return np.concatenate(out)


def _snr_db(ref, x) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((x - ref) ** 2), 1e-30)))


@pytest.fixture(scope="module")
def speech():
    return speech_frames(N_FRAMES)


@pytest.fixture(scope="module")
def rusty(demo_files, speech):
    """rustymimi.StreamTokenizer, fresh: its codes, its decoding of them, the raw shapes."""
    import rustymimi

    tok = rustymimi.StreamTokenizer(str(demo_files.mimi))
    codes = []
    for f in speech:
        tok.encode(f)
        codes.append(_wait(tok.get_encoded))
    codes = np.concatenate(codes, axis=1)
    pcm = []
    for i in range(codes.shape[1]):
        tok.decode(np.ascontiguousarray(codes[:, i:i + 1].T))
        pcm.append(_wait(tok.get_decoded))
    shapes = {"encoded": (codes[:, :1].shape, codes.dtype), "decoded": (pcm[0].shape, pcm[0].dtype)}
    return {"codes": codes, "pcm": np.concatenate([p.reshape(-1) for p in pcm]), "shapes": shapes}


@pytest.fixture(scope="module")
def codec(demo_files):
    from engine.pipeline.codec import open_codec

    c = open_codec(demo_files.mimi, "mlx")  # warmed, then back to a fresh state
    assert c.name == "mlx"
    yield c.backend
    c.close()


@pytest.fixture(scope="module")
def mlx_run(codec, speech):
    """The MLX codec's codes for the speech, whole frames from a fresh state."""
    codec.reset()
    return _encode_all(codec, speech)


def test_codes_match_rustymimi(mlx_run, rusty):
    differ = mlx_run != rusty["codes"]
    assert int(differ.sum()) <= MAX_CODES_DIFFERING, (
        f"{int(differ.sum())} of {differ.size} codes differ from rustymimi "
        f"(frame, codebook): {list(zip(*np.nonzero(differ.T)))[:10]}")


def test_decoded_audio_matches_rustymimi(codec, mlx_run, rusty):
    # The same codes (rustymimi's) through both decoders: the decoders agree to float rounding.
    codec.reset()
    pcm = _decode_all(codec, rusty["codes"])
    assert pcm.shape == rusty["pcm"].shape == (N_FRAMES * FRAME,)
    snr = _snr_db(rusty["pcm"], pcm)
    assert snr >= MIN_DECODE_SNR_DB, f"decoded SNR {snr:.1f} dB"
    assert np.corrcoef(pcm, rusty["pcm"])[0, 1] > 0.9999
    # decode(encode(speech)), each codec on its own codes: the same unless codes differ
    if not np.array_equal(mlx_run, rusty["codes"]):
        codec.reset()
        own = _decode_all(codec, mlx_run)
        assert np.corrcoef(own, rusty["pcm"])[0, 1] > 0.99


def test_shapes_are_rustymimis(codec, rusty, speech):
    codec.reset()
    codec.encode(speech[0])
    c = _wait(codec.get_encoded)
    assert (c.shape, c.dtype) == rusty["shapes"]["encoded"]
    codec.decode(c.reshape(1, -1))
    pcm = _wait(codec.get_decoded)
    assert (pcm.shape, pcm.dtype) == rusty["shapes"]["decoded"]


def test_early_encode_gives_the_codes_of_whole_frames(codec, mlx_run, speech):
    """960 + 960 samples give exactly the whole frame's codes; nothing comes out for a first
    half; whole and split frames can alternate."""
    codec.reset()
    out = []
    for i, f in enumerate(speech[:10]):
        if i % 3 == 2:
            codec.encode(f)
        else:
            codec.encode(f[:HEAD])
            codec.run_in_worker(lambda s: None)  # the first half is through the encoder...
            assert codec.get_encoded() is None  # ...and gave no code frame
            codec.encode(f[HEAD:])
        out.append(_wait(codec.get_encoded))
    np.testing.assert_array_equal(np.concatenate(out, axis=1), mlx_run[:, :10])


def test_warm_leaves_a_fresh_state(demo_files):
    from engine.pipeline.codec_mlx import MlxMimiCodec

    with MlxMimiCodec(demo_files.mimi, context=3) as c:  # (a small model state to look at)
        fresh = c.run_in_worker(lambda s: (s.state_shapes(), s.cache_nbytes()))
        assert all(x is None for x in fresh[0]) and fresh[1] == (0, 0)
        c.warm(frames=2)
        assert c.run_in_worker(lambda s: (s.state_shapes(), s.cache_nbytes())) == fresh
        assert c.get_encoded() is None and c.get_decoded() is None


def test_bounded_caches_stay_flat_and_change_nothing(demo_files, speech):
    """Context 3 and a slack of 2 positions: the caches move their window every call or two,
    12 steps each way is 4x the context.  Codes and PCM are bit-identical to moshi_mlx's
    growing KVCache, whose memory grows; the SEANet streaming states keep their shapes."""
    from engine.model.graph.mimi import MimiStreams
    from engine.pipeline.codec_mlx import MlxMimiCodec

    frames = speech[:6]
    with MlxMimiCodec(demo_files.mimi, context=3, slack=2) as c:
        codes, pcm, sizes, shapes = [], [], [], []
        for f in frames:
            c.encode(f)
            codes.append(_wait(c.get_encoded))
            c.decode(codes[-1].reshape(1, -1))
            pcm.append(_wait(c.get_decoded))
            sizes.append(c.run_in_worker(lambda s: s.cache_nbytes()))
            shapes.append(c.run_in_worker(lambda s: s.state_shapes()))

        def unbounded(s):
            s.reset()
            ref = MimiStreams(s.mimi, cache="unbounded")
            out = [(ref.encode(f), None) for f in frames]
            out = [(k, ref.decode(k.reshape(1, -1))) for k, _ in out]
            return out, ref.cache_nbytes()

        ref, ref_size = c.run_in_worker(unbounded)
    for i, (k, p) in enumerate(ref):
        np.testing.assert_array_equal(codes[i], k, err_msg=f"codes, frame {i}")
        np.testing.assert_array_equal(pcm[i], p, err_msg=f"pcm, frame {i}")
    assert len(set(sizes)) == 1, sizes  # (2 + 3 positions per layer from the first frame)
    assert ref_size[0] > sizes[-1][0] and ref_size[1] > sizes[-1][1]
    assert all(s == shapes[1] for s in shapes[1:]), "a SEANet streaming state changed shape"


def test_transformer_step_is_stock_moshi_mlx_for_single_steps(demo_files):
    """With t = 1 (where stock moshi_mlx needs no mask) and the stock GELU, transformer_step
    with the bounded cache equals moshi_mlx's ProjectedTransformer with its KVCache bit for
    bit, 30 steps past a context of 4; with t = 2 it differs from stock (the causal mask)."""
    from engine.model.graph.kv_cache import make_caches
    from engine.model.graph.mimi import transformer_step
    from engine.pipeline.codec_mlx import MlxMimiCodec

    def check(s):
        import mlx.core as mx

        pt = s.mimi.decoder_transformer
        xs = mx.random.normal((1, 512, 34), key=mx.random.key(0)) * 3
        stock_c, mine_c = pt.make_cache(), make_caches(pt, "bounded", slack=3)
        steps = []
        for i in range(34):
            x = xs[:, :, i:i + 1]
            a = pt(x, cache=stock_c)[0]
            b = transformer_step(pt, x, mine_c, exact_gelu=False)
            steps.append(bool(mx.array_equal(a, b).item()))
        pair = xs[:, :, :2]
        a = pt(pair, cache=pt.make_cache())[0]
        b = transformer_step(pt, pair, make_caches(pt), exact_gelu=False)
        return steps, bool(mx.allclose(a[:, :, 0], b[:, :, 0], atol=1e-6).item())

    with MlxMimiCodec(demo_files.mimi, context=4) as c:
        steps, first_of_pair_same = c.run_in_worker(check)
    assert all(steps), [i for i, ok in enumerate(steps) if not ok]
    assert not first_of_pair_same  # stock lets position 0 see position 1


def test_interface(codec, mlx_run, speech, demo_files):
    from engine.pipeline.codec_mlx import MlxMimiCodec

    codec.reset()
    assert codec.get_encoded() is None and codec.get_decoded() is None
    # Submits return at once while the worker is busy (a frame takes ~250 ms here); results
    # come out in submission order, encoder and decoder side by side.
    t0 = time.perf_counter()
    for f in speech[:3]:
        codec.encode(f)
    codec.decode(mlx_run[:, 0:1].T.copy())
    codec.decode(mlx_run[:, 1:2].T.copy())
    assert time.perf_counter() - t0 < 0.05
    got = np.concatenate([_wait(codec.get_encoded) for _ in range(3)], axis=1)
    np.testing.assert_array_equal(got, mlx_run[:, :3])
    a, b = _wait(codec.get_decoded), _wait(codec.get_decoded)
    codec.run_in_worker(lambda s: None)
    assert codec.get_encoded() is None and codec.get_decoded() is None
    codec.reset()
    np.testing.assert_array_equal(_decode_all(codec, mlx_run[:, :2]), np.concatenate([a, b]))
    with pytest.raises(ValueError):
        codec.decode(np.zeros((2, 8), np.uint32))  # checked at once, the worker lives on
    assert codec.alive
    # close() ends the worker, twice is fine, and a closed codec says so
    other = MlxMimiCodec(demo_files.mimi)
    other.encode(speech[0])
    other.close()
    assert not other.alive
    other.close()
    with pytest.raises(RuntimeError):
        other.encode(speech[0])
    # a codec dropped without close() (as the pipeline drops a codec at a segment switch)
    # stops its worker and frees the model
    dropped = MlxMimiCodec(demo_files.mimi)
    worker = dropped._thread
    del dropped
    gc.collect()
    worker.join(5.0)
    assert not worker.is_alive()


def test_a_session_on_the_mlx_codec_keeps_it_across_segments(demo_env, speech_wav, tmp_path):
    """The whole two-process pipeline with MLX's Mimi as the client's codec (slow on this CPU:
    frames drop, the conversation goes on).  The LM context fills every 4 steps; the model
    process starts each new segment itself and the codec streams on (no codec swap: its
    caches are bounded)."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    st = tmp_path / "st.json"
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--demo", "--headless", "--codec", "mlx", "-i",
         str(speech_wav), "-o", "null", "--no-save", "--seconds", "10", "--max-steps", "4",
         "--stats-json", str(st)],
        cwd=ROOT, env=demo_env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    s = json.loads(st.read_text())
    assert s["model"]["codec"] == "mlx"
    assert s["frames"]["processed"] >= 5
    assert s["counters"]["segments"] >= 1
    assert "could not prepare the next codec" not in r.stdout


def test_the_codec_is_chosen_by_where_mlx_runs(monkeypatch):
    """auto: MLX's Mimi when MLX computes on a GPU here, rustymimi on a CPU (measured: the MLX
    codec takes 8.6 / 6.7 ms per frame on an H200 against 246 / 475 ms on a 2-core CPU)."""
    from engine.errors import UsageError
    from engine.pipeline import codec
    from tests.conftest import mlx_gpu

    assert codec.choose_codec("rustymimi") == "rustymimi" and codec.choose_codec("mlx") == "mlx"
    here = "gpu" if mlx_gpu() is None else "cpu"  # (CI has no GPU; the GPU machine has one)
    assert codec.mlx_device_kind() == here
    assert codec.choose_codec("auto") == {"gpu": "mlx", "cpu": "rustymimi"}[here]
    monkeypatch.setattr(codec, "mlx_device_kind", lambda: "cpu")
    assert codec.choose_codec("auto") == "rustymimi"
    monkeypatch.setattr(codec, "mlx_device_kind", lambda: "gpu")
    assert codec.choose_codec("auto") == "mlx"
    with pytest.raises(UsageError):
        codec.choose_codec("opus")
