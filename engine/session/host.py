"""The model host: one model process (engine.model.process) plus the client-side models that
talk with it (the Mimi codecs, the text tokenizer).

A local session, each of `serve`'s conversations and `bench step` use it: the model is resolved
once (engine.model.source.resolve) and handed in; the host spawns the process with typed
options (engine.model.messages.WorkerOptions), loads the codec and the tokenizer while the
process loads the LM, and waits for its Ready.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from functools import cached_property
from typing import Callable

from engine.errors import MoshiTuiError
from engine.model.messages import Configure, Ready, WorkerOptions
from engine.model.process import ModelProcess
from engine.model.sampling import Sampling
from engine.model.source import text_card
from engine.pipeline.codec import StreamingCodec, choose_codec, open_codec
from engine.pipeline.segments import Segments, codec_segments


class ModelHost(ModelProcess):
    """A model process running `entry(conn, resolved, options)` (engine.model.worker.model_main
    unless told; the process's own methods: engine.model.process.ModelProcess), and the client
    side of the model `resolved` describes.

    `codec` is the codec asked for ("auto", "rustymimi", "mlx"); `codec_backend` the one chosen,
    on first use.  `name` and `what` name the process."""

    def __init__(self, resolved, options: WorkerOptions, *, codec: str = "auto",
                 entry: Callable | None = None, name: str = "moshi-tui-server",
                 what: str = "the model server process"):
        if entry is None:
            from engine.model.worker import model_main as entry
        super().__init__(entry, resolved, options, name=name, what=what)
        self.resolved = resolved
        self.options = options
        self.codec = codec
        self.spm = None  # the text tokenizer, once load_tokenizer() ran
        self.info: dict = {}  # the process's Ready info, once wait_ready() returned

    # ------------------------------------------------------------------ the model process
    def start(self, lock: threading.Lock | None = None,
              stopped: Callable[[], bool] | None = None,
              started: Callable[[ModelHost], None] | None = None) -> None:
        """Spawn the model process.

        Under `lock` (the lock its owner's stop() takes): when `stopped()` is true, nothing
        starts and this raises MoshiTuiError("stopped during loading"); else the process starts
        and `started(self)` runs, still under the lock, so that the owner's stop() sees no host
        or a started one (joining one that is not started yet fails), and no process starts
        after a stop."""
        with lock if lock is not None else nullcontext():
            if stopped is not None and stopped():
                raise MoshiTuiError("stopped during loading", exit_code=1)
            super().start()
            if started is not None:
                started(self)

    def wait_ready(self, progress: Callable[[str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
        """Wait until the LM is loaded and warm, `progress` getting each step; its Ready info
        (load/warm-up times, device, max_steps...), also kept in `info`."""
        self.info = dict(self.wait_for(Ready, progress, should_stop).info)
        return self.info

    def configure(self, sampling: Sampling) -> None:
        """A fresh LM state for a new conversation, sampling as it asks."""
        self.send(Configure(sampling))

    # ------------------------------------------------------------------ the client's models
    @cached_property
    def codec_backend(self) -> str:
        """The codec backend chosen for `codec` (engine.pipeline.codec.choose_codec)."""
        return choose_codec(self.codec)

    def new_codec(self) -> StreamingCodec:
        """A fresh, warmed-up Mimi codec (one per conversation, one per codec segment)."""
        return open_codec(str(self.resolved.mimi_weight), self.codec_backend,
                          self.resolved.kind.codebooks)

    def load_tokenizer(self):
        """Load the text tokenizer (kept in `spm`, and returned)."""
        from engine.model.load import load_text_tokenizer

        self.spm = load_text_tokenizer(self.resolved.tokenizer, text_card(self.resolved))
        return self.spm

    def codec_segments(self, warn: Callable[[str], None]) -> Segments | None:
        """The codec segments for a pipeline on this host (engine.pipeline.segments.
        codec_segments), once wait_ready() returned."""
        return codec_segments(self.codec_backend, self.info.get("max_steps"), self.new_codec,
                              warn)
