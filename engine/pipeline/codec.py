"""The audio codec behind the pipeline's loops: Mimi, streaming, one frame at a time.

A backend is anything with the surface of rustymimi's `StreamTokenizer`: `encode(pcm)` and
`decode(codes)` hand work over without blocking (pcm: float32, a whole 80 ms frame or half of
one; codes: uint32 (1, codebooks)), `get_encoded()` / `get_decoded()` return the next result in
order, or None while it is not ready.  `StreamingCodec` wraps one as two `CodecDirection`s,
so that at a segment boundary the encoder and the decoder can move to a fresh codec at
different frames, and the loops wait for results the same way whatever computes them.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from engine.audio import FRAME, HEAD
from engine.errors import ModelLoadError, UsageError
from engine.pipeline.alloc import codec_allocations


class CodecDirection:
    """One direction of a streaming codec: work goes in with `submit`, results come back in
    order through `wait`, which polls the result getter efficiently.

    The typical time of a call is learned per kind of work (`kind`: a whole frame, or the rest
    of one whose first half went in early), so that switching between the two neither sleeps
    past a result nor polls for long."""

    def __init__(self, submit, getter, fine_s: float = 0.0005):
        self.submit = submit
        self.getter = getter
        self.fine_s = fine_s
        self.expected: dict[str, float] = {}
        self.hist: dict[str, deque] = {}
        self.polls = 0

    def inherit(self, other: "CodecDirection") -> None:
        """Start from another direction's typical times (a new codec of the same model)."""
        self.expected = dict(other.expected)

    def wait(self, submitted_ns: int, stop: threading.Event, kind: str = "whole"):
        """The next result (None once `stop` is set)."""
        # Sleep until ~85 % of the typical codec time has elapsed since submission, then poll.
        expected = self.expected.get(kind, 0.020)
        target = submitted_ns + int(expected * 0.85e9)
        now = time.monotonic_ns()
        if target > now:
            time.sleep((target - now) / 1e9)
        while not stop.is_set():
            self.polls += 1
            out = self.getter()
            if out is not None:
                took = (time.monotonic_ns() - submitted_ns) / 1e9
                hist = self.hist.setdefault(kind, deque(maxlen=32))
                hist.append(took)
                if len(hist) >= 4:
                    self.expected[kind] = float(np.median(hist))
                return out
            time.sleep(self.fine_s)
        return None


class StreamingCodec:
    """A codec backend as the loops see it: an encoder and a decoder direction."""

    def __init__(self, backend, name: str = "rustymimi"):
        self.backend = backend
        self.name = name
        self.encoder = CodecDirection(backend.encode, backend.get_encoded)
        self.decoder = CodecDirection(backend.decode, backend.get_decoded)
        self.warm_ms = 0.0
        self.closed = False

    def close(self) -> None:
        """Free the backend's threads and memory (rustymimi frees its own when dropped)."""
        self.closed = True
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def idle(self) -> bool:
        """No result left to collect (both getters empty, twice 20 ms apart)."""
        if self.closed:
            return True
        b = self.backend
        for _ in range(2):
            if b.get_encoded() is not None or b.get_decoded() is not None:
                return False
            time.sleep(0.02)
        return True


CODECS = ("rustymimi", "mlx")


def choose_codec(name: str = "auto") -> str:
    """The codec backend for `name` ("auto", "rustymimi", "mlx").

    auto: MLX's Mimi when MLX computes on a GPU here (CUDA, Metal), rustymimi on a CPU: on a
    CPU MLX's Mimi is several times slower than rustymimi, on a GPU it is the faster one and
    leaves the CPU cores free."""
    if name in CODECS:
        return name
    if name != "auto":
        raise UsageError(f"--codec must be auto, rustymimi or mlx, not {name!r}")
    return "mlx" if mlx_device_kind() == "gpu" else "rustymimi"


def mlx_device_kind() -> str:
    """"gpu" or "cpu": where MLX computes by default in this process."""
    try:
        import mlx.core as mx

        return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
    except Exception:
        return "cpu"


def open_codec(path: str, backend: str = "rustymimi", codebooks: int = 8) -> StreamingCodec:
    """A new codec for the Mimi weights at `path` encoding and decoding `codebooks` codebooks
    (the model's: 8 for Moshi, 16 for Hibiki), warmed up.  ModelLoadError (one line) when the
    file cannot be loaded."""
    if backend == "mlx":
        from engine.pipeline.codec_mlx import MlxMimiCodec

        try:
            mimi = MlxMimiCodec(path, num_codebooks=codebooks)
        except Exception as e:
            raise ModelLoadError(f"cannot load Mimi weights {path} into MLX: {e}") from None
        codec = StreamingCodec(mimi, "mlx")
        try:
            codec.warm_ms = mimi.warm()  # (and back to a fresh codec's state)
        except BaseException:
            codec.close()
            raise
        return codec
    import rustymimi

    with codec_allocations():
        try:
            tok = rustymimi.StreamTokenizer(str(path), num_codebooks=codebooks)
        except Exception as e:
            raise ModelLoadError(f"cannot load Mimi weights {path}: {e}") from None
        codec = StreamingCodec(tok)
        codec.warm_ms = warm_codec(tok, codebooks=codebooks)
    return codec


def warm_codec(backend, frames: int = 4, timeout_s: float = 20.0, codebooks: int = 8) -> float:
    """Push a few silent frames through encode and decode so the first live frame is fast."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    pcm = np.zeros(FRAME, dtype=np.float32)
    for i in range(frames):
        if i % 2:  # the early-encode path too: a frame in two halves
            backend.encode(pcm[:HEAD])
            backend.encode(pcm[HEAD:])
        else:
            backend.encode(pcm)
        codes = _await(backend.get_encoded, deadline)
        backend.decode(np.asarray(codes, dtype=np.uint32).reshape(1, -1)[:, :codebooks])
        _await(backend.get_decoded, deadline)
    return (time.perf_counter() - t0) * 1000.0


def _await(getter, deadline: float):
    while True:
        time.sleep(0.002)
        out = getter()
        if out is not None:
            return out
        if time.monotonic() > deadline:
            raise TimeoutError("the audio codec did not answer during warmup")
