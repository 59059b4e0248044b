"""The app on a recorded telemetry feed (tests.replay): keys, panels, transcript, badges, export, quit.

Fast and deterministic: the feed advances one tick per snapshot read, the app's own timer is
slowed to never fire, and the clock is a variable the tests move.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, RichLog

from engine.telemetry.collect import Token
from tui.app import MoshiApp
from tests.replay import ReplaySession
from tui.screens.error import ErrorScreen
from tui.screens.export import ExportScreen
from tui.screens.help import HelpScreen
from tui.widgets.latency import LatencyPanel, StageRow
from tui.widgets.queues import QueueRow
from tui.widgets.status_bar import StatusBar
from tui.widgets.transcript import Paragraph, TranscriptView


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_app(tmp_path: Path, clock: Clock | None = None, **replay) -> MoshiApp:
    return MoshiApp(lambda: ReplaySession(**replay), session_dir=tmp_path / "session",
                    clock=clock or Clock(), refresh_hz=0.01)


async def play(pilot, ticks: int | None = None) -> None:
    app = pilot.app
    n = 0
    while not app.session.finished and (ticks is None or n < ticks):
        app.poll()
        n += 1
    await pilot.pause()


def log_text(app: MoshiApp) -> str:
    return "\n".join(line.text for line in app.query_one("#log", RichLog).lines)


def status_text(app: MoshiApp) -> str:
    return str(app.query_one(StatusBar).render())


async def test_loading_then_live_transcript_and_panels(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot, ticks=5)
        assert app.snapshot.state == "loading"
        assert app.query_one("#loading").display and len(app.loading.steps) >= 2
        assert not app.screen.has_class("-live")
        await play(pilot)
        assert app.screen.has_class("-live")
        assert not app.query_one("#loading").region.height  # hidden once live
        paras = list(app.transcript.query(Paragraph))
        assert [p.words.split()[0] for p in paras] == ["Hello,", "That", "Latency", "Sure."]
        assert [p.segment_break for p in paras] == [False, False, False, True]
        first = str(paras[0].render())
        assert first.startswith("[00:00] Hello, I'm Moshi.")
        assert app.transcript.count == len(app.session.tel.tokens)
        for row in app.query(StageRow):
            if row.stage not in ("aec", "vad"):  # (shown only while measured)
                assert len(row.history) == 250  # a full 20 s window
        assert not app.query_one("#stage-aec", StageRow).display
        model = app.query_one("#stage-model", StageRow)
        assert model.numbers[0][0].strip() == "14.3"
        assert str(model.render()).split()[-3:] == ["14.3", "16.6", "17.3"]  # p50 p95 p99
        assert app.query_one("#queue-output", QueueRow).numbers[0][0] in {"0", "1", "2"}
        assert len(app.query_one("#queue-input", QueueRow).history) == 250
        assert "underruns 2" in str(app.query_one("#counters").render())


async def test_latency_panel_names_the_speaker_device_latency(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot, ticks=60)
        panel = app.query_one(LatencyPanel)
        assert panel.border_subtitle == "budget 80 ms/frame"  # a file or null speaker: none
        app.session.tel.info.output_latency_ms = 40.0  # measured from the device's DAC times
        await play(pilot, ticks=3)
        assert panel.border_subtitle == "budget 80 ms/frame · speaker device +40 ms"


async def test_panel_keys_toggle_and_side_column_goes_when_empty(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await play(pilot)
        side, latency, queues, log = (app.query_one(s) for s in ("#side", "#latency", "#queues", "#log"))
        assert latency.display and queues.display and not log.display  # log off below 120 columns
        await pilot.press("l")
        assert not latency.display and not app.show_latency
        await pilot.press("u")
        assert not queues.display
        assert not side.display  # nothing left to show: the conversation takes the width
        await pilot.press("g")
        assert log.display and side.display
        await pilot.press("l", "u", "g")
        assert latency.display and queues.display and not log.display
        # a panel that was hidden shows current data as soon as it comes back
        assert app.query_one("#stage-encode", StageRow).numbers[1][0].strip() not in ("", "–")


async def test_wide_screen_shows_the_log_and_p99(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot)
        assert app.screen.has_class("-wide")
        assert app.query_one("#log").display
        assert len(str(app.query_one("#stage-encode", StageRow).render()).split()) == 5  # with p99
        text = log_text(app)
        for needle in ("loading — resolving model files", "live", "warning: input dropped",
                       "LAG: output underrun", "context full"):
            assert needle in text


async def test_log_lines_wrap_to_the_panel_and_rewrap_on_resize(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        log = app.query_one("#log", RichLog)
        long = "diagnosis: " + " ".join(f"word{i}" for i in range(40))
        app.log_event(long)
        await pilot.pause()

        def fits() -> bool:
            width = log.scrollable_content_region.width
            return all(line.cell_length <= width for line in log.lines)

        assert fits(), [line.cell_length for line in log.lines]
        assert "word39" in log_text(app)  # nothing cut off on the right
        narrow_lines = len(log.lines)
        await pilot.resize_terminal(160, 40)
        await pilot.pause()
        assert fits() and len(log.lines) < narrow_lines  # written again at the new width
        assert "word39" in log_text(app) and "live" in log_text(app)


async def test_narrow_and_stacked_layouts(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot)
        assert app.screen.has_class("-narrow")
        assert len(str(app.query_one("#stage-encode", StageRow).render()).split()) == 4  # no p99
        side, conv = app.query_one("#side"), app.query_one("#conversation")
        assert side.region.x > conv.region.x  # side by side
        assert conv.region.width >= 30
        await pilot.resize_terminal(60, 40)
        await pilot.pause()
        assert app.screen.has_class("-stacked")
        assert side.region.y > conv.region.y  # stacked below


async def test_lag_badge_follows_underruns_and_clears(tmp_path):
    clock = Clock()
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)  # underruns happen at 12.6 s
        assert app.lag
        assert "LAG · 2 underruns" in status_text(app)
        assert "context full" in status_text(app)  # the latest warning
        clock.t += 10
        app.poll()
        await pilot.pause()
        assert not app.lag and "LAG" not in status_text(app)
        assert app.alert == ""


async def test_repeated_warnings_are_logged_once(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        for i in range(6):  # an alternating pair, as a struggling pipeline produces
            app.session.tel.warn("input dropped: A" if i % 2 else "output dropped: B")
            app.poll()
        text = log_text(app)
        assert text.count("output dropped: B") == 1 and text.count("input dropped: A") == 1


async def test_mute_and_pause(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot, ticks=40)
        await pilot.press("m")
        app.poll()
        await pilot.pause()
        assert app.session.tel.muted and app.snapshot.muted
        assert "MIC MUTED" in status_text(app)
        assert "MUTED" in str(app.query_one("#mic").render())
        await pilot.press("m")
        assert not app.session.tel.muted

        await pilot.press("p")
        frozen, words = app.snapshot, app.transcript.count
        await play(pilot, ticks=30)
        assert app.snapshot is frozen and app.transcript.count == words  # display frozen
        assert app.session.tel.frames_captured > frozen.frames_captured  # session is not
        assert "DISPLAY PAUSED" in status_text(app)
        await pilot.press("p")
        app.poll()
        assert app.snapshot is not frozen and app.transcript.count == len(app.session.tel.tokens)


async def test_the_a_key_toggles_echo_cancellation(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot, ticks=20)
        await pilot.press("a")
        app.poll()
        await pilot.pause()
        assert app.session.aec is not None and app.session.aec.enabled
        assert "echo canc. on" in status_text(app)
        assert "echo cancellation on" in log_text(app)
        await pilot.press("a")
        app.poll()
        await pilot.pause()
        assert not app.session.aec.enabled and "echo canc. off" in status_text(app)


async def test_transcript_follows_until_the_user_scrolls_up(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        view: TranscriptView = app.transcript

        def say(n: int, t0: float) -> None:  # n paragraphs, 3 s apart
            view.add_tokens([Token(f" line {i} " + "word " * 12, 1, i, t0 + 3000 * i) for i in range(n)])

        say(8, 0)
        await pilot.pause()
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y
        view.scroll_home(animate=False)  # the user reads back
        await pilot.pause()
        say(3, 60_000)
        await pilot.pause()
        assert view.scroll_y == 0 and not view.following
        assert "End to follow" in view.border_subtitle
        view.scroll_end(animate=False)  # back at the bottom: follows again
        await pilot.pause()
        say(3, 120_000)
        await pilot.pause()
        assert view.following and view.scroll_y == view.max_scroll_y
        assert view.border_subtitle == ""


async def test_export_modal_writes_both_formats(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        await pilot.press("e")
        assert isinstance(app.screen, ExportScreen)
        path_input = app.screen.query_one("#export-path", Input)
        assert path_input.value == str(tmp_path / "session" / "transcript.md")
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        md = (tmp_path / "session" / "transcript.md").read_text()
        assert "**[00:00]** Hello, I'm Moshi. How are you doing today?" in md
        assert "| model step |" in md

        await pilot.press("e")
        await pilot.click("#fmt-json")
        assert app.screen.query_one("#export-path", Input).value.endswith("transcript.json")
        await pilot.click("#export")
        await app.workers.wait_for_complete()
        await pilot.pause()
        doc = json.loads((tmp_path / "session" / "transcript.json").read_text())
        assert len(doc["transcript"]["tokens"]) == len(app.session.tel.tokens)
        assert doc["counters"]["underruns"] == 2
        assert doc["model"]["model"].startswith("demo")
        assert "exported:" in log_text(app)


async def test_export_cancel_and_bad_folder(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot, ticks=30)
        await pilot.press("e", "escape")
        assert not isinstance(app.screen, ExportScreen)
        await pilot.press("e")
        app.screen.query_one("#export-path", Input).value = str(tmp_path / "missing" / "x.md")
        await pilot.press("enter")
        assert isinstance(app.screen, ExportScreen)  # stays open with a message
        assert "does not exist" in str(app.screen.query_one("#export-error").render())


async def test_export_failure_shows_the_error_modal(tmp_path, monkeypatch):
    import engine.session.runner as runner_module

    def failing_export(stats, path, fmt):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner_module, "export", failing_export)
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot, ticks=30)
        await pilot.press("e", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ErrorScreen)
        assert "No space left" in app.screen.message


async def test_engine_error_modal_keeps_transcript_and_export(tmp_path):
    app = make_app(tmp_path, error_at_s=8.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        assert isinstance(app.screen, ErrorScreen)
        assert "server process died" in app.screen.message
        words = app.transcript.count
        assert words > 0
        await pilot.press("escape")
        assert not isinstance(app.screen, ErrorScreen)
        app.poll()
        await pilot.pause()
        assert not isinstance(app.screen, ErrorScreen)  # shown once
        assert "ERROR" in status_text(app)
        await pilot.press("e", "enter")
        await app.workers.wait_for_complete()
        md = (tmp_path / "session" / "transcript.md").read_text()
        assert "Hello, I'm Moshi." in md and "server process died" in md
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert app.return_code == 1


async def test_quit_from_the_error_modal(tmp_path):
    app = make_app(tmp_path, error_at_s=3.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        assert isinstance(app.screen, ErrorScreen)
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert app.return_code == 1
    assert (tmp_path / "session" / "transcript.md").exists()


async def test_quit_stops_the_session_and_writes_its_files(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert app.return_code == 0
    assert app.session.stopped
    folder = tmp_path / "session"
    assert sorted(p.name for p in app.runner.saved_files) == ["stats.json", "transcript.json", "transcript.md"]
    assert "Hello, I'm Moshi." in (folder / "transcript.md").read_text()
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["started_at"] and stats["frames"]["processed"] > 200


async def test_end_of_input_stops_but_keeps_the_app(tmp_path):
    app = make_app(tmp_path, end="stop", live_seconds=6.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        app.poll()
        await app.workers.wait_for_complete()
        app.poll()
        await pilot.pause()
        assert app.session.stopped and app.snapshot.state == "stopped"
        assert "session ended: end of input" in log_text(app)
        assert app.is_running


async def test_help_lists_every_key(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = [row[0] for row in app.screen.rows]
        for key in ("l", "u", "t", "g", "m", "a", "p", "e", "f8", "f1", "q"):
            assert key in keys
        # and how the model samples (Kyutai's defaults here)
        hints = " ".join(str(w.render()) for w in app.screen.query(".dialog-hint"))
        assert "Sampling: text t=0.8 top-p 0.95, audio t=0.8 top-p 0.95" in hints
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_f8_saves_a_screenshot_in_the_session_folder(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot, ticks=40)
        await pilot.press("f8")
        await pilot.pause()
        shots = list((tmp_path / "session").glob("*.svg"))
        assert len(shots) == 1 and "<svg" in shots[0].read_text()[:200]


@pytest.mark.parametrize("value,level", [(10.0, "ok"), (70.0, "near"), (80.0, "over"), (None, "none")])
def test_budget_levels(value, level):
    from tui.format import budget_level

    assert budget_level(value) == level


def test_new_items_of_a_bounded_list():
    from tui.format import new_items

    assert new_items([], ["a"]) == ["a"]
    assert new_items(["a"], ["a"]) == []
    assert new_items(["a", "b"], ["b", "c"]) == ["c"]  # full deque: oldest fell out
    assert new_items(["a", "b"], ["a", "b", "a"]) == ["a"]
    assert new_items(["x"], ["y", "z"]) == ["y", "z"]


def test_spark_buckets_keep_spikes():
    from tui.widgets.spark import buckets

    assert buckets([1, 2, 3], 5) == [1, 2, 3]
    assert buckets([1, 9, 1, 1, 1, 1], 3) == [9, 1, 1]


def test_spark_scale_and_colours():
    from tui.widgets.spark import budget_style, spark

    line = spark([0.0, 40.0, 80.0, 160.0], 6, floor=80.0, style=budget_style(64.0, 80.0))
    assert line.plain == "  ▁▂▄█"  # right-aligned, scale 0..max(floor, data), ▄ = half
    styles = {str(span.style) for span in line.spans}
    assert {"$text-success", "bold $text-error"} <= styles
    assert spark([1.0, 1.0], 3, floor=80.0).plain == " ▁▁"  # small values stay small


async def test_latency_rows_are_the_issue_stages():
    from textual.app import App

    from tui.widgets.latency import STAGES, StageRow

    assert list(STAGES) == ["encode", "model", "decode", "processing", "playback"]

    class PanelOnly(App):
        def compose(self):
            yield LatencyPanel()

    async with PanelOnly().run_test(size=(100, 12)) as pilot:
        # the panel shows one row per stage, in that order
        assert [row.stage for row in pilot.app.query(StageRow) if row.display] == list(STAGES)


def test_monitor_lag_episodes_and_first_error():
    import dataclasses

    from tui.monitor import LAG_HOLD_S, Monitor

    base = ReplaySession().snapshot()
    snap = lambda **kw: dataclasses.replace(base, **kw)  # noqa: E731
    m = Monitor()
    m.observe(snap(counters={"underruns": 0}), 0.0)
    assert not m.lag
    events = m.observe(snap(counters={"underruns": 1}), 1.0)
    assert m.lag and [e.text for e in events] == ["LAG: output underrun (1 in total)"]
    assert m.observe(snap(counters={"underruns": 3}), 2.0) == []  # same episode: no new line
    m.observe(snap(counters={"underruns": 3}), 2.0 + LAG_HOLD_S + 0.1)
    assert not m.lag
    events = m.observe(snap(error="boom", state="error"), 10.0)
    assert m.error == "boom" and [e.text for e in events] == ["error: boom"]
    m.observe(snap(error="other", state="error"), 11.0)
    assert m.error == "boom"


async def test_transcript_keeps_the_last_paragraphs(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        view: TranscriptView = app.transcript
        view.max_paragraphs = 3
        view.add_tokens([Token(f" p{i}", 1, i, 3000.0 * i) for i in range(2)])
        await pilot.pause()
        view.add_tokens([Token(f" p{i}", 1, i, 3000.0 * i) for i in range(2, 6)])
        await pilot.pause()
        assert [p.words.strip() for p in view.query(Paragraph)] == ["p3", "p4", "p5"]
        assert view.query("#trimmed") and view.children[0].id == "trimmed"
        assert view.count == 6


async def test_the_live_transcript_names_a_restart(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        view: TranscriptView = app.transcript
        view.add_tokens([Token(" before", 1, 0, 100.0),
                         Token(" after", 1, 40, 4000.0, 1, "restart"),
                         Token(" later", 1, 90, 9000.0, 2, "context")])
        await pilot.pause()
        shown = [str(p.render()) for p in view.query(Paragraph)]
        assert "model restarted: segment 2" in shown[1] and "context full" not in shown[1]
        assert "context full: segment 3" in shown[2]


async def test_live_paragraphs_match_the_export(tmp_path):
    from engine.telemetry.transcript import mmss, paragraphs

    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        tel = app.session.tel
        monologue = [Token(f" word{i}", 9, 400 + i, 30_000.0 + 80.0 * i, 1) for i in range(150)]
        tel.tokens.extend(monologue)
        app.poll()
        await pilot.pause()
        shown = [(f"[{mmss(p.t_ms)}]", " ".join(p.words.split())) for p in app.transcript.query(Paragraph)]
        exported = [(f"[{mmss(p.t_ms)}]", p.text) for p in paragraphs(
            [{"text": t.text, "t_ms": t.t_ms, "segment": t.segment} for t in tel.tokens])]
        assert shown == exported and len(shown) > 5


async def test_diagnosis_in_plain_words(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)
        rules = {v.rule for v in app.verdicts}
        assert "output_backlog" in rules  # the replay keeps one frame waiting to be played
        shown = str(app.query_one("#diagnosis").render())
        assert "1-frame backlog" in shown and shown.startswith("▲")
        assert "diagnosis: warn:" in log_text(app)


async def test_display_refresh_yields_while_the_pipeline_is_behind(tmp_path):
    from tui.monitor import BACK_UP_AFTER_S, BEHIND_HZ

    clock = Clock()
    app = MoshiApp(lambda: ReplaySession(), session_dir=tmp_path / "s", clock=clock)  # 8 Hz timer
    async with app.run_test(size=(120, 40)) as pilot:
        await play(pilot)  # the replay drops a frame and underruns: "bad" verdicts
        assert app.display_hz == BEHIND_HZ
        assert "display refresh 4 Hz" in log_text(app)
        clock.t += BACK_UP_AFTER_S + 20  # (the feed has ended: no new drops, so no new "bad")
        app.monitor.verdicts = ()
        app.poll()
        await pilot.pause()
        assert app.display_hz == 8


async def test_transcript_follows_after_a_resize_makes_it_overflow(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot)
        view = app.transcript
        assert view.max_scroll_y == 0
        await pilot.resize_terminal(60, 20)
        await pilot.pause()
        await pilot.pause()
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y


async def test_the_turns_key_shows_who_spoke_when_and_the_latencies(tmp_path):
    from tui.widgets.turns import TurnsPanel

    app = make_app(tmp_path)
    async with app.run_test(size=(120, 45)) as pilot:
        await play(pilot)
        panel = app.query_one(TurnsPanel)
        assert not panel.display  # hidden at start; the footer lists its key
        await pilot.press("t")
        await pilot.pause()
        assert panel.display
        turns = app.session.tel.voice.detector.turns
        responses = [t.latency_ms for t in turns if t.kind == "response"]
        assert len(responses) == 3
        lanes, figures, last = (str(w.render()) for w in panel.query("SteadyStatic"))
        you, moshi = lanes.splitlines()
        assert you.startswith("you") and "█" in you and "█" in moshi
        answer = next(line for line in figures.splitlines() if line.startswith("answer"))
        assert answer.split()[1:4] == [f"{sorted(responses)[1]:.0f}", answer.split()[2], "3"]
        assert "stopped" in last and "answered" in last
        assert f"answer {responses[-1]:.0f} ms" in status_text(app)
        await pilot.press("t")
        await pilot.pause()
        assert not panel.display
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "Turns" in " ".join(str(r) for r in app.screen.rows)
