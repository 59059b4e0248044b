"""Pluggable audio sources and sinks; the pipeline only sees `AudioSource` / `AudioSink`.

Every endpoint moves 80 ms frames of 1920 float32 samples at 24 kHz mono:

* a source calls `on_frame(pcm, t_cap_ns)` once per frame from its own thread (a device's
  audio callback thread, or a daemon thread for files and silence), with
  `t_cap_ns = time.monotonic_ns()` taken when the frame is handed over.  Started with an
  `on_head` callback too, it also hands over each frame's first `HEAD` samples (40 ms) as soon
  as they are captured, before the frame itself: Mimi's encoder works in 40 ms steps, so the
  pipeline can encode the first half of a frame while the second half is still being captured
  (the codes are bit-identical, and the work left when the frame is complete halves);
* a sink plays blocks of its own size (a device's 80 ms callbacks, `OUT_BLOCK` = 20 ms for files
  and null output) and calls `pull(t_play_ns, room)` each time it needs the next
  frame: `t_play_ns` is when that frame's first sample is due (the callback's or tick's
  `time.monotonic_ns()` plus the samples before it in the block), `room` the 24 kHz samples left
  in the block.  The pull returns a frame (1920 samples, or fewer when the jitter buffer trims
  it) or None: then `room` samples of silence are played and the sink asks again at its next
  block, so a late frame costs a gap of one block, not a whole 80 ms period.  `latency_s` is
  the device-reported output latency, to add to `t_play_ns` for when the sound leaves the
  speaker.

Software-paced endpoints (files, silence, null) tick on an absolute schedule t0 + n * period, so
no drift accumulates (a source's period is one 80 ms frame, a sink's one 20 ms block).  A source
hands over frame n at t0 + (n+1) * 80 ms (a microphone delivers a frame once its 80 ms have been
captured); a sink handles block n at t0 + n * 20 ms (a device asks for a block before it plays
it).  When the thread wakes late, every period that has come due is handled back-to-back to
catch up, up to `MAX_BURST_NS` (400 ms, about what a host audio buffer absorbs).  Beyond that,
like a real device, the excess periods are lost rather than burst: a file source skips those
frames of the file (counted in `overflows`), a file/null sink writes silence for them without
pulling (counted in `underflows`).  The timeline of every endpoint therefore stays locked to the
wall clock: the output file has one block per elapsed period.

Errors raised inside a callback or a pacing thread are caught and recorded (`error` holds the
first message, `errors` counts them); the endpoint keeps running.  A device stream that ends on
its own (device unplugged) records an error and sets `finished` on sources.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from engine.audio import FRAME, HEAD, SAMPLE_RATE
from engine.audio.resample import Resampler

OnFrame = Callable[[np.ndarray, int], None]
OnHead = Callable[[np.ndarray, int], None]
Pull = Callable[[int, int], "np.ndarray | None"]


@runtime_checkable
class AudioSource(Protocol):
    label: str
    finished: threading.Event
    error: str | None

    def start(self, on_frame: OnFrame, on_head: OnHead | None = None) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class AudioSink(Protocol):
    label: str
    latency_s: float
    error: str | None

    def start(self, pull: Pull) -> None: ...

    def stop(self) -> None: ...


class _Endpoint:
    """Error bookkeeping and start/stop state shared by every source and sink."""

    label = ""

    def __init__(self) -> None:
        self.error: str | None = None
        self.errors = 0
        self._started = False
        self._stopped = False
        self._state_lock = threading.Lock()

    def _record(self, exc_or_msg) -> None:
        self.errors += 1
        if self.error is None:
            if isinstance(exc_or_msg, BaseException):
                self.error = f"{type(exc_or_msg).__name__}: {exc_or_msg}"
            else:
                self.error = str(exc_or_msg)

    def _begin(self) -> None:
        with self._state_lock:
            if self._started:
                raise RuntimeError(f"{self.label}: already started (endpoints are single-use)")
            self._started = True

    def _end(self) -> bool:
        """True the first time stop() is called."""
        with self._state_lock:
            if self._stopped:
                return False
            self._stopped = True
            return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


def _as_frame(x, owner: _Endpoint) -> np.ndarray | None:
    """What a pull returned: None, or 1..FRAME float32 samples (longer is cut, and recorded)."""
    if x is None:
        return None
    a = np.asarray(x, dtype=np.float32).reshape(-1)
    if a.shape[0] > FRAME:
        owner._record(f"pull returned {a.shape[0]} samples (more than {FRAME})")
        return a[:FRAME]
    return a if a.shape[0] else None


class _Feeder:
    """Feeds a sink's blocks from frame pulls: one pull per frame, at the moment the block
    reaches that frame's first sample; a None pull fills the rest of the block with silence.

    `rate` is the sink's sample rate; with a resampler the 24 kHz frames (and silences) go
    through it, so its state stays continuous."""

    def __init__(self, owner: _Endpoint, pull: Pull, rate: int = SAMPLE_RATE,
                 resampler: Resampler | None = None, prime: int = 0) -> None:
        self.owner = owner
        self.pull = pull
        self.rate = rate
        self.rs = resampler
        self.pending = np.zeros(prime, np.float32)
        self.frames_pulled = 0  # pulls made (frames asked for)

    def _fetch(self, t_ns: int, room: int) -> np.ndarray:
        try:
            f = _as_frame(self.pull(t_ns, room), self.owner)
        except Exception as e:
            self.owner._record(e)
            f = None
        self.frames_pulled += 1
        return np.zeros(room, np.float32) if f is None else f

    def fill(self, n: int, t_ns: int) -> np.ndarray:
        """The next `n` samples, for a block whose first sample is due at `t_ns`."""
        have = len(self.pending)
        if have >= n:
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        parts = [self.pending]
        ns_per = 1e9 / self.rate
        while have < n:
            room = -(-(n - have) * SAMPLE_RATE // self.rate)  # 24 kHz samples left (ceil)
            x = self._fetch(t_ns + int(have * ns_per), room)
            if self.rs is not None:
                x = self.rs.process(x)
            parts.append(x)
            have += len(x)
        buf = np.concatenate(parts)
        self.pending = buf[n:]
        return buf[:n]


class FrameChunker:
    """Cuts a stream of arbitrary-size blocks into FRAME-sized frames (`head()`: the first
    HEAD samples of the frame being filled, once they are there, once per frame)."""

    def __init__(self) -> None:
        self._buf = np.zeros(4 * FRAME, np.float32)
        self._n = 0
        self._head_given = False  # head() was handed out for the frame being filled

    def push(self, x: np.ndarray) -> list[np.ndarray]:
        need = self._n + len(x)
        if need > len(self._buf):
            nb = np.zeros(max(need, 2 * len(self._buf)), np.float32)
            nb[: self._n] = self._buf[: self._n]
            self._buf = nb
        self._buf[self._n : need] = x
        self._n = need
        out = []
        i = 0
        while self._n - i >= FRAME:
            out.append(self._buf[i : i + FRAME].copy())
            i += FRAME
        if i:
            rest = self._n - i
            self._buf[:rest] = self._buf[i : self._n]
            self._n = rest
            self._head_given = False
        return out

    def head(self) -> np.ndarray | None:
        if self._head_given or self._n < HEAD:
            return None
        self._head_given = True
        return self._buf[:HEAD].copy()
