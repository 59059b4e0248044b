"""The Textual app: a conversation with Moshi and, beside it, where every 80 ms frame goes.

The app owns a session (an `engine.session.base.ConversationSession`: local, remote, or the
recorded feed the tests inject) through an `engine.session.runner.SessionRunner`, which writes
whatever the session leaves (stats, session files, exports, trace). One 8 Hz timer reads a
snapshot and assigns it to a reactive that the widgets are bound to; nothing in the UI runs per
audio frame, and no audio or codec thread ever touches a widget.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from engine.errors import MoshiTuiError
from engine.session.base import ConversationSession
from engine.session.runner import RunConfig, SessionRunner, open_prepared
from engine.telemetry.collect import Snapshot

from .format import clock as fmt_clock
from .keys import KEYS
from .monitor import DisplayRate, Monitor, ThreadCpu
from .screens.error import ErrorScreen
from .screens.export import ExportChoice, ExportScreen
from .screens.help import HelpScreen
from .stderr_guard import start_resource_tracker, stderr_to_file
from .widgets.diagnosis import DiagnosisView
from .widgets.event_log import EventLog
from .widgets.latency import LatencyPanel
from .widgets.levels import LevelMeter
from .widgets.loading import LoadingView
from .widgets.queues import QueuesPanel
from .widgets.status_bar import StatusBar
from .widgets.transcript import TranscriptView
from .widgets.turns import TurnsPanel

REFRESH_HZ = 8  # (BEHIND_HZ while the pipeline is behind: tui.monitor.DisplayRate)
DIAGNOSTICS_EVERY = 2  # the panels are redrawn every 2nd refresh


class MoshiApp(App[int]):
    """Full-screen conversation with live diagnostics."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere keep it
    TITLE = "moshi-tui"
    ENABLE_COMMAND_PALETTE = False  # every action has a key; the footer needs the room
    HORIZONTAL_BREAKPOINTS = [(0, "-stacked"), (70, "-narrow"), (120, "-wide")]
    BINDINGS = KEYS

    # What the widgets are bound to.  `diagnostics` is the snapshot at half the rate, for the
    # latency and queue panels: a sparkline column covers ~0.4 s of a 20 s window, so 4 Hz looks
    # the same and halves their drawing cost.
    snapshot: reactive[Snapshot | None] = reactive(None, init=False, repaint=False)  # 8 Hz
    diagnostics: reactive[Snapshot | None] = reactive(None, init=False, repaint=False)
    show_latency: reactive[bool] = reactive(True, repaint=False)  # latency panel visible
    show_queues: reactive[bool] = reactive(True, repaint=False)  # queues panel visible
    show_turns: reactive[bool] = reactive(False, repaint=False)  # turns panel visible
    show_log: reactive[bool] = reactive(False, repaint=False)  # log panel (on wide screens)
    paused: reactive[bool] = reactive(False, repaint=False)  # display frozen, session running
    muted: reactive[bool] = reactive(False, init=False, repaint=False)  # microphone muted
    lag: reactive[bool] = reactive(False, repaint=False)  # underruns lately (tui.monitor)
    alert: reactive[str] = reactive("", repaint=False)  # the latest warning, while recent
    verdicts: reactive[tuple] = reactive(tuple, repaint=False)  # engine.telemetry.diagnose's
    stopping: reactive[bool] = reactive(False, repaint=False)  # quit: stopping, saving files

    def __init__(self, session_factory: Callable[[], ConversationSession], *, session_dir: Path | None = None,
                 options: dict | None = None, clock: Callable[[], float] = time.monotonic,
                 refresh_hz: float = REFRESH_HZ, show_log: bool | None = None,
                 panels: dict[str, bool] | None = None,
                 handle_signals: bool = False) -> None:
        super().__init__()
        start_resource_tracker()  # before Textual captures sys.stderr (see stderr_guard)
        self.session = session_factory()
        self.runner = SessionRunner(self.session, folder=session_dir, options=options,
                                    extra_stats=self._ui_stats)
        # The engine's session folder when it keeps one; None with --no-save (nothing is written
        # unless asked: exports and screenshots then default to the current folder).
        self.session_dir: Path | None = self.runner.folder
        self.clock = clock
        self.refresh_hz = refresh_hz
        self.rate = DisplayRate(refresh_hz)
        # shown at start or not (--panel-* / the config file; the log: on wide screens by default)
        self._panels = {"log": show_log, **(panels or {})}
        self._handle_signals = handle_signals
        self.exited = threading.Event()  # set by run_app once app.run() has returned
        self.shutdown_error: str | None = None
        self._t0 = clock()
        self.ui_cpu = ThreadCpu()  # the UI thread's own cost, for stats (restarted once live)
        self._ticks = 0
        self.monitor = Monitor()
        self._ended_logged = False
        self._stop_requested = False
        self._ui_ready = False  # set once the main screen is composed

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield StatusBar().data_bind(MoshiApp.snapshot, MoshiApp.lag, MoshiApp.paused, MoshiApp.alert,
                                    MoshiApp.stopping, MoshiApp.verdicts)
        with Horizontal(id="body"):
            with Vertical(id="conversation"):
                yield LoadingView(id="loading").data_bind(MoshiApp.snapshot)
                yield TranscriptView(id="transcript")
                with Horizontal(id="levels"):
                    yield LevelMeter("input", id="mic").data_bind(MoshiApp.snapshot)
                    yield LevelMeter("output", id="spk").data_bind(MoshiApp.snapshot)
            with Vertical(id="side"):
                yield DiagnosisView(id="diagnosis").data_bind(MoshiApp.verdicts)
                yield LatencyPanel(id="latency").data_bind(snapshot=MoshiApp.diagnostics)
                yield QueuesPanel(id="queues").data_bind(snapshot=MoshiApp.diagnostics)
                yield TurnsPanel(id="turns").data_bind(snapshot=MoshiApp.snapshot)
                yield EventLog(id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # Widgets of the main screen, kept so the timer never queries whatever screen is on top.
        self.main_screen = self.screen
        self.body = self.query_one("#body", Horizontal)
        self.transcript = self.query_one(TranscriptView)
        self.loading = self.query_one(LoadingView)
        self.event_log = self.query_one("#log", EventLog)
        self._ui_ready = True
        self.transcript.border_title = "Conversation"
        self.query_one(DiagnosisView).border_title = "Diagnosis"
        self.event_log.border_title = "Log"
        show_log = self._panels["log"]
        self.show_log = self.size.width >= 120 if show_log is None else show_log
        self.show_latency = self._panels.get("latency", self.show_latency)
        self.show_queues = self._panels.get("queues", self.show_queues)
        self.show_turns = self._panels.get("turns", self.show_turns)
        self._toggle_panel("#turns", self.show_turns, "-no-turns")
        if self.session_dir is not None:
            if error := self.runner.make_folder():
                self.log_event(error, "bold red")
            self.log_event(f"session folder: {self.session_dir}")
        try:
            self.session.start()
        except MoshiTuiError as e:
            self._show_error(str(e))
        self.poll()
        self._timer = self.set_interval(1.0 / self.refresh_hz, self.poll, name="snapshot")
        if self._handle_signals:  # SIGTERM/SIGHUP quit like `q` (SessionRunner.quit_on_signals)
            loop = asyncio.get_running_loop()
            self.runner.quit_on_signals(
                lambda: loop.call_soon_threadsafe(lambda: self.call_next(self.action_quit)),
                self.exited, self.exit_code)

    # ------------------------------------------------------------------ the 8 Hz refresh
    def poll(self) -> None:
        """Read one snapshot from the session and push it to the widgets (unless paused)."""
        self.ui_cpu.sample()
        snap = self.session.snapshot()
        self._observe(snap)
        if not self.monitor.live:  # the start-up spinner (hidden once live)
            self.loading.frame = int((self.clock() - self._t0) * 10)
        if self.paused:
            return
        self.snapshot = snap
        self._ticks += 1
        if self._ticks % DIAGNOSTICS_EVERY == 1 or snap.state != "live":
            self.diagnostics = snap
        tokens = self.session.tel.tokens
        if len(tokens) > self.transcript.count:
            self.transcript.add_tokens(tokens[self.transcript.count:])

    def _observe(self, snap: Snapshot) -> None:
        """Turn changes between snapshots into log lines, badges and the error modal."""
        had_error = self.monitor.error is not None
        for event in self.monitor.observe(snap, self.clock()):
            self.log_event(event.text, event.style)
        self.lag, self.alert = self.monitor.lag, self.monitor.alert
        self.verdicts = self.monitor.verdicts
        if self.monitor.live and not self.main_screen.has_class("-live"):
            self.main_screen.add_class("-live")
            self.ui_cpu.restart()  # UI cost is measured while live
        if self.monitor.error and not had_error:
            self._show_error(self.monitor.error)
        self._adapt_rate()
        if self.session.done.is_set() and not self._ended_logged and not self.stopping:
            self._ended_logged = True
            if snap.state != "error":
                self.log_event(f"session ended: {self.session.end_reason or 'stopped'}")
                self._stop_session()

    @property
    def display_hz(self) -> float:
        """The refresh rate now (REFRESH_HZ, or BEHIND_HZ while the pipeline is behind)."""
        return self.rate.hz

    def _adapt_rate(self) -> None:
        if not hasattr(self, "_timer") or not self.rate.update(self.monitor.verdicts, self.clock()):
            return
        self._timer.stop()
        self._timer = self.set_interval(1.0 / self.rate.hz, self.poll, name="snapshot")
        self.log_event(f"display refresh {self.rate.hz:g} Hz" + (
            " (the pipeline is behind: leaving it the CPU)" if self.rate.behind else ""), "dim")

    def log_event(self, text: str, style: str = "") -> None:
        line = Text.assemble((f"{fmt_clock(self.clock() - self._t0)} ", "dim"), (text, style))
        self.event_log.add(line)

    def _show_error(self, message: str, title: str | None = None) -> None:
        kw = {"can_restart": self.session.can_restart} if title is None else {"title": title}
        self.push_screen(ErrorScreen(message, **kw))

    def action_restart_server(self) -> None:
        """From the error modal: a new model server; the transcript and audio carry on."""
        if not self.session.can_restart:
            return
        self.session.restart_server()
        self.monitor.error = None
        self._ended_logged = False
        self.log_event("restarting the model server", "bold")

    # ------------------------------------------------------------------ panels and keys
    def watch_show_latency(self, show: bool) -> None:
        self._toggle_panel("#latency", show, "-no-latency")

    def watch_show_queues(self, show: bool) -> None:
        self._toggle_panel("#queues", show, "-no-queues")

    def watch_show_turns(self, show: bool) -> None:
        self._toggle_panel("#turns", show, "-no-turns")

    def watch_show_log(self, show: bool) -> None:
        self._toggle_panel("#log", show, "-no-log")

    def _toggle_panel(self, selector: str, show: bool, cls: str) -> None:
        if not self._ui_ready:
            return
        self.body.set_class(not show, cls)
        panel = self.main_screen.query_one(selector)
        if show and hasattr(panel, "redraw"):  # hidden panels skip updates: catch up now
            panel.redraw()

    def watch_paused(self, paused: bool) -> None:
        if self._ui_ready:
            self.log_event("display paused (audio continues)" if paused else "display resumed")

    def action_toggle_mute(self) -> None:
        self.muted = not self.muted

    def action_toggle_aec(self) -> None:
        on = not str(self.session.tel.info.aec or "off").startswith("on")
        self.session.set_aec(on)
        state = self.session.tel.info.aec or "off"
        self.log_event(f"echo cancellation {state}")

    def watch_muted(self, muted: bool) -> None:
        self.session.set_muted(muted)
        self.log_event("microphone muted" if muted else "microphone unmuted")

    def action_help(self) -> None:
        rows = [(self.get_key_display(b), b.description, b.tooltip)
                for b in self.BINDINGS if isinstance(b, Binding) and (b.show or b.tooltip)]
        info = self.session.tel.info
        sampling = info.server.get("sampling_text") or self.session.cfg.sampling.describe()
        self.push_screen(HelpScreen(rows, sampling))

    def action_screenshot(self) -> None:
        try:
            path = self.save_screenshot(path=str(self.files_dir))
        except OSError as e:
            self.notify(f"screenshot failed: {e}", severity="error")
            return
        self.log_event(f"screenshot saved: {path}")
        self.notify(f"Screenshot saved to {path}", title="Screenshot")

    # ------------------------------------------------------------------ export
    @property
    def files_dir(self) -> Path:
        """Where exports and screenshots go by default."""
        return self.session_dir or Path.cwd()

    def _ui_stats(self) -> dict:
        """The display's part of the session summary."""
        return {"ui": {"refresh_hz": self.refresh_hz, "refresh_hz_now": self.display_hz,
                       "ui_thread_cpu_percent": self.ui_cpu.percent}}

    def action_export(self) -> None:
        if self.stopping:
            return
        self.push_screen(ExportScreen(self.files_dir), callback=self._export_chosen)

    def _export_chosen(self, choice: ExportChoice | None) -> None:
        if choice is not None:
            self.run_worker(lambda: self.runner.export(choice.path, choice.fmt), thread=True,
                            exclusive=True, exit_on_error=False, group="export", name=str(choice.path))

    # ------------------------------------------------------------------ stop and quit
    def _stop_session(self) -> None:
        """The input ended (or the server died): stop cleanly, keep the app open for export."""
        if not self._stop_requested:
            self._stop_requested = True
            self.run_worker(self.session.stop, thread=True, exit_on_error=False, group="stop")

    async def action_quit(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.log_event("stopping the session and saving its files…")
        self.run_worker(self._shutdown_session, thread=True, exclusive=True, exit_on_error=False, group="shutdown")

    def _shutdown_session(self) -> list[Path]:
        self.session.stop()
        return self.runner.save_session_files()

    def exit_code(self) -> int:
        """0, or the engine's exit code when the session ended in an error (CLI contract)."""
        return self.runner.exit_code(error=self.monitor.error)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state == WorkerState.SUCCESS and worker.group == "export":
            self.log_event(f"exported: {worker.result}")
            self.notify(f"Saved {worker.result}", title="Export")
        elif worker.group == "shutdown" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if event.state == WorkerState.ERROR:
                self.shutdown_error = f"{type(worker.error).__name__}: {worker.error}"
            code = self.exit_code() or (1 if self.shutdown_error else 0)
            self.exit(code, return_code=code)
        elif event.state == WorkerState.ERROR:
            message = f"{type(worker.error).__name__}: {worker.error}"
            if worker.group == "export":
                self.log_event(f"export failed: {message}", "bold red")
                self._show_error(message, title=f"Export to {worker.name} failed")
            else:
                self.log_event(f"{worker.group} failed: {message}", "bold red")
                self._show_error(message, title="Internal error")


def run_app(run: RunConfig) -> int:
    """`moshi-tui` without --headless: validate, run the app, then say where the files are."""
    import tempfile

    session = open_prepared(run)  # bad devices/files/folders fail before the screen switches
    folder = session.folder
    err_log = (folder or Path(tempfile.gettempdir())) / (
        "stderr.log" if folder else f"moshi-tui-{os.getpid()}-stderr.log")
    app = MoshiApp(lambda: session, handle_signals=True, panels=run.panels)
    try:
        with stderr_to_file(err_log):
            app.run()
    finally:
        app.exited.set()
        session.stop()  # idempotent; covers exits that bypassed the quit action
    if not app.runner.saved_files:  # the app ended without its quit action (crash, signal)
        try:
            app.runner.save_session_files()
        except Exception as e:  # noqa: BLE001 - report, do not mask the exit
            print(f"moshi-tui: error: could not save the session files: {e}", file=sys.stderr)
    write_errors = app.runner.finish(run.stats_json, run.trace)
    if err_log.exists() and err_log.stat().st_size:
        print(f"moshi-tui: messages printed by the engine and libraries are in {err_log}", file=sys.stderr)
    elif err_log.exists():  # nothing was printed: no empty file left behind
        err_log.unlink()
    if app.shutdown_error:
        print(f"moshi-tui: error while saving: {app.shutdown_error}", file=sys.stderr)
    snap = session.snapshot()
    if folder is not None:
        print(f"session files: {folder}")
    code = app.runner.exit_code(write_errors)
    if snap.error:
        print(f"moshi-tui: error: {snap.error}", file=sys.stderr)
        return code
    return app.return_code or code
