"""The conversation: Moshi's words as they stream, in timed paragraphs, following the newest text.

Only the last paragraph is re-rendered when words arrive. Once the text overflows, the view is
anchored to the bottom (`Widget.anchor`): scrolling up releases the anchor so the text stays put
while reading, and scrolling back to the end re-anchors it.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from engine.telemetry.transcript import PARAGRAPH_GAP_MS, mmss, segment_label, starts_paragraph

from .steady import SteadyStatic


class TokenLike(Protocol):
    text: str
    t_ms: float
    segment: int
    segment_reason: str


class Paragraph(SteadyStatic):
    DEFAULT_CSS = """
    Paragraph { margin-bottom: 1; }
    """

    def __init__(self, t_ms: float, segment_break: bool, segment: int, reason: str = "") -> None:
        super().__init__(classes="para")
        self.t_ms = t_ms
        self.segment_break = segment_break
        self.segment = segment
        self.reason = reason
        self.words = ""

    def add(self, text: str) -> None:
        self.words += text
        head = []
        if self.segment_break:
            head.append((f"── {segment_label(self.reason, self.segment)} ──\n",
                         "$text-warning italic"))
        self.set_content(Content.assemble(*head, (f"[{mmss(self.t_ms)}] ", "bold $text-accent"),
                                          self.words.lstrip()))


class TranscriptView(VerticalScroll, can_focus=True):
    """Append-only transcript; `add_tokens` takes the new engine tokens since the last call.

    Keeps the last `max_paragraphs` on screen (layout cost grows with them); the whole text is
    in the session files and the exports.
    """

    def __init__(self, *, gap_ms: float = PARAGRAPH_GAP_MS, max_paragraphs: int = 400,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.gap_ms = gap_ms
        self.max_paragraphs = max_paragraphs
        self.count = 0  # tokens shown so far
        self._prev: tuple[float, int] | None = None
        self._current: Paragraph | None = None

    def compose(self):
        yield Static("Moshi's words will appear here as it speaks.", id="placeholder")

    @property
    def following(self) -> bool:
        """Is the view following new text (not scrolled up by the user)?"""
        return not self.is_anchored or not self._anchor_released

    def _anchor_when_full(self) -> None:
        # Anchored before it overflows, Textual bottom-aligns the text (chat style); a transcript
        # reads better from the top, so anchor only once there is something to scroll.
        if not self.is_anchored and self.max_scroll_y > 0:
            self.anchor()

    def on_resize(self) -> None:  # narrower: the text may overflow now
        if not self.is_anchored:
            self.call_after_refresh(self._anchor_when_full)

    def add_tokens(self, tokens: Iterable[TokenLike]) -> None:
        new_paras: list[Paragraph] = []
        pending: dict[Paragraph, str] = {}
        for tok in tokens:
            self.count += 1
            prev_t, prev_seg = self._prev if self._prev else (None, 0)
            length = len(self._current.words) + len(pending.get(self._current, "")) if self._current else 0
            if self._current is None or starts_paragraph(prev_t, prev_seg, tok.t_ms, tok.segment, self.gap_ms,
                                                         length=length, text=tok.text):
                self._current = Paragraph(tok.t_ms, prev_t is not None and tok.segment != prev_seg,
                                          tok.segment, tok.segment_reason)
                new_paras.append(self._current)
            pending[self._current] = pending.get(self._current, "") + tok.text
            self._prev = (tok.t_ms, tok.segment)
        for para, text in pending.items():
            para.add(text)
        if new_paras:
            self.query("#placeholder").remove()
            shown = list(self.query(Paragraph))
            extra = len(shown) + len(new_paras) - self.max_paragraphs
            if extra > 0:
                for old in shown[:extra]:
                    old.remove()
                if not self.query("#trimmed"):
                    self.mount(Static("(earlier text: in the session files and exports)", id="trimmed"),
                               before=0)
            self.mount_all(new_paras[-self.max_paragraphs:])
        if not self.is_anchored:
            self.call_after_refresh(self._anchor_when_full)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.border_subtitle = "" if self.following else "scrolled up · End to follow"
