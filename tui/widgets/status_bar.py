"""The two-line status bar: what runs (state, time, model, audio) and what needs attention."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from engine.telemetry import Snapshot

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

    snapshot: reactive[Snapshot | None] = reactive(None)
    """The latest telemetry snapshot."""
    lag: reactive[bool] = reactive(False)
    """Underruns happened in the last few seconds."""
    paused: reactive[bool] = reactive(False)
    """The display is frozen (the audio is not)."""
    alert: reactive[str] = reactive("")
    """The latest engine warning, while it is recent."""
    stopping: reactive[bool] = reactive(False)
    """Quit was requested and the session is shutting down."""

    def render(self) -> Content:
        s = self.snapshot
        if s is None:
            return Content.assemble(("● starting", "bold $text-warning"))
        state = "stopping" if self.stopping else s.state
        info = s.info
        sep = ("   ", "")
        line1 = Content.assemble(
            (f"● {state.upper()}", f"bold {STATE_STYLE.get(state, '')}"),
            "  ", (clock(s.elapsed_s), "bold"),
            sep, ("model ", "$text-muted"), info.get("model", "…"),
            sep, ("in ", "$text-muted"), str(info.get("input", "?")),
            ("  out ", "$text-muted"), str(info.get("output", "?")),
        )
        badges: list[tuple[str, str] | str] = []
        if self.lag:
            badges += [(f" ▲ LAG · {s.counters.get('underruns', 0)} underruns ", "bold $text-error on $error 30%"), " "]
        if s.muted:
            badges += [(" MIC MUTED ", "bold $text-warning on $warning 20%"), " "]
        if self.paused:
            badges += [(" DISPLAY PAUSED ", "bold $text-accent on $accent 20%"), " "]
        if self.alert:
            badges += [("⚠ ", "$text-warning"), (self.alert, "$text-warning")]
        if not badges:
            frames = f"{s.frames_processed} frames · {s.steps} steps" if s.frames_processed else ""
            badges = [(frames, "$text-muted")]
        return Content("\n").join([line1.truncate(max(1, self.size.width), ellipsis=True),
                                   Content.assemble(*badges).truncate(max(1, self.size.width), ellipsis=True)])
