"""A Static that asks for a screen layout only when its wrapped height changes.

`Static.update()` re-lays out the whole screen by default; at 8 Hz, for text whose height
rarely changes (a paragraph gaining a word, a counter line), that is most of the app's CPU.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static


class SteadyStatic(Static):
    def __init__(self, content: str | Content = "", **kw) -> None:
        super().__init__(content, **kw)
        self._lines: int | None = None  # wrapped height at the last update
        self._last: object = None

    def set_content(self, content: str | Content) -> None:
        key = (content.plain, tuple(content.spans)) if isinstance(content, Content) else content
        if key == self._last:  # (Content.__eq__ compares the text only)
            return
        self._last = key
        if isinstance(content, str):
            content = Content.from_markup(content)
        width = self.content_size.width
        lines = content.get_height(self.styles, width) if width else None
        self.update(content, layout=lines is None or lines != self._lines)
        self._lines = lines
