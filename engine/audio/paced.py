"""Software-paced endpoints: a WAV file or silence as the microphone, a WAV file or nothing as
the speaker, ticking on an absolute real-time schedule (see engine.audio.endpoints)."""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np

from engine.audio import FRAME, FRAME_NS, HEAD, OUT_BLOCK, SAMPLE_RATE
from engine.audio.endpoints import OnFrame, OnHead, Pull, _Endpoint, _Feeder
from engine.audio.wavio import WavWriter, read_wav
from engine.errors import AudioError

MAX_BURST = 5  # frames
MAX_BURST_NS = MAX_BURST * FRAME_NS


class _Paced(_Endpoint):
    """A daemon thread calling `_tick()` on the absolute schedule t0 + (n + lead) * period."""

    _lead = 0  # 1 for sources (deliver after the period), 0 for sinks (pull at its start)
    _period_ns = FRAME_NS
    _thread_name = "audio-paced"

    def __init__(self) -> None:
        super().__init__()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self.periods = 0  # periods handled so far (ticked or skipped)

    def _start_thread(self) -> None:
        self._t0 = time.monotonic_ns()
        self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop_evt.is_set():
                now = time.monotonic_ns()
                period = self._period_ns
                due = self._t0 + (self.periods + self._lead) * period
                if now < due:
                    self._stop_evt.wait((due - now) / 1e9)
                    continue
                late = now - due
                pending = late // period + 1  # periods due now, this one included
                burst = MAX_BURST_NS // period
                if pending > burst:
                    lost = int(pending - burst)
                    self._skip(lost)
                    self.periods += lost
                    pending = burst
                for _ in range(int(pending)):
                    if self._stop_evt.is_set():
                        break
                    more = self._tick(time.monotonic_ns())
                    self.periods += 1
                    if not more:
                        self._stop_evt.set()
                        break
        except BaseException as e:  # the thread must not die silently
            self._record(e)
        finally:
            self._done()

    def _tick(self, t_ns: int) -> bool:
        """Handle one period; return False when there is nothing more to do."""
        raise NotImplementedError

    def _skip(self, n: int) -> None:
        """`n` periods were missed (the thread woke far too late)."""

    def _done(self) -> None:
        """Runs in the thread once it ends (normally or not)."""

    def _join(self) -> None:
        self._stop_evt.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)


class _PacedSource(_Paced):
    """A software microphone: frame n is handed over at t0 + (n + 1) * 80 ms.

    With `on_head` the source ticks every 40 ms: the first half of frame n goes to `on_head`
    at t0 + (n + 1/2) * 80 ms, the whole frame to `on_frame` 40 ms later.  Subclasses give the
    frames (`_take`) and say whether more follow (`_more`)."""

    _lead = 1

    def __init__(self) -> None:
        super().__init__()
        self.finished = threading.Event()
        self.overflows = 0  # frames skipped because the thread woke > MAX_BURST periods late
        self.frames_delivered = 0
        self._on_frame: OnFrame | None = None
        self._on_head: OnHead | None = None
        self._cur: np.ndarray | None = None  # the frame whose head period has passed

    def start(self, on_frame: OnFrame, on_head: OnHead | None = None) -> None:
        self._begin()
        self._on_frame, self._on_head = on_frame, on_head
        if on_head is not None:
            self._period_ns = FRAME_NS // 2
        if not self._more():
            self.finished.set()
            return
        self._start_thread()

    def _take(self) -> np.ndarray | None:
        """The next frame, or None at the end of the input."""
        raise NotImplementedError

    def _more(self) -> bool:
        raise NotImplementedError

    def _give(self, fn, pcm: np.ndarray) -> None:
        try:
            fn(pcm.copy(), time.monotonic_ns())
        except Exception as e:
            self._record(e)

    def _head_due(self) -> bool:
        return self._on_head is not None and self._cur is None

    def _tick(self, t_ns: int) -> bool:
        if self._head_due():
            self._cur = self._take()
            if self._cur is None:
                return False
            self._give(self._on_head, self._cur[:HEAD])
            return True
        f, self._cur = (self._cur if self._cur is not None else self._take()), None
        if f is None:
            return False
        self._give(self._on_frame, f)
        self.frames_delivered += 1
        return self._more()

    def _skip(self, n: int) -> None:
        for _ in range(n):
            if self._head_due():  # a lost head period: that frame comes whole
                self._cur = self._take()
                if self._cur is None:
                    return
                continue
            f, self._cur = (self._cur if self._cur is not None else self._take()), None
            if f is None:
                return
            self.overflows += 1

    def stop(self) -> None:
        if self._end():
            self._join()


class WavFileSource(_PacedSource):
    """A WAV file (any format read_wav accepts) delivered in real time, one frame per 80 ms.

    The last frame is padded with zeros.  With loop=True the file restarts (after its padded
    last frame); with then_silence=True silence follows it (a microphone the speaker has stopped
    talking into); either way `finished` is never set.
    """

    _thread_name = "audio-file-source"

    def __init__(self, path, loop: bool = False, then_silence: bool = False):
        super().__init__()
        self.path = os.fspath(path)
        pcm = read_wav(self.path)
        self.samples = len(pcm)
        self.duration_s = self.samples / SAMPLE_RATE
        n = -(-self.samples // FRAME)
        buf = np.zeros(n * FRAME, np.float32)
        buf[: self.samples] = pcm
        self._frames = buf.reshape(n, FRAME)
        self.n_frames = n
        self.loop = bool(loop)
        self.then_silence = bool(then_silence) and not self.loop
        self.label = f"file {os.path.basename(self.path)} ({self.duration_s:.1f} s)"
        if self.loop:
            self.label += ", looped"
        elif self.then_silence:
            self.label += ", then silence"
        self._pos = 0
        self._zeros = np.zeros(FRAME, np.float32)

    def _take(self) -> np.ndarray | None:
        if self._pos >= self.n_frames:
            if self.then_silence:
                return self._zeros
            if not self.loop or not self.n_frames:
                return None
            self._pos = 0
        f = self._frames[self._pos]
        self._pos += 1
        return f

    def _more(self) -> bool:
        return self.then_silence or (self.n_frames > 0 and (self.loop or self._pos < self.n_frames))

    def _done(self) -> None:
        endless = self.loop or self.then_silence
        if not endless and self._pos >= self.n_frames and self._cur is None:
            self.finished.set()


class SilenceSource(_PacedSource):
    """Zeros paced like a microphone; endless when seconds is None."""

    _thread_name = "audio-silence-source"

    def __init__(self, seconds: float | None = None):
        super().__init__()
        if seconds is not None and not (seconds >= 0 and math.isfinite(seconds)):
            raise AudioError(f"invalid silence duration: {seconds}", exit_code=2)
        self.seconds = seconds
        self.n_frames = None if seconds is None else int(math.ceil(seconds * SAMPLE_RATE / FRAME))
        self.label = "silence" if seconds is None else f"silence ({seconds:.1f} s)"
        self._taken = 0
        self._zeros = np.zeros(FRAME, np.float32)

    def _take(self) -> np.ndarray | None:
        if not self._more():
            return None
        self._taken += 1
        return self._zeros

    def _more(self) -> bool:
        return self.n_frames is None or self._taken < self.n_frames

    def _done(self) -> None:
        if not self._more() and self._cur is None:
            self.finished.set()


class NullSink(_Paced):
    """Plays one 20 ms block per period into nothing (pulling a frame whenever one is due)."""

    _thread_name = "audio-null-sink"
    _period_ns = OUT_BLOCK * 1_000_000_000 // SAMPLE_RATE

    def __init__(self) -> None:
        super().__init__()
        self.label = "null"
        self.latency_s = 0.0
        self.underflows = 0  # blocks lost because the thread woke > 400 ms late
        self._feed: _Feeder | None = None

    @property
    def frames_pulled(self) -> int:
        return self._feed.frames_pulled if self._feed is not None else 0

    def start(self, pull: Pull) -> None:
        self._begin()
        self._feed = _Feeder(self, pull)
        self._start_thread()

    def _tick(self, t_ns: int) -> bool:
        self._play(self._feed.fill(OUT_BLOCK, t_ns))
        return True

    def _play(self, block: np.ndarray) -> None:
        pass

    def _skip(self, n: int) -> None:
        self.underflows += n

    def stop(self) -> None:
        if self._end():
            self._join()


class WavFileSink(NullSink):
    """Writes what a speaker would play, 20 ms per period, to a 16-bit WAV (valid on disk after
    every block).  The file is created when the sink is constructed (so an unwritable path
    fails early)."""

    _thread_name = "audio-file-sink"

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        self._writer = WavWriter(self.path, SAMPLE_RATE)
        self.label = f"file {os.path.basename(self.path)}"

    @property
    def frames_written(self) -> int:
        return self._writer.samples_written // FRAME

    def _play(self, block: np.ndarray) -> None:
        try:
            self._writer.write(block)
        except Exception as e:
            self._record(e)

    def _skip(self, n: int) -> None:
        self.underflows += n
        self._play(np.zeros(n * OUT_BLOCK, np.float32))

    def stop(self) -> None:
        if self._end():
            self._join()
        self._writer.close()
