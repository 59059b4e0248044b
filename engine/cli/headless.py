"""`moshi-tui --headless`: the session with one status line per second on stdout."""

from __future__ import annotations

import sys
import time

from engine.session.runner import Every, RunConfig, SessionRunner, open_prepared
from engine.telemetry.diagnose import Diagnoser, verdict_line
from engine.telemetry.stats import status_line


class _StatusLines:
    """The wait loop's hook: a line per state change while not live, then a status line a
    second, with the diagnosis in plain words when it changes."""

    def __init__(self, session, out):
        self.session, self.out = session, out
        self.diag = Diagnoser()
        self.last_state = None
        self.last_verdict: tuple = ()
        self.every = Every(1.0, first=time.monotonic() + 1.0)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def __call__(self, now: float) -> None:
        snap = self.session.snapshot()
        if snap.state != "live" and (snap.state, snap.state_detail) != self.last_state:
            self.last_state = (snap.state, snap.state_detail)
            self.say(f"[{snap.state}] {snap.state_detail}")
        if snap.state == "live" and self.every.due(now):
            self.say(status_line(snap))
            verdicts = self.diag.update(snap)
            rules = tuple(v.rule for v in verdicts)
            if rules != self.last_verdict:
                self.last_verdict = rules
                self.say(f"  diagnosis: {verdict_line(verdicts)}")


def run_headless(run: RunConfig, out=sys.stdout) -> int:
    runner = SessionRunner(open_prepared(run))
    session = runner.session
    status = _StatusLines(session, out)
    runner.run(status)

    snap = session.snapshot()
    if snap.state != "error" and snap.frames_processed:
        status.say(status_line(snap))
    write_errors = runner.finish(run.stats_json, run.trace)
    code = runner.exit_code(write_errors)
    if code == 130:
        print("interrupted while loading", file=sys.stderr, flush=True)
        return code
    if snap.error:
        if session.folder is not None:
            status.say(f"session files: {session.folder}")
        print(f"moshi-tui: error: {snap.error}", file=sys.stderr, flush=True)
        return code
    status.say(f"session ended ({runner.end_reason}): {snap.frames_processed} frames, "
               f"{len(session.tel.tokens)} text tokens")
    if snap.text.strip():
        status.say(f"transcript: {snap.text.strip()}")
    if session.folder is not None:
        status.say(f"session files: {session.folder}")
    return code
