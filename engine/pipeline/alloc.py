"""glibc malloc settings for the client process: a codec's memory goes back to the OS when the
codec is dropped (at every segment, and per conversation in `moshi-tui serve`), and per-frame
codec work allocates from the heap, not from fresh mmaps.

A rustymimi codec allocates its long-lived buffers (the transformers' KV caches) on its first
frames, then only per-frame activations.  glibc's default dynamic mmap threshold rises to the
size of the largest mmapped chunk freed, so left alone the caches of every codec after the
first would come from the heap and stay there when that codec is dropped.  A fixed low
threshold for everything would instead send per-frame activations through mmap/munmap and
(mallopt fixes the trim threshold too) trim the heaps so low that per-frame buffers go back to
the OS and are faulted in again every frame.

So the mmap threshold is low only while a codec is created and warmed (`codec_allocations()`):
its long-lived buffers are mmapped, and unmapped when it goes.  Otherwise it is at glibc's
ceiling and the trim threshold at 64 MiB, so per-frame buffers are recycled inside the heap;
and the heaps are trimmed once after each codec swap (`release_free_memory()`).  The price is
a few MB of RSS per codec swap.  Elsewhere than glibc this is a no-op.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LOW_MMAP = 1 << 20  # while a codec allocates its long-lived buffers
HIGH_MMAP = 32 << 20  # glibc's ceiling (HEAP_MAX_SIZE / 2 on 64-bit): per-frame buffers in the heap
TRIM = 64 << 20  # as glibc's dynamic mode would (2 x threshold): no sbrk/munmap churn per frame
_libc = None
_lock = threading.Lock()
_creating = 0  # codecs being created right now (a segment's next codec loads beside the live one)


def _mallopt(param: int, value: int) -> None:
    if _libc is not None:
        _libc.mallopt(param, value)


def tune_allocator() -> None:
    """Fixed thresholds for this process (idempotent)."""
    global _libc
    if _libc is not None or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (AttributeError: not glibc)
    except (OSError, AttributeError):
        return  # not glibc (musl, ...): nothing to tune
    _libc = libc
    with _lock:
        _mallopt(M_TRIM_THRESHOLD, TRIM)
        _mallopt(M_MMAP_THRESHOLD, LOW_MMAP if _creating else HIGH_MMAP)


@contextmanager
def codec_allocations():
    """Around creating and warming a codec: its long-lived buffers are mmapped."""
    global _creating
    with _lock:
        _creating += 1
        _mallopt(M_MMAP_THRESHOLD, LOW_MMAP)
    try:
        yield
    finally:
        with _lock:
            _creating -= 1
            if not _creating:
                _mallopt(M_MMAP_THRESHOLD, HIGH_MMAP)


def release_free_memory() -> None:
    """After a codec is dropped: give the free pages inside the heaps back to the OS."""
    if _libc is not None:
        _libc.malloc_trim(0)
