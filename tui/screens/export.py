"""The export modal: it only chooses a path and a format; the session's runner writes the file
(`engine.session.runner.SessionRunner.export`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from engine.telemetry.transcript import EXTENSIONS


@dataclass(frozen=True)
class ExportChoice:
    path: Path
    fmt: str  # "markdown" | "json"


class ExportScreen(ModalScreen[ExportChoice | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", show=False)]

    def __init__(self, folder: Path, *, fmt: str = "markdown") -> None:
        super().__init__(classes="dialog-screen")
        self.folder = folder
        self.fmt = fmt

    def compose(self) -> ComposeResult:
        with Vertical(id="export-dialog", classes="dialog"):
            yield Label("Export the transcript", classes="dialog-title")
            yield Label("File")
            yield Input(str(self.folder / f"transcript{EXTENSIONS[self.fmt]}"), id="export-path")
            yield Label("Format")
            with RadioSet(id="export-format"):
                yield RadioButton("Markdown — readable transcript + latency summary", value=self.fmt == "markdown",
                                  id="fmt-markdown")
                yield RadioButton("JSON — tokens with timestamps, percentiles, counters, model and devices",
                                  value=self.fmt == "json", id="fmt-json")
            yield Static("", id="export-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", variant="primary", id="export")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    @on(RadioSet.Changed)
    def _format_changed(self, event: RadioSet.Changed) -> None:
        fmt = "json" if event.pressed.id == "fmt-json" else "markdown"
        path_input = self.query_one("#export-path", Input)
        old_ext = EXTENSIONS[self.fmt]
        if path_input.value.endswith(old_ext):  # follow the format unless the user chose a name
            path_input.value = path_input.value[: -len(old_ext)] + EXTENSIONS[fmt]
        self.fmt = fmt

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#export")
    @on(Input.Submitted, "#export-path")
    def _submit(self) -> None:
        raw = self.query_one("#export-path", Input).value.strip()
        if not raw:
            self.query_one("#export-error", Static).update("Enter a file name.")
            return
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.folder / path
        if path.is_dir():
            path = path / f"transcript{EXTENSIONS[self.fmt]}"
        if not path.parent.is_dir():
            self.query_one("#export-error", Static).update(f"Folder {path.parent} does not exist.")
            return
        self.dismiss(ExportChoice(path, self.fmt))
