"""Snapshot tests (pytest-textual-snapshot) of the app fed by the recorded telemetry of tests.replay.

Deterministic: the feed advances only when read, the app's timer never fires (refresh_hz is
tiny), the clock is frozen and the session folder is a relative path inside tmp_path.
Update with `pytest tests/test_app_snapshots.py --snapshot-update`, after looking at the diffs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.app import MoshiApp
from tests.replay import ReplaySession


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the log shows the (relative) session folder


def make_app(**replay) -> MoshiApp:
    return MoshiApp(lambda: ReplaySession(**replay), session_dir=Path("session"),
                    clock=lambda: 1000.0, refresh_hz=0.01)


def play(ticks: int | None = None):
    async def run_before(pilot) -> None:
        app = pilot.app
        n = 0
        while not app.session.finished and (ticks is None or n < ticks):
            app.poll()
            n += 1
        await pilot.pause()
        # a second pause lets the transcript anchor after its last layout
        await pilot.pause()

    return run_before


def test_main_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(), terminal_size=(80, 24))


def test_main_160x48(snap_compare):
    assert snap_compare(make_app(), run_before=play(), terminal_size=(160, 48))


def test_loading_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(ticks=13), terminal_size=(80, 24))


def test_latency_hidden_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["l"], terminal_size=(80, 24))


def test_queues_hidden_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["u"], terminal_size=(80, 24))


def test_log_shown_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["g"], terminal_size=(80, 24))


def test_all_panels_hidden_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["l", "u"], terminal_size=(80, 24))


def test_panels_toggled_160x48(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["u", "g"], terminal_size=(160, 48))


def test_error_modal_80x24(snap_compare):
    assert snap_compare(make_app(error_at_s=8.0), run_before=play(), terminal_size=(80, 24))


def test_error_modal_160x48(snap_compare):
    assert snap_compare(make_app(error_at_s=8.0), run_before=play(), terminal_size=(160, 48))


def test_help_80x24(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["f1"], terminal_size=(80, 24))


def test_export_modal_80x24(snap_compare):
    async def run_before(pilot):
        await play()(pilot)
        await pilot.press("e")
        pilot.app.screen.query_one("#export-path").cursor_blink = False
        await pilot.pause()

    assert snap_compare(make_app(), run_before=run_before, terminal_size=(80, 24))


def test_turns_shown_160x48(snap_compare):
    assert snap_compare(make_app(), run_before=play(), press=["t"], terminal_size=(160, 48))
