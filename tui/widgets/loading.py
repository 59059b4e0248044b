"""What the conversation area shows before the first frame: the start-up steps as they happen."""

from __future__ import annotations

import re

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from engine.telemetry.collect import Snapshot

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _key(detail: str) -> str:
    """Progress updates of one step ("downloading 10%", "… 20%") share a key: digits removed."""
    return re.sub(r"[\d.,/%]+", "#", detail)


class LoadingView(Widget):
    """A checklist of start-up steps (download, quantize, load, warm up), the current one spinning."""

    DEFAULT_CSS = """
    LoadingView { height: auto; padding: 1 2; }
    """

    snapshot: reactive[Snapshot | None] = reactive(None)
    """The latest telemetry snapshot."""
    frame: reactive[int] = reactive(0)
    """Spinner frame (driven by the app clock, so frozen clocks freeze it)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps: list[str] = []
        self.failed: str | None = None

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None or self.failed:
            return
        if snap.state == "error":
            self.failed = snap.error or snap.state_detail or "error"
            self.refresh(layout=True)
            return
        detail = snap.state_detail
        if snap.state not in ("starting", "loading", "warming up") or not detail:
            return
        if self.steps and _key(self.steps[-1]) == _key(detail):
            self.steps[-1] = detail  # progress of the same step: same line
        elif not self.steps or self.steps[-1] != detail:
            self.steps.append(detail)
            self.refresh(layout=True)  # one more line (the reactive itself never re-lays out)

    def render(self) -> Content:
        lines = [Content.assemble(("Starting Moshi", "bold"), ("  (the model loads before the first frame)",
                                                                 "$text-muted"))]
        lines.append(Content(""))
        for i, step in enumerate(self.steps):
            last = i == len(self.steps) - 1
            if last and self.failed:
                mark = ("✗ ", "bold $text-error")
            elif last:
                mark = (SPINNER[self.frame % len(SPINNER)] + " ", "bold $text-warning")
            else:
                mark = ("✓ ", "$text-success")
            lines.append(Content.assemble(mark, (step, "" if last else "$text-muted")))
        if self.failed:
            lines += [Content(""), Content.assemble(("✗ ", "bold $text-error"), (self.failed, "$text-error"))]
        return Content("\n").join(lines)
