"""`moshi-tui --headless`: the session with one status line per second on stdout."""

from __future__ import annotations

import signal
import sys
import threading
import time

from engine.files.outputs import check_writable, write_json_atomic, write_outputs
from engine.session.factory import open_session
from engine.telemetry.diagnose import Diagnoser, verdict_line
from engine.telemetry.stats import build_stats, status_line


def run_headless(args, cfg, out=sys.stdout) -> int:
    check_writable(args.stats_json, "stats to")
    check_writable(args.trace, "trace to")
    session = open_session(cfg)
    session.prepare()

    stop = threading.Event()

    def _on_signal(signum, frame):
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl+C: stop waiting
        stop.set()
        session.request_stop()

    old = {}
    # Ctrl+C too: a KeyboardInterrupt raised at an arbitrary point of the status loop could
    # leave the stop path waiting; a flag the loop checks cannot.
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            old[sig] = signal.signal(sig, _on_signal)

    interrupted = False
    last_state = None
    try:
        session.start()
        diag = Diagnoser()
        last_verdict: tuple = ()
        next_status = time.monotonic() + 1.0
        while not session.wait(0.1):
            snap = session.snapshot()
            if snap.state != "live" and (snap.state, snap.state_detail) != last_state:
                last_state = (snap.state, snap.state_detail)
                print(f"[{snap.state}] {snap.state_detail}", file=out, flush=True)
            if snap.state == "live" and time.monotonic() >= next_status:
                next_status += 1.0
                print(status_line(snap), file=out, flush=True)
                verdicts = diag.update(snap)
                rules = tuple(v.rule for v in verdicts)
                if rules != last_verdict:  # the diagnosis, in plain words, when it changes
                    last_verdict = rules
                    print(f"  diagnosis: {verdict_line(verdicts)}", file=out, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        session.request_stop()
    finally:
        session.stop()
        for sig, h in old.items():
            signal.signal(sig, h)

    snap = session.snapshot()
    reason = "interrupted" if interrupted or stop.is_set() else session.end_reason
    if snap.state != "error" and snap.frames_processed:
        print(status_line(snap), file=out, flush=True)
    stats = build_stats(
        session.tel,
        options={k: v for k, v in vars(args).items() if not k.startswith("_")},
        processes=session.cpu,
        end_reason=reason,
    )
    from engine.files.outputs import write_trace

    write_errors = write_outputs([
        ("stats to", args.stats_json, lambda path: write_json_atomic(path, stats)),
        ("trace to", args.trace, lambda path: write_trace(path, session.tel)),
    ])
    for line in write_errors:
        print(f"moshi-tui: error: {line}", file=sys.stderr, flush=True)
    if reason == "interrupted" and not session.live.is_set():
        print("interrupted while loading", file=sys.stderr, flush=True)
        return 130
    if snap.error:
        if session.folder is not None:
            print(f"session files: {session.folder}", file=out, flush=True)
        print(f"moshi-tui: error: {snap.error}", file=sys.stderr, flush=True)
        return session.exit_code or 1
    print(f"session ended ({reason}): {snap.frames_processed} frames, "
          f"{len(session.tel.tokens)} text tokens", file=out, flush=True)
    if snap.text.strip():
        print(f"transcript: {snap.text.strip()}", file=out, flush=True)
    if session.folder is not None:
        print(f"session files: {session.folder}", file=out, flush=True)
    return 1 if write_errors else 0
