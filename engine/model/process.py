"""The model process, seen from the client: start it, wait until it is ready, stop it.

Every model process is one of these: a local session's, `serve`'s and `bench step`'s (each
reaches it through engine.session.host.ModelHost).  It is spawned (MLX in a forked child hangs
once the parent used it, and a child forked after the parent imported sounddevice gets no audio
callbacks), talks over one duplex `multiprocessing.Pipe` (no feeder thread, unlike
`multiprocessing.Queue`) in the typed messages of engine.model.messages, is started with an
engine.model.messages.WorkerOptions, and can never outlive the client (it watches its parent).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Callable

from engine.errors import MoshiTuiError
from engine.model.messages import Failed, Progress, Stop, WorkerOptions


class ModelProcess:
    """`target(conn, resolved, options)` in a spawned process (engine.model.worker's mains).

    `what` names it in errors ("the model server process died while loading (exit code 9)")."""

    def __init__(self, target, resolved, options: WorkerOptions, *, name: str = "moshi-tui-server",
                 what: str = "the model server process"):
        ctx = mp.get_context("spawn")
        self.conn, self._child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=target, args=(self._child, resolved, options),
                                   name=name, daemon=True)
        self.what = what

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def start(self) -> None:
        self.process.start()
        self._child.close()

    def alive(self) -> bool:
        return self.process.pid is not None and self.process.is_alive()

    def wait_for(self, kind: type, progress: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, during: str = " while loading"):
        """The first message of type `kind` (Ready, BenchDone); `progress` gets each Progress
        text meanwhile.  Raises MoshiTuiError (one line) when the process reports a failure or
        dies, and when `should_stop()` turns true ("stopped during loading")."""
        conn = self.conn
        while True:
            if should_stop is not None and should_stop():
                raise MoshiTuiError("stopped during loading", exit_code=1)
            if not conn.poll(0.1):
                if not self.process.is_alive():
                    raise MoshiTuiError(
                        f"{self.what} died{during} (exit code {self.process.exitcode})",
                        exit_code=1)
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                raise MoshiTuiError(f"{self.what} died{during}", exit_code=1) from None
            if isinstance(msg, kind):
                return msg
            if isinstance(msg, Progress):
                if progress is not None:
                    progress(msg.text)
            elif isinstance(msg, Failed):
                raise MoshiTuiError(msg.message, exit_code=msg.exit_code)

    def send(self, msg) -> bool:
        """Send a message; False when the process is gone."""
        try:
            self.conn.send(msg)
            return True
        except (BrokenPipeError, EOFError, OSError):
            return False

    def stop(self, grace_s: float = 1.0, *, ask: bool = True) -> None:
        """Ask it to exit (`ask`), give it `grace_s`, then terminate, then kill; idempotent.
        The process has exited when this returns."""
        p = self.process
        if p.pid is None:  # never started (interrupted before)
            return
        if ask:
            self.send(Stop())
        p.join(timeout=grace_s)
        if p.is_alive():
            p.terminate()
            p.join(timeout=0.5)
        if p.is_alive():
            p.kill()
            p.join(timeout=0.5)
        try:
            self.conn.close()
        except Exception:
            pass
