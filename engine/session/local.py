"""A conversation with the model on this machine: the model host (engine.session.host), the client
pipeline, the audio source and sink (a `ConversationSession`, see engine.session.base).

When the model process dies, `restart_server()` starts a new one behind the same audio
endpoints, telemetry and session folder: the conversation resumes as a new segment.
"""

from __future__ import annotations

import threading
import time

from engine.errors import MoshiTuiError
from engine.model.messages import WorkerOptions
from engine.model.source import resolve
from engine.pipeline.alloc import tune_allocator
from engine.session.base import ConversationSession
from engine.session.config import SessionConfig
from engine.session.host import ModelHost
from engine.telemetry.collect import Telemetry, TelemetryConfig


class Session(ConversationSession):
    def __init__(self, cfg: SessionConfig, telemetry: Telemetry | None = None):
        tune_allocator()
        super().__init__(cfg, telemetry or Telemetry(config=TelemetryConfig(turns=cfg.turns)))
        self.pipeline = None
        self.server: ModelHost | None = None  # (a new one after restart_server)
        self.resolved = None

    def _progress(self, text: str) -> None:
        self.tel.set_state(self.tel.state if self.tel.state != "starting" else "loading", text)

    def _run(self, restart: bool = False) -> None:
        try:
            self._startup(restart=restart)
        except MoshiTuiError as e:
            if self._stop_req.is_set():  # the user stopped while it loaded: not an error
                self.end_reason = "stopped during loading"
                self.done.set()
                return
            self._fail(str(e), e.exit_code)
            return
        except Exception as e:  # unexpected: still one line, and the session ends cleanly
            self._fail(f"{type(e).__name__}: {e}", 1)
            return
        self._watch()

    def _fail(self, message: str, exit_code: int = 1) -> None:
        super()._fail(message, exit_code)
        self.done.set()

    def _startup(self, restart: bool = False) -> None:
        tel = self.tel
        if not restart:
            tel.set_state("loading", "resolving model files")
            self.resolved = resolve(self.cfg.model, progress=self._progress)
        tel.info.model = self.resolved.label
        options = WorkerOptions(max_steps=self.cfg.max_steps, step_delay_ms=self.cfg.step_delay_ms,
                                lm_mode=self.cfg.model.lm_step, sampling=self.cfg.sampling)
        host = ModelHost(self.resolved, options, codec=self.cfg.model.codec)

        def started(host: ModelHost) -> None:
            self.server = host

        # Started under the lock stop() takes: stop() sees no server or a started one, and no
        # server starts after a stop.
        host.start(self._lock, lambda: self._stopped, started)
        tel.info.server["pid"] = host.pid
        tel.set_state("loading", "loading model in the server process")

        # The codec and text tokenizer load here while the server loads the LM.
        if self._stop_req.is_set():
            raise MoshiTuiError("stopped during loading", exit_code=1)
        tel.info.codec = host.codec_backend
        kind = self.resolved.kind
        tel.info.mode = kind.mode
        codec = host.new_codec()
        host.load_tokenizer()

        # Wait for the server: it reports progress, then ready or an error.
        def progress(text: str) -> None:
            tel.set_state("warming up" if "warm" in text else "loading", text)

        ready = host.wait_ready(progress, should_stop=self._stop_req.is_set)
        tel.info.server.update(ready)
        tel.info.codec_warmup_ms = round(codec.warm_ms, 1)
        # stop() runs either before this (then nothing starts: no device is opened after the
        # session was stopped) or after it (then it stops what started here).
        with self._lock:
            if self._stopped:
                raise MoshiTuiError("stopped during loading", exit_code=1)
            self._go_live(codec, restart)

    def _go_live(self, codec, restart: bool) -> None:
        from engine.pipeline.client import ClientPipeline

        tel = self.tel
        tel.info.early_encode = self.cfg.early_encode  # (off later if heads do not help)
        self._new_recorder()
        segments = self.server.codec_segments(tel.warn)
        self.pipeline = ClientPipeline(codec, self.server.conn, self.server.spm, tel, self.recorder,
                                       early_encode=self.cfg.early_encode, segments=segments,
                                       input_max=self.cfg.input_max,
                                       inflight_max=self.cfg.inflight_max)
        self.pipeline.muted = self.muted  # (a restarted pipeline keeps the mute)
        self.pipeline.start()
        if restart:
            self._restarting = False  # the running source and sink feed the new pipeline now
        else:
            self._watch_gc()
            self._cpu_start()
            self.sink.start(self._pull)
            self._note_endpoints()
            self.source.start(self._on_frame, self._on_head if self.cfg.early_encode else None)
        tel.set_state("live", "")
        self.live.set()

    # The audio endpoints call these for the whole session; the pipeline behind them can be
    # replaced (restart_server) without stopping a device.
    _restarting = False

    def _on_frame(self, pcm, t_cap: int) -> None:
        pcm = self._mic_frame(pcm, t_cap)
        if not self._restarting:
            self.pipeline.on_frame(pcm, t_cap)

    def _on_head(self, pcm, t_ns: int) -> None:
        pcm = self._mic_head(pcm, t_ns)
        if not self._restarting:
            self.pipeline.on_head(pcm, t_ns)

    def _pull(self, t_play: int, room: int):
        pcm = None if self._restarting else self.pipeline.pull(t_play, room)
        return self._speaker(pcm, room, t_play)

    @property
    def can_restart(self) -> bool:
        """The model server died (or failed) while the audio endpoints are still usable."""
        return (self.pipeline is not None and self.pipeline.error is not None
                and not self._stopped)

    def restart_server(self) -> None:
        """Start a new model server and codec after the old server died.

        The audio devices or files keep running (silence meanwhile), and the telemetry,
        transcript and session folder carry on: the conversation resumes as a new segment.
        """
        if not self.can_restart:
            raise MoshiTuiError("the model server is running: nothing to restart", exit_code=1)
        self._restarting = True
        # Synchronously, so that no reader sees "error" or "done" once this returns.
        self.tel.error = None
        self.exit_code = 0
        self.end_reason = ""
        self.live.clear()
        self.done.clear()
        self.tel.set_state("loading", "restarting the model server")
        self._thread = threading.Thread(target=self._run_restart, name="session-restart",
                                        daemon=True)
        self._thread.start()

    def _run_restart(self) -> None:
        old = self.pipeline
        old.stop()
        self.server.stop()
        self.server = None
        self.tel.mark_segment(self.tel.steps, time.monotonic_ns(), reason="restart")
        self._run(restart=True)

    def _watch(self) -> None:
        """End the session when the input runs out, time is up, the server dies, or stop()."""
        t_live = time.monotonic()
        drain_deadline = None
        while not self._stop_req.wait(0.05):
            if self.pipeline.error:
                self.exit_code = self.pipeline.exit_code
                loop = self.pipeline.failed_loop
                self.end_reason = f"{loop.replace('_', ' ')} failed" if loop else "server died"
                break
            if self.server is not None and not self.server.alive():
                self.pipeline._fail(
                    f"the model server process died (exit code {self.server.exitcode})"
                )
                continue
            self._note_endpoints()
            if self.cfg.seconds is not None and time.monotonic() - t_live >= self.cfg.seconds:
                self.end_reason = "time limit"
                break
            if self.source.finished.is_set() and getattr(self.source, "error", None):
                # A device that disappeared: stop cleanly, keep everything, say why.
                self.end_reason = f"input lost: {self.source.error}"
                break
            if self.source.finished.is_set():
                # Let the last frames through the pipeline and out to the sink (at most 2 s).
                drain_deadline = drain_deadline or time.monotonic() + 2.0
                drained = self.pipeline.idle() and not self.pipeline.output_q
                # A paced sink (file/null) stops one period after the input's length, so an
                # output WAV matches its input WAV even when the machine is overloaded.
                periods = getattr(self.sink, "periods", None)
                covered = periods is not None and periods >= self.tel.frames_captured + 1
                if drained or covered or time.monotonic() > drain_deadline:
                    self.end_reason = "end of input"
                    break
        else:
            self.end_reason = self.end_reason or "stopped"
        self.done.set()

    # ------------------------------------------------------------------ control
    def set_muted(self, muted: bool) -> None:
        super().set_muted(muted)
        if self.pipeline is not None:
            self.pipeline.muted = muted

    def stop(self) -> None:
        """Stop everything; idempotent; the server is gone when this returns (<= ~2 s)."""
        if not self._begin_stop():
            return
        for end in (self.source, self.sink):
            if end is not None:
                try:
                    end.stop()
                except Exception:
                    pass
        if self.pipeline is not None:
            self.pipeline.stop()  # first: the server closing its pipe is then not an error
        if self.server is not None:
            self.server.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._close_files()
