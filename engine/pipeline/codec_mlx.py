"""Mimi on MLX as the client's audio codec: a drop-in for `rustymimi.StreamTokenizer`.

    codec = MlxMimiCodec(mimi_path)          # the PyTorch-named safetensors rustymimi loads
    codec.warm()                             # first live frame fast; then a fresh state
    codec.encode(pcm)                        # 1920 samples, or 960 + 960 (early encode)
    codec.get_encoded()                      # uint32 (8, 1), or None
    codec.decode(codes)                      # uint32 (1, 8), as LmGen.last_audio_tokens()
    codec.get_decoded()                      # float32 (1920,), or None
    codec.close()

The submit calls never block: they copy their input into a queue that one worker thread
drains; the getters pop what is ready.  Encoded codes come out in submission order, decoded
PCM likewise; a 960-sample first half yields no code frame, the frame's codes come once its
second half is in.  The shapes are rustymimi's: `get_encoded` (8, n) for the n code frames one
call completed, `get_decoded` a flat (1920 * n,).

Threads: ONE worker thread owns every MLX object (the model is built, loaded and run there)
and serialises encode and decode in submission order: MLX's streams are bound to the thread
that made them (an array built on one thread's stream cannot be evaluated on another), and
Mimi's weights and the arrays derived from them at load are such arrays.  Every MLX call
happens in the worker, with the default device (the GPU when MLX has one) or the `device`
given; the calling threads only touch numpy.

The worker threads never end: a closed codec's thread frees the model, then waits in a
process-wide pool for the next codec.  MLX keeps per-thread state (its compile cache, which
holds Python functions) that the C++ runtime frees when a thread ends; a thread ending while
the interpreter shuts down cannot take the GIL to drop those functions, and the process
aborts ("terminate called without an active exception").  A thread that never ends frees
nothing at exit.

The streaming maths (masked attention, exact GELU, bounded caches, dtype) are
engine.model.graph.mimi's.  `warm()` pushes silent frames through the public interface, whole
and in halves, then resets the streaming state to that of a freshly loaded codec (kernels,
JIT caches and allocator pools stay warm).

Importing this module is cheap: numpy only; mlx and moshi_mlx load in the worker.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from engine.audio import FRAME
from engine.model.graph.mimi import MimiStreams, codes_for_decode, load_mimi
from engine.model.mlx_env import tune_mlx_env


class _Shared:
    """What the caller's threads and the worker share.  The worker holds this, never the
    codec, so a codec dropped without close() is collected, and its finaliser stops the
    worker (the pipeline just drops a StreamTokenizer it is done with)."""

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.enc_out: collections.deque = collections.deque()
        self.dec_out: collections.deque = collections.deque()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.load_s = 0.0


def _shutdown(shared: _Shared) -> None:
    shared.stop.set()
    shared.jobs.put(None)


class _PooledThread:
    """A daemon thread that runs one function at a time, for ever; idle, it waits in `_IDLE`."""

    def __init__(self):
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="mlx-mimi", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn = self.calls.get()
            try:
                fn()
            except BaseException:  # noqa: BLE001 (fn reports its own errors; the thread lives on)
                pass
            del fn
            with _IDLE_LOCK:
                _IDLE.append(self)


_IDLE: list[_PooledThread] = []
_IDLE_LOCK = threading.Lock()


class _WorkerJob:
    """One codec's worker on a pooled thread, seen as a thread: alive until the job ends."""

    def __init__(self, fn):
        self.done = threading.Event()
        with _IDLE_LOCK:
            pooled = _IDLE.pop() if _IDLE else None
        self.pooled = pooled or _PooledThread()
        self.ident = self.pooled.thread.ident

        def run():
            try:
                fn()
            finally:
                self.done.set()

        self.pooled.calls.put(run)

    def is_alive(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self.done.wait(timeout)


def _worker(shared: _Shared, mimi_path: str, num_codebooks: int, opts: dict) -> None:
    """The thread that owns every MLX object: loads the model, then runs the queued jobs."""
    try:
        import mlx.core as mx

        t0 = time.perf_counter()
        default_device = mx.default_device()  # (the pooled thread's, restored at the end)
        if opts["device"] is not None:
            mx.set_default_device(mx.gpu if opts["device"] == "gpu" else mx.cpu)
        dtype = opts["dtype"]
        if isinstance(dtype, str):
            dtype = getattr(mx, dtype)
        mimi = load_mimi(mimi_path, num_codebooks, context=opts["context"], dtype=dtype)
        streams = MimiStreams(mimi, cache=opts["cache"], exact_gelu=opts["exact_gelu"],
                              split_steps=opts["split_steps"], slack=opts["slack"])
        del mimi
        shared.load_s = time.perf_counter() - t0
    except BaseException as e:  # noqa: BLE001 (reported by the constructor)
        shared.error = e
        shared.ready.set()
        return
    shared.ready.set()
    try:
        while not shared.stop.is_set():
            job = shared.jobs.get()
            if job is None or shared.stop.is_set():
                break
            kind, arg = job
            if kind == "enc":
                codes = streams.encode(arg)
                if codes is not None:
                    shared.enc_out.append(codes)
            elif kind == "dec":
                shared.dec_out.append(streams.decode(arg))
            elif kind == "reset":
                streams.reset()
                shared.enc_out.clear()
                shared.dec_out.clear()
                arg.set()
            elif kind == "call":  # (fn, result list, event): fn(streams), here
                fn, box, ev = arg
                try:
                    box.append(fn(streams))
                except BaseException as e:  # noqa: BLE001 (re-raised by run_in_worker)
                    box.append(e)
                del fn
                ev.set()
            del job, arg
    except BaseException as e:  # noqa: BLE001 (raised by the next get_* or submit)
        shared.error = e
    finally:
        del streams  # the model goes; hand its memory back
        try:
            import gc

            gc.collect()
            clear = getattr(mx, "clear_cache", None) or mx.metal.clear_cache
            clear()
            mx.set_default_device(default_device)
        except Exception:  # noqa: BLE001
            pass


class MlxMimiCodec:
    """rustymimi.StreamTokenizer's interface on MLX's Mimi: see the module docstring.

    mimi_path: the Mimi safetensors (PyTorch names, as rustymimi reads).
    num_codebooks: codebooks encoded and decoded (8 for Moshi).
    dtype: None (float32) or an mlx dtype / its name ("bfloat16") for the non-quantizer parts.
    device: None (MLX's default: the GPU when there is one), "cpu" or "gpu".
    cache: "bounded" (SlidingKVCache) or "unbounded" (moshi_mlx's KVCache, for comparisons).
    exact_gelu, split_steps: see engine.model.graph.mimi.
    context, slack: the attention window (Mimi's: 250) and SlidingKVCache's slack (tests).
    The constructor returns once the worker has loaded the model (raising its error if any).
    """

    def __init__(self, mimi_path: str | Path, *, num_codebooks: int = 8, dtype=None,
                 device: str | None = None, cache: str = "bounded", exact_gelu: bool = True,
                 split_steps: bool = True, context: int | None = None, slack: int = 64,
                 load_timeout_s: float = 300.0):
        tune_mlx_env()  # MLX's CUDA kernels compiled once, kept beside the models
        self.mimi_path = str(mimi_path)
        self.num_codebooks = num_codebooks
        opts = dict(dtype=dtype, device=device, cache=cache, exact_gelu=exact_gelu,
                    split_steps=split_steps, context=context, slack=slack)
        self._shared = sh = _Shared()
        self._closed = False
        self._close_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, sh)
        path = self.mimi_path  # (the job must not hold the codec: see _Shared)
        self._thread = _WorkerJob(lambda: _worker(sh, path, num_codebooks, opts))
        if not sh.ready.wait(load_timeout_s):
            self.close(timeout_s=0)
            raise TimeoutError(f"MLX Mimi did not load within {load_timeout_s:.0f} s")
        if sh.error is not None:
            err = sh.error
            self.close()
            raise RuntimeError(f"could not load MLX Mimi from {self.mimi_path}: {err}") from err

    @property
    def load_s(self) -> float:
        """Seconds the worker took to build and load the model."""
        return self._shared.load_s

    def _check(self) -> None:
        err = self._shared.error
        if err is not None:
            raise RuntimeError(f"the MLX Mimi worker failed: {err!r}") from err
        if self._closed:
            raise RuntimeError("the MLX Mimi codec is closed")

    # -- rustymimi.StreamTokenizer's interface
    def encode(self, pcm) -> None:
        """Queue float32 samples (1920, or 960 + 960) for encoding. Never blocks."""
        self._check()
        self._shared.jobs.put(("enc", np.array(pcm, dtype=np.float32, copy=True).reshape(-1)))

    def get_encoded(self):
        """The next code frames, uint32 (8, n) (n = 1 per frame), or None."""
        try:
            return self._shared.enc_out.popleft()
        except IndexError:
            self._check()
            return None

    def decode(self, codes) -> None:
        """Queue one step's codes, uint32 (1, 8) (LmGen.last_audio_tokens()). Never blocks."""
        self._check()
        self._shared.jobs.put(("dec", codes_for_decode(codes, self.num_codebooks).copy()))

    def get_decoded(self):
        """The next decoded PCM, float32 (1920,), or None."""
        try:
            return self._shared.dec_out.popleft()
        except IndexError:
            self._check()
            return None

    # -- extras
    def pending(self) -> int:
        """Jobs queued and not yet taken by the worker (approximate)."""
        return self._shared.jobs.qsize()

    def run_in_worker(self, fn, timeout_s: float = 60.0):
        """fn(MimiStreams) in the worker thread, after every job queued before; its result."""
        self._check()
        box: list = []
        ev = threading.Event()
        self._shared.jobs.put(("call", (fn, box, ev)))
        if not ev.wait(timeout_s):
            raise TimeoutError("the MLX Mimi worker did not answer")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def reset(self, timeout_s: float = 60.0) -> None:
        """Back to a fresh codec's state, after the jobs queued before; results not yet
        collected are discarded.  Blocks until done."""
        self._check()
        ev = threading.Event()
        self._shared.jobs.put(("reset", ev))
        if not ev.wait(timeout_s):
            self._check()
            raise TimeoutError("the MLX Mimi worker did not reset")

    def warm(self, frames: int = 4, timeout_s: float = 60.0, reset: bool = True) -> float:
        """Silent frames through encode (whole and in halves) and decode, through the worker
        as live frames go, then (`reset`) a fresh state.  Returns the time taken in ms."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        pcm = np.zeros(FRAME, np.float32)

        def wait(getter):
            while True:
                out = getter()
                if out is not None:
                    return out
                if time.monotonic() > deadline:
                    raise TimeoutError("the MLX Mimi codec did not answer during warmup")
                time.sleep(0.002)

        for i in range(frames):
            if i % 2:
                self.encode(pcm[: FRAME // 2])
                self.encode(pcm[FRAME // 2:])
            else:
                self.encode(pcm)
            codes = wait(self.get_encoded)
            self.decode(codes.reshape(1, -1)[:, : self.num_codebooks])
            wait(self.get_decoded)
        if reset:
            self.reset(max(1.0, deadline - time.monotonic()))
        return (time.perf_counter() - t0) * 1000.0

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (jobs still queued are dropped; one under way finishes) and free the
        model.  Idempotent.  Dropping the codec without close() stops the worker too."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._finalizer()
        if self._thread.is_alive() and threading.get_ident() != self._thread.ident:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
