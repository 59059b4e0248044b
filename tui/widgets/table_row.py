"""One line of a diagnostics panel -- `name | sparkline | numbers` -- drawn by a single widget.

A panel line made of five child widgets costs a layout pass per update; one widget that renders
its own line costs a repaint of one line, which is what an 8 Hz refresh should cost.
"""

from __future__ import annotations

from typing import Callable

from textual.content import Content
from textual.widget import Widget

NAME_W = 8
NUM_W = 6


class PanelRow(Widget):
    """`name  <spark fills the middle>  n1 n2 [n3]`; the optional columns need `wide_at` cells."""

    DEFAULT_CSS = """
    PanelRow { height: 1; width: 1fr; }
    """

    def __init__(self, name: str, *, optional: int = 0, wide_at: int = 60, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = name
        self.optional = optional  # how many of the last numeric columns are dropped when narrow
        self.wide_at = wide_at
        self.numbers: list[tuple[str, str]] = []  # (text, style) per numeric column
        self.draw_spark: Callable[[int], Content] | None = None  # width -> the sparkline

    def show(self, draw_spark: Callable[[int], Content], numbers: list[tuple[str, str]]) -> None:
        """New data: repaint this one line (no layout: the size never changes)."""
        self.draw_spark, self.numbers = draw_spark, numbers
        self.refresh()

    def visible_numbers(self) -> list[tuple[str, str]]:
        if self.optional and self.size.width < self.wide_at:
            return self.numbers[: len(self.numbers) - self.optional]
        return self.numbers

    def render(self) -> Content:
        nums = self.visible_numbers()
        spark_w = max(1, self.size.width - NAME_W - 2 - NUM_W * len(nums))
        name = (self.label[:NAME_W].ljust(NAME_W), "bold")
        middle = self.draw_spark(spark_w) if self.draw_spark else Content(" " * spark_w)
        cells = [(text.rjust(NUM_W)[-NUM_W:], style) for text, style in nums]
        return Content.assemble(name, " ", middle, " ", *cells)


class HeaderRow(PanelRow):
    """The column titles, following the same widths as the rows below."""

    def __init__(self, name: str, middle: str, numbers: list[str], **kw) -> None:
        super().__init__(name, **kw)
        self.middle = middle
        self.numbers = [(n, "") for n in numbers]

    def render(self) -> Content:
        nums = self.visible_numbers()
        spark_w = max(1, self.size.width - NAME_W - 2 - NUM_W * len(nums))
        text = (self.label.ljust(NAME_W) + " " + self.middle[:spark_w].ljust(spark_w) + " "
                + "".join(t.rjust(NUM_W) for t, _ in nums))
        return Content.styled(text, "$text-muted")
