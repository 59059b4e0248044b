"""The garbage collector kept out of the model step: collections only when the process is idle,
each one timed."""

from __future__ import annotations

import gc
import weakref

from engine.telemetry.gcwatch import GcWatch, IdleCollector, settle


class Node:
    def __init__(self):
        self.me = self  # a cycle: only the cyclic collector frees it


def test_idle_collector_collects_only_when_asked_and_when_due():
    threshold = gc.get_threshold()
    gc.set_threshold(100, 10, 10)
    gc.collect()
    watch = GcWatch().install()
    collector = IdleCollector()
    try:
        assert not gc.isenabled()
        refs = [weakref.ref(Node()) for _ in range(300)]  # 3x the first threshold
        assert all(r() is not None for r in refs), "collected while automatic collection is off"
        assert watch.collections == [0, 0, 0]
        assert collector.idle() == 0  # due: the youngest generation
        assert all(r() is None for r in refs)
        assert watch.collections[0] == 1
        assert collector.idle() is None  # nothing allocated since: not due
    finally:
        collector.close()
        watch.uninstall()
        gc.set_threshold(*threshold)
    assert gc.isenabled()


def test_watch_times_each_generation_and_settle_freezes():
    watch = GcWatch().install()
    try:
        gc.collect(1)
        gc.collect(2)
        summary = watch.summary()
        assert summary["collections"][1] >= 1 and summary["collections"][2] >= 1
        assert summary["total_ms"] > 0 and 0 < summary["max_ms"] <= summary["total_ms"]
        frozen = settle()
        try:
            assert frozen > 1000 and watch.summary()["frozen_objects"] == frozen
        finally:
            gc.unfreeze()
    finally:
        watch.uninstall()
    n = sum(watch.collections)
    gc.collect()
    assert sum(watch.collections) == n  # uninstalled: no longer counting
