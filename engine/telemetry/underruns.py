"""Why the speaker ran dry: the frame it played next, and which of its stages took longer than
usual (engine.telemetry.collect.Telemetry keeps the entries, stats.json "underruns_explained")."""

from __future__ import annotations

import numpy as np

from engine.telemetry.stages import FrameRecord

# the stages a frame passes before its PCM is ready, in order (processing = their sum)
PATH_STAGES = ("encode", "uplink", "queue", "model", "decode")
STANDS_OUT_MS = 5.0  # a stage this much slower than its median is the one named


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
