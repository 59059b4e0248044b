"""What deserves attention between two snapshots: log lines, the LAG badge, alerts, a new error;
and what the display costs: its refresh rate, the UI thread's CPU.

Pure (no widgets): the app feeds it one snapshot per tick with the time, and shows the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.telemetry.collect import Snapshot
from engine.telemetry.diagnose import Diagnoser, Verdict, verdict_line, worst

from .format import new_items

LAG_HOLD_S = 3.0  # the LAG badge stays this long after the last underrun
ALERT_HOLD_S = 8.0  # a new engine warning stays in the status bar this long
WARNING_REPEAT_S = 5.0  # the same warning is logged at most this often
DIAGNOSE_EVERY_S = 0.5  # how often the plain-words diagnosis (engine.telemetry.diagnose) is redone
LEVEL_STYLE = {"ok": "green", "warn": "yellow", "bad": "bold red"}
BEHIND_HZ = 4  # while the diagnosis says the pipeline is short of CPU, the display yields some
BACK_UP_AFTER_S = 10.0  # ... and returns to its full rate after this long without a "bad" verdict


@dataclass
class Event:
    text: str
    style: str = ""


class Monitor:
    def __init__(self) -> None:
        self.lag = False  # underruns in the last LAG_HOLD_S
        self.alert = ""  # the latest warning, while recent
        self.live = False  # the session has gone live (once true, stays true)
        self.error: str | None = None  # the first error seen
        self.verdicts: tuple[Verdict, ...] = ()  # the diagnosis, worst first, while live
        self._diagnoser = Diagnoser()
        self._diagnosed_at: float | None = None
        self._rules: tuple[str, str] = ("", "")
        self._problem = False  # the last diagnosis logged was a problem
        self._last_state: tuple[str, str] | None = None
        self._warnings: list[str] = []
        self._warned_at: dict[str, float] = {}
        self._repeats: dict[str, int] = {}
        self._underruns = 0
        self._lag_until = 0.0
        self._alert_until = 0.0

    def observe(self, snap: Snapshot, now: float) -> list[Event]:
        events: list[Event] = []
        state = (snap.state, snap.state_detail)
        if state != self._last_state and snap.state != "error":
            detail = f" — {snap.state_detail}" if snap.state_detail else ""
            events.append(Event(f"{snap.state}{detail}", "green" if snap.state == "live" else ""))
        self._last_state = state
        if snap.state == "live" and not self.live:
            self.live = True
            if snap.startup_ms is not None:
                events.append(Event(f"first frame {snap.startup_ms / 1000:.1f} s after launch"))

        for w in new_items(self._warnings, snap.warnings):
            self.alert, self._alert_until = w, now + ALERT_HOLD_S
            last = self._warned_at.get(w)
            if last is not None and now - last < WARNING_REPEAT_S:  # a burst: count, log later
                self._repeats[w] = self._repeats.get(w, 0) + 1
                continue
            repeats = self._repeats.pop(w, 0)
            self._warned_at[w] = now
            events.append(Event(f"warning: {w}" + (f" (and {repeats} more times)" if repeats else ""),
                                "yellow"))
        self._warnings = list(snap.warnings)
        if self.alert and now >= self._alert_until:
            self.alert = ""

        underruns = snap.counters.get("underruns", 0)
        if underruns > self._underruns:
            if now >= self._lag_until:  # one line per episode, not per underrun
                events.append(Event(f"LAG: output underrun ({underruns} in total)", "bold red"))
            self._lag_until = now + LAG_HOLD_S
        self._underruns = underruns
        self.lag = now < self._lag_until

        if snap.error and self.error is None:
            self.error = snap.error
            events.append(Event(f"error: {snap.error}", "bold red"))

        # Paced by session time, not the wall clock: a recorded feed diagnoses the same way.
        t = snap.elapsed_s
        if snap.state == "live" and (self._diagnosed_at is None or t - self._diagnosed_at >= DIAGNOSE_EVERY_S):
            self._diagnosed_at = t
            self.verdicts = tuple(self._diagnoser.update(snap))
            level = worst(list(self.verdicts))
            rules = (level, self.verdicts[0].rule if self.verdicts else "")  # the headline only
            # A line when the headline problem changes (the others are on screen) -- problems and
            # the recovery from one, not the "measuring" of the first seconds.
            if rules != self._rules and (level != "ok" or self._problem):
                events.append(Event(f"diagnosis: {verdict_line(list(self.verdicts))}", LEVEL_STYLE[level]))
            self._rules, self._problem = rules, level != "ok"
        return events


class DisplayRate:
    """The display's refresh rate: its full rate, or BEHIND_HZ while the pipeline is behind (on
    a machine short of CPU, every millisecond the UI thread spends drawing, holding the GIL, is
    taken from the codec), back to full after BACK_UP_AFTER_S without a "bad" verdict."""

    def __init__(self, full_hz: float) -> None:
        self.full_hz = full_hz
        self.hz = full_hz
        self._bad_at: float | None = None

    @property
    def behind(self) -> bool:
        return self.hz < self.full_hz

    def update(self, verdicts, now: float) -> bool:
        """Follow the latest verdicts; true when the rate has changed."""
        if self.full_hz <= BEHIND_HZ:
            return False
        if any(v.level == "bad" for v in verdicts):
            self._bad_at = now
        behind = self._bad_at is not None and now - self._bad_at < BACK_UP_AFTER_S
        rate = BEHIND_HZ if behind else self.full_hz
        changed, self.hz = rate != self.hz, rate
        return changed


class ThreadCpu:
    """CPU time of the thread that calls `sample()` since `restart()`, in % of one core."""

    def __init__(self) -> None:
        self.percent: float | None = None
        self.restart()

    def restart(self) -> None:
        self._t0 = (time.thread_time(), time.monotonic())

    def sample(self) -> None:
        cpu0, wall0 = self._t0
        wall = time.monotonic() - wall0
        if wall > 0:
            self.percent = round(100.0 * (time.thread_time() - cpu0) / wall, 1)
