"""The session interface: what the app, the headless runner and the benches drive.

    s = open_session(cfg); s.prepare(); s.start(); ... s.snapshot() ...; s.stop()

`prepare()` validates everything that can be checked before loading anything (files, devices,
the session folder), so bad input fails in a second with one line.  `start()` loads and goes
live in a background thread (progress shows in the telemetry's state); `done` is set when the
session has ended, for any reason (`end_reason`, `exit_code`); `stop()` is idempotent and
leaves the session folder written.  Two kinds: `engine.session.local.Session` (the model runs
here) and `engine.session.remote.session.RemoteSession` (a Moshi server elsewhere).
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.errors import MoshiTuiError
from engine.session.config import SessionConfig
from engine.telemetry.collect import Snapshot, Telemetry
from engine.telemetry.procfigs import ProcessFigures


class ConversationSession(ProcessFigures):
    exit_code = 0

    def __init__(self, cfg: SessionConfig, telemetry: Telemetry):
        self.cfg = cfg
        self.tel = telemetry
        self.tel.keep_records = cfg.keep_records
        self.source = None
        self.sink = None
        self.done = threading.Event()  # the session has ended (any reason)
        self.live = threading.Event()
        self.end_reason = ""
        self.cpu: dict = {}  # CPU/RSS of the processes, filled by stop()
        self.folder: Path | None = None  # the session folder, when saving
        self.recorder = None  # engine.files.recorder.SessionRecorder once live, when saving
        self.muted = False
        self.aec = None  # engine.audio.aec.EchoStage, while echo cancellation is wanted
        self._stop_req = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # ------------------------------------------------------------------ setup
    def prepare(self, endpoints=None) -> None:
        """Cheap validation: audio endpoints and the session folder. Raises MoshiTuiError.
        `endpoints`: a (source, sink) already opened, instead of the config's input and output
        (the benches loop their input)."""
        from engine.audio.devices import open_endpoints

        self.source, self.sink = endpoints or open_endpoints(
            self.cfg.input, self.cfg.output, demo=self.cfg.model.demo, warn=self.tel.warn)
        self.tel.info.input, self.tel.info.output = self.source.label, self.sink.label
        self._setup_aec()
        if self.cfg.save:
            from engine.files.recorder import prepare_session_dir

            self.folder = prepare_session_dir(self.cfg.session_dir)
            self.tel.info.session_dir = str(self.folder)

    # ------------------------------------------------------------------ echo cancellation
    def _setup_aec(self) -> None:
        """On for an audio output device (the speaker may be heard by the microphone) or with
        --aec on; off for files and null."""
        from engine.audio.portaudio import DeviceSink

        self.tel.info.aec = "off"
        if self.cfg.aec == "on" or (self.cfg.aec == "auto" and isinstance(self.sink, DeviceSink)):
            self.set_aec(True, strict=self.cfg.aec == "on")

    def set_aec(self, on: bool, strict: bool = False) -> None:
        """Turn echo cancellation on or off, live.  Without the livekit package: an AudioError
        when `strict` (--aec on), else a warning and no echo cancellation."""
        from engine.audio.aec import EchoCanceller, EchoStage
        from engine.errors import AudioError

        if on and self.aec is None:
            try:
                self.aec = EchoStage(EchoCanceller(
                    noise_suppression=self.cfg.noise_suppression,
                    output_latency_s=lambda: getattr(self.sink, "latency_s", 0.0),
                    input_latency_s=lambda: getattr(self.source, "latency_s", 0.0)), self.tel)
            except AudioError as e:
                if strict:
                    raise
                self.tel.warn(str(e))
                self.tel.info.aec = "off (unavailable)"
                return
        if self.aec is not None:
            self.aec.enabled = on
        ns = " + noise suppression" if on and self.cfg.noise_suppression else ""
        self.tel.info.aec = f"on{ns}" if on else "off"

    def _mic_head(self, pcm, t_ns: int):
        """A frame's first half from the microphone, as the encoder gets it (echo removed)."""
        return pcm if self.aec is None else self.aec.head(pcm, t_ns)

    def _mic_frame(self, pcm, t_ns: int):
        """A frame from the microphone, as the pipeline gets it (echo removed)."""
        return pcm if self.aec is None else self.aec.frame(pcm, t_ns)

    def _speaker(self, pcm, room: int, t_play: int):
        """What the speaker plays from `t_play` (the echo canceller's reference)."""
        if self.aec is not None:
            self.aec.far(pcm, room, t_play)
        return pcm

    def start(self) -> None:
        """Load and go live in a background thread."""
        if self.source is None:
            self.prepare()
        if self.tel.voice is not None:  # its VADs made while the model loads, not on live audio
            self.tel.voice.prepare_in_background()
        self._thread = threading.Thread(target=self._run, name="session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def _note_endpoints(self) -> None:
        """From the session's watch loop: the audio endpoints' errors become warnings, and the
        output latency follows the sink (a device measures its own once it plays)."""
        for end in (self.source, self.sink):
            err = getattr(end, "error", None)
            if err:
                self.tel.warn(err)
        lat = getattr(self.sink, "latency_s", None)
        if lat is not None:
            self.tel.info.output_latency_ms = round(lat * 1000.0, 1)

    def _watch_gc(self) -> None:
        """Going live: the objects loading left behind (codec, modules) are exempted from later
        collections, so the collector's pauses stay short; each pause is timed (stats.json
        "gc")."""
        from engine.telemetry.gcwatch import GcWatch, settle

        if self.tel.gc_watch is None:
            settle()
            self.tel.gc_watch = GcWatch().install()

    def _new_recorder(self) -> None:
        if self.folder is not None and self.recorder is None:
            from engine.files.recorder import SessionRecorder

            self.recorder = SessionRecorder(
                self.folder, self.tel, stats=lambda end_reason: self.stats(end_reason=end_reason))

    # ------------------------------------------------------------------ what it leaves
    def stats(self, *, options: dict | None = None, end_reason: str | None = None) -> dict:
        """The session summary (stats.json, engine.telemetry.stats): the processes' figures
        now, or at the end once stopped; by default the config's options and the session's
        end reason."""
        from engine.telemetry.stats import build_stats

        try:
            processes = self.cpu or self.process_figures()
        except Exception:
            processes = {}
        return build_stats(self.tel, options=self.cfg.options if options is None else options,
                           processes=processes,
                           end_reason=self.end_reason if end_reason is None else end_reason)

    def write_files(self, folder: Path | None = None, stats: dict | None = None) -> list[Path]:
        """transcript.md, transcript.json and stats.json in `folder` (the session folder)."""
        from engine.files.export import write_session_files

        return write_session_files(folder or self.folder, self.stats() if stats is None else stats)

    # ------------------------------------------------------------------ control
    def snapshot(self) -> Snapshot:
        self.tel.muted = self.muted
        return self.tel.snapshot()

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        self.tel.muted = muted

    @property
    def can_restart(self) -> bool:
        """Whether `restart_server()` can bring the conversation back after a failure."""
        return False

    def restart_server(self) -> None:
        raise MoshiTuiError("this session cannot restart its model", exit_code=1)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def request_stop(self) -> None:
        self._stop_req.set()

    def stop(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ ending
    def _fail(self, message: str, exit_code: int = 1) -> None:
        self.tel.error = message
        self.exit_code = exit_code
        self.tel.set_state("error", message)
        self.end_reason = "error"

    def _begin_stop(self) -> bool:
        """True for the first stop(): the caller then stops everything."""
        with self._lock:
            if self._stopped:
                return False
            self._stopped = True
        self._stop_req.set()
        self._cpu_end()
        if self.tel.gc_watch is not None:
            self.tel.gc_watch.uninstall()
        return True

    def _close_files(self) -> None:
        """The end of stop(): the state, and the session folder written."""
        if self.tel.voice is not None:  # the audio handed over so far, analysed
            self.tel.voice.close()
        if not self.end_reason:
            self.end_reason = "stopped"
        if self.tel.state != "error":
            self.tel.set_state("stopped", self.end_reason)
        if self.recorder is not None:
            self.recorder.close(self.end_reason, trace=self.cfg.keep_records)
        elif self.folder is not None:
            # Stopped before going live (quit while loading, a load error): the folder still
            # gets its transcript and stats, so the session is never silently lost.
            try:
                self.write_files()
            except Exception as e:
                self.tel.warn(f"cannot write the session files in {self.folder}: {e}")
        self.done.set()
