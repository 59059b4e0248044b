"""The two-line status bar: what runs (state, time, model, audio) and what needs attention."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from engine.telemetry.collect import Snapshot
from engine.telemetry.info import SessionInfo

from ..format import clock

STATE_STYLE = {
    "starting": "$text-warning",
    "loading": "$text-warning",
    "warming up": "$text-warning",
    "live": "$text-success",
    "stopping": "$text-warning",
    "stopped": "$text-muted",
    "error": "$text-error",
}


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 2; dock: top; background: $panel; padding: 0 1; }
    """

    # The inputs change 8 times a second, what is shown about once a second (the clock): each
    # change recomputes the text, and only a different text repaints the bar.
    snapshot: reactive[Snapshot | None] = reactive(None, repaint=False)
    """The latest telemetry snapshot."""
    lag: reactive[bool] = reactive(False, repaint=False)
    """Underruns happened in the last few seconds."""
    paused: reactive[bool] = reactive(False, repaint=False)
    """The display is frozen (the audio is not)."""
    alert: reactive[str] = reactive("", repaint=False)
    """The latest engine warning, while it is recent."""
    stopping: reactive[bool] = reactive(False, repaint=False)
    """Quit was requested and the session is shutting down."""
    verdicts: reactive[tuple] = reactive(tuple, repaint=False)
    """engine.telemetry.diagnose verdicts, worst first: when the screen is not wide (no
    Diagnosis panel), the worst problem takes the place of the latest warning."""

    def __init__(self) -> None:
        super().__init__()
        self._content: Content | None = None

    def _changed(self) -> None:
        if not self.size.width:  # not laid out yet: render() will describe it
            return
        content = self.describe()
        old = self._content
        # Content.__eq__ compares the text only; a colour change must repaint too.
        if old is None or (content.plain, content.spans) != (old.plain, old.spans):
            self._content = content
            self.refresh()

    watch_snapshot = watch_lag = watch_paused = watch_alert = watch_stopping = watch_verdicts = _changed

    def on_resize(self) -> None:
        self._content = None  # truncation depends on the width
        self.refresh()

    def render(self) -> Content:
        if self._content is None:
            self._content = self.describe()
        return self._content

    def describe(self) -> Content:
        s = self.snapshot
        if s is None:
            return Content.assemble(("● starting", "bold $text-warning"))
        state = "stopping" if self.stopping else s.state
        info = s.info
        sep = ("   ", "")
        line1 = Content.assemble(
            (f"● {state.upper()}", f"bold {STATE_STYLE.get(state, '')}"),
            "  ", (clock(s.elapsed_s), "bold"),
            *answered(s),
            sep, ("model ", "$text-muted"), "…" if info.model is None else info.model,
            *where(info),
            *(((" · ", "$text-muted"), str(info.mode)) if info.mode == "translation" else ()),
            sep, ("in ", "$text-muted"), "?" if info.input is None else str(info.input),
            ("  out ", "$text-muted"), "?" if info.output is None else str(info.output),
            *((("  codec ", "$text-muted"), str(info.codec)) if info.codec else ()),
            *((("  echo canc. ", "$text-muted"), str(info.aec)) if info.aec is not None else ()),
        )
        badges: list[tuple[str, str] | str] = []
        if self.lag:
            badges += [(f" ▲ LAG · {s.counters.get('underruns', 0)} underruns ", "bold $text-error on $error 30%"), " "]
        if s.muted:
            badges += [(" MIC MUTED ", "bold $text-warning on $warning 20%"), " "]
        if self.paused:
            badges += [(" DISPLAY PAUSED ", "bold $text-accent on $accent 20%"), " "]
        problem = next((v for v in self.verdicts if v.level != "ok"), None)
        if problem is not None and not self.screen.has_class("-wide"):
            style = "$text-error" if problem.level == "bad" else "$text-warning"
            badges += [("✗ " if problem.level == "bad" else "▲ ", f"bold {style}"), (problem.text, style)]
        elif self.alert:
            badges += [("⚠ ", "$text-warning"), (self.alert, "$text-warning")]
        if not badges:
            frames = f"{s.frames_processed} frames · {s.steps} steps" if s.frames_processed else ""
            badges = [(frames, "$text-muted")]
        return Content("\n").join([line1.truncate(max(1, self.size.width), ellipsis=True),
                                   Content.assemble(*badges).truncate(max(1, self.size.width), ellipsis=True)])


def where(info: SessionInfo) -> tuple:
    """Where the model runs, once known: " on gpu" (the MLX device of the model process); for a
    remote session, the server's device as its metadata says (" on the server's gpu"), else
    " on the remote server"."""
    device = str(info.server.get("mlx_device") or "")
    kind = "gpu" if "gpu" in device else "cpu" if "cpu" in device else ""
    if info.remote_url is not None:
        return ((" on ", "$text-muted"), f"the server's {kind}" if kind else "the remote server")
    return ((" on ", "$text-muted"), kind) if kind else ()


def answered(s: Snapshot) -> tuple:
    """"  answer 820 ms": how long Moshi took to answer the user's last turn, once measured."""
    last = s.turns.last_response_ms if s.turns is not None else None
    if last is None:
        return ()
    return (("  answer ", "$text-muted"), (f"{last:.0f} ms" if last < 1000 else f"{last / 1000:.1f} s"))
