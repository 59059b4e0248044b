"""The frames that came late: the session's slowest frames, and each underrun with the frame the
speaker played next and which of its stages took longer than usual (stats.json
"slowest_frames", "underrun_times_s", "underruns_explained"; engine.telemetry.collect.Telemetry
keeps both)."""

from __future__ import annotations

import heapq

import numpy as np

from engine.telemetry.stages import FrameRecord

# the stages a frame passes before its PCM is ready, in order (processing = their sum)
PATH_STAGES = ("encode", "uplink", "queue", "model", "decode")
STANDS_OUT_MS = 5.0  # a stage this much slower than its median is the one named
SLOWEST = 12  # the slowest frames of a session kept whole, with their stages
EXPLAINED = 200  # underruns explained, the first of a session
TIMES = 1000  # underrun times kept, the first of a session


class SlowestFrames:
    """The session's slowest frames (capture -> decoded PCM), each with its stages."""

    def __init__(self) -> None:
        self._heap: list = []  # min-heap of (processing_ms, frame, step, t_s, stages)

    def add(self, rec: FrameRecord, stages: dict[str, float], t_s: float) -> None:
        """`rec`'s PCM is ready, `t_s` after the session's first capture."""
        proc = stages.get("processing")
        if proc is None or (len(self._heap) >= SLOWEST and proc <= self._heap[0][0]):
            return
        entry = (proc, rec.frame, rec.step, t_s, stages)
        if len(self._heap) < SLOWEST:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def frames(self) -> list[dict]:
        """Slowest first, each with when it was captured and what each stage took: where a rare
        late frame lost its time."""
        return [{"frame": frame, "step": step, "t_s": round(t_s, 3),
                 **{k: round(v, 3) for k, v in stages.items() if k != "playback"}}
                for _, frame, step, t_s, stages in sorted(self._heap, reverse=True)]


class Underruns:
    """When the speaker ran dry (seconds since the first capture), and why: the frame played
    next was the late one."""

    def __init__(self) -> None:
        self.times: list[float] = []  # the first TIMES
        self.explained: list[dict] = []  # the first EXPLAINED (explain_underrun's entries)
        self._pending: tuple[int, float | None] | None = None  # (t_ns, aim ms)
        self._drops_at_play = 0  # frames dropped before the last frame played

    def ran_dry(self, t_ns: int, t_start: int | None, aim_ms: float | None) -> None:
        """The speaker played silence at `t_ns`, under a jitter buffer aiming at `aim_ms`."""
        if len(self.times) < TIMES:
            self.times.append(round((t_ns - (t_start or t_ns)) / 1e9, 3))
        if self._pending is None:
            self._pending = (t_ns, aim_ms)

    def played(self, rec: FrameRecord, stage_hist: dict, t_start: int | None,
               drops: int) -> dict | None:
        """`rec` starts playing, `drops` frames dropped so far: the explanation of the underrun
        it ended, if it ended one (and it is among the first EXPLAINED)."""
        entry = None
        if self._pending is not None:
            t_ns, aim = self._pending
            self._pending = None
            if len(self.explained) < EXPLAINED:
                entry = explain_underrun(rec, t_ns, aim, stage_hist, t_start,
                                         drops - self._drops_at_play)
                self.explained.append(entry)
        self._drops_at_play = drops
        return entry


def explain_underrun(rec: FrameRecord, t_ns: int, aim_ms: float | None, stage_hist: dict,
                     t_start: int | None, dropped_before: int) -> dict:
    """The speaker ran dry at `t_ns`, under a jitter buffer aiming at `aim_ms`, and `rec` is the
    frame it played next: its stages against their medians over the recent window
    (`stage_hist`: stage -> recent milliseconds), and the frames dropped before it."""
    stages = rec.stages_ms()
    # (in the speaker's callback: a copy of each window, which the decoder loop appends to)
    hist = {n: list(stage_hist[n]) for n in PATH_STAGES + ("processing",)}
    usual = {n: float(np.median(v)) for n, v in hist.items() if v}
    excess = {n: stages[n] - usual[n] for n in PATH_STAGES if n in stages and n in usual}
    worst = max(excess, key=excess.get) if excess else None
    if worst is not None and excess[worst] < STANDS_OUT_MS:
        worst = None  # no stage stood out: the frame was as fast as usual, the aim too tight
    proc = stages.get("processing")
    # (when, after its capture, the speaker wanted it: the delay it was playing at)
    due = (t_ns - rec.t_cap) / 1e6 if rec.t_cap else None
    return {"t_s": round((t_ns - (t_start or t_ns)) / 1e9, 3), "frame": rec.frame,
            "step": rec.step, "processing_ms": None if proc is None else round(proc, 1),
            "due_ms": None if due is None else round(due, 1),
            "aim_ms": None if aim_ms is None else round(aim_ms, 1), "stage": worst,
            "stages_ms": {n: round(v, 1) for n, v in stages.items() if n in PATH_STAGES},
            "usual_ms": {n: round(v, 1) for n, v in usual.items()},
            "dropped_before": dropped_before}


def underrun_text(e: dict) -> str:
    """One line for an explained underrun (an entry of `explain_underrun`)."""
    when = []
    if e["due_ms"] is not None:
        when.append(f"due {e['due_ms']:.0f} ms after capture")
    if e["processing_ms"] is not None:
        when.append(f"ready at {e['processing_ms']:.0f} ms")
    why = []
    if e.get("dropped_before"):
        n = e["dropped_before"]
        why.append(f"{n} frame{'s' if n != 1 else ''} dropped before it (the pipeline was behind)")
    if e["stage"] is not None:
        why.append(f"{e['stage']} took {e['stages_ms'][e['stage']]:.0f} ms, usually "
                   f"{e['usual_ms'][e['stage']]:.0f}")
    elif not why:
        usual = e["usual_ms"].get("processing")
        why.append("no stage slower than usual"
                   + ("" if usual is None else f" (processing usually {usual:.0f} ms)")
                   + ": the speaker's delay was too short for it")
    why = "; ".join(why)
    return (f"underrun at {e['t_s']:.1f} s: frame {e['frame']}"
            + (f" ({', '.join(when)})" if when else "") + f": {why}")
