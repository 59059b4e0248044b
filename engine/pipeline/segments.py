"""Codec segments: every so many frames, a fresh codec and a fresh LM state.

rustymimi's streaming codec stops for good after 4096 frames and its KV caches grow with every
frame until then; the LM has a fixed number of steps.  So every `frames` frames the pipeline
starts a new segment: a fresh codec, loaded and warmed in the background beforehand, and a
`Reset` of the LM.  The encoder switches first, at a frame boundary (never at a frame
whose first half is already in the old encoder), once every frame of the old segment has left
the old encoder; the decoder switches when the first result of the new segment comes back,
once the old decoder has drained.  At most two codecs are alive at a time.

`codec_segments` is the rule for when a pipeline gets them: with rustymimi, every
`min(max_steps - 2, CODEC_SEGMENT_FRAMES)` frames (8 at least).
"""

from __future__ import annotations

import threading
from typing import Callable

from engine.pipeline.alloc import release_free_memory
from engine.pipeline.codec import StreamingCodec

# rustymimi's streaming encoder fails once its transformer positions pass max_seq_len (4096
# frames), and its KV caches grow with every frame until then.
CODEC_SEGMENT_FRAMES = 3600
DEFAULT_MAX_STEPS = 3000  # the LM's context when the model process did not say


class Segments:
    PRELOAD_FRAMES = 75  # start loading the next codec 6 s before the boundary

    def __init__(self, frames: int, open_codec: Callable[[], StreamingCodec],
                 on_released: Callable[[], None] | None = None,
                 warn: Callable[[str], None] = lambda text: None):
        self.frames = frames
        self.open_codec = open_codec
        self.on_released = on_released
        self.warn = warn
        self.count = 0  # frames encoded in this segment
        self._next: StreamingCodec | None = None
        self._loader: threading.Thread | None = None
        self.reset_before: int | None = None  # send Reset() before this frame id
        self.decoder_switch_at: int | None = None  # results from this frame id: the new codec

    def switch_due(self) -> bool:
        """The next frame starts a new segment (so its head must not go into the old one)."""
        return self.count >= self.frames and self._next is not None

    def before_encode(self, frame: int, switch: bool, drain: Callable[[], None]
                      ) -> StreamingCodec | None:
        """In the encode loop, before `frame` is encoded: preload the next codec when the boundary
        nears; at the boundary (`switch`: not a frame whose first half is in the old encoder),
        `drain()` the old encoder and return the new codec for the encoder to use."""
        # (never more than two codecs alive: wait until the decoder has left the old one)
        if (self.count >= self.frames - self.PRELOAD_FRAMES and self._loader is None
                and self._next is None and self.decoder_switch_at is None):
            self._loader = threading.Thread(target=self._load, name="codec-loader", daemon=True)
            self._loader.start()
        if self.count < self.frames or self._next is None or not switch:
            return None  # (a late loader only delays the boundary by a few frames)
        drain()
        new, self._next, self._loader = self._next, None, None
        self.count = 0
        self.decoder_switch_at = frame
        self.reset_before = frame
        return new

    def _load(self) -> None:
        try:
            self._next = self.open_codec()
        except Exception as e:  # keep going on the old codec; the warning says why
            self.warn(f"could not prepare the next codec segment: {e}")

    def take_reset(self, frame: int) -> bool:
        """Whether the LM must be reset before `frame` goes to the model (once)."""
        if self.reset_before is not None and frame >= self.reset_before:
            self.reset_before = None
            return True
        return False

    def decoder_switch_due(self, frame: int) -> bool:
        return self.decoder_switch_at is not None and frame >= self.decoder_switch_at

    def decoder_switched(self) -> None:
        self.decoder_switch_at = None
        if self.on_released is not None:
            self.on_released()

    def close(self) -> None:
        """The pipeline stopped: free a codec loaded for a boundary that never came."""
        if self._loader is not None:
            self._loader.join(timeout=5.0)
        nxt, self._next = self._next, None
        if nxt is not None:
            nxt.close()


def codec_segments(backend: str, max_steps: int | None, open_codec: Callable[[], StreamingCodec],
                   warn: Callable[[str], None]) -> Segments | None:
    """The segments of a pipeline whose codec is `backend` and whose LM starts a new segment
    after `max_steps` steps (what the model process's Ready says).

    rustymimi's stream ends after 4096 frames and its caches grow until then: a fresh codec
    with each new segment (the LM's step budget, or the codec's limit, first), freed memory
    handed back to the OS once the old one is gone.  MLX's Mimi keeps bounded caches and no
    position limit: None, the codec streams on, and the model process starts each new segment
    itself when the LM context is full."""
    if backend != "rustymimi":
        return None
    steps = int(max_steps or DEFAULT_MAX_STEPS)
    return Segments(max(8, min(steps - 2, CODEC_SEGMENT_FRAMES)), open_codec,
                    release_free_memory, warn)
