"""The isolated measurements behind `moshi-tui bench step` and `bench codec`.

Both return plain dicts (JSON-ready) with the per-call times summarised by
`telemetry.percentiles`; `bench pipeline` runs them first to get the compute floor.

- `run_step`: the model step in a spawned process that loads and warms the LM exactly as the
  session's server does (`server.bench_step_main`), then times back-to-back steps.
- `run_codec`: rustymimi per 80 ms frame, through the synchronous `Tokenizer.encode_step /
  decode_step` (pure codec work) and through the `StreamTokenizer` a session uses (submit, then
  poll for the result every `POLL_S`: thread hand-offs included).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MoshiTuiError
from .telemetry import percentiles

FRAME = 1920
POLL_S = 0.0002  # StreamTokenizer result polling interval in the codec bench
CODEC_WARMUP_FRAMES = 4
CODEC_TIMEOUT_S = 30.0  # one codec call taking longer than this is a hang, not a measurement

Progress = Callable[[str], None]


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


# ----------------------------------------------------------------------------------- step


def run_step(resolved, steps: int = 200, *, max_steps: int | None = None,
             progress: Progress | None = None) -> dict:
    """Time `steps` model steps in a spawned server-like process. Raises MoshiTuiError."""
    from .server import bench_step_main

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=bench_step_main,
        args=(child, resolved, {"steps": steps, "max_steps": max_steps}),
        name="moshi-tui-bench-step",
        daemon=True,
    )
    t_launch = time.monotonic()
    proc.start()
    child.close()
    try:
        while True:
            if not parent.poll(0.1):
                if not proc.is_alive():
                    raise MoshiTuiError(
                        f"the bench step process died (exit code {proc.exitcode})", exit_code=1
                    )
                continue
            try:
                msg = parent.recv()
            except (EOFError, OSError):
                raise MoshiTuiError("the bench step process died", exit_code=1) from None
            if msg[0] == "progress":
                _say(progress, f"step: {msg[1]}")
            elif msg[0] == "error":
                raise MoshiTuiError(msg[1], exit_code=msg[2])
            elif msg[0] == "bench":
                raw = msg[1]
                break
    finally:
        proc.join(timeout=5.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2.0)
        parent.close()
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


# ----------------------------------------------------------------------------------- codec


def speech_frames(n: int, wav: Path | str | None = None) -> list[np.ndarray]:
    """`n` frames of 1920 float32 samples from a speech WAV (the bundled one), looped."""
    from .session import BUNDLED_SPEECH
    from .wavio import read_wav

    pcm = np.asarray(read_wav(wav or BUNDLED_SPEECH), dtype=np.float32).reshape(-1)
    usable = pcm.size // FRAME
    if usable == 0:
        pcm = np.pad(pcm, (0, FRAME - pcm.size))
        usable = 1
    frames = pcm[: usable * FRAME].reshape(usable, FRAME)
    return [np.ascontiguousarray(frames[i % usable]) for i in range(n)]


def _poll(getter, deadline: float):
    while True:
        out = getter()
        if out is not None:
            return out
        if time.monotonic() > deadline:
            raise MoshiTuiError("the audio codec did not answer (rustymimi hang)", exit_code=1)
        time.sleep(POLL_S)


def _codec_sync(path: str, frames: list[np.ndarray]) -> dict:
    import rustymimi

    tok = rustymimi.Tokenizer(path)
    for pcm in frames[:CODEC_WARMUP_FRAMES]:
        tok.decode_step(tok.encode_step(pcm.reshape(1, 1, FRAME)))
    enc, dec = [], []
    cpu0, wall0 = time.process_time(), time.monotonic()
    shapes = None
    for pcm in frames:
        x = pcm.reshape(1, 1, FRAME)
        a = time.monotonic_ns()
        codes = tok.encode_step(x)  # float32 (1, 1, 1920) -> uint32 (1, 8, 1)
        b = time.monotonic_ns()
        out = tok.decode_step(codes)  # uint32 (1, 8, 1) -> float32 (1, 1, 1920)
        c = time.monotonic_ns()
        enc.append((b - a) / 1e6)
        dec.append((c - b) / 1e6)
        shapes = shapes or {
            "encode_in": [list(x.shape), str(x.dtype)],
            "encode_out": [list(codes.shape), str(codes.dtype)],
            "decode_out": [list(out.shape), str(out.dtype)],
        }
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    del tok
    gc.collect()
    return _codec_result(enc, dec, wall, cpu, shapes=shapes)


def _codec_stream(path: str, frames: list[np.ndarray]) -> dict:
    import rustymimi

    from .pipeline import warm_codec

    tok = rustymimi.StreamTokenizer(path)
    warm_codec(tok, frames=CODEC_WARMUP_FRAMES)
    enc, dec = [], []
    cpu0, wall0 = time.process_time(), time.monotonic()
    for pcm in frames:
        a = time.monotonic_ns()
        tok.encode(pcm)
        codes = _poll(tok.get_encoded, time.monotonic() + CODEC_TIMEOUT_S)  # uint32 (8, 1)
        b = time.monotonic_ns()
        tok.decode(np.asarray(codes, dtype=np.uint32).reshape(1, -1)[:, :8])
        _poll(tok.get_decoded, time.monotonic() + CODEC_TIMEOUT_S)
        c = time.monotonic_ns()
        enc.append((b - a) / 1e6)
        dec.append((c - b) / 1e6)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    del tok
    gc.collect()
    return _codec_result(enc, dec, wall, cpu, poll_ms=POLL_S * 1000)


def _codec_result(enc, dec, wall, cpu, **extra) -> dict:
    both = [e + d for e, d in zip(enc, dec)]
    n = len(enc)
    return {
        "frames": n,
        "encode_ms": percentiles(enc),
        "decode_ms": percentiles(dec),
        "encode_decode_ms": percentiles(both),
        "cpu_ms_per_frame": round(1000.0 * cpu / n, 2) if n else None,
        "wall_s": round(wall, 3),
        **extra,
    }


def run_codec(mimi_weight: Path | str, frames: int = 100, *, wav: Path | str | None = None,
              progress: Progress | None = None) -> dict:
    """rustymimi encode/decode per frame, synchronous API then StreamTokenizer."""
    from .modelload import check_mimi

    check_mimi(mimi_weight)
    pcm = speech_frames(max(1, frames), wav)
    _say(progress, f"codec: synchronous Tokenizer, {len(pcm)} frames")
    try:
        sync = _codec_sync(str(mimi_weight), pcm)
        _say(progress, f"codec: StreamTokenizer, {len(pcm)} frames")
        stream = _codec_stream(str(mimi_weight), pcm)
    except MoshiTuiError:
        raise
    except Exception as e:  # rustymimi raises plain exceptions for unreadable weights
        raise MoshiTuiError(f"codec bench failed: {type(e).__name__}: {e}", exit_code=1) from None
    return {"mimi_weight": str(mimi_weight), "sync": sync, "stream": stream}
