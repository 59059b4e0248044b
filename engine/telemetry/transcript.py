"""How a transcript is laid out: timed paragraphs, time markers, segment labels, and the
formats it is exported in.  Pure functions of the tokens (text, t_ms, segment), shared by the
exports (engine.files.export) and the app's live transcript, so both break paragraphs and put
markers at the same places."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("markdown", "json")
EXTENSIONS = {"markdown": ".md", "json": ".json"}
PARAGRAPH_GAP_MS = 1500.0  # silence that starts a new paragraph (and a time marker)
PARAGRAPH_MAX_CHARS = 400  # past this, the next word starts a new paragraph


@dataclass
class Paragraph:
    t_ms: float  # time of its first token, since the session start
    segment: int
    text: str
    new_segment: bool = False  # the first paragraph after a context reset or a restart
    segment_reason: str = ""  # "context" or "restart"

    @property
    def segment_label(self) -> str:
        return segment_label(self.segment_reason, self.segment)


def segment_label(reason: str, segment: int) -> str:
    """The marker a new segment gets in the transcript, saying why it began."""
    why = "model restarted" if reason == "restart" else "context full"
    return f"{why}: segment {segment + 1}"


def starts_paragraph(prev_t_ms: float | None, prev_segment: int, t_ms: float, segment: int,
                     gap_ms: float = PARAGRAPH_GAP_MS, *, length: int = 0, text: str = " ") -> bool:
    """A token opens a paragraph when it is the first, follows a silence, starts a segment, or
    starts a word once the paragraph holds PARAGRAPH_MAX_CHARS (a monologue still gets markers)."""
    return (prev_t_ms is None or segment != prev_segment or t_ms - prev_t_ms >= gap_ms
            or (length >= PARAGRAPH_MAX_CHARS and text[:1].isspace()))


def paragraphs(tokens: list[dict], gap_ms: float = PARAGRAPH_GAP_MS) -> list[Paragraph]:
    """Group transcript tokens ({text, t_ms, segment}) into timed paragraphs."""
    out: list[Paragraph] = []
    prev_t, prev_seg = None, 0
    for tok in tokens:
        seg = tok.get("segment", 0)
        length = len(out[-1].text) if out else 0
        if starts_paragraph(prev_t, prev_seg, tok["t_ms"], seg, gap_ms, length=length, text=tok["text"]):
            out.append(Paragraph(tok["t_ms"], seg, "", prev_t is not None and seg != prev_seg,
                                 tok.get("segment_reason", "")))
        out[-1].text += tok["text"]
        prev_t, prev_seg = tok["t_ms"], seg
    for p in out:
        p.text = " ".join(p.text.split())
    return [p for p in out if p.text]


def mmss(ms: float | None) -> str:
    """A time marker: mm:ss, or h:mm:ss past the hour."""
    if ms is None:
        return "--:--"
    s = max(0, int(ms // 1000))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
