"""Acoustic echo cancellation: the speaker's sound taken back out of the microphone.

With laptop speakers instead of headphones the microphone hears Moshi, and Moshi answers its
own voice.  `EchoCanceller` runs WebRTC's audio processing module (AEC3, the echo canceller
browsers use, with an optional noise suppressor) through the LiveKit SDK's maintained binding
(`livekit.rtc.AudioProcessingModule`), at 24 kHz.  AEC3 works in 10 ms chunks; the binding
takes any whole number of them in one call and runs them in turn (the same samples as one call
per chunk: tests/test_aec.py), so each block a device hands over is one call, not 2-8:

* `far(pcm, room, t_play_ns)` is given what the speaker really plays, as the sink's callback
  hands it to the device (a frame, a trimmed frame, or `room` samples of silence) and when
  (the DAC-stamped play time): the reference the echo is cancelled against;
* `near_head(pcm)` / `near_frame(pcm)` clean the microphone's samples before the encoder: a
  frame's first 40 ms when they are handed over early, then the rest of the frame (each sample
  is processed once, so the head the encoder already has is part of the frame it gets).

In front of AEC3, `engine.audio.linear_aec.LinearEchoFilter` subtracts most of the echo first
(a linear filter: the user's voice passes untouched), so that AEC3's suppressor, which also
turns the user down while both talk, has little left to do.  It reads the two streams aligned
by sample: the far sample a microphone sample heard is found from the stamps (the speaker's
play times plus its latency, the microphone's capture times minus its latency) once, and again
only if that estimate moves by more than 40 ms (a device restarted, the canceller switched back
on).  The delay between the two (render + capture buffering) is also told to AEC3 every frame
from the stamps; AEC3 estimates it too.  `enabled` can be flipped at any time (turned back
on, it cancels again at once: the room the linear filter learned is kept); `cost_ms()` is the
processing time since the last call, for the latency panel's "aec" row.  The canceller is used
from the two audio callback threads; one lock keeps its calls apart.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from engine.audio import HEAD, SAMPLE_RATE
from engine.audio.linear_aec import BLOCK, LinearEchoFilter
from engine.errors import AudioError

CHUNK = SAMPLE_RATE // 100  # 10 ms: what WebRTC's audio processing works in
MAX_DELAY_MS = 500  # the largest stream delay it takes (AEC3 finds longer ones by itself)
REALIGN = BLOCK  # the far/microphone alignment is redone when its estimate moves this much
LEAD = SAMPLE_RATE * 40 // 1000  # the linear filter also reads the 40 ms after the far sample
# the stamps say was heard: devices misreport their latency by a period or two


def _available_error() -> str | None:
    try:
        from livekit import rtc  # noqa: F401
    except Exception as e:  # ImportError, or the native library failing to load
        return f"{type(e).__name__}: {e}"
    return None


class EchoCanceller:
    def __init__(self, *, noise_suppression: bool = False, enabled: bool = True,
                 output_latency_s=lambda: 0.0, input_latency_s=lambda: 0.0,
                 linear: bool = True):
        err = _available_error()
        if err is not None:
            raise AudioError(f"echo cancellation needs the livekit package ({err}); "
                             "run with --aec off, or reinstall with scripts/setup.sh")
        from livekit import rtc

        self._rtc = rtc
        self.apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True,
                                             noise_suppression=noise_suppression)
        self.noise_suppression = noise_suppression
        self._enabled = enabled
        self.output_latency_s = output_latency_s
        self.input_latency_s = input_latency_s
        self._lock = threading.Lock()
        self._far = np.zeros(0, np.float32)  # reference samples short of a 10 ms chunk
        self._render_ms = 0.0  # when the last reference chunk plays, after it was analysed
        self._head: np.ndarray | None = None  # the processed first half of the frame under way
        self.linear = LinearEchoFilter() if linear else None
        self._frames: dict[tuple[str, int], tuple] = {}  # reused AudioFrames: (side, chunks)
        self._anchor: tuple[int, int] | None = None  # (far index, when it is heard, ns)
        self._mic_count = 0  # microphone samples cleaned so far
        self._offset: int | None = None  # far index - microphone index of the same moment
        self._cost_ns = 0
        self.chunks = 0  # microphone chunks processed (for tests and stats)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        """Switched back on, the linear filter aligns the two streams anew (the speaker's
        stream it kept has a gap where the canceller was off) and keeps the room it learned."""
        if on and not self._enabled and self.linear is not None:
            self._anchor = self._offset = None
            self.linear.reanchor()
        self._enabled = on

    # ------------------------------------------------------------------ reference
    def far(self, pcm: np.ndarray | None, room: int, t_play_ns: int) -> None:
        """The speaker plays `pcm` (or `room` samples of silence) from `t_play_ns` on."""
        if not self.enabled:
            return
        t0 = time.monotonic_ns()
        x = np.zeros(room, np.float32) if pcm is None else np.asarray(pcm, np.float32)
        buf = np.concatenate((self._far, x)) if self._far.size else x
        n = buf.size // CHUNK
        if self.linear is not None:
            # (appended where the microphone thread does not read: see _subtract_linear)
            heard = t_play_ns + int(1e9 * self.output_latency_s())
            count = self.linear.far_count
            self.linear.far(x)
            self._anchor = (count, heard)
        waited = time.monotonic_ns()
        with self._lock:
            waited = time.monotonic_ns() - waited  # (the other thread's work, not this call's)
            if n:
                self.apm.process_reverse_stream(self._fill("far", buf[:n * CHUNK])[0])
        self._far = buf[n * CHUNK:].copy()
        # (t_render - t_analyze): the block starts playing at t_play, plus the device's own
        # latency; it was analysed now
        self._render_ms = max(0.0, (t_play_ns - t0) / 1e6 + 1000.0 * self.output_latency_s())
        self._cost_ns += time.monotonic_ns() - t0 - waited

    # ------------------------------------------------------------------ microphone
    def near_head(self, pcm: np.ndarray, t_ns: int) -> np.ndarray:
        """The first HEAD samples of a frame, captured by `t_ns`, cleaned."""
        if not self.enabled:
            self._head = None
            return pcm
        out = self._near(pcm, t_ns)
        self._head = out
        return out

    def near_frame(self, pcm: np.ndarray, t_ns: int) -> np.ndarray:
        """A whole frame, captured by `t_ns`, cleaned (its head as `near_head` returned it)."""
        head, self._head = self._head, None
        if not self.enabled:
            return pcm
        if head is not None and head.size == HEAD:
            return np.concatenate((head, self._near(pcm[HEAD:], t_ns)))
        return self._near(pcm, t_ns)

    def _near(self, pcm: np.ndarray, t_ns: int) -> np.ndarray:
        t0 = time.monotonic_ns()
        x = np.asarray(pcm, np.float32)
        n = x.size // CHUNK
        out = np.array(x, np.float32)
        # (t_process - t_capture): its first sample was captured len(x) samples before t_ns
        capture_ms = (t0 - t_ns) / 1e6 + 1000.0 * (x.size / SAMPLE_RATE + self.input_latency_s())
        if self.linear is not None:  # (outside the lock: the filter is this thread's alone)
            t_first = t_ns - int(1e9 * (x.size / SAMPLE_RATE + self.input_latency_s()))
            x = self._subtract_linear(x, t_first)
        waited = time.monotonic_ns()
        with self._lock:
            waited = time.monotonic_ns() - waited
            delay = self._render_ms + max(0.0, capture_ms)
            self.apm.set_stream_delay_ms(int(min(MAX_DELAY_MS, round(delay))))
            if n:
                frame, samples = self._fill("near", x[:n * CHUNK])
                self.apm.process_stream(frame)  # (in place)
                np.multiply(samples, 1.0 / 32767.0, out=out[:n * CHUNK])
        self.chunks += n
        self._cost_ns += time.monotonic_ns() - t0 - waited
        return out

    def _subtract_linear(self, x: np.ndarray, t_first_ns: int) -> np.ndarray:
        """`x` (captured from `t_first_ns` on) through the linear filter, BLOCK by BLOCK (a tail
        short of a block passes as it is).  The speaker's thread appends to the filter's far
        ring meanwhile: it writes past `far_count`, this reads before it (the ring holds 2 s)."""
        start, self._mic_count = self._mic_count, self._mic_count + x.size
        if self._anchor is None:  # nothing played yet
            return x
        index, heard = self._anchor
        offset = index + round((t_first_ns - heard) * SAMPLE_RATE / 1e9) - start + LEAD
        if self._offset is None or abs(offset - self._offset) > REALIGN:
            self._offset = offset
        out = np.array(x, np.float32)
        for b in range(0, x.size - BLOCK + 1, BLOCK):
            out[b:b + BLOCK] = self.linear.process(x[b:b + BLOCK], start + b + self._offset)
        return out

    # ------------------------------------------------------------------ helpers
    def cost_ms(self) -> float:
        """Processing time (reference and microphone) since the last call."""
        ns, self._cost_ns = self._cost_ns, 0
        return ns / 1e6

    def _fill(self, side: str, pcm: np.ndarray):
        """`pcm` (whole 10 ms chunks) as int16 in the AudioFrame of its side and size, made once
        per (side, size) and reused: (the frame, an int16 view of its samples)."""
        key = (side, pcm.size // CHUNK)
        if key not in self._frames:
            data = bytearray(2 * pcm.size)
            self._frames[key] = (self._rtc.AudioFrame(data, SAMPLE_RATE, 1, pcm.size),
                                 np.frombuffer(data, np.int16))
        frame, samples = self._frames[key]
        np.clip(pcm * 32767.0, -32768, 32767, out=samples, casting="unsafe")
        return frame, samples


class EchoStage:
    """Echo cancellation as a stage of the audio path: the microphone's frames `canceller`
    cleans against what the speaker plays, its work (reference and microphone) reported once
    per frame while it is on, as the stage "aec", to `observer.stage(name, ms)` (an observer of
    engine.pipeline.events: the telemetry)."""

    def __init__(self, canceller: EchoCanceller, observer) -> None:
        self.canceller = canceller
        self.observer = observer

    @property
    def enabled(self) -> bool:
        return self.canceller.enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self.canceller.enabled = on

    def head(self, pcm: np.ndarray, t_ns: int) -> np.ndarray:
        """A frame's first half from the microphone, as the encoder gets it (echo removed)."""
        return self.canceller.near_head(pcm, t_ns)

    def frame(self, pcm: np.ndarray, t_ns: int) -> np.ndarray:
        """A frame from the microphone, as the pipeline gets it (echo removed)."""
        canceller = self.canceller
        out = canceller.near_frame(pcm, t_ns)  # (also when off: it forgets a head cleaned before)
        if canceller.enabled:
            self.observer.stage("aec", canceller.cost_ms())
        return out

    def far(self, pcm: np.ndarray | None, room: int, t_play_ns: int) -> None:
        """The speaker plays `pcm` (or `room` samples of silence) from `t_play_ns` on."""
        self.canceller.far(pcm, room, t_play_ns)
