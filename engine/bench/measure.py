"""The isolated measurements behind `moshi-tui bench step` and `bench codec`.

Both return plain dicts (JSON-ready) with the per-call times summarised by
engine.telemetry.stages.percentiles; `bench pipeline` runs them first to get the compute floor.

- `run_step`: the model step in a model process of its own (engine.session.host.ModelHost with
  engine.model.worker.bench_step_main), which loads and warms the LM exactly as a session's
  does, then times back-to-back steps.
- `run_codec`: rustymimi per 80 ms frame, through the synchronous `Tokenizer.encode_step /
  decode_step` (pure codec work) and through the `StreamTokenizer` a session uses (submit, then
  poll for the result every `POLL_S`: thread hand-offs included).  Each frame is also encoded
  the way a session's early encode does it: its first 40 ms (the head) first, then the rest;
  `encode_rest_ms` is the work left once the frame is complete (for the StreamTokenizer the rest
  goes in 40 ms after the head, as it is captured).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

from engine.audio import BUNDLED_SPEECH, FRAME, HEAD, SAMPLE_RATE
from engine.errors import MoshiTuiError
from engine.telemetry.stages import percentiles

HEAD_S = HEAD / SAMPLE_RATE  # 40 ms
POLL_S = 0.0002  # StreamTokenizer result polling interval in the codec bench
CODEC_WARMUP_FRAMES = 4
CODEC_TIMEOUT_S = 30.0  # one codec call taking longer than this is a hang, not a measurement
Progress = Callable[[str], None]


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


def run_step(resolved, steps: int = 200, *, max_steps: int | None = None, lm_mode: str = "auto",
             progress: Progress | None = None) -> dict:
    """Time `steps` model steps in a spawned server-like process. Raises MoshiTuiError."""
    from engine.model.messages import BenchDone, WorkerOptions
    from engine.model.worker import bench_step_main
    from engine.session.host import ModelHost

    host = ModelHost(resolved, WorkerOptions(steps=steps, max_steps=max_steps, lm_mode=lm_mode),
                     entry=bench_step_main, name="moshi-tui-bench-step",
                     what="the bench step process")
    t_launch = time.monotonic()
    host.start()
    try:
        raw = host.wait_for(BenchDone, lambda text: _say(progress, f"step: {text}"),
                            during="").result
    finally:
        host.stop(grace_s=5.0, ask=False)
    ms = [t / 1e6 for t in raw.pop("times_ns")]
    wall = raw["wall_s"]
    return {
        "steps": len(ms),
        "step_ms": percentiles(ms),
        "steps_per_s": round(len(ms) / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "cpu_percent": round(100.0 * raw["cpu_s"] / wall, 1) if wall > 0 else None,
        "process_launch_to_result_s": round(time.monotonic() - t_launch, 2),
        **{k: v for k, v in raw.items() if k not in ("wall_s", "cpu_s")},
    }


def speech_frames(n: int, wav: Path | str | None = None) -> list[np.ndarray]:
    """`n` frames of 1920 float32 samples from a speech WAV (the bundled one), looped."""
    from engine.audio.wavio import read_wav

    pcm = np.asarray(read_wav(wav or BUNDLED_SPEECH), dtype=np.float32).reshape(-1)
    usable = pcm.size // FRAME
    if usable == 0:
        pcm = np.pad(pcm, (0, FRAME - pcm.size))
        usable = 1
    frames = pcm[: usable * FRAME].reshape(usable, FRAME)
    return [np.ascontiguousarray(frames[i % usable]) for i in range(n)]


class _SyncCodec:
    """rustymimi.Tokenizer: encode_step float32 (1, 1, 1920) -> uint32 (1, 8, 1); decode_step back."""

    name = "sync"

    def __init__(self, path: str):
        import rustymimi

        self.tok = rustymimi.Tokenizer(path)
        self.shapes = None

    def head(self, pcm) -> None:
        if self.tok.encode_step(pcm.reshape(1, 1, -1)) is not None:
            raise MoshiTuiError("rustymimi returned codes for half a frame", exit_code=1)

    def encode(self, pcm):
        x = pcm.reshape(1, 1, -1)
        codes = self.tok.encode_step(x)
        if self.shapes is None:
            self.shapes = {"encode_in": [list(x.shape), str(x.dtype)],
                           "encode_out": [list(codes.shape), str(codes.dtype)]}
        return codes

    def decode(self, codes):
        out = self.tok.decode_step(codes)
        if self.shapes is not None and "decode_out" not in self.shapes:
            self.shapes["decode_out"] = [list(out.shape), str(out.dtype)]
        return out

    def extra(self) -> dict:
        return {"api": "rustymimi.Tokenizer.encode_step/decode_step", "shapes": self.shapes}


class _StreamCodec:
    """rustymimi.StreamTokenizer as a session uses it: submit, then wait for the result.

    The wait sleeps through most of the typical codec time (85 % of the running median), then
    polls every POLL_S: the result is seen within ~POLL_S without burning CPU on polls.
    """

    name = "stream"

    def __init__(self, path: str):
        import rustymimi

        self.tok = rustymimi.StreamTokenizer(path)
        self.typical = {"enc": deque(maxlen=16), "dec": deque(maxlen=16),
                        "rest": deque(maxlen=16)}
        self.polls = 0

    def _wait(self, kind: str, getter, t0: float):
        hist = self.typical[kind]
        if len(hist) >= 4:
            remaining = 0.85 * float(np.median(hist)) - (time.perf_counter() - t0)
            if remaining > 0:
                time.sleep(remaining)
        deadline = time.monotonic() + CODEC_TIMEOUT_S
        while True:
            self.polls += 1
            out = getter()
            if out is not None:
                hist.append(time.perf_counter() - t0)
                return out
            if time.monotonic() > deadline:
                raise MoshiTuiError("the audio codec did not answer (rustymimi hang)", exit_code=1)
            time.sleep(POLL_S)

    def head(self, pcm) -> None:
        self.tok.encode(pcm)

    def encode(self, pcm):
        t0 = time.perf_counter()
        self.tok.encode(pcm)
        # uint32 (8, 1); the rest of a frame after its head has a typical time of its own
        return self._wait("enc" if len(pcm) == FRAME else "rest", self.tok.get_encoded, t0)

    def decode(self, codes):
        t0 = time.perf_counter()
        self.tok.decode(np.asarray(codes, dtype=np.uint32).reshape(1, -1)[:, :8])
        return self._wait("dec", self.tok.get_decoded, t0)

    def extra(self) -> dict:
        return {"api": "rustymimi.StreamTokenizer encode/get_encoded, decode/get_decoded",
                "poll_ms": POLL_S * 1000, "polls": self.polls}


def _codec_both(path: str, frames: list[np.ndarray]) -> dict:
    """Both APIs, interleaved frame by frame, so a noisy machine weighs on both alike.
    The allocator is set up as in a session (engine.pipeline.alloc)."""
    from engine.pipeline.alloc import codec_allocations, tune_allocator

    tune_allocator()
    with codec_allocations():
        codecs = [_SyncCodec(path), _StreamCodec(path)]
        for codec in codecs:
            for pcm in frames[:CODEC_WARMUP_FRAMES]:
                codec.decode(codec.encode(pcm))
        for codec in codecs:  # the split path too
            codec.head(frames[0][:HEAD])
            codec.encode(frames[0][HEAD:])
    times = {c.name: {"enc": [], "dec": [], "head": [], "rest": [], "cpu": 0.0, "cpu_enc": 0.0,
                      "cpu_split": 0.0} for c in codecs}
    for pcm in frames:
        for codec in codecs:
            t = times[codec.name]
            c0 = time.process_time()
            a = time.monotonic_ns()
            codes = codec.encode(pcm)
            b = time.monotonic_ns()
            c1 = time.process_time()
            codec.decode(codes)
            c = time.monotonic_ns()
            c2 = time.process_time()
            t["cpu"] += c2 - c0
            t["cpu_enc"] += c1 - c0
            t["enc"].append((b - a) / 1e6)
            t["dec"].append((c - b) / 1e6)
            # The same frame again, split as a session's early encode submits it.
            a = time.monotonic_ns()
            codec.head(pcm[:HEAD])
            b = time.monotonic_ns()
            if codec.name == "stream":  # the second half is captured meanwhile
                time.sleep(max(0.0, HEAD_S - (b - a) / 1e9))
            c = time.monotonic_ns()
            codec.encode(pcm[HEAD:])
            d = time.monotonic_ns()
            t["cpu_split"] += time.process_time() - c2
            t["head"].append((b - a) / 1e6)
            t["rest"].append((d - c) / 1e6)
    out = {}
    for c in codecs:
        t = times[c.name]
        out[c.name] = _codec_result(t["enc"], t["dec"], t["cpu"], **c.extra())
        n = len(t["enc"]) or 1
        out[c.name]["encode_rest_ms"] = percentiles(t["rest"])
        if c.name == "sync":  # (the StreamTokenizer's head is only a hand-off)
            out[c.name]["encode_head_ms"] = percentiles(t["head"])
        out[c.name]["encode_cpu_ms_per_frame"] = round(1000.0 * t["cpu_enc"] / n, 2)
        out[c.name]["encode_split_cpu_ms_per_frame"] = round(1000.0 * t["cpu_split"] / n, 2)
    del codecs
    gc.collect()
    return out


def _codec_result(enc, dec, cpu, **extra) -> dict:
    both = [e + d for e, d in zip(enc, dec)]
    n = len(enc)
    return {
        "frames": n,
        "encode_ms": percentiles(enc),
        "decode_ms": percentiles(dec),
        "encode_decode_ms": percentiles(both),
        "cpu_ms_per_frame": round(1000.0 * cpu / n, 2) if n else None,
        **extra,
    }


def run_codec(mimi_weight: Path | str, frames: int = 100, *, wav: Path | str | None = None,
              progress: Progress | None = None) -> dict:
    """rustymimi encode/decode per frame: synchronous API and StreamTokenizer, interleaved."""
    from engine.model.load import check_mimi

    check_mimi(mimi_weight)
    pcm = speech_frames(max(1, frames), wav)
    _say(progress, f"codec: Tokenizer and StreamTokenizer, {len(pcm)} frames, interleaved")
    try:
        both = _codec_both(str(mimi_weight), pcm)
    except MoshiTuiError:
        raise
    except Exception as e:  # rustymimi raises plain exceptions for unreadable weights
        raise MoshiTuiError(f"codec bench failed: {type(e).__name__}: {e}", exit_code=1) from None
    return {"mimi_weight": str(mimi_weight), **both}


def run_codec_isolated(mimi_weight: Path | str, frames: int = 100, *,
                       wav: Path | str | None = None, progress: Progress | None = None) -> dict:
    """`run_codec` in a spawned process: the Mimi instances (~400 MB each) never inflate the
    memory figures of the session that `bench pipeline` runs afterwards in this process
    (MLX's Mimi: engine.bench.codec_mlx.run_codec_mlx_isolated)."""
    from concurrent.futures import ProcessPoolExecutor

    _say(progress, f"codec: Tokenizer and StreamTokenizer, {frames} frames, interleaved "
                   "(separate process)")
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(run_codec, str(mimi_weight), frames,
                         wav=None if wav is None else str(wav)).result()
