"""The audio codec behind the pipeline's loops."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from engine.audio import FRAME, HEAD
from engine.pipeline.alloc import codec_allocations


def load_codec(path: str):
    """A new rustymimi StreamTokenizer, warmed up."""
    import rustymimi

    with codec_allocations():
        tok = rustymimi.StreamTokenizer(path)
        warm_codec(tok)
    return tok


class _CodecWaiter:
    """Poll a rustymimi result getter efficiently while results are outstanding.

    The typical codec time is learned per kind of work (`kind`: a whole frame, or the rest of
    one whose first half went in early), so that switching between the two neither sleeps
    past a result nor polls for long."""

    def __init__(self, getter, fine_s: float = 0.0005):
        self.getter = getter
        self.fine_s = fine_s
        self.expected: dict[str, float] = {}
        self.hist: dict[str, deque] = {}
        self.polls = 0

    def inherit(self, other: "_CodecWaiter") -> None:
        """Start from another waiter's typical times (a new codec of the same model)."""
        self.expected = dict(other.expected)

    def wait(self, submitted_ns: int, stop: threading.Event, kind: str = "whole"):
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


def warm_codec(audio_tokenizer, frames: int = 4, timeout_s: float = 20.0) -> float:
    """Push a few silent frames through encode and decode so the first live frame is fast."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    pcm = np.zeros(FRAME, dtype=np.float32)
    for i in range(frames):
        if i % 2:  # the early-encode path too: a frame in two halves
            audio_tokenizer.encode(pcm[:HEAD])
            audio_tokenizer.encode(pcm[HEAD:])
        else:
            audio_tokenizer.encode(pcm)
        codes = None
        while codes is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the audio codec did not answer during warmup")
            time.sleep(0.002)
            codes = audio_tokenizer.get_encoded()
        audio_tokenizer.decode(np.asarray(codes, dtype=np.uint32).reshape(1, -1)[:, :8])
        out = None
        while out is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the audio codec did not answer during warmup")
            time.sleep(0.002)
            out = audio_tokenizer.get_decoded()
    return (time.perf_counter() - t0) * 1000.0
