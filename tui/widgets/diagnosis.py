"""The question this app exists for ("is the model slow, or the plumbing?") answered live:
engine.telemetry.diagnose's verdicts, worst first, in plain words."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive

from engine.telemetry.diagnose import Verdict

from .steady import SteadyStatic

MARK = {"ok": ("✓ ", "bold $text-success"), "warn": ("▲ ", "bold $text-warning"),
        "bad": ("✗ ", "bold $text-error")}


class DiagnosisView(SteadyStatic):
    """One line per problem (at most `max_lines`, more on wide screens); ✓ when all is well."""

    DEFAULT_CSS = """
    DiagnosisView { height: auto; padding: 0 1; }
    """

    verdicts: reactive[tuple[Verdict, ...]] = reactive(tuple, layout=False, repaint=False)
    """Verdicts of engine.telemetry.diagnose (bound to the app's)."""

    def watch_verdicts(self, verdicts: tuple[Verdict, ...]) -> None:
        self.set_content(self.describe(verdicts))

    def on_resize(self) -> None:  # how many verdicts fit depends on the width
        self.set_content(self.describe(self.verdicts))

    def describe(self, verdicts: tuple[Verdict, ...]) -> Content:
        if not verdicts:
            return Content.styled("diagnosis: waiting for the first frames", "$text-muted")
        problems = [v for v in verdicts if v.level != "ok"] or list(verdicts[:1])
        shown = problems[: 3 if self.size.width >= 60 else 1]
        lines = [Content.assemble(MARK[v.level], (v.text, "$text-muted" if v.level == "ok" else ""))
                 for v in shown]
        if len(problems) > len(shown):
            lines.append(Content.styled(f"  +{len(problems) - len(shown)} more in the log", "$text-muted"))
        return Content("\n").join(lines)
