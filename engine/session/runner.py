"""Running one session from `prepare()` to its exit code: the same for `--headless`, the app
and the benches.

    run = RunConfig(SessionConfig(...), stats_json="st.json")   # engine.cli.options.run_config
    runner = SessionRunner(open_prepared(run))   # outputs checked, session opened, prepared
    runner.run(hook)                         # signals, start, the wait loop, stop
    errors = runner.finish(run.stats_json, run.trace)   # --stats-json, --trace
    return runner.exit_code(errors)

While `run()` waits, SIGINT, SIGTERM and SIGHUP ask the session to stop (it then ends as
"interrupted"); a second Ctrl+C stops waiting for it to wind down.  The app drives the session
from its event loop instead of `run()`, and uses the rest: `stats()`, `export()`,
`save_session_files()`, `finish()`, `exit_code()` and `quit_on_signals()`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.files.export import export
from engine.files.outputs import check_writable, write_json_atomic, write_outputs, write_trace
from engine.session.base import ConversationSession
from engine.session.config import SessionConfig

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # what stops a session run by `SessionRunner.run`
SESSION_FILES = ("transcript.md", "transcript.json", "stats.json")
QUIT_GRACE_S = 8.0  # after SIGTERM/SIGHUP, how long an event loop's normal quit may take


@dataclass(frozen=True)
class RunConfig:
    """One run of a session as the command line asks for it (built by the CLI, once)."""

    session: SessionConfig
    stats_json: str | None = None  # --stats-json: the session summary, written at the end
    trace: str | None = None  # --trace: the Perfetto trace of every frame
    panels: dict[str, bool] = field(default_factory=dict)  # the app's panels shown at start

    def check_outputs(self) -> None:
        """Fail before anything starts when an output file cannot be written."""
        check_writable(self.stats_json, "stats to")
        check_writable(self.trace, "trace to")


def open_prepared(run: RunConfig) -> ConversationSession:
    """Check the outputs, open the session and prepare it: bad input fails here, in a second."""
    from engine.session.factory import open_session

    run.check_outputs()
    session = open_session(run.session)
    session.prepare()
    return session


def install_signal_handlers(callback: Callable[[int], None], names=SIGNALS) -> dict:
    """Route the signals `names` to `callback(signum)`; returns the handlers they replaced, for
    `restore_signal_handlers`.  Outside the main thread (tests), nothing is routed."""
    old = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    for name in names:
        sig = getattr(signal, name, None)
        if sig is None:  # (SIGHUP: not on this platform)
            continue
        try:
            old[sig] = signal.signal(sig, lambda signum, frame: callback(signum))
        except (ValueError, OSError):
            pass
    return old


def restore_signal_handlers(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


class Every:
    """A period's ticks for a wait loop's hook: `due(now)` is true once per `period` seconds.
    The first call starts the count (due `period` later, or at once with `at_once`)."""

    def __init__(self, period: float, *, at_once: bool = False, first: float | None = None):
        self.period = period
        self.at_once = at_once
        self.next = first

    def due(self, now: float) -> bool:
        if self.next is None:
            self.next = now if self.at_once else now + self.period
        if now < self.next:
            return False
        self.next += self.period
        return True


class SessionRunner:
    """Drives a session and keeps what it leaves: the summary, the session files, the exports,
    the --stats-json and --trace files, the exit code."""

    def __init__(self, session: ConversationSession, *, folder: Path | None = None,
                 options: dict | None = None, extra_stats: Callable[[], dict] | None = None):
        self.session = session
        # The session's own folder; else `folder` (where a session that keeps none, such as
        # a recorded feed, leaves its transcript); None: nothing is written unless asked.
        where = session.folder or folder
        self.folder: Path | None = Path(where) if where else None
        self.options = options if options is not None else dict(session.cfg.options)
        self.extra_stats = extra_stats  # more top-level keys of the summary (the app's "ui")
        self.interrupted = threading.Event()  # a signal asked the session to stop
        self.saved_files: list[Path] = []

    # ------------------------------------------------------------------ running
    def run(self, hook: Callable[[float], None] | None = None, *, poll_s: float = 0.1,
            signals=SIGNALS, on_interrupt: Callable[[], None] | None = None) -> None:
        """Start the session, call `hook(time.monotonic())` every `poll_s` until it has ended,
        then stop it.  A signal of `signals` asks it to stop (`on_interrupt()` is told once); a
        second Ctrl+C stops waiting.  With no signals routed, Ctrl+C propagates once the
        session is stopped."""
        session = self.session
        old = install_signal_handlers(self._on_signal, signals)
        told = False
        try:
            session.start()
            while not session.wait(poll_s):
                if self.interrupted.is_set() and not told and on_interrupt is not None:
                    told = True
                    on_interrupt()
                if hook is not None:
                    hook(time.monotonic())
        except KeyboardInterrupt:
            if not old:
                raise
            self.interrupted.set()
            session.request_stop()
        finally:
            session.stop()
            restore_signal_handlers(old)
        if self.interrupted.is_set() and not told and on_interrupt is not None:
            on_interrupt()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGINT and self.interrupted.is_set():
            raise KeyboardInterrupt  # a second Ctrl+C: stop waiting
        # (Ctrl+C too: a KeyboardInterrupt raised at an arbitrary point of the wait loop could
        # leave the stop path waiting; a flag the loop checks cannot.)
        self.interrupted.set()
        self.session.request_stop()

    @property
    def end_reason(self) -> str:
        return "interrupted" if self.interrupted.is_set() else self.session.end_reason

    def watchdog(self, exited: threading.Event, grace_s: float, code: Callable[[], int]) -> None:
        """Unless `exited` is set within `grace_s`: stop the session, leave its files and end
        the process with `code()` (a quit that a stuck terminal keeps from finishing)."""
        def watch() -> None:
            if exited.wait(grace_s):
                return
            try:  # (both idempotent: a normal quit may be doing the same)
                self.session.stop()
                if not self.saved_files:
                    self.save_session_files()
            finally:
                os._exit(code())

        threading.Thread(target=watch, name="quit-watchdog", daemon=True).start()

    def quit_on_signals(self, quit: Callable[[], None], exited: threading.Event,
                        code: Callable[[], int], grace_s: float = QUIT_GRACE_S,
                        names=("SIGTERM", "SIGHUP")) -> None:
        """For a session driven by an event loop (the app): SIGTERM/SIGHUP (kill, terminal
        closed) call `quit()`, which schedules the loop's normal quit, files included.

        Plain signal handlers, not the event loop's: when the terminal is gone or stopped
        reading, Textual's output queue fills and the loop blocks on it, so a handler the loop
        would run never runs.  The first signal also starts `watchdog`: if the quit has not
        finished after `grace_s`, the session is stopped, its files written, the process ended."""
        watching = threading.Event()

        def on_signal(signum: int) -> None:
            if not watching.is_set():
                watching.set()
                self.watchdog(exited, grace_s, code)
            try:
                quit()
            except RuntimeError:  # the loop has closed: the app is exiting anyway
                pass

        install_signal_handlers(on_signal, names)

    # ------------------------------------------------------------------ what it leaves
    def stats(self) -> dict:
        """The session summary (stats.json) with the run's options and end."""
        stats = self.session.stats(options=self.options, end_reason=self.end_reason)
        if self.extra_stats is not None:
            stats.update(self.extra_stats())
        return stats

    def export(self, path: str | Path, fmt: str | None = None) -> Path:
        """The transcript as Markdown or JSON (engine.files.export) in `path`."""
        return export(self.stats(), path, fmt)

    def make_folder(self) -> str | None:
        """Create the folder where it is not the session's own (made by prepare()); a failure
        is one line, returned."""
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                return f"cannot create the session folder {self.folder}: {e}"
        return None

    def save_session_files(self) -> list[Path]:
        """The transcript and stats in the folder, unless the session's recorder wrote them."""
        if self.folder is None:
            return self.saved_files
        if self.session.recorder is not None:  # written by the session's stop()
            self.saved_files = [self.folder / name for name in SESSION_FILES]
        else:
            self.saved_files = self.session.write_files(self.folder, self.stats())
        return self.saved_files

    def finish(self, stats_json: str | None = None, trace: str | None = None,
               err=None) -> list[str]:
        """Write --stats-json and --trace, each on its own; a failure is one line on `err`
        (stderr) and in the list returned."""
        errors = write_outputs([
            ("stats to", stats_json, lambda path: write_json_atomic(path, self.stats())),
            ("trace to", trace, lambda path: write_trace(path, self.session.tel)),
        ])
        for line in errors:
            print(f"moshi-tui: error: {line}", file=err or sys.stderr, flush=True)
        return errors

    def exit_code(self, write_errors=(), error: str | None = None) -> int:
        """130 when interrupted before going live; the session's code (1 by default) when it
        ended in an error (`error`, or the one its telemetry shows); 1 when an output could not
        be written; else 0."""
        session = self.session
        if self.interrupted.is_set() and not session.live.is_set():
            return 130
        if error or session.snapshot().error:
            return session.exit_code or 1
        return 1 if write_errors else 0
