"""Latency panel: one sparkline per pipeline stage with its p50/p95 against the frame budget."""

from __future__ import annotations

from functools import partial

from textual.app import ComposeResult

from engine.telemetry.collect import Snapshot

from ..format import FRAME_BUDGET_MS, NEAR_BUDGET, budget_level, ms
from .panel import SnapshotPanel
from .spark import budget_style, spark
from .table_row import HeaderRow, PanelRow

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
# Shown only while measured: the echo canceller's work per frame (--aec, the a key), the voice
# activity detector's per frame of either side (beside the audio path).
EXTRA_STAGES: dict[str, tuple[str, bool]] = {"aec": ("echo canc", False), "vad": ("VAD", False)}
LEVEL_STYLE = {"over": "bold $text-error", "near": "$text-warning", "ok": "", "none": "$text-muted"}
BUDGET_BARS = budget_style(FRAME_BUDGET_MS * NEAR_BUDGET, FRAME_BUDGET_MS)
PLAIN_BARS = budget_style(None, None)


class StageRow(PanelRow):
    def __init__(self, stage: str) -> None:
        label, self.budgeted = {**STAGES, **EXTRA_STAGES}[stage]
        super().__init__(label, optional=1, id=f"stage-{stage}")
        self.stage = stage

    def update_from(self, history: list[float], stats: dict) -> None:
        numbers = []
        for q in ("p50", "p95", "p99"):
            v = stats.get(q)
            numbers.append((ms(v), LEVEL_STYLE[budget_level(v)] if self.budgeted else ""))
        self.history = history
        self.show(partial(spark, history, floor=FRAME_BUDGET_MS,
                          style=BUDGET_BARS if self.budgeted else PLAIN_BARS), numbers)


class LatencyPanel(SnapshotPanel):
    """Per-stage latency of the last 20 s, in ms; the border turns red when `processing` is over."""

    def compose(self) -> ComposeResult:
        yield HeaderRow("stage", "last 20 s", ["p50", "p95", "p99"], optional=1)
        for stage in STAGES:
            yield StageRow(stage)
        for stage in EXTRA_STAGES:
            row = StageRow(stage)
            row.display = False
            yield row

    def on_mount(self) -> None:
        self._drawn = None
        self.border_title = "Latency (ms)"
        self.border_subtitle = f"budget {FRAME_BUDGET_MS:.0f} ms/frame"

    def changes(self, snap: Snapshot) -> tuple:
        return (snap.frames_processed, snap.frames_played)  # a new frame

    def draw(self, snap: Snapshot) -> None:
        device = snap.info.output_latency_ms
        subtitle = f"budget {FRAME_BUDGET_MS:.0f} ms/frame"
        if device:  # the speaker device's own latency, after mic→spk
            subtitle += f" · speaker device +{device:.0f} ms"
        self.border_subtitle = subtitle
        for row in self.query(StageRow):
            history = snap.stage_history.get(row.stage, [])
            if row.stage in EXTRA_STAGES:
                row.display = bool(history)
            row.update_from(history, snap.stage_stats.get(row.stage, {}))
        level = budget_level(snap.stage_stats.get("processing", {}).get("p95"))
        self.set_class(level == "over", "-over")
        self.set_class(level == "near", "-near")
