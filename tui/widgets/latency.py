"""Latency panel: one sparkline per pipeline stage with its p50/p95 against the frame budget.

A remote session cannot time a frame end to end: its panel shows what it measures instead (the
Opus work, the network round trip, the web client's end-to-end estimate, the server's step when
the server sends it) and hides the local stages it has no figures for."""

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
# A remote session's own rows (engine.session.remote.session): the Opus decoder's work, the
# websocket round trip, the end-to-end estimate (which holds Moshi's own delay: no frame budget).
REMOTE_STAGES: dict[str, tuple[str, bool]] = {
    "decode_work": ("opus dec", True),
    "rtt": ("rtt", False),
    "e2e": ("e2e est", False),
}
# Of the local stages, those a remote session measures, under its own name; "model" is the
# server's step, shown only when the server sends it.
REMOTE_SHOWS = {"encode": "encode", "model": "srv step"}
LEVEL_STYLE = {"over": "bold $text-error", "near": "$text-warning", "ok": "", "none": "$text-muted"}
BUDGET_BARS = budget_style(FRAME_BUDGET_MS * NEAR_BUDGET, FRAME_BUDGET_MS)
PLAIN_BARS = budget_style(None, None)


class TimedRow(PanelRow):
    """A row of durations: their sparkline and p50/p95/p99 (in budget colours if `budgeted`)."""

    def __init__(self, stage: str, label: str, budgeted: bool, id: str) -> None:
        super().__init__(label, optional=1, id=id)
        self.stage, self.budgeted = stage, budgeted

    def update_from(self, history: list[float], stats: dict) -> None:
        numbers = []
        for q in ("p50", "p95", "p99"):
            v = stats.get(q)
            numbers.append((ms(v), LEVEL_STYLE[budget_level(v)] if self.budgeted else ""))
        self.history = history
        self.show(partial(spark, history, floor=FRAME_BUDGET_MS,
                          style=BUDGET_BARS if self.budgeted else PLAIN_BARS), numbers)


class StageRow(TimedRow):
    """A pipeline stage (engine.telemetry.stages) or the echo canceller's work."""

    def __init__(self, stage: str) -> None:
        label, budgeted = {**STAGES, **EXTRA_STAGES}[stage]
        super().__init__(stage, label, budgeted, id=f"stage-{stage}")
        self.local_label = label


class RemoteRow(TimedRow):
    """What only a remote session measures (REMOTE_STAGES); hidden in a local one."""

    def __init__(self, stage: str) -> None:
        label, budgeted = REMOTE_STAGES[stage]
        super().__init__(stage, label, budgeted, id=f"remote-{stage}")


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
        for stage in REMOTE_STAGES:
            row = RemoteRow(stage)
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
        remote = snap.info.remote_url is not None
        for row in self.query(TimedRow):
            history = snap.stage_history.get(row.stage, [])
            row.display = _shown(row, remote, bool(history))
            if isinstance(row, StageRow):
                row.label = REMOTE_SHOWS.get(row.stage, row.local_label) if remote else row.local_label
            row.update_from(history, snap.stage_stats.get(row.stage, {}))
        # the border follows the frame's processing; a remote session's, the server's step
        level = budget_level(snap.stage_stats.get("model" if remote else "processing", {}).get("p95"))
        self.set_class(level == "over", "-over")
        self.set_class(level == "near", "-near")


def _shown(row: TimedRow, remote: bool, measured: bool) -> bool:
    """Whether a row is shown: the local stages in a local session, the remote rows (and the
    server's step once it comes) in a remote one, the echo canceller's while it works."""
    if isinstance(row, RemoteRow):
        return remote
    if row.stage in EXTRA_STAGES or (remote and row.stage == "model"):
        return measured
    return not remote or row.stage in REMOTE_SHOWS
