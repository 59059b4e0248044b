"""The messages on the pipe between a session and its model process: one type each, named fields.

    client -> model:   Frame | Reset | Configure | Stop
    model -> client:   Progress ... then Ready (or Failed), then per frame Result, and Segment
                       when the LM context filled and a new segment started; BenchDone for
                       `bench step`
They are pickled by `multiprocessing.Connection`; every class lives at module level for that.
`WorkerOptions` is what the model process is started with (its entry point's argument).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from engine.model.sampling import Sampling


# ------------------------------------------------------------------ the process's start-up
@dataclass(frozen=True)
class WorkerOptions:
    """How the model process runs its LM (engine.model.worker reads these)."""

    max_steps: int | None = None  # LM context length before a new segment; None: the model's
    step_delay_ms: float = 0.0  # diagnostic: sleep this long after every step
    lm_mode: str | None = None  # the LM step mode (engine.model.graph.lm_step); None: the default
    sampling: Sampling = field(default_factory=Sampling)  # until a Configure says otherwise
    steps: int = 100  # `bench step` only: how many steps it times


# ------------------------------------------------------------------ client -> model process
class Frame(NamedTuple):
    """One frame's Mimi codes, uint32 (codebooks, 1), to step the LM with."""

    frame_id: int
    codes: np.ndarray


class Reset(NamedTuple):
    """Start a new segment: a fresh LM state (the client swapped in a fresh codec)."""


class Configure(NamedTuple):
    """A new conversation (serve): its sampling, a fresh LM."""

    sampling: Sampling


class Stop(NamedTuple):
    """Exit now."""


# ------------------------------------------------------------------ model process -> client
class Progress(NamedTuple):
    """What the loading is doing, for the status line."""

    text: str


class Ready(NamedTuple):
    """The LM is loaded and warm; `info` describes it (load/warm-up times, device, pid...)."""

    info: dict


class Failed(NamedTuple):
    """Loading or a step failed; the process exits after sending this."""

    message: str
    exit_code: int = 1


class Result(NamedTuple):
    """One LM step: the text token, the audio codes ((1, codebooks) uint32, or None during the
    codebook delays) and the model process's stamps (time.monotonic_ns)."""

    frame_id: int
    step: int
    text_token: int
    audio: np.ndarray | None
    t_srv_in: int
    t_step0: int
    t_step1: int


class Segment(NamedTuple):
    """The LM context filled at `step`: the model process reset it before this step."""

    step: int


class Memory(NamedTuple):
    """What MLX holds in the model process (bytes), sent every few seconds of steps, with its
    garbage collector's figures so far (engine.telemetry.gcwatch.GcWatch.summary)."""

    step: int
    active_bytes: int
    gc: dict | None = None


class BenchDone(NamedTuple):
    """`bench step`'s timings (engine.bench.measure.run_step reads them)."""

    result: dict
