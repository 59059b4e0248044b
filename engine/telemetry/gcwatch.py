"""Python's garbage collector, watched and kept out of the frame's way.

CPython's cyclic collector stops every thread of its process while it walks the objects it
tracks.  A model process holds hundreds of thousands of them (modules, the LM's parameters and
their wrappers), so a full collection that lands inside a model step adds tens of milliseconds
to that frame, at random, a few times a minute.

`settle()` runs once after loading: it collects, then moves every survivor out of the
collector's reach (`gc.freeze`), so that later collections walk only what the conversation
allocated.  `IdleCollector` goes further for a process with one loop and known idle time (the
model process: a step, then ~60 ms waiting for the next frame): automatic collection is off and
the same generational schedule runs right after each step's result is sent.  `GcWatch` times
every collection of its process (count per generation, total and longest pause) so stats.json
shows whether the collector cost anything.
"""

from __future__ import annotations

import gc
import time


def settle() -> int:
    """Collect once, then exempt every object alive now from later collections; returns how
    many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcWatch:
    """Times each collection of this process through `gc.callbacks` (costs two clock reads per
    collection)."""

    def __init__(self):
        self.collections = [0, 0, 0]
        self.total_ns = 0
        self.max_ns = 0
        self.max_generation = -1
        self._t0 = 0
        self._installed = False

    def install(self) -> "GcWatch":
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        dt = time.perf_counter_ns() - self._t0
        gen = min(2, max(0, int(info.get("generation", 0))))
        self.collections[gen] += 1
        self.total_ns += dt
        if dt > self.max_ns:
            self.max_ns, self.max_generation = dt, gen

    def summary(self) -> dict:
        return {
            "collections": list(self.collections),  # per generation 0, 1, 2
            "total_ms": round(self.total_ns / 1e6, 3),
            "max_ms": round(self.max_ns / 1e6, 3),
            "max_generation": self.max_generation,
            "frozen_objects": gc.get_freeze_count(),
            "automatic": gc.isenabled(),
        }


class IdleCollector:
    """Automatic collection off; `idle()` (called when the process has time) collects the
    generation CPython would have collected by now, so pauses never land inside the work."""

    def __init__(self):
        gc.disable()

    def idle(self) -> int | None:
        """Collects if a collection is due; returns the generation collected, or None."""
        count0, count1, count2 = gc.get_count()
        th0, th1, th2 = gc.get_threshold()
        if th0 <= 0 or count0 < th0:
            return None
        gen = 0
        if count1 + 1 >= th1:
            gen = 1
            if count2 + 1 >= th2:
                gen = 2
        gc.collect(gen)
        return gen

    def close(self) -> None:
        gc.enable()
