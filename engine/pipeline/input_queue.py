"""The queue between the audio source's callback and the encoder."""

from __future__ import annotations

import threading
from collections import deque


class InputQueue:
    """Frames from the source callback to the encode loop: bounded, the oldest dropped first, but
    never the frame whose first half is already in the encoder (dropping it would leave half a
    frame in the codec's stream).  `put` never blocks."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._q: deque = deque()
        self._cv = threading.Condition(threading.Lock())

    def put(self, item, keep_frame: int | None = None):
        """Append `item` = (rec, pcm); return the (rec, pcm) dropped to make room, or None."""
        with self._cv:
            dropped = None
            if len(self._q) >= self.maxsize:
                i = 1 if self._q[0][0].frame == keep_frame and len(self._q) > 1 else 0
                dropped = self._q[i]
                del self._q[i]
            self._q.append(item)
            self._cv.notify()
        return dropped

    def get(self, timeout: float):
        """The oldest item, or None after `timeout` seconds."""
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
                if not self._q:
                    return None
            return self._q.popleft()

    def qsize(self) -> int:
        return len(self._q)

    def empty(self) -> bool:
        return not self._q
