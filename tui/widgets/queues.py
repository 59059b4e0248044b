"""Queues panel: depth and history of the four pipeline queues, and the loss counters."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label, Static

from engine.telemetry import QUEUES, Snapshot

from .spark import Spark

LABELS = {"input": "input", "c2s": "c→s", "s2c": "s→c", "output": "output"}
COUNTERS = {"underruns": "underruns", "drops_input": "drops in", "drops_output": "drops out",
            "overruns": "overruns"}


class QueueRow(Horizontal):
    """name | history | depth now | max in the window."""

    def __init__(self, queue: str) -> None:
        super().__init__(id=f"queue-{queue}", classes="row")
        self.queue = queue

    def compose(self) -> ComposeResult:
        yield Label(LABELS[self.queue], classes="name")
        yield Spark(floor=4)
        yield Static(classes="num now")
        yield Static(classes="num peak")

    def show(self, depth: int, history: list[int]) -> None:
        self.query_one(Spark).data = history
        self.query_one(".now", Static).update(f"{depth:>3d}")
        self.query_one(".peak", Static).update(f"{max(history, default=0):>3d}")


class QueuesPanel(Vertical):
    """Frames waiting in each queue (sampled once per frame) over the last 20 s."""

    snapshot: reactive[Snapshot | None] = reactive(None)
    """The latest telemetry snapshot (bound to the app's)."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row header"):
            yield Label("queue", classes="name")
            yield Label("depth, last 20 s", classes="spark-head")
            yield Label("now", classes="num")
            yield Label("max", classes="num")
        for q in QUEUES:
            yield QueueRow(q)
        yield Static(id="counters")

    def on_mount(self) -> None:
        self.border_title = "Queues (frames)"

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None or not self.display:
            return
        for row in self.query(QueueRow):
            row.show(snap.queues.get(row.queue, 0), snap.queue_history.get(row.queue, []))
        parts = []
        keys = list(COUNTERS) + [k for k in snap.counters if k.startswith("drops_") and k not in COUNTERS]
        for key in keys:
            label = COUNTERS.get(key) or key.replace("drops_", "drops ")
            n = snap.counters.get(key, 0)
            parts.append(f"[$text-error b]{label} {n}[/]" if n else f"[dim]{label} {n}[/]")
        self.query_one("#counters", Static).update("  ".join(parts))
