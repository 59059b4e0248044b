"""The jitter buffer in front of the speaker."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from engine.audio import FRAME_NS, SAMPLE_RATE


class Playout:
    """The jitter buffer in front of the speaker, kept in time rather than in whole frames.

    Every frame plays `delay` after its capture, so the speaker keeps the microphone's 80 ms
    spacing.  The delay aims at the slowest frame of the last `window_s` (capture -> decoded
    PCM), but never more than `max_hold_ms` above the window's median (a stall of the machine
    costs a gap and dropped frames, not seconds of extra latency), plus a margin.  The margin
    starts at `start_margin_ms`, shrinks by 10 ms every `decay_s` without an underrun down to
    `min_margin_ms`, and grows by 20 ms (up to `max_margin_ms`) at each underrun, which also
    doubles the wait before the next shrink (up to a minute): a jittery machine settles on a
    margin that keeps underruns rare.  The margin never goes below `min_margin_ms`: with none,
    every frame slower than the slowest of the window is an underrun, and playback may start
    half a speaker block (10 ms) before the aim.  The 30 ms default is the floor that recorded
    sessions' frame times, replayed through this policy (scripts/playout_replay.py), played
    without an underrun: a gap in the speech is heard; 10 ms of delay are not.

    Playback starts at the speaker block nearest the moment the first frame's delay reaches the
    aim.  A frame that is not ready when the speaker reaches it is an underrun: the speaker
    plays silence one block at a time (20 ms, or the device's callback size) and resumes once
    the late frame's delay reaches the new aim, so the delay grows by just what that frame
    needed.  When the slow frames leave the window the delay comes back down: a frame that
    would play later than aimed loses up to `trim_ms` at its start (faded in over 2 ms), at
    most once every `trim_every` frames (~30 ms per second), and when the delay is two frames
    or more too long (the machine got faster), whole frames are dropped.
    Thread-safe: `observe` runs in the decode loop, `decide` in the audio callback.
    """

    def __init__(self, window_s: float = 20.0, min_margin_ms: float = 30.0,
                 max_margin_ms: float = 80.0, start_margin_ms: float = 40.0, decay_s: float = 5.0,
                 trim_ms: float = 10.0, trim_every: int = 4, max_hold_ms: float = 240.0):
        self.window_ns = int(window_s * 1e9)
        self.max_hold_ns = int(max_hold_ms * 1e6)
        self.min_margin_ns = int(min_margin_ms * 1e6)
        self.max_margin_ns = int(max_margin_ms * 1e6)
        self.margin_ns = int(start_margin_ms * 1e6)
        self.decay_ns = int(decay_s * 1e9)
        self.trim_ns = int(trim_ms * 1e6)
        self.trim_every = trim_every
        self.playing = False  # False before the first frame and while waiting for a late one
        self.aim_ns: int | None = None  # the delay aimed at, as of the last decision
        self._next_decay: int | None = None
        self._recent: deque = deque()  # (t_decoded_ns, processing_ns)
        self._lock = threading.Lock()
        self._since_trim = 0
        self._waited_at: int | None = None  # the previous call that played nothing
        self.block_ns = 0  # the speaker's block, as seen between two such calls

    def observe(self, t_ns: int, processing_ns: int) -> None:
        """A frame's PCM is ready `processing_ns` after its capture."""
        with self._lock:
            self._recent.append((t_ns, processing_ns))

    def aim(self, now_ns: int) -> int | None:
        with self._lock:
            recent = self._recent
            while len(recent) > 1 and recent[0][0] < now_ns - self.window_ns:
                recent.popleft()
            if not recent:
                return None
            ps = sorted(p for _, p in recent)
        # (a stall of the machine must not hold the whole conversation back for the window)
        slowest = min(ps[-1], ps[len(ps) // 2] + self.max_hold_ns)
        if self._next_decay is not None and now_ns >= self._next_decay:
            self.margin_ns = max(self.min_margin_ns, self.margin_ns - 10 * 1_000_000)
            self._next_decay = now_ns + self.decay_ns
        self.aim_ns = slowest + self.margin_ns
        return self.aim_ns

    def decide(self, head_delay_ns: int | None, depth: int, now_ns: int) -> tuple[int, int, bool, bool]:
        """For the frame the speaker reaches now (`head_delay_ns` = now - its capture; None when
        the output queue is empty): (frames to drop first, ns to trim off the start of the frame
        played, play a frame now?, is this an underrun?)."""
        if not self.playing or head_delay_ns is None or depth == 0:
            if self._waited_at is not None and 0 < now_ns - self._waited_at < 200_000_000:
                self.block_ns = now_ns - self._waited_at
            self._waited_at = now_ns
        if head_delay_ns is None or depth == 0:
            if self.playing:
                self.playing = False
                self.margin_ns = min(self.max_margin_ns, self.margin_ns + 20 * 1_000_000)
                self.decay_ns = min(2 * self.decay_ns, 60_000_000_000)  # shrink more warily
                self._next_decay = now_ns + self.decay_ns
                return 0, 0, False, True
            return 0, 0, False, False
        aim = self.aim(now_ns)
        if not self.playing:
            # Start at the block boundary nearest the aim (a device with 80 ms callbacks would
            # otherwise add up to a whole period to it).
            if aim is not None and head_delay_ns < aim - self.block_ns // 2:
                return 0, 0, False, False  # not yet: the frame would play earlier than aimed
            self.playing = True
            self._since_trim = 0
            if self._next_decay is None:
                self._next_decay = now_ns + self.decay_ns
            return 0, 0, True, False
        self._since_trim += 1
        excess = head_delay_ns - aim if aim is not None else 0
        if excess >= 2 * FRAME_NS and depth > 1:
            return min(depth - 1, excess // FRAME_NS - 1), 0, True, False
        if excess > self.trim_ns // 2 and self._since_trim >= self.trim_every:
            self._since_trim = 0
            return 0, min(excess, self.trim_ns), True, False
        return 0, 0, True, False


FADE = np.linspace(0.0, 1.0, SAMPLE_RATE // 500, endpoint=False, dtype=np.float32)  # 2 ms


def trimmed(pcm: np.ndarray, trim_ns: int) -> np.ndarray:
    """The frame without its first `trim_ns`, faded in so that the cut does not click."""
    n = min(len(pcm) - len(FADE), trim_ns * SAMPLE_RATE // 1_000_000_000)
    out = np.array(pcm[n:], dtype=np.float32)
    out[: len(FADE)] *= FADE
    return out


def replay(processing_ms, block_ms: float = 20.0, phase_ms: float = 0.0, **policy) -> dict:
    """A session's frames through a Playout(**policy) on a simulated speaker, without clocks:
    frame k is captured at k × 80 ms and ready `processing_ms[k]` later; the speaker asks for
    the next frame when it reaches it or, while it waits, once per `block_ms` (like the file
    and null sinks).  Returns each played frame's delay and time (ms), and the underruns,
    drops, trims and silent gaps (ms) — what a policy would have done with a recorded session
    (scripts/playout_replay.py reads one from a --trace file)."""
    ms = 1_000_000
    p = Playout(**policy)
    ready = [(k * 80.0 + pr, k * 80.0) for k, pr in enumerate(processing_ms)]
    q: deque = deque()
    i = 0
    t = phase_ms
    out = {"delays": [], "times": [], "underruns": 0, "drops": 0, "trims": 0, "gaps": []}
    gap_from = None
    while t < len(ready) * 80.0:
        while i < len(ready) and ready[i][0] <= t:
            p.observe(int(ready[i][0] * ms), int((ready[i][0] - ready[i][1]) * ms))
            q.append(ready[i][1])
            i += 1
        head = int((t - q[0]) * ms) if q else None
        drop, trim, play, underrun = p.decide(head, len(q), int(t * ms))
        for _ in range(drop):
            q.popleft()
        out["drops"] += drop
        out["underruns"] += underrun
        if underrun:
            gap_from = t
        if play:
            if gap_from is not None:
                out["gaps"].append(t - gap_from)
                gap_from = None
            cap = q.popleft()
            out["delays"].append(t - cap)
            out["times"].append(t)
            out["trims"] += bool(trim)
            t += 80.0 - trim / ms
        else:
            t = ((t - phase_ms) // block_ms + 1) * block_ms + phase_ms  # silence to the block end
    return out
