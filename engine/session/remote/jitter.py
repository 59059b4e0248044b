"""The remote session's jitter buffer."""

from __future__ import annotations

import threading
from collections import deque


class JitterBuffer:
    """Decoded 80 ms frames waiting for the speaker.

    The policy of Kyutai's web client (client/src/audio-processor.ts), at frame granularity:
    playback starts once `target` frames are buffered; an underrun stops playback until the
    buffer is refilled and raises `target` (up to `max_target`); a buffer that grows past
    `target + slack` is cut back to `target` (oldest frames dropped) and `slack` grows (up to
    `max_slack`), so latency cannot creep while jitter is absorbed.  Thread-safe.
    """

    def __init__(self, target: int = 1, max_target: int = 2, slack: int = 1, max_slack: int = 2):
        self.target = target
        self.max_target = max_target
        self.slack = slack
        self.max_slack = max_slack
        self.playing = False
        self._q: deque = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._q)

    def push(self, item) -> list:
        """Add a frame; returns the frames dropped to keep the latency bounded."""
        dropped = []
        with self._lock:
            self._q.append(item)
            if len(self._q) > self.target + self.slack:
                while len(self._q) > self.target:
                    dropped.append(self._q.popleft())
                self.slack = min(self.slack + 1, self.max_slack)
            if not self.playing and len(self._q) >= self.target:
                self.playing = True
        return dropped

    def pop(self):
        """(item, underrun): the frame to play now, or None (silence)."""
        with self._lock:
            if not self.playing:
                return None, False
            if not self._q:
                self.playing = False
                self.target = min(self.target + 1, self.max_target)
                return None, True
            return self._q.popleft(), False

    def clear(self) -> list:
        with self._lock:
            items = list(self._q)
            self._q.clear()
            self.playing = False
        return items
