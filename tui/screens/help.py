"""F1: every key of the app, generated from its Bindings so it can never go stale."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", show=False)]

    def __init__(self, rows: list[tuple[str, str, str]], sampling: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.rows = rows  # (key, name, what it does)
        self.sampling = sampling  # how the model picks its tokens, in words

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog"):
            yield Label("Keys", classes="dialog-title")
            table: DataTable = DataTable(show_cursor=False, zebra_stripes=True, id="help-table")
            table.add_columns("key", "action", "what it does")
            for row in self.rows:
                table.add_row(*row)
            yield table
            yield Static("Panels show the last 20 s; p50/p95 are over that window. "
                         "The frame budget is 80 ms: a stage in red is slower than real time. "
                         "encode is the work left once a frame is complete: its first 40 ms "
                         "are encoded while the rest is captured.",
                         classes="dialog-hint")
            if self.sampling:
                yield Static(f"Sampling: {self.sampling} (--text-temperature, --text-topk, "
                             "--audio-temperature, --audio-topk, --seed)",
                             classes="dialog-hint", markup=False)
            yield Static("[b]Esc[/] close", classes="dialog-hint")
