"""Turns panel: who spoke when over the last 20 s (a lane per side), the p50/p90 of Moshi's
response and stop latencies, and the last turns (engine.telemetry.turns defines them)."""

from __future__ import annotations

from textual.app import ComposeResult

from engine.telemetry.collect import Snapshot
from engine.telemetry.voice import STRIP_S, TurnsView

from ..format import clock, ms
from .panel import SnapshotPanel
from .steady import SteadyStatic

STRIP_CELLS = 36  # the lanes' width: 20 s in 36 cells
LANES = {"user": "you  ", "moshi": "moshi"}
KIND_LABELS = {"response": "answered", "stop": "stopped", "kept_floor": "kept the floor",
               "takeover": "took over", "backchannel": "backchannel", "unanswered": "no answer"}


def lane(spans: list[tuple[float, float]], cells: int = STRIP_CELLS) -> str:
    """Speech of one side as a strip, oldest left: spans are (start, end) seconds before now."""
    per = STRIP_S / cells
    out = []
    for i in range(cells):
        hi = STRIP_S - i * per  # this cell covers [hi - per, hi) seconds ago
        lo = hi - per
        out.append("█" if any(b < hi and a > lo for a, b in spans) else "·")
    return "".join(out)


def turn_line(view: TurnsView, t) -> str:
    at = clock((t.t_ms + view.zero_ms) / 1000)
    text = f"[dim]{at}[/] {KIND_LABELS.get(t.kind, t.kind)}"
    if t.latency_ms is not None:
        text += f" [b]{ms(t.latency_ms).strip()}[/] ms" if t.latency_ms < 1000 else \
            f" [b]{ms(t.latency_ms).strip()}[/]"
    if t.pipeline_ms is not None:
        text += f" [dim](pipeline {ms(t.pipeline_ms).strip()})[/]"
    return text


class TurnsPanel(SnapshotPanel):
    """Turn-taking of the conversation, live."""

    def compose(self) -> ComposeResult:
        yield SteadyStatic(id="turn-lanes")
        yield SteadyStatic(id="turn-figures")
        yield SteadyStatic(id="turn-list")

    def on_mount(self) -> None:
        self._drawn = None
        self.border_title = "Turns"
        self.border_subtitle = f"last {STRIP_S:.0f} s"

    def changes(self, snap: Snapshot) -> tuple:
        v = snap.turns
        if v is None:
            return (None,)
        return (len(v.last), v.last[-1].t_ms if v.last else None, int(snap.elapsed_s * 2))

    def draw(self, snap: Snapshot) -> None:
        v = snap.turns
        if v is None:
            self.query_one("#turn-lanes", SteadyStatic).set_content("[dim]voice activity off[/]")
            return
        lanes = "\n".join(f"[dim]{LANES[s]}[/] " + (f"[$text-success]{lane(v.lanes.get(s, []))}[/]"
                                                     if s == "moshi" else lane(v.lanes.get(s, [])))
                          for s in LANES)
        self.query_one("#turn-lanes", SteadyStatic).set_content(lanes)
        figs = ["[dim]latency      p50    p90    n[/]"]
        for label, p in (("answer", v.response), ("stop", v.stop)):
            figs.append(f"{label:<10} {ms(p.get('p50'), 6)} {ms(p.get('p90'), 6)} {p.get('n') or 0:4d}")
        c = v.counts
        share = "–" if v.overlap_share is None else f"{100 * v.overlap_share:.0f}%"
        figs.append(f"[dim]takeovers {c.get('takeover', 0)} · backch. {c.get('backchannel', 0)} "
                    f"· kept floor {c.get('kept_floor', 0)} · overlap {share}[/]")
        self.query_one("#turn-figures", SteadyStatic).set_content("\n".join(figs))
        rows = [turn_line(v, t) for t in v.last[-5:]] or ["[dim]no turns yet[/]"]
        self.query_one("#turn-list", SteadyStatic).set_content("\n".join(rows))
