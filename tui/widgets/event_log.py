"""The Log panel: a RichLog whose lines wrap to the panel as it is now.

RichLog renders each line once, at the width of the moment and never narrower than its
`min_width` (78 by default): in a 60-column side panel its lines would be cut on the right,
and after a resize keep the old wrapping.  This one keeps its entries and writes them again
when its width changes.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import events
from textual.widgets import RichLog


class EventLog(RichLog):
    def __init__(self, *, max_lines: int = 1000, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, markup=False, min_width=1)
        self._entries: deque[Text] = deque(maxlen=max_lines)
        self._width = 0

    def add(self, line: Text) -> None:
        self._entries.append(line)
        self.write(line)

    def on_resize(self, event: events.Resize) -> None:
        width = self.scrollable_content_region.width
        if width != self._width and self._width:
            self.clear()
            for line in self._entries:
                self.write(line)
        self._width = width
