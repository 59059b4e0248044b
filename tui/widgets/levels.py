"""Microphone and speaker level meters (RMS in dBFS, -60..0)."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from engine.telemetry.collect import Snapshot

from ..format import db


class LevelMeter(Widget):
    """`mic ███████▌······· -23 dB`, green / yellow above -12 dB / red above -3 dB."""

    DEFAULT_CSS = """
    LevelMeter { height: 1; width: 1fr; }
    """

    snapshot: reactive[Snapshot | None] = reactive(None, repaint=False)
    """The latest telemetry snapshot (bound to the app's)."""

    def __init__(self, kind: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.kind = kind  # "input" (mic, can be muted) or "output" (speaker)
        self._shown: tuple[int, bool] | None = None

    def _reading(self) -> tuple[float, bool]:
        snap = self.snapshot
        level = 0.0 if snap is None else (snap.input_level if self.kind == "input" else snap.output_level)
        return level, snap is not None and snap.muted and self.kind == "input"

    def watch_snapshot(self) -> None:
        level, muted = self._reading()
        shown = (round(db(level)), muted)  # repaint only when the dB figure (and so the bar) moves
        if shown != self._shown:
            self._shown = shown
            self.refresh()

    def render(self) -> Content:
        level, muted = self._reading()
        head = "mic " if self.kind == "input" else "spk "
        tail = ("  MUTED", "bold $text-error") if muted else (f" {db(level):4.0f} dB", "$text-muted")
        bar_w = max(4, self.size.width - len(head) - len(tail[0]))
        full = 0 if muted else int((db(level) + 60.0) / 60.0 * bar_w)
        green = min(full, int(bar_w * 48 / 60))
        yellow = min(full, int(bar_w * 57 / 60)) - green
        red = full - green - yellow
        return Content.assemble(
            (head, "bold"),
            ("█" * green, "$text-success"),
            ("█" * yellow, "$text-warning"),
            ("█" * red, "$text-error"),
            ("·" * (bar_w - full), "$text-muted"),
            tail,
        )
