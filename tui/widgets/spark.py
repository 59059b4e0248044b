"""A one-line sparkline on a fixed scale, each bar coloured by its own value.

Textual's `Sparkline` scales every series from its own min to its max, which turns 0.3 ms of
jitter into full-height bars and hides how a stage compares to the 80 ms frame budget.
Here the scale starts at zero, its top is at least `floor` (the budget for latency rows), and
`levels` colours each bar by the absolute value it stands for.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

BARS = "▁▂▃▄▅▆▇█"


def buckets(data: Sequence[float], width: int) -> list[float]:
    """At most `width` values: the max of each bucket (spikes stay visible), newest last."""
    n = len(data)
    if n <= width:
        return list(data)
    step = Fraction(n, width)
    return [max(data[int(step * i): int(step * (i + 1))] or [0.0]) for i in range(width)]


class Spark(Widget):
    """Sparkline of `data`, right-aligned so that it grows from the right like a chart recorder."""

    DEFAULT_CSS = """
    Spark { height: 1; width: 1fr; min-width: 4; }
    """

    data: reactive[list[float]] = reactive(list, layout=False)
    """The series, oldest first."""
    floor: reactive[float] = reactive(1.0)
    """The top of the scale is max(floor, max(data))."""

    def __init__(self, *, floor: float = 1.0, warn: float | None = None, over: float | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.floor = floor
        self.warn = warn  # bars at or above: warning colour
        self.over = over  # bars at or above: error colour

    def _style(self, value: float) -> str:
        if self.over is not None and value >= self.over:
            return "bold $text-error"
        if self.warn is not None and value >= self.warn:
            return "$text-warning"
        return "$text-accent" if self.warn is None else "$text-success"

    def render(self) -> Content:
        width = max(1, self.size.width)
        values = buckets(self.data or [], width)
        top = max([self.floor, *values]) or 1.0
        parts: list[tuple[str, str] | str] = [" " * (width - len(values))]
        run, run_style = "", ""
        for v in values:
            bar = BARS[min(len(BARS) - 1, max(0, int(v / top * len(BARS))))]
            style = self._style(v)
            if style != run_style and run:
                parts.append((run, run_style))
                run = ""
            run, run_style = run + bar, style
        if run:
            parts.append((run, run_style))
        return Content.assemble(*parts)
