"""A modal that shows an engine error; closing it leaves the transcript and export usable."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ErrorScreen(ModalScreen[None]):
    # A modal hides the app's bindings: offer export and quit here too.
    BINDINGS = [
        Binding("escape,enter", "dismiss", "Close", show=False),
        Binding("e", "export", "Export", show=False),
        Binding("q", "app.quit", "Quit", show=False),
        Binding("r", "restart", "Restart", show=False),
    ]

    def __init__(self, message: str, *, title: str = "The session stopped with an error",
                 can_restart: bool = False) -> None:
        super().__init__(classes="dialog-screen")
        self.message = message
        self.title_text = title
        self.can_restart = can_restart

    def compose(self) -> ComposeResult:
        with Vertical(id="error-dialog", classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.message, id="error-message", markup=False)
            restart = "[b]r[/] to restart the model server, " if self.can_restart else ""
            yield Static(f"The transcript so far is kept: press {restart}[b]e[/] to export it, "
                         "[b]q[/] to quit (the session files are written on exit).",
                         classes="dialog-hint")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="error", id="close")

    def action_restart(self) -> None:
        if self.can_restart:
            self.dismiss()
            self.app.action_restart_server()

    def action_export(self) -> None:
        self.dismiss()
        self.app.action_export()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss()
