"""A linear echo filter in front of WebRTC's echo canceller: most of the room's echo subtracted
before AEC3 sees it, the user's voice left as it was.

AEC3 (engine.audio.aec) cancels the echo with its own linear filter and then *suppresses*
what it believes is left; while the user and Moshi talk at once that suppressor turns the user
down too.  Measured offline (tests/test_aec.py's room, the echo as loud as the user): AEC3
alone keeps a magnitude-spectrum correlation of 0.70 with the user's clean voice, and 0.91
when the echo it is given is 14 dB weaker.  This filter takes the echo out first (~19 dB while
both talk, the user's voice untouched: 0.99), so that AEC3 has little left to suppress:
together they keep 0.94 with 28 dB of echo reduction offline, 0.92 with 43-45 dB through real
devices (scripts/bench_aec.py).

The filter is a partitioned-block frequency-domain Kalman filter (overlap-save; Enzner & Vary's
frequency-domain adaptive Kalman filter, in the multi-partition form of Kuech et al., 2014):
40 ms blocks, 7 partitions (280 ms of room response).  Per frequency bin and partition it keeps
the filter's uncertainty; its step is that uncertainty over the error's power, so it converges
fast at first (an NLMS filter of this length took ~4-5 s on speech to 15 dB, this one
1.5-3 s), and slows down by itself while the user talks (the user's voice is in the error: the step shrinks
instead of the filter wandering off).  It only subtracts: no gain, no gate.

Two sample streams, which it aligns by index: `far(pcm)` appends what the speaker plays (the
device's output stream, silence included); `process(mic, far_index)` cleans one block of the
microphone whose first sample heard the far sample `far_index` (the caller finds that index from
the streams' time stamps; engine.audio.aec passes the index 40 ms past it, as devices misreport
their latency).  The echo a block can model starts at that sample: a later echo is covered by
the taps, an earlier one is not.
"""

from __future__ import annotations

import numpy as np

from engine.audio import SAMPLE_RATE

BLOCK = 960  # 40 ms at 24 kHz: the halves of a frame that early encode hands over
PARTS = 7  # x 40 ms = 280 ms of room response
FORGET = 0.9995  # the state's forgetting factor (tracks a changing room)
P0 = 1.0  # the initial uncertainty of each coefficient
SMOOTH = 0.5  # smoothing of the error power (the observation noise: the user, what is left)


class LinearEchoFilter:
    def __init__(self, *, parts: int = PARTS, history_s: float = 2.0):
        self.parts = parts
        bins = BLOCK + 1
        self.w = np.zeros((parts, bins), np.complex64)  # the filter, newest partition first
        self.p = np.full((parts, bins), P0, np.float32)  # its uncertainty
        self.x = np.zeros((parts, bins), np.complex64)  # far spectra, newest first
        self.x2 = np.zeros((parts, bins), np.float32)  # their powers
        self.noise = np.zeros(bins, np.float32)  # smoothed error power
        self._prev = np.zeros(BLOCK, np.float32)  # the previous far block (overlap-save)
        self._frame = np.zeros(2 * BLOCK, np.float32)  # an overlap-save frame, reused
        self._next: int | None = None  # far_index expected for the next block
        self._ring = np.zeros(int(history_s * SAMPLE_RATE), np.float32)
        self.far_count = 0  # far samples appended so far
        self.resets = 0  # times the far/microphone alignment moved (for tests and stats)

    # ------------------------------------------------------------------ far
    def far(self, pcm: np.ndarray) -> None:
        x = np.asarray(pcm, np.float32)
        n = len(self._ring)
        count = x.size
        if x.size > n:
            x = x[-n:]
        start = (self.far_count + count - x.size) % n
        first = min(x.size, n - start)
        self._ring[start:start + first] = x[:first]
        self._ring[:x.size - first] = x[first:]
        self.far_count += count

    def _far_block(self, index: int) -> np.ndarray:
        """Far samples [index, index + BLOCK): zeros where not played yet or forgotten."""
        out = np.zeros(BLOCK, np.float32)
        n = len(self._ring)
        lo, hi = max(index, self.far_count - n, 0), min(index + BLOCK, self.far_count)
        if hi > lo:  # (at most two runs of the ring: before and after its wrap)
            a = lo % n
            first = min(hi - lo, n - a)
            out[lo - index:lo - index + first] = self._ring[a:a + first]
            out[lo - index + first:hi - index] = self._ring[:hi - lo - first]
        return out

    # ------------------------------------------------------------------ microphone
    def process(self, mic: np.ndarray, far_index: int) -> np.ndarray:
        """One BLOCK of the microphone (its first sample heard far sample `far_index`) with the
        echo estimate subtracted."""
        d = np.asarray(mic, np.float32)
        if far_index != self._next:
            if self._next is not None:  # the streams' alignment moved: a new echo path
                self.reset()
                self.resets += 1
            self._prev = self._far_block(far_index - BLOCK)
        self._next = far_index + BLOCK
        cur = self._far_block(far_index)
        self._frame[:BLOCK] = self._prev
        self._frame[BLOCK:] = cur
        spec = np.fft.rfft(self._frame)
        self._prev = cur
        self.x[1:] = self.x[:-1]  # one block older each
        self.x2[1:] = self.x2[:-1]
        self.x[0] = spec
        np.multiply(spec.real, spec.real, out=self.x2[0])
        self.x2[0] += spec.imag * spec.imag
        if not self.x2.any():  # nothing played lately: nothing to subtract or learn
            return d
        y = np.fft.irfft((self.w * self.x).sum(0), 2 * BLOCK)[BLOCK:]
        e = d - y.astype(np.float32)
        self._frame[:BLOCK] = 0.0
        self._frame[BLOCK:] = e
        err = np.fft.rfft(self._frame)
        self.noise *= SMOOTH
        self.noise += (1 - SMOOTH) * (err.real * err.real + err.imag * err.imag)
        # Kalman gain per partition and bin (the 2: an overlap-save frame is two blocks)
        den = (self.x2 * self.p).sum(0)
        den += 2.0 * self.noise + 1e-10
        mu = self.p / den
        gain = np.conj(self.x)
        gain *= mu
        gain *= err
        gx = mu * self.x2  # (gain x, before the error: p |x|^2 / den)
        # the update's impulse responses, their second halves dropped (zero-padded): a linear,
        # not a circular, convolution
        g = np.fft.irfft(gain, 2 * BLOCK, axis=1)[:, :BLOCK]
        self.w += np.fft.rfft(g, 2 * BLOCK, axis=1)
        self.p *= 1.0 - 0.5 * gx
        self.p *= FORGET ** 2
        self.p += (1 - FORGET ** 2) * (self.w.real ** 2 + self.w.imag ** 2)
        self.w *= FORGET
        return e

    def reset(self) -> None:
        """Forget the room (the filter, its uncertainty back to the start) and the far history
        it was reading; the far stream itself is kept."""
        self.w[:] = 0
        self.p[:] = P0
        self.x[:] = 0
        self.x2[:] = 0
        self.noise[:] = 0
        self._next = None
