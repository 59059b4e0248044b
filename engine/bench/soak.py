"""`moshi-tui bench soak --minutes N`: a long demo session, reported minute by minute.

The question it answers: does anything creep?  Per minute: processing and mic-to-speaker
percentiles of the frames of that minute, model step p50, RSS of both processes, drops,
underruns and segments (context/codec resets).  RSS is sampled every second: each minute's
lowest (`rss_min_mb`, the table's figure) rises with a leak but not with the moment of a
segment switch, when the old codec and the new one are both alive; its last sample is `rss_mb`.
The growth is the last minute's lowest against the end of the first minute.
"""

from __future__ import annotations

from engine.model.source import ModelOptions
from engine.telemetry.stages import percentiles

MINUTE_S = 60.0


def _delta(counters: dict, prev: dict) -> dict:
    return {k: counters.get(k, 0) - prev.get(k, 0) for k in counters}


def run_soak(mopts: ModelOptions, *, minutes: float, input_spec: str | None = None,
             output_spec: str | None = "null", max_steps: int | None = None,
             minute_s: float = MINUTE_S, progress=None) -> dict:
    from engine.bench.pipeline import looped_endpoints
    from engine.session.config import SessionConfig
    from engine.session.local import Session
    from engine.session.runner import Every, SessionRunner

    endpoints = looped_endpoints(input_spec, output_spec)
    cfg = SessionConfig(model=mopts, input=input_spec, output=output_spec,
                        seconds=minutes * 60.0, max_steps=max_steps, save=False, aec="off")
    session = Session(cfg)
    session.prepare(endpoints)
    tel = session.tel
    rows: list[dict] = []
    mark = {s: 0 for s in ("processing", "playback", "model")}
    prev_counters: dict = {}
    low: dict[str, float] = {}  # the lowest RSS of each process this minute
    minute, sample = Every(minute_s), Every(min(1.0, minute_s / 4), at_once=True)

    def hook(now: float) -> None:
        nonlocal prev_counters, low
        if not session.live.is_set():
            return
        if minute.next is None:  # live: the first minute starts
            prev_counters = dict(tel.counters)
        if sample.due(now):
            for k, v in session.process_figures().items():
                if v.get("rss_mb"):
                    low[k] = min(low.get(k, v["rss_mb"]), v["rss_mb"])
        if not minute.due(now):
            return
        row = {"minute": len(rows) + 1}
        for s in mark:
            a = tel.stage_all[s]
            n = len(a)
            p = percentiles(a[mark[s]:n])
            mark[s] = n
            row[s] = {k: p[k] for k in ("p50", "p95", "p99", "max", "n")}
        figs = session.process_figures()
        row["rss_mb"] = {k: v.get("rss_mb") for k, v in figs.items()}
        row["rss_min_mb"] = {k: min(low.get(k, v["rss_mb"]), v["rss_mb"])
                             for k, v in figs.items() if v.get("rss_mb")}
        low = {}
        row["cpu_percent"] = {k: v.get("cpu_percent") for k, v in figs.items()}
        row["counters"] = _delta(dict(tel.counters), prev_counters)
        prev_counters = dict(tel.counters)
        rows.append(row)
        if progress:
            progress(format_row(row))

    # (no signals of its own: Ctrl+C ends the bench once the session is stopped)
    SessionRunner(session).run(hook, poll_s=0.2, signals=())
    snap = session.snapshot()
    def floors(proc: str) -> list[float]:
        # (the first minute's last sample, its start-up allocations made; the others' lowest)
        return [r["rss_mb" if i == 0 else "rss_min_mb"][proc] for i, r in enumerate(rows)
                if r["rss_min_mb"].get(proc)]

    return {
        "model": tel.info.model,
        "minutes": rows,
        "totals": {"counters": snap.counters, "frames_processed": snap.frames_processed,
                   "duration_s": round(snap.elapsed_s, 1)},
        "rss_growth_percent": {
            "client": _growth(floors("client")), "server": _growth(floors("server")),
        },
        "error": snap.error,
        "exit_code": session.exit_code,
        "end_reason": session.end_reason,
    }


def _growth(xs: list[float]) -> float | None:
    """The last minute's lowest RSS against the first minute's end (the first minute includes
    start-up allocations: the codec allocates as its first frames go through)."""
    if len(xs) < 2 or not xs[0]:
        return None
    return round(100.0 * (xs[-1] - xs[0]) / xs[0], 2)


HEADER = (f"{'min':>4} {'proc p50':>9} {'p95':>7} {'p99':>7} {'m2s p50':>8} {'model':>6} "
          f"{'client MB':>10} {'server MB':>10} {'drops':>6} {'underr':>7} {'segs':>5}")


def format_row(r: dict) -> str:
    def f(v, w=7):
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.1f}"

    c = r["counters"]
    drops = c.get("drops_input", 0) + c.get("drops_output", 0) + c.get("drops_decode", 0)
    return (f"{r['minute']:>4} {f(r['processing']['p50'], 9)} {f(r['processing']['p95'])}"
            f" {f(r['processing']['p99'])} {f(r['playback']['p50'], 8)} {f(r['model']['p50'], 6)}"
            f" {f(r['rss_min_mb'].get('client'), 10)} {f(r['rss_min_mb'].get('server'), 10)}"
            f" {drops:>6} {c.get('underruns', 0):>7} {c.get('segments', 0):>5}")


def format_soak(r: dict) -> str:
    lines = [f"bench soak: {r['model']}, {r['totals']['duration_s']} s", HEADER]
    lines += [format_row(row) for row in r["minutes"]]
    g = r["rss_growth_percent"]
    lines.append(f"RSS growth (the last minute's lowest vs the first minute's end): client {g['client']} %, server {g['server']} %")
    lines.append(f"totals: {r['totals']['counters']}")
    return "\n".join(lines)
