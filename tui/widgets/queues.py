"""Queues panel: depth and history of the four pipeline queues, and the loss counters."""

from __future__ import annotations

from functools import partial

from textual.app import ComposeResult

from engine.telemetry.collect import Snapshot
from engine.telemetry.stages import QUEUES

from .panel import SnapshotPanel
from .spark import spark
from .steady import SteadyStatic
from .table_row import HeaderRow, PanelRow

LABELS = {"input": "input", "c2s": "c→s", "s2c": "s→c", "output": "output"}
COUNTERS = {"underruns": "underruns", "drops_input": "drops in", "drops_output": "drops out",
            "overruns": "overruns", "trims_output": "trims"}


CALM = {"trims_output"}


class QueueRow(PanelRow):
    def __init__(self, queue: str) -> None:
        super().__init__(LABELS[queue], id=f"queue-{queue}")
        self.queue = queue

    def update_from(self, depth: int, history: list[int]) -> None:
        self.history = history
        self.show(partial(spark, history, floor=4),
                  [(str(depth), "bold"), (str(max(history, default=0)), "")])


class QueuesPanel(SnapshotPanel):
    """Frames waiting in each queue (sampled once per frame) over the last 20 s."""

    def compose(self) -> ComposeResult:
        yield HeaderRow("queue", "depth, last 20 s", ["now", "max"])
        for q in QUEUES:
            yield QueueRow(q)
        yield SteadyStatic(id="counters")

    def on_mount(self) -> None:
        self._drawn = None
        self.border_title = "Queues (frames)"

    def changes(self, snap: Snapshot) -> tuple:
        return (snap.frames_captured, snap.frames_processed, tuple(snap.counters.values()))

    def draw(self, snap: Snapshot) -> None:
        for row in self.query(QueueRow):
            row.update_from(snap.queues.get(row.queue, 0), snap.queue_history.get(row.queue, []))
        parts = []
        keys = list(COUNTERS) + [k for k in snap.counters if k.startswith("drops_") and k not in COUNTERS]
        for key in keys:
            label = COUNTERS.get(key) or key.replace("drops_", "drops ")
            n = snap.counters.get(key, 0)
            alarm = n and key not in CALM  # (trims are the jitter buffer working, not a loss)
            parts.append(f"[$text-error b]{label} {n}[/]" if alarm else f"[dim]{label} {n}[/]")
        self.query_one("#counters", SteadyStatic).set_content("  ".join(parts))
