"""Sparklines on a fixed scale, each bar coloured by its own value.

Textual's `Sparkline` scales every series from its own min to its max, which turns 0.3 ms of
jitter into full-height bars and hides how a stage compares to the 80 ms frame budget.
Here the scale starts at zero, its top is at least `floor` (the budget for latency rows), and
each bar is coloured by the absolute value it stands for.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from textual.content import Content

BARS = "▁▂▃▄▅▆▇█"


def buckets(data: Sequence[float], width: int) -> list[float]:
    """At most `width` values: the max of each bucket (spikes stay visible), newest last."""
    n = len(data)
    if n <= width:
        return list(data)
    return [max(data[i * n // width: (i + 1) * n // width]) for i in range(width)]


def budget_style(warn: float | None, over: float | None) -> Callable[[float], str]:
    """Style of a bar: error at/above `over`, warning at/above `warn`, else success (or accent)."""

    def style(value: float) -> str:
        if over is not None and value >= over:
            return "bold $text-error"
        if warn is not None and value >= warn:
            return "$text-warning"
        return "$text-accent" if warn is None else "$text-success"

    return style


def spark(data: Sequence[float], width: int, *, floor: float = 1.0,
          style: Callable[[float], str] = budget_style(None, None)) -> Content:
    """`width` cells of bars, right-aligned so the chart grows from the right like a recorder."""
    width = max(1, width)
    values = buckets(data, width)
    top = max([floor, *values]) or 1.0
    parts: list[tuple[str, str] | str] = [" " * (width - len(values))]
    run, run_style = "", ""
    for v in values:
        bar = BARS[min(len(BARS) - 1, max(0, math.ceil(v / top * len(BARS)) - 1))]  # ▄ = half
        st = style(v)
        if st != run_style and run:
            parts.append((run, run_style))
            run = ""
        run, run_style = run + bar, st
    if run:
        parts.append((run, run_style))
    return Content.assemble(*parts)
