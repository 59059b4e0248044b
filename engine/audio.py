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

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import AudioError
from .wavio import Resampler, WavWriter, read_wav

FRAME = 1920
SAMPLE_RATE = 24000
FRAME_NS = FRAME * 1_000_000_000 // SAMPLE_RATE  # 80 ms
HEAD = FRAME // 2  # 40 ms: one step of Mimi's encoder (25 Hz), handed over early by `on_head`
# the speech recording played as the microphone by the demo without one, and by the benches
BUNDLED_SPEECH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "speech.wav")
OUT_BLOCK = 480  # 20 ms: the block of the software-paced sinks
MAX_BURST = 5  # frames
MAX_BURST_NS = MAX_BURST * FRAME_NS

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


# --------------------------------------------------------------------------- shared helpers


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
        self.max_late_ms = 0.0  # worst wake-up lateness seen

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
                self.max_late_ms = max(self.max_late_ms, late / 1e6)
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


# --------------------------------------------------------------------------- file / silence


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
    last frame) and `finished` is never set.
    """

    _thread_name = "audio-file-source"

    def __init__(self, path, loop: bool = False):
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
        self.label = f"file {os.path.basename(self.path)} ({self.duration_s:.1f} s)"
        if self.loop:
            self.label += ", looped"
        self._pos = 0

    def _take(self) -> np.ndarray | None:
        if self._pos >= self.n_frames:
            if not self.loop or not self.n_frames:
                return None
            self._pos = 0
        f = self._frames[self._pos]
        self._pos += 1
        return f

    def _more(self) -> bool:
        return self.n_frames > 0 and (self.loop or self._pos < self.n_frames)

    def _done(self) -> None:
        if not self.loop and self._pos >= self.n_frames and self._cur is None:
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


# --------------------------------------------------------------------------- devices


def load_sounddevice():
    """Import sounddevice (PortAudio) on first use; failures become one-line AudioErrors."""
    try:
        import sounddevice as sd
    except OSError as e:  # raised by sounddevice when the PortAudio library is missing
        raise AudioError(
            f"cannot use audio devices: {e} (on Linux install libportaudio2; "
            "or use --input FILE.wav / --output FILE.wav)"
        ) from None
    except ImportError as e:
        raise AudioError(f"cannot use audio devices: {e}") from None
    return sd


def _pa_message(e: BaseException) -> str:
    msg = e.args[0] if getattr(e, "args", None) else str(e)
    return str(msg)


def _describe(sd, device, kind: str) -> tuple[int, str, int]:
    """(index, name, default rate) of a device index, or of the default device for None."""
    try:
        info = sd.query_devices(device, kind) if device is not None else sd.query_devices(kind=kind)
    except Exception as e:
        if device is None:
            raise AudioError(
                f"no audio {kind} device found: use --{kind} FILE.wav (see `moshi-tui devices`)",
                exit_code=2,
            ) from None
        raise AudioError(f"unknown {kind} device {device!r}: {_pa_message(e)}", exit_code=2) from None
    return int(info["index"]), str(info["name"]), int(round(info["default_samplerate"] or 0))


def _choose_rate(sd, index: int, kind: str, default_rate: int, label: str) -> int:
    """24000 if the device takes it, else its default rate (resampled in software)."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=index, channels=1, dtype="float32", samplerate=SAMPLE_RATE)
        return SAMPLE_RATE
    except Exception as first:
        if default_rate and default_rate != SAMPLE_RATE:
            try:
                check(device=index, channels=1, dtype="float32", samplerate=default_rate)
                return default_rate
            except Exception:
                pass
        raise AudioError(
            f"{kind} {label} cannot run at {SAMPLE_RATE} Hz"
            + (f" nor at its default {default_rate} Hz" if default_rate else "")
            + f": {_pa_message(first)}"
        ) from None


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


class _DeviceEndpoint(_Endpoint):
    """What both PortAudio endpoints share: closing the stream, and noticing it died."""

    _kind = "audio"
    _stopping = False
    _stream = None

    def _finished(self) -> None:
        if not self._stopping:
            self._record(f"{self._kind} device stopped unexpectedly (disconnected?)")
            self.finished.set()

    def _close_stream(self) -> None:
        s, self._stream = self._stream, None
        if s is None:
            return
        for close in (s.abort, s.close):
            try:
                close()
            except Exception:
                pass

    def stop(self) -> None:
        if not self._end():
            return
        self._stopping = True
        self._close_stream()


class DeviceSource(_DeviceEndpoint):
    """A PortAudio input device: 24 kHz mono float32 blocks of 1920 samples (960 when started
    with `on_head`: each callback hands over one half of a frame).

    If the device refuses 24 kHz it is opened at its default rate and each block is resampled
    in software (streaming polyphase filter, ~5 ms of extra latency); `device_rate` tells which.
    Blocks of another size than asked for (some hosts) are re-chunked to 1920 samples.
    """

    _kind = "input"

    def __init__(self, device: int | None = None, *, latency: str | float = "low"):
        super().__init__()
        sd = load_sounddevice()
        self._sd = sd
        self.index, self.name, default_rate = _describe(sd, device, "input")
        self.label = f"device {self.index}: {self.name}"
        self.device_rate = _choose_rate(sd, self.index, "input", default_rate, self.label)
        if self.device_rate != SAMPLE_RATE:
            self.label += f" ({self.device_rate} Hz, resampled)"
        self.latency = latency
        self.finished = threading.Event()
        self.overflows = 0  # callbacks flagged with input overflow (audio was lost)
        self.frames_delivered = 0
        self.callbacks = 0
        self.last_callback_ns = 0
        self.latency_s = 0.0  # device-reported input latency, known once started
        self._stream = None
        self._on_frame: OnFrame | None = None
        self._on_head: OnHead | None = None
        self._chunker = FrameChunker()
        self._rs = Resampler(self.device_rate, SAMPLE_RATE) if self.device_rate != SAMPLE_RATE else None
        self._stopping = False

    def start(self, on_frame: OnFrame, on_head: OnHead | None = None) -> None:
        self._begin()
        self._on_frame, self._on_head = on_frame, on_head
        sd = self._sd
        block = round((FRAME if on_head is None else HEAD) * self.device_rate / SAMPLE_RATE)
        try:
            self._stream = sd.InputStream(
                samplerate=self.device_rate, channels=1, blocksize=block, dtype="float32",
                device=self.index, latency=self.latency,
                callback=self._callback, finished_callback=self._finished,
            )
            self._stream.start()
            self.latency_s = float(self._stream.latency)
        except Exception as e:
            self._close_stream()
            raise AudioError(f"cannot open input {self.label}: {_pa_message(e)}") from None

    def _callback(self, indata, frames, time_info, status) -> None:
        t = time.monotonic_ns()
        self.callbacks += 1
        self.last_callback_ns = t
        try:
            if status.input_overflow:
                self.overflows += 1
            x = indata[:, 0]
            if self._rs is None and frames == FRAME and self._chunker._n == 0:
                frames_out = [x.copy()]
            else:
                if self._rs is not None:
                    x = self._rs.process(x)
                frames_out = self._chunker.push(x)
            for f in frames_out:
                self._on_frame(f, t)
                self.frames_delivered += 1
            if self._on_head is not None:
                head = self._chunker.head()
                if head is not None:
                    self._on_head(head, t)
        except Exception as e:
            self._record(e)



class DeviceSink(_DeviceEndpoint):
    """A PortAudio output device, played as 24 kHz mono.

    The Python callback plays 20 ms blocks (`OUT_BLOCK`, like the file and null sinks), so a
    late frame costs a 20 ms gap and playback can start within 20 ms of the jitter buffer's aim;
    Kyutai's CLI asks for 80 ms blocks, which on most devices also means 80 ms host buffers.
    Frames are pulled as the callbacks reach them, so any block size works.

    When the host plays a period in several callbacks back to back (a 20 ms block on an 80 ms
    period), the callback's own time is not when its block plays: PortAudio's DAC times say
    when.  A block is stamped `callback time + (its DAC lead - the smallest DAC lead seen)`,
    and that smallest lead, the device's own output latency, is `latency_s` (PortAudio's
    reported latency until DAC times are seen; some hosts under-report it by a period).

    A device that refuses 24 kHz is opened at its default rate with software resampling; the
    resampler is primed with a few ms of silence so that its look-ahead does not make the first
    callback pull two frames.
    """

    _kind = "output"

    def __init__(self, device: int | None = None, *, latency: str | float = "low"):
        super().__init__()
        sd = load_sounddevice()
        self._sd = sd
        self.index, self.name, default_rate = _describe(sd, device, "output")
        self.label = f"device {self.index}: {self.name}"
        self.device_rate = _choose_rate(sd, self.index, "output", default_rate, self.label)
        if self.device_rate != SAMPLE_RATE:
            self.label += f" ({self.device_rate} Hz, resampled)"
        self.latency = latency
        self.latency_s = 0.0
        self.underflows = 0  # callbacks flagged with output underflow (a gap was heard)
        self.callbacks = 0
        self.last_callback_ns = 0
        self.finished = threading.Event()  # set if the stream ends on its own
        self._stream = None
        self._feed: _Feeder | None = None
        self._rs = Resampler(SAMPLE_RATE, self.device_rate) if self.device_rate != SAMPLE_RATE else None
        self._extra_s = 0.0
        self._stopping = False

    @property
    def frames_pulled(self) -> int:
        return self._feed.frames_pulled if self._feed is not None else 0

    def start(self, pull: Pull) -> None:
        self._begin()
        sd = self._sd
        prime = 0
        block = round(OUT_BLOCK * self.device_rate / SAMPLE_RATE)
        if self._rs is not None:
            r = self._rs
            prime = int(math.ceil(r.q * r.block_in * self.device_rate / SAMPLE_RATE)) + 2
        self._feed = _Feeder(self, pull, self.device_rate, self._rs, prime)
        try:
            self._stream = sd.OutputStream(
                samplerate=self.device_rate, channels=1, blocksize=block, dtype="float32",
                device=self.index, latency=self.latency,
                callback=self._callback, finished_callback=self._finished,
            )
            self._extra_s = self._rs.latency_s if self._rs is not None else 0.0
            self.latency_s = float(self._stream.latency) + self._extra_s
            self._stream.start()
        except Exception as e:
            self._close_stream()
            raise AudioError(f"cannot open output {self.label}: {_pa_message(e)}") from None

    _lead_min: float | None = None  # seconds

    def _block_time(self, t_ns: int, time_info) -> int:
        """When this block plays, on the callbacks' clock (see the class docstring)."""
        try:
            lead = float(time_info.outputBufferDacTime) - float(time_info.currentTime)
        except (AttributeError, TypeError):
            return t_ns
        if not (time_info.outputBufferDacTime > 0 and 0.0 <= lead < 2.0):
            return t_ns  # this host gives no DAC times
        if self._lead_min is None or lead < self._lead_min:
            self._lead_min = lead
            self.latency_s = lead + self._extra_s
        return t_ns + int((lead - self._lead_min) * 1e9)

    def _callback(self, outdata, frames, time_info, status) -> None:
        t = time.monotonic_ns()
        self.callbacks += 1
        self.last_callback_ns = t
        try:
            if status.output_underflow:
                self.underflows += 1
            outdata[:, 0] = self._feed.fill(frames, self._block_time(t, time_info))
            if outdata.shape[1] > 1:
                outdata[:, 1:] = outdata[:, :1]
        except Exception as e:
            self._record(e)
            outdata.fill(0)

