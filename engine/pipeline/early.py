"""Early encode: each frame's first 40 ms go into the encoder while the rest is captured.

Mimi's encoder streams in 40 ms steps, so encoding a frame's first half (its "head") as soon
as it is captured and the second half when the frame is complete gives bit-identical codes,
and only the second half's work is left on the critical path (~60 % of a whole frame's).

A head may only go in when that keeps the encoder's stream in frame order: every earlier frame
handled, nothing waiting in the input queue, room in the encoder and in flight, no codec
switch due -- the pipeline decides that (`fits`).  A frame whose head is in the encoder is then
never dropped (half a frame left in the codec's stream would shift every later code).  When
heads arrive together with their frames (a host that runs 80 ms periods hands both halves over
at once), splitting the work would cost and gain nothing, so heads stop being used.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable


class EarlyEncode:
    MIN_HEAD_LEAD_NS = 10_000_000  # heads must come >= 10 ms before their frame (median, 2 s)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.lock = threading.Lock()  # one submitter at a time, in frame order
        self.handled = -1  # the last frame the encode loop encoded or dropped
        self.head_of: int | None = None  # the frame whose first half the encoder already has
        self._head_t = 0
        self._head_seen = 0  # when the last head was handed over (used or not)
        self._leads: deque = deque(maxlen=25)  # head -> its frame, ns, recent frames
        self.helps = True  # see heads_help(), updated once per frame
        self.in_use: bool | None = None  # enabled and helping, as last reported

    def heads_help(self) -> bool:
        """Heads arrive well before their frames (median of the last 2 s >= 10 ms)."""
        leads = sorted(self._leads)
        return not leads or leads[len(leads) // 2] >= self.MIN_HEAD_LEAD_NS

    def frame_arrived(self, t_cap: int) -> bool | None:
        """A frame came from the source: learn how early its head came.  Returns whether early
        encode is in use when that changed, else None."""
        if not self._head_seen:
            return None
        self._leads.append(t_cap - self._head_seen)
        self._head_seen = 0
        self.helps = self.heads_help()
        now = self.enabled and self.helps
        if now == self.in_use:
            return None
        self.in_use = now
        return now

    def offer(self, frame_id: int, t_ns: int, fits: Callable[[], bool],
              submit: Callable[[], None]) -> None:
        """The head of frame `frame_id` was captured at `t_ns`: `submit()` it when it helps and
        `fits()`.  Never blocks (the encode loop holding the lock means: the frame goes whole)."""
        if not self.enabled:
            return
        self._head_seen = t_ns
        if not self.helps or not self.lock.acquire(blocking=False):
            return
        try:
            if self.handled != frame_id - 1 or not fits():
                return
            submit()
            self.head_of, self._head_t = frame_id, time.monotonic_ns()
        finally:
            self.lock.release()

    def take(self, frame: int) -> int:
        """The encode loop handles `frame` (holding `lock`): when its head went in early, when
        (t_head), else 0."""
        early = self.head_of == frame
        self.head_of = None
        self.handled = frame
        return self._head_t if early else 0
