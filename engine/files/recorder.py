"""The session folder: everything a session leaves behind, written as it happens.

    input.wav        what the microphone (or input file) delivered, frame by frame
    output.wav       what the speaker played, silence included (the speaker's timeline)
    transcript.md    readable transcript with time markers and the latency summary
    transcript.json  tokens with timestamps, stage percentiles, counters, model/device info
    stats.json       the full session summary (same as --stats-json)
    trace.json       Perfetto trace (with --trace or when frames are kept)

Audio callbacks only put frames on a queue; one writer thread does all file I/O.  WAV headers
are valid after every frame and the JSON/Markdown files are rewritten atomically every couple
of seconds, so a crash at any moment leaves readable files.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine.audio import FRAME
from engine.audio.wavio import WavWriter
from engine.errors import UsageError
from engine.files.export import write_session_files
from engine.telemetry.collect import Telemetry
from engine.telemetry.stats import build_stats

SUMMARY_EVERY_S = 2.0


def prepare_session_dir(path: str | os.PathLike | None) -> Path:
    """Create (or check) the folder; an unusable one is a one-line error, before anything runs."""
    from engine.files.export import default_session_dir

    folder = Path(path).expanduser() if path else default_session_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create session folder {folder}: {e.strerror or e}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to session folder {folder}: permission denied")
    return folder


class SessionRecorder:
    def __init__(self, folder: Path, tel: Telemetry,
                 stats: Callable[[str], dict] | None = None, record_audio: bool = True):
        self.folder = folder
        self.tel = tel
        # the summary for an end reason (the session's); by default the telemetry's alone
        self._stats = stats or (lambda end_reason: build_stats(tel, end_reason=end_reason))
        self.end_reason = ""
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.error: str | None = None
        self.record_audio = record_audio
        self._in = WavWriter(folder / "input.wav") if record_audio else None
        self._out = WavWriter(folder / "output.wav") if record_audio else None
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # called from audio paths: never block, never raise
    def input(self, pcm: np.ndarray) -> None:
        if self._in is not None:
            self._q.put(("in", pcm))

    def output(self, pcm: np.ndarray | None, silence: int = FRAME) -> None:
        """What the speaker plays next: `pcm`, or (None) `silence` samples of silence."""
        if self._out is not None:
            self._q.put(("out", pcm if pcm is not None else silence))

    # as an observer of the pipeline (engine.pipeline.events): what came in, what played
    def captured(self, rec, pcm: np.ndarray) -> None:
        self.input(pcm)

    def played(self, rec, pcm: np.ndarray, aim_ms) -> None:
        self.output(pcm)

    def silence(self, room: int, t_ns: int, underrun: bool) -> None:
        self.output(None, room)

    def _write_audio(self, kind: str, pcm) -> None:
        w = self._in if kind == "in" else self._out
        if isinstance(pcm, int):
            pcm = np.zeros(pcm, np.float32)
        try:
            w.write(pcm)
        except Exception as e:  # a full disk must not stop the conversation
            if self.error is None:
                self.error = f"recording stopped: {e}"
                self.tel.warn(self.error)
            if kind == "in":
                self._in = None
            else:
                self._out = None

    def write_summary(self) -> None:
        try:
            write_session_files(self.folder, self._stats(self.end_reason))
        except Exception as e:
            msg = f"cannot write the session files in {self.folder}: {e}"
            if self.error != msg:
                self.error = msg
                self.tel.warn(msg)

    def _run(self) -> None:
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while True:
            try:
                kind, pcm = self._q.get(timeout=0.2)
                self._write_audio(kind, pcm)
            except queue.Empty:
                if self._stop.is_set():
                    break
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + SUMMARY_EVERY_S
                if self.tel.t_start is not None:
                    self.write_summary()

    def close(self, end_reason: str = "", trace: bool = False) -> None:
        """Flush the audio, write the final summary (and trace). Idempotent."""
        self.end_reason = end_reason or self.end_reason
        self._stop.set()
        self._thread.join(timeout=5.0)
        for w in (self._in, self._out):
            if w is not None:
                try:
                    w.close()
                except Exception:
                    pass
        self.write_summary()
        if trace:
            from engine.files.outputs import write_trace

            try:
                write_trace(self.folder / "trace.json", self.tel)
            except Exception as e:
                self.tel.warn(f"cannot write trace: {e}")
