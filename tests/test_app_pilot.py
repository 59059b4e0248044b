"""Pilot tests of the app on the REAL engine: demo model, the speech WAV as input, null output.

Run alone with `pytest -m pilot` (or `pytest tests/test_app_pilot.py`); most of each test's
time is loading the demo model and letting the WAV play.
"""

from __future__ import annotations

import asyncio
import json
import time

import psutil
import pytest
from textual.widgets import Input

from engine.cli.options import build_parser, run_config
from engine.session.runner import open_prepared
from tests.test_serve import serve  # noqa: F401  (the fixture: `serve --demo` on loopback)
from tui.app import MoshiApp
from tui.screens.error import ErrorScreen
from tui.screens.export import ExportScreen
from tui.widgets.diagnosis import DiagnosisView
from tui.widgets.latency import RemoteRow, StageRow
from tui.widgets.queues import QueueRow
from tui.widgets.status_bar import StatusBar
from tui.widgets.transcript import Paragraph

pytestmark = pytest.mark.pilot
pytest_plugins = ["conftest_models"]


def make_app(tmp_path, *argv: str) -> MoshiApp:
    args = build_parser().parse_args([*argv, "--session-dir", str(tmp_path / "session")])
    session = open_prepared(run_config(args))  # as run_app: the folder exists before the app starts
    return MoshiApp(lambda: session)


async def wait_for(pilot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        snap = pilot.app.snapshot
        if snap is not None and snap.error:
            raise AssertionError(f"engine error while waiting for {what}: {snap.error}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (state {snap and snap.state})")
        await pilot.pause(0.2)


async def quit_app(pilot, timeout: float = 30.0) -> None:
    """Press q and wait until the app has asked to exit: it does so once its shutdown worker
    (session stopped, files written) has ended."""
    app = pilot.app
    await pilot.press("q")
    deadline = time.monotonic() + timeout
    while app.return_code is None:
        assert time.monotonic() < deadline, "the app did not finish quitting"
        await asyncio.sleep(0.05)


def server_gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return proc.status() == psutil.STATUS_ZOMBIE or proc.ppid() != psutil.Process().pid


async def test_live_session_feeds_every_panel_and_exports(tmp_path, demo_cache, speech_wav):
    app = make_app(tmp_path, "--demo", "--input", str(speech_wav), "--output", "null")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.state == "live", 30,
                       "the session to go live")
        pid = app.snapshot.info.server["pid"]
        assert psutil.pid_exists(pid)

        # the transcript grows, word by word, as the model speaks
        await wait_for(pilot, lambda: app.transcript.count >= 3, 20, "three text tokens")
        first = app.transcript.count
        await wait_for(pilot, lambda: app.transcript.count > first, 15, "more text tokens")
        words = "".join(p.words for p in app.transcript.query(Paragraph))
        assert words == "".join(t.text for t in app.session.tel.tokens[: app.transcript.count])
        assert str(app.transcript.query(Paragraph).first().render()).startswith("[00:")

        # sparklines receive data, queue depths update
        await wait_for(pilot, lambda: app.snapshot.frames_processed >= 15, 20, "15 processed frames")
        # (the echo canceller's row stays hidden: no echo cancellation with a WAV in, null out)
        assert not app.query_one("#stage-aec", StageRow).display
        assert not any(row.display for row in app.query(RemoteRow))  # (a remote session's)
        for row in app.query(StageRow):
            if row.stage not in ("playback", "aec"):
                assert row.history, f"no data in the {row.stage} sparkline"
                assert row.numbers[0][0].strip() not in ("", "–")
                assert any(ch in str(row.render()) for ch in "▁▂▃▄▅▆▇█")
        history_before = {r.queue: len(r.history) for r in app.query(QueueRow)}
        await pilot.pause(1.0)
        for row in app.query(QueueRow):
            assert len(row.history) > history_before[row.queue], row.queue
            assert row.numbers[0][0].isdigit()

        # each key toggles its panel
        for key, selector in (("l", "#latency"), ("u", "#queues"), ("g", "#log")):
            before = app.query_one(selector).display
            await pilot.press(key)
            assert app.query_one(selector).display is not before, key
            await pilot.press(key)
            assert app.query_one(selector).display is before, key

        # export, both formats, with the session's real content (to names the engine's own
        # session files -- rewritten every 2 s -- do not use)
        folder = tmp_path / "session"
        await pilot.press("e")
        assert isinstance(app.screen, ExportScreen)
        path_input = app.screen.query_one("#export-path", Input)
        assert path_input.value == str(folder / "transcript.md")  # default: the session folder
        path_input.value = str(tmp_path / "export.md")
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.press("e")
        app.screen.query_one("#export-path", Input).value = str(tmp_path / "export.md")
        await pilot.click("#fmt-json")
        assert app.screen.query_one("#export-path", Input).value == str(tmp_path / "export.json")
        await pilot.click("#export")
        await app.workers.wait_for_complete()
        await pilot.pause()
        md = (tmp_path / "export.md").read_text()
        doc = json.loads((tmp_path / "export.json").read_text())
        first_para = app.transcript.query(Paragraph).first().words.strip()
        assert " ".join(first_para.split()[:3]) in md
        assert "model step" in md and "demo" in md
        tokens = doc["transcript"]["tokens"]
        assert len(tokens) >= first
        assert [t["text"] for t in tokens[:first]] == [t.text for t in app.session.tel.tokens[:first]]
        assert doc["stages_ms"]["model"]["n"] > 0
        assert doc["audio"]["output"]

        # quit: the session stops, its files are written, the server is gone
        await quit_app(pilot)
    assert app.return_code == 0
    assert server_gone(pid)
    assert (folder / "stats.json").exists()
    final = json.loads((folder / "transcript.json").read_text())
    assert len(final["transcript"]["tokens"]) >= len(tokens)


async def test_quit_while_loading_leaves_no_process(tmp_path, demo_cache, speech_wav):
    app = make_app(tmp_path, "--demo", "--input", str(speech_wav), "--output", "null")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.session.server is not None, 30, "the server process")
        pid = app.session.server.pid
        assert app.snapshot.state in ("loading", "warming up", "live")
        await quit_app(pilot)
    assert server_gone(pid)
    assert (tmp_path / "session" / "transcript.md").exists()


async def test_engine_error_shows_the_modal(tmp_path, demo_cache, speech_wav):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    app = make_app(tmp_path, "--moshi-weight", str(bad), "--mimi-weight", str(bad),
                   "--tokenizer", str(bad), "--input", str(speech_wav), "--output", "null")
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = time.monotonic() + 30
        while not isinstance(app.screen, ErrorScreen) and time.monotonic() < deadline:
            await pilot.pause(0.2)
        assert isinstance(app.screen, ErrorScreen)
        assert app.screen.message == app.snapshot.error
        await quit_app(pilot)
    assert app.return_code == app.session.exit_code != 0


async def test_server_killed_then_restarted_from_the_error_modal(tmp_path, demo_cache):
    app = make_app(tmp_path, "--demo", "--input", "silence", "--output", "null")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.state == "live", 30,
                       "the session to go live")
        pid = app.snapshot.info.server["pid"]
        psutil.Process(pid).kill()
        deadline = time.monotonic() + 10
        while not isinstance(app.screen, ErrorScreen) and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert isinstance(app.screen, ErrorScreen), "no error modal for a dead server"
        assert app.screen.can_restart
        before = app.session.snapshot().frames_processed
        await pilot.press("r")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = app.session.snapshot()
            if snap.state == "live" and snap.frames_processed > before + 5:
                break
            await pilot.pause(0.2)
        snap = app.session.snapshot()
        assert snap.state == "live" and snap.error is None
        assert snap.frames_processed > before + 5
        assert not isinstance(app.screen, ErrorScreen)
        new_pid = app.session.server.pid
        assert new_pid != pid
        await pilot.press("q")
    deadline = time.monotonic() + 5
    while not server_gone(new_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_gone(new_pid)


async def test_remote_session_shows_and_judges_what_it_measures(tmp_path, serve, speech_wav):  # noqa: F811
    """The app against `serve --demo` (which sends its step times): the latency panel has rows
    for the round trip, the end-to-end estimate and the server's step, and none for the local
    stages a remote session cannot time; the diagnosis judges those figures (never "0 frames
    processed so far" while audio flows); the status bar says where the server's model runs."""
    app = make_app(tmp_path, "--remote", serve.url, "--input", str(speech_wav), "--output", "null")
    async with app.run_test(size=(120, 40)) as pilot:
        rows = {row.stage: row for row in app.query(StageRow)}
        remote = {row.stage: row for row in app.query(RemoteRow)}

        def measured(row) -> bool:
            return row.display and row.history and row.numbers[0][0].strip() not in ("", "–")

        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.state == "live", 30,
                       "the remote session to go live")
        await wait_for(pilot, lambda: all(measured(remote[s]) for s in ("rtt", "e2e", "decode_work"))
                       and measured(rows["model"]) and measured(rows["encode"]), 30,
                       "the round trip, the end-to-end estimate and the server's step in the panel")
        assert [r.label for r in (remote["rtt"], remote["e2e"], rows["model"])] == [
            "rtt", "e2e est", "srv step"]
        for stage in ("decode", "processing", "playback", "aec"):  # not timed here: not shown
            assert not rows[stage].display, stage
        assert any(ch in str(remote["e2e"].render()) for ch in "▁▂▃▄▅▆▇█")

        view = app.query_one(DiagnosisView)
        await wait_for(pilot, lambda: app.verdicts and app.verdicts[0].rule != "measuring", 20,
                       "a diagnosis of the remote figures")
        shown = str(view.render())
        assert "processed so far" not in shown and "measuring" not in shown, shown

        device = "gpu" if "gpu" in str(app.snapshot.info.server["mlx_device"]) else "cpu"
        bar = app.query_one(StatusBar).describe().plain
        assert f"on the server's {device}" in bar, bar
        await quit_app(pilot)
    assert app.return_code == 0
