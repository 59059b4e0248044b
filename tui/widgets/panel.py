"""A panel drawn from the telemetry's snapshots, only when it shows something new."""

from __future__ import annotations

from textual.containers import Vertical
from textual.reactive import reactive

from engine.telemetry.collect import Snapshot


class SnapshotPanel(Vertical):
    """Draws each snapshot (`draw`) while displayed, when `changes(snap)` differs from the one
    drawn last; `redraw()` draws the current one at once (after being hidden, when updates
    were skipped)."""

    snapshot: reactive[Snapshot | None] = reactive(None)
    """The latest telemetry snapshot (bound to the app's)."""

    _drawn = None  # changes() of the snapshot drawn last

    def redraw(self) -> None:
        """Draw the current snapshot now."""
        self._drawn = None
        self.watch_snapshot(self.snapshot)

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None or not self.display:
            return
        key = self.changes(snap)
        if key == self._drawn:  # nothing new since the last draw
            return
        self._drawn = key
        self.draw(snap)

    def changes(self, snap: Snapshot) -> tuple:
        """What, changing, makes the panel worth drawing again."""
        raise NotImplementedError

    def draw(self, snap: Snapshot) -> None:
        raise NotImplementedError
