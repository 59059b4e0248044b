"""Latency panel: one sparkline per pipeline stage with its p50/p95 against the frame budget."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label, Static

from engine.telemetry import Snapshot

from ..format import FRAME_BUDGET_MS, NEAR_BUDGET, budget_level, ms
from .spark import Spark

# stage -> (label, judged against the frame budget?)
# Playback (mic -> speaker) includes the output buffer, so it is not a per-frame cost: shown
# on its own scale, without budget colours.
STAGES: dict[str, tuple[str, bool]] = {
    "encode": ("encode", True),
    "model": ("model", True),
    "decode": ("decode", True),
    "processing": ("process", True),
    "playback": ("mic→spk", False),
}


class StageRow(Horizontal):
    """name | sparkline | p50 | p95 | p99 (p99 only on wide screens)."""

    def __init__(self, stage: str) -> None:
        super().__init__(id=f"stage-{stage}", classes="row")
        self.stage = stage
        self.label, self.budgeted = STAGES[stage]

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="name")
        if self.budgeted:
            yield Spark(floor=FRAME_BUDGET_MS, warn=FRAME_BUDGET_MS * NEAR_BUDGET, over=FRAME_BUDGET_MS)
        else:
            yield Spark(floor=FRAME_BUDGET_MS)
        yield Static(classes="num p50")
        yield Static(classes="num p95")
        yield Static(classes="num p99 extra")

    def show(self, history: list[float], stats: dict) -> None:
        self.query_one(Spark).data = history
        for q in ("p50", "p95", "p99"):
            cell = self.query_one(f".{q}", Static)
            value = stats.get(q)
            cell.update(ms(value))
            if self.budgeted:
                level = budget_level(value)
                cell.set_class(level == "over", "-over")
                cell.set_class(level == "near", "-near")


class LatencyPanel(Vertical):
    """Per-stage latency of the last 20 s, in ms; the border turns red when `processing` is over."""

    snapshot: reactive[Snapshot | None] = reactive(None)
    """The latest telemetry snapshot (bound to the app's)."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row header"):
            yield Label("stage", classes="name")
            yield Label("last 20 s", classes="spark-head")
            yield Label("p50", classes="num")
            yield Label("p95", classes="num")
            yield Label("p99", classes="num extra")
        for stage in STAGES:
            yield StageRow(stage)

    def on_mount(self) -> None:
        self.border_title = "Latency (ms)"
        self.border_subtitle = f"budget {FRAME_BUDGET_MS:.0f} ms/frame"

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None or not self.display:
            return
        for row in self.query(StageRow):
            row.show(snap.stage_history.get(row.stage, []), snap.stage_stats.get(row.stage, {}))
        level = budget_level(snap.stage_stats.get("processing", {}).get("p95"))
        self.set_class(level == "over", "-over")
        self.set_class(level == "near", "-near")
