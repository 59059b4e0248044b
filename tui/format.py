"""Small pure helpers that turn telemetry numbers into short strings and colours."""

from __future__ import annotations

import math

from engine.audio import FRAME_MS

FRAME_BUDGET_MS = FRAME_MS  # every stage must keep up with one 80 ms frame
NEAR_BUDGET = 0.8  # a stage above 80 % of the budget is shown as a warning


def clock(seconds: float | None) -> str:
    """Session time as mm:ss (h:mm:ss past an hour)."""
    if seconds is None:
        return "--:--"
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def ms(value: float | None, width: int = 5) -> str:
    if value is None:
        return "–".rjust(width)
    if value >= 1000:
        return f"{value / 1000:.1f}s".rjust(width)
    return f"{value:.1f}".rjust(width) if value < 100 else f"{value:.0f}".rjust(width)


def budget_level(value: float | None, budget: float = FRAME_BUDGET_MS) -> str:
    """'ok', 'near' or 'over' for a duration against the frame budget."""
    if value is None:
        return "none"
    if value >= budget:
        return "over"
    if value >= budget * NEAR_BUDGET:
        return "near"
    return "ok"


def db(rms: float) -> float:
    """RMS (0..1) in dBFS, floored at -60."""
    return -60.0 if rms <= 1e-6 else max(-60.0, 20.0 * math.log10(rms))


def new_items(previous: list[str], current: list[str]) -> list[str]:
    """Entries of a bounded, append-only list that were not in the previous copy.

    The engine keeps its last few warnings in a deque; when it is full a new warning pushes the
    oldest out, so the new entries are what follows the longest overlap of old tail / new head.
    """
    for k in range(min(len(previous), len(current)), -1, -1):
        if previous[len(previous) - k:] == current[:k]:
            return current[k:]
    return list(current)
