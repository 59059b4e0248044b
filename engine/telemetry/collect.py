"""Per-frame telemetry: one definition shared by the UI, the headless CLI, the bench and the trace.

Stamps are `time.monotonic_ns()` values taken where the event happens (audio callback, codec
result, server step) -- monotonic time is system-wide, so client and server stamps compare.

Writers are the audio callbacks and the four client loops; each touches only its own fields and
appends to deques/arrays (GIL-atomic), so no writer ever takes a lock.  Readers (UI timer,
status printer) call `snapshot()`, which copies bounded windows and never blocks a writer.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.audio import rms
from engine.telemetry.info import SessionInfo
from engine.telemetry.stages import ALL_STAGES, COUNTERS, QUEUES, FrameRecord, percentiles
from engine.telemetry.late_frames import SlowestFrames, Underruns, underrun_text
from engine.telemetry.turns import TurnOptions
from engine.telemetry.voice import TurnsView, voice_activity

WINDOW = 250  # frames in the rolling windows (20 s)
# the stages of a frame the model stepped, folded when its audio is not decoded
SERVER_STAGES = ("encode", "uplink", "queue", "model", "encode_work")


@dataclass
class Token:
    text: str
    token_id: int
    step: int
    t_ms: float  # since session start (first captured frame)
    segment: int = 0
    segment_reason: str = ""  # why its segment began: "context" (LM context full), "restart"


@dataclass
class Snapshot:
    """A cheap, immutable copy of everything a UI or status line shows."""

    t: float
    state: str
    state_detail: str
    elapsed_s: float
    frames_captured: int
    frames_processed: int
    frames_played: int
    steps: int
    delay_steps: int
    segments: int
    counters: dict[str, int]
    queues: dict[str, int]
    queue_history: dict[str, list[int]]
    stage_history: dict[str, list[float]]
    stage_stats: dict[str, dict[str, float | None]]
    text: str
    tokens_count: int
    input_level: float
    output_level: float
    level_history: dict[str, list[float]]
    muted: bool
    info: SessionInfo
    error: str | None
    first_frame_ms: float | None
    startup_ms: float | None
    warnings: list[str] = field(default_factory=list)
    turns: TurnsView | None = None  # voice activity and turn-taking, while measured


@dataclass(frozen=True)
class TelemetryConfig:
    """What a kind of session measures besides the pipeline's stages (engine.telemetry.stages)
    and counters."""

    # more stages, each kept and summarised like the pipeline's (snapshots, stats.json)
    stages: tuple[str, ...] = ()
    counters: tuple[str, ...] = ()  # more counters, from 0
    # A frame's stages are taken from its stamps when its PCM is ready and when it plays (the
    # stages, the slowest frames, the playback stage, underrun times and explanations).  Off
    # where frames are paired with the audio that comes back in arrival order: no stage may
    # depend on that pairing, and the session reports its stages itself (the `stage` event)
    frame_timeline: bool = True
    # Voice activity of both sides and the turns made of it (engine.telemetry.voice), on its own
    # thread; the thresholds, or the defaults with the VAD's lag taken out
    voice: bool = True
    turns: TurnOptions | None = None


class Telemetry:
    """Collects stamps, stage durations, queue depths, counters and the transcript."""

    def __init__(self, window: int = WINDOW, config: TelemetryConfig = TelemetryConfig()):
        self.window = window
        self.config = config
        self.stage_names = ALL_STAGES + tuple(s for s in config.stages if s not in ALL_STAGES)
        self.t_launch = time.monotonic_ns()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # wall clock, for exports
        self.t_start: int | None = None  # first captured frame
        self.t_first_out: int | None = None  # first decoded frame
        self.frames: dict[int, FrameRecord] = {}
        self.stage_hist: dict[str, deque] = {s: deque(maxlen=window) for s in self.stage_names}
        self.stage_all: dict[str, array] = {s: array("d") for s in self.stage_names}
        self.queue_hist: dict[str, deque] = {q: deque(maxlen=window) for q in QUEUES}
        self.queue_depth: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self.queue_max: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self.level_hist: dict[str, deque] = {"input": deque(maxlen=window), "output": deque(maxlen=window)}
        self.counters: dict[str, int] = dict.fromkeys((*COUNTERS, *config.counters), 0)
        self.frames_captured = 0
        self.frames_processed = 0
        self.frames_played = 0
        self.steps = 0
        self.tokens: list[Token] = []
        self._text_parts: list[str] = []
        self.segment = 0
        self.segment_reason = ""
        self.state = "starting"
        self.state_detail = ""
        self.error: str | None = None
        self.info = SessionInfo()
        self.input_level = 0.0
        self.output_level = 0.0
        self.muted = False
        self.warnings: deque[str] = deque(maxlen=8)
        self.done_frames: deque[FrameRecord] = deque()  # completed records, for the trace
        self.keep_records = False
        self.underruns = Underruns()
        self.underrun_times = self.underruns.times  # seconds since the first capture
        self.underruns_explained = self.underruns.explained  # what made each one's frame late
        # The delay the jitter buffer aimed at (capture -> speaker), per played frame
        self.playout_hist: deque = deque(maxlen=window)
        self.playout_all = array("d")
        self.segment_times: list[float] = []  # seconds since the first capture, per new segment
        self.queue_samples: deque = deque()  # (t_ns, depths) per frame, with keep_records
        self.gc: dict[str, dict] = {}  # the model process's garbage collector ("server")
        self.gc_watch = None  # engine.telemetry.gcwatch.GcWatch of this process, once live
        self.slowest = SlowestFrames()
        self.voice = voice_activity(config.voice, config.turns, self.add_stage, self.warn)

    # --- writers (called from audio callbacks and loops; never block) ---
    def set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self.state_detail = detail

    def new_frame(self, frame: int, t_cap: int) -> FrameRecord:
        """A frame captured at `t_cap`, its level not measured (the `captured` event's is)."""
        rec = FrameRecord(frame=frame, t_cap=t_cap)
        self.captured(rec)
        return rec

    def sample_queues(self, depths: dict[str, int]) -> None:
        if self.keep_records:
            self.queue_samples.append((time.monotonic_ns(), depths))
        for q, d in depths.items():
            self.queue_depth[q] = d
            self.queue_hist[q].append(d)
            if d > self.queue_max[q]:
                self.queue_max[q] = d

    def add_level(self, kind: str, rms: float) -> None:
        if kind == "input":
            self.input_level = rms
        else:
            self.output_level = rms
        self.level_hist[kind].append(rms)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def warn(self, message: str) -> None:
        if not self.warnings or self.warnings[-1] != message:
            self.warnings.append(message)

    def underrun_at(self, t_ns: int) -> None:
        if self.config.frame_timeline:
            aim = self.playout_hist[-1] if self.playout_hist else None
            self.underruns.ran_dry(t_ns, self.t_start, aim)

    def playout_aim(self, ms: float) -> None:
        """A frame was played under a jitter buffer aiming at `ms` of mic-to-speaker delay."""
        self.playout_hist.append(ms)
        self.playout_all.append(ms)

    def playout_p50(self, full: bool = False) -> float | None:
        """Median aim of the jitter buffer: over the recent window, or the whole session."""
        src = self.playout_all if full else self.playout_hist
        return round(float(np.median(src)), 1) if len(src) else None

    def _info(self) -> SessionInfo:
        aim = self.playout_p50()
        return self.info.copy() if aim is None else self.info.copy(playout_ms=aim)

    def add_stage(self, name: str, ms: float) -> None:
        self.stage_hist[name].append(ms)
        self.stage_all[name].append(ms)

    def frame_decoded(self, rec: FrameRecord) -> None:
        """Called when the PCM of `rec` is ready: fold every stage up to decode."""
        if self.t_first_out is None:
            self.t_first_out = rec.t_dec
        self.frames_processed += 1
        if not self.config.frame_timeline:
            return
        stages = rec.stages_ms()
        for name, ms in stages.items():
            if name != "playback":
                self.add_stage(name, ms)
        self.slowest.add(rec, stages, (rec.t_cap - (self.t_start or rec.t_cap)) / 1e9)

    def frame_played(self, rec: FrameRecord) -> None:
        self.frames_played += 1
        c = self.counters
        drops = c["drops_input"] + c["drops_decode"] + c["drops_output"]
        explained = self.underruns.played(rec, self.stage_hist, self.t_start, drops)
        if explained is not None:
            self.warn(underrun_text(explained))
        if rec.t_play and rec.t_cap and self.config.frame_timeline:
            self.add_stage("playback", (rec.t_play - rec.t_cap) / 1e6)
        self.frames.pop(rec.frame, None)
        if self.keep_records:
            self.done_frames.append(rec)

    def frame_retired(self, rec: FrameRecord) -> None:
        """A frame whose step produced no audio, or whose PCM was dropped."""
        self.frames.pop(rec.frame, None)
        if self.keep_records:
            self.done_frames.append(rec)

    def add_token(self, text: str, token_id: int, step: int, t_ns: int) -> None:
        t0 = self.t_start or t_ns
        self.tokens.append(Token(text, token_id, step, (t_ns - t0) / 1e6, self.segment,
                                 self.segment_reason))
        self._text_parts.append(text)

    def mark_segment(self, step: int, t_ns: int, reason: str = "context") -> None:
        """A new segment: "context" (the LM context filled) or "restart" (a new model server
        after the old one died)."""
        self.segment_times.append(round((t_ns - (self.t_start or t_ns)) / 1e9, 3))
        self.segment += 1
        self.segment_reason = reason
        self.count("segments")
        if reason == "restart":
            self.warn(f"model server restarted at step {step}: new segment started")
        else:
            self.warn(f"context full at step {step}: new segment started")

    # --- the pipeline's events (engine.pipeline.events): Telemetry is one of its observers ---
    def captured(self, rec: FrameRecord, pcm=None) -> None:
        self.frames[rec.frame] = rec
        if self.t_start is None:
            self.t_start = rec.t_cap
        self.frames_captured += 1
        if pcm is not None:
            self.add_level("input", rms(pcm))
            if self.voice is not None:
                self.voice.heard(rec.t_cap, pcm)

    def dropped(self, rec: FrameRecord, where: str, why: str = "") -> None:
        if where == "decode":  # stepped by the model: its stages up to the model count
            self._fold_server_stages(rec)
        self.count(f"drops_{where}")
        if why:
            self.warn(why)
        self.frame_retired(rec)

    def early_encoded(self, rec: FrameRecord) -> None:
        self.count("early_encodes")

    def early_encode(self, on: bool) -> None:
        self.info.early_encode = on

    def stepped(self, rec: FrameRecord) -> None:
        self.steps = rec.step + 1

    def delay_step(self, rec: FrameRecord) -> None:
        self.count("delay_steps")
        self._fold_server_stages(rec)
        self.frame_retired(rec)

    def pcm_ready(self, rec: FrameRecord, pcm) -> None:
        self.frame_decoded(rec)

    def played(self, rec: FrameRecord, pcm, aim_ms: float | None) -> None:
        self.frame_played(rec)
        if aim_ms is not None:
            self.playout_aim(aim_ms)
        self.add_level("output", rms(pcm))
        if self.voice is not None:
            self.voice.played(rec, pcm, timeline=self.config.frame_timeline)

    def silence(self, room: int, t_ns: int, underrun: bool) -> None:
        if underrun:
            self.count("underruns")
            self.underrun_at(t_ns)
        self.add_level("output", 0.0)
        if self.voice is not None:
            self.voice.silent(t_ns, room)

    def trimmed(self, rec: FrameRecord) -> None:
        self.count("trims_output")

    def abandoned(self, rec: FrameRecord) -> None:
        self._fold_server_stages(rec)

    def model_memory(self, step: int, mb: float, gc: dict | None = None) -> None:
        self.info.server["mlx_active_mb"] = round(mb, 1)
        if gc is not None:
            self.gc["server"] = gc

    # (events that are writers above, under the pipeline's names)
    queues = sample_queues  # (depths)
    text_token = add_token  # (piece, token_id, step, t_ns)
    segment_started = mark_segment  # (step, t_ns): the LM context filled
    retired = frame_retired  # (rec)
    stage = add_stage  # (name, ms)
    warning = warn  # (text)

    def failed(self, message: str) -> None:
        self.error = message
        self.set_state("error", message)

    def _fold_server_stages(self, rec: FrameRecord) -> None:
        """Stages up to the model step of a frame whose audio will not be decoded."""
        for name, ms in rec.stages_ms().items():
            if name in SERVER_STAGES:
                self.add_stage(name, ms)

    # --- readers ---
    @property
    def text(self) -> str:
        return "".join(self._text_parts)

    def stage_stats(self, full: bool = False) -> dict[str, dict[str, float | None]]:
        src = self.stage_all if full else self.stage_hist
        return {s: percentiles(list(src[s])) for s in self.stage_names}

    def snapshot(self) -> Snapshot:
        now = time.monotonic_ns()
        elapsed = (now - self.t_start) / 1e9 if self.t_start else 0.0
        stage_history = {s: list(d) for s, d in self.stage_hist.items()}
        return Snapshot(
            t=now / 1e9,
            state=self.state,
            state_detail=self.state_detail,
            elapsed_s=elapsed,
            frames_captured=self.frames_captured,
            frames_processed=self.frames_processed,
            frames_played=self.frames_played,
            steps=self.steps,
            delay_steps=self.counters["delay_steps"],
            segments=self.counters["segments"],
            counters=dict(self.counters),
            queues=dict(self.queue_depth),
            queue_history={q: list(d) for q, d in self.queue_hist.items()},
            stage_history=stage_history,
            stage_stats={s: percentiles(v) for s, v in stage_history.items()},
            text=self.text,
            tokens_count=len(self.tokens),
            input_level=self.input_level,
            output_level=self.output_level,
            level_history={k: list(d) for k, d in self.level_hist.items()},
            muted=self.muted,
            info=self._info(),
            error=self.error,
            first_frame_ms=self.first_frame_ms,
            startup_ms=self.startup_ms,
            warnings=list(self.warnings),
            turns=self.voice.view(self.t_start) if self.voice is not None else None,
        )

    @property
    def first_frame_ms(self) -> float | None:
        """First captured frame to first decoded PCM."""
        if self.t_start is None or self.t_first_out is None:
            return None
        return (self.t_first_out - self.t_start) / 1e6

    @property
    def startup_ms(self) -> float | None:
        """Launch to first processed frame."""
        if self.t_first_out is None:
            return None
        return (self.t_first_out - self.t_launch) / 1e6

