"""Inside the model process: MLX inference only.

It loads the LM, warms it up, then answers each `Frame` with a `Result`: the text token, the
audio tokens (or None during the codebook delays) and its own stamps (engine.model.messages).
It exits when the client's end of the pipe closes or the parent process disappears, so it can
never be orphaned.  engine.model.process starts and stops it from the client side.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from engine.model.kind import condition_tensor
from engine.model.messages import (
    BenchDone,
    Configure,
    Failed,
    Frame,
    Memory,
    Progress,
    Ready,
    Reset,
    Result,
    Segment,
    Stop,
    WorkerOptions,
)
from engine.model.sampling import Sampling
from engine.telemetry.gcwatch import GcWatch, IdleCollector, settle


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent dies (covers the loading phase, when the pipe is not being read)."""
    while True:
        time.sleep(0.25)
        if os.getppid() != parent_pid:
            os._exit(0)
        if sys.platform != "win32":
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass


class Stepper:
    """The prepared LM (engine.model.graph.lm_step) plus the segment logic: when the context
    is about to fill, start a new segment. The KV caches stay allocated across segments."""

    def __init__(self, model, max_steps: int, mode: str | None = None,
                 sampling: Sampling | None = None):
        self.model = model
        self.max_steps = max_steps
        self.sampling = sampling or Sampling()
        self._mode = mode
        self.lm = self._prepare()
        self.mode = self.lm.mode
        self.total_steps = 0

    def _prepare(self):
        from engine.model.graph.lm_step import prepare_lm

        text, audio = self.sampling.samplers()
        return prepare_lm(self.model, self.max_steps, self._mode, text_sampler=text,
                          audio_sampler=audio, condition=condition_tensor(self.model))

    def reset(self) -> None:
        self.lm.reset()

    def configure(self, sampling: Sampling) -> None:
        """A new conversation: its sampling (a changed one is prepared and warmed: a compiled
        step bakes the sampler in), a fresh LM state, the seed applied."""
        if sampling != self.sampling:
            self.lm.restore()
            self.sampling = sampling
            self.lm = self._prepare()
            self.lm.warm(2)
        self.reset()
        seed_mlx(sampling.seed)

    def step(self, codes):
        segment = False
        if self.lm.step_idx >= self.max_steps - 1:
            self.reset()
            segment = True
        text_token, audio = self.lm.step(codes)
        self.total_steps += 1
        return text_token, audio, segment


def warm(stepper: Stepper, n: int = 6) -> float:
    """Run a few real steps (and, with preallocated caches, one at a long context) so every
    kernel and graph a conversation uses is built now, then reset to a fresh conversation."""
    ms = stepper.lm.warm(n)
    stepper.total_steps = 0
    return ms


MEMORY_EVERY_STEPS = 125  # 10 s of conversation


def mlx_active_bytes() -> int:
    """The memory MLX holds for arrays in this process (its caches not counted)."""
    import mlx.core as mx

    get = getattr(mx, "get_active_memory", None) or mx.metal.get_active_memory
    return int(get())


def _child_setup(conn):
    """Common start of a spawned model process: parent watch, no SIGINT, a safe `send`."""
    import signal

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    # The client handles Ctrl+C; this process must not die on the terminal's SIGINT before
    # the client has asked it to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(msg) -> None:
        try:
            conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            os._exit(0)

    return send


def _load_and_warm(resolved, options: WorkerOptions, send):
    """Load the LM exactly as every session does, then warm it: (stepper, load_ms, warm_ms)."""
    from engine.model.graph.lm_step import lm_mode_from
    from engine.model.mlx_env import tune_mlx_env
    from engine.model.load import load_lm

    mode = lm_mode_from(options.lm_mode)
    tune_mlx_env()  # before MLX's first kernel
    t0 = time.perf_counter()
    model, cfg = load_lm(resolved, progress=lambda s: send(Progress(s)))
    load_ms = (time.perf_counter() - t0) * 1000.0
    send(Progress("warming up"))
    # A new segment starts when the LM context is full (Moshi v0.1: 3000 steps = 4 min).
    sampling = options.sampling
    stepper = Stepper(model, int(options.max_steps or cfg.transformer.context), mode, sampling)
    if stepper.lm.note:
        send(Progress(stepper.lm.note))
    warm_ms = warm(stepper)
    seed_mlx(sampling.seed)  # (after the warm-up: the conversation starts from the seed)
    return stepper, load_ms, warm_ms


def seed_mlx(seed: int | None) -> None:
    if seed is not None:
        import mlx.core as mx

        mx.random.seed(int(seed))


def model_main(conn, resolved, options: WorkerOptions) -> None:
    """Entry point of the spawned model process of a session or of `serve`."""
    send = _child_setup(conn)
    try:
        from engine.errors import MoshiTuiError

        stepper, load_ms, warm_ms = _load_and_warm(resolved, options, send)
        delay = float(options.step_delay_ms or 0.0) / 1000.0
        import mlx.core as mx

        # The collector walks only what the conversation allocates, and only between steps.
        frozen = settle()
        watch = GcWatch().install()
        collector = IdleCollector()
        send(Ready({
            "load_ms": round(load_ms, 1),
            "warmup_ms": round(warm_ms, 1),
            "max_steps": stepper.max_steps,
            "lm_mode": stepper.mode,
            "sampling": stepper.sampling.as_dict(),
            "sampling_text": stepper.sampling.describe(),
            "mlx_device": str(mx.default_device()),
            "pid": os.getpid(),
            "gc_frozen_objects": frozen,
        }))
    except MoshiTuiError as e:
        send(Failed(str(e), e.exit_code))
        return
    except Exception as e:  # any failure while loading must reach the client as one line
        send(Failed(f"server failed while loading the model: {type(e).__name__}: {e}"))
        return

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, Frame):
            t_in = time.monotonic_ns()
            t0 = time.monotonic_ns()
            try:
                text_token, audio, segment = stepper.step(msg.codes)
            except Exception as e:
                send(Failed(f"model step failed: {type(e).__name__}: {e}"))
                return
            if delay:
                time.sleep(delay)
            t1 = time.monotonic_ns()
            step = stepper.total_steps - 1
            if segment:
                send(Segment(step))
            send(Result(msg.frame_id, step, text_token, audio, t_in, t0, t1))
            if step % MEMORY_EVERY_STEPS == 0:
                send(Memory(step, mlx_active_bytes(), watch.summary()))
            collector.idle()  # (the next frame is ~60 ms away)
        elif isinstance(msg, Reset):
            stepper.reset()
        elif isinstance(msg, Configure):
            try:
                stepper.configure(msg.sampling)
            except Exception as e:
                send(Failed(f"cannot configure the model: {type(e).__name__}: {e}"))
                return
        elif isinstance(msg, Stop):
            return


def bench_step_main(conn, resolved, options: WorkerOptions) -> None:
    """Entry point of the spawned process of `moshi-tui bench step`.

    Loads and warms the model exactly as `model_main` does (same `load_lm`, dtype, quantization,
    `Stepper`, `warm`), then times `options.steps` calls of `Stepper.step` -- the prepared
    LM's step (engine.model.graph.lm_step) and its conversions, the span a session's "model"
    stage measures -- on dummy codes, back to back.  Sends Progress..., then BenchDone or Failed.
    """
    send = _child_setup(conn)
    try:
        import numpy as np

        from engine.errors import MoshiTuiError

        stepper, load_ms, warm_ms = _load_and_warm(resolved, options, send)
        import mlx.core as mx

        steps = max(1, int(options.steps or 100))
        send(Progress(f"timing {steps} steps"))
        codes = np.zeros((stepper.lm.n_other, 1), dtype=np.uint32)
        times_ns: list[int] = []
        audio_none = segments = 0
        cpu0, wall0 = time.process_time(), time.monotonic_ns()
        for _ in range(steps):
            a = time.monotonic_ns()
            _text, audio, segment = stepper.step(codes)
            b = time.monotonic_ns()
            times_ns.append(b - a)
            audio_none += audio is None
            segments += bool(segment)
        wall_ns = time.monotonic_ns() - wall0
        cpu_s = time.process_time() - cpu0
        try:
            import psutil

            rss_mb = round(psutil.Process().memory_info().rss / 2**20, 1)
        except Exception:
            rss_mb = None
        send(BenchDone({
            "times_ns": times_ns,
            "wall_s": wall_ns / 1e9,
            "cpu_s": cpu_s,
            "load_ms": round(load_ms, 1),
            "warmup_ms": round(warm_ms, 1),
            "audio_none_steps": audio_none,
            "segments": segments,
            "max_steps": stepper.max_steps,
            "lm_mode": stepper.mode,
            "mlx_device": str(mx.default_device()),
            "pid": os.getpid(),
            "rss_mb": rss_mb,
        }))
    except MoshiTuiError as e:
        send(Failed(str(e), e.exit_code))
    except Exception as e:
        send(Failed(f"bench step failed: {type(e).__name__}: {e}"))
