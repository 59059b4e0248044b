"""A linear echo filter in front of WebRTC's echo canceller: most of the room's echo subtracted
before AEC3 sees it, the user's voice left as it was.

AEC3 (engine.audio.aec) cancels the echo with its own linear filter and then *suppresses*
what it believes is left; while the user and Moshi talk at once that suppressor turns the user
down too.  This filter takes the echo out first, without touching the user's voice, so that
AEC3 has little left to suppress (tests/test_aec.py checks the voice kept and the echo removed;
scripts/bench_aec.py measures both through real devices).

The filter is a partitioned-block frequency-domain Kalman filter (overlap-save; Enzner & Vary's
frequency-domain adaptive Kalman filter, in the multi-partition form of Kuech et al., 2014):
40 ms blocks, 7 partitions (280 ms of room response).  Per frequency bin and partition it keeps
the filter's uncertainty; its step is that uncertainty over the error's power, so it converges
fast at first and slows down by itself while the user talks (the user's voice is in the error:
the step shrinks instead of the filter wandering off).  It only subtracts: no gain, no gate.

A new filter also learns again from the blocks it has just seen: for its first 2 s of far
sound (`COLD_BLOCKS`), after each block it replays `REPLAY` of the last second's blocks
(`REPLAY_KEEP`), their stored far spectra and microphone against the filter as it is now, with
the Kalman step but without shrinking the uncertainty again (the same observation counted once).
A replay's error power stands in for the observation noise where it is larger than the running
estimate, so a block in which the user talked moves the filter as little on replay as it did
live.  This makes it converge sooner from the start of a session; it costs three updates per
block for those 2 s, one after.  Only at the start, when AEC3 behind it is new too: after a
reset (a moved alignment: a new echo path) AEC3 is warm, and a filter that moves that fast
under it leaves more echo than one learning at the usual pace.

Two sample streams, which it aligns by index: `far(pcm)` appends what the speaker plays (the
device's output stream, silence included); `process(mic, far_index)` cleans one block of the
microphone whose first sample heard the far sample `far_index` (the caller finds that index from
the streams' time stamps; engine.audio.aec passes the index 40 ms past it, as devices misreport
their latency).  The echo a block can model starts at that sample: a later echo is covered by
the taps, an earlier one is not.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from engine.audio import SAMPLE_RATE

BLOCK = 960  # 40 ms at 24 kHz: the halves of a frame that early encode hands over
PARTS = 7  # x 40 ms = 280 ms of room response
FORGET = 0.9995  # the state's forgetting factor (tracks a changing room)
P0 = 1.0  # the initial uncertainty of each coefficient
SMOOTH = 0.5  # smoothing of the error power (the observation noise: the user, what is left)
COLD_BLOCKS = 50  # blocks with far sound (2 s) during which a new filter replays older blocks
REPLAY = 2  # older blocks replayed after each of them
REPLAY_KEEP = 25  # the blocks a replay picks from: the last second
FAR_FLOOR = 1e-6  # a far block's mean power above this (-60 dBFS) is far sound


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
        self._heard = 0  # blocks with far sound since it started (replays end at COLD_BLOCKS)
        self._history: deque = deque(maxlen=REPLAY_KEEP)  # (far spectra, powers, microphone)
        self._cursor = 0  # the next block of the history to replay
        self.replays = 0  # blocks replayed so far (for tests)

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
        e, err = self._error(self.x, d)
        self.noise *= SMOOTH
        self.noise += (1 - SMOOTH) * (err.real * err.real + err.imag * err.imag)
        self._adapt(self.x, self.x2, err, self.noise, settle=True)
        if self._heard < COLD_BLOCKS:
            self._replay(cur, d)
        return e

    def _error(self, x: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The microphone block `d` less the echo the filter predicts from far spectra `x`,
        and that error's spectrum (zero-padded in front: overlap-save)."""
        y = np.fft.irfft((self.w * x).sum(0), 2 * BLOCK)[BLOCK:]
        e = d - y.astype(np.float32)
        self._frame[:BLOCK] = 0.0
        self._frame[BLOCK:] = e
        return e, np.fft.rfft(self._frame)

    def _adapt(self, x: np.ndarray, x2: np.ndarray, err: np.ndarray, noise: np.ndarray, *,
               settle: bool) -> None:
        """One Kalman step of the filter towards error `err` of far spectra `x` (powers `x2`);
        `settle`: the uncertainty shrinks by what was learned and ages (a new observation)."""
        # Kalman gain per partition and bin (the 2: an overlap-save frame is two blocks)
        den = (x2 * self.p).sum(0)
        den += 2.0 * noise + 1e-10
        mu = self.p / den
        gain = np.conj(x)
        gain *= mu
        gain *= err
        # the update's impulse responses, their second halves dropped (zero-padded): a linear,
        # not a circular, convolution
        g = np.fft.irfft(gain, 2 * BLOCK, axis=1)[:, :BLOCK]
        self.w += np.fft.rfft(g, 2 * BLOCK, axis=1)
        if settle:
            self.p *= 1.0 - 0.5 * mu * x2  # (gain x: p |x|^2 / den)
            self.p *= FORGET ** 2
            self.p += (1 - FORGET ** 2) * (self.w.real ** 2 + self.w.imag ** 2)
            self.w *= FORGET

    def _replay(self, cur: np.ndarray, d: np.ndarray) -> None:
        """While the filter is cold: keep this block, learn again from REPLAY older ones."""
        if float(np.dot(cur, cur)) <= FAR_FLOOR * BLOCK:
            return  # (silence played: nothing the echo path can be learned from)
        self._heard += 1
        self._history.append((self.x.copy(), self.x2.copy(), d.copy()))
        older = len(self._history) - 1  # (the newest is the block just learned)
        for _ in range(min(REPLAY, older)):
            self._cursor = (self._cursor + 1) % older
            x, x2, dr = self._history[self._cursor]
            _, err = self._error(x, dr)
            power = err.real * err.real + err.imag * err.imag
            self._adapt(x, x2, err, np.maximum(self.noise, power), settle=False)
            self.replays += 1
        if self._heard >= COLD_BLOCKS:
            self._history.clear()  # (warm: the memory back)

    def reanchor(self) -> None:
        """The far stream has a gap (the canceller was off a while): the next block starts a
        new alignment, without counting as a moved one.  The room learned is kept, and AEC3
        behind the filter, warm on what the filter leaves, stays right too: switched back on,
        the canceller removes the echo again at once (tests/test_aec.py)."""
        self.x[:] = 0
        self.x2[:] = 0
        self._next = None

    def reset(self) -> None:
        """Forget the room (the filter, its uncertainty back to the start) and the far history
        it was reading; the far stream itself is kept."""
        self.w[:] = 0
        self.p[:] = P0
        self.x[:] = 0
        self.x2[:] = 0
        self.noise[:] = 0
        self._next = None
        self._history.clear()  # (and no replays again: see the module's docstring)
