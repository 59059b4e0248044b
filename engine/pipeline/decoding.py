"""The decoder's side of the client pipeline (engine.pipeline.client): a model result's audio
into the decoder, the decoder moved to the next segment's codec on that segment's first result,
and the decode loop, which puts decoded PCM into the output queue in frame order."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from engine.audio import FRAME
from engine.pipeline.codec import StreamingCodec
from engine.pipeline.events import Observers
from engine.pipeline.playout import Playout
from engine.pipeline.segments import Segments
from engine.telemetry.stages import FrameRecord


class Decoding:
    """What the decoder holds and the loop that empties it.  `place` and `switch` run on the
    receive-results loop, `decode_loop` on its own thread; `pending` is the hand-over between
    them (each frame leaves it only once it is in `output_q`)."""

    def __init__(self, codec: StreamingCodec, obs: Observers, playout: Playout, output_q: deque,
                 stop_ev: threading.Event, segments: Segments | None, codec_max: int,
                 output_max: int):
        self.codec = codec  # the one the decoder uses (the encoder moves first at a boundary)
        self.next_codec: StreamingCodec | None = None  # the encoder's, once it has moved
        self.dec = codec.decoder
        self.obs = obs
        self.playout = playout
        self.output_q = output_q  # (rec, pcm) decoded, for the speaker (or serve's writer)
        self.stop_ev = stop_ev
        self.segments = segments
        self.codec_max = codec_max  # frames inside the decoder at most
        self.output_max = output_max
        self.pending: deque[FrameRecord] = deque()  # submitted, awaiting their PCM
        self.ev = threading.Event()

    def place(self, rec: FrameRecord, audio) -> None:
        """A stepped frame's audio codes (None: a delay step) into the decoder, or dropped."""
        obs = self.obs
        if audio is None:
            obs.delay_step(rec)
            if self.playout.playing:
                # A new segment's first step (the codebook delays): the model has no audio for
                # this frame.  The speaker plays its 80 ms as silence at the frame's time, in
                # order with the frames around it: a planned gap, not an underrun (which would
                # also raise the jitter buffer's margin for nothing).
                rec.silent = True
                self.pending.append(rec)
                self.ev.set()
        elif len(self.pending) >= self.codec_max:
            # The decoder is behind: skip this frame rather than queue stale audio.
            obs.dropped(rec, "decode", "output dropped: decoder behind real time")
        else:
            rec.has_audio = True
            rec.t_dec0 = time.monotonic_ns()
            self.pending.append(rec)
            self.dec.submit(audio)
            self.ev.set()

    def switch(self, step: int) -> None:
        """On the first result of the new segment: drain the old decoder, switch."""
        while self.pending and not self.stop_ev.is_set():
            time.sleep(0.002)
        old, self.codec, self.next_codec = self.codec, self.next_codec, None
        self.codec.decoder.inherit(self.dec)
        self.dec = self.codec.decoder
        old.close()
        self.segments.decoder_switched()
        self.obs.segment_started(step, time.monotonic_ns())

    def decode_loop(self) -> None:
        """Decoded PCM -> output q."""
        while not self.stop_ev.is_set():
            if not self.pending:
                self.ev.wait(0.2)
                self.ev.clear()
                continue
            rec = self.pending[0]
            # (each frame leaves `pending` only once it is in the output queue: the pipeline's
            # idle() never sees a frame in neither)
            if rec.silent:  # nothing to decode: its silence goes out in its turn
                self.output_q.append((rec, np.zeros(FRAME, np.float32)))
                self.pending.popleft()
                continue
            pcm = self.dec.wait(rec.t_dec0, self.stop_ev)
            if pcm is None:
                return
            rec.t_dec = time.monotonic_ns()
            pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
            if rec.t_cap:
                self.playout.observe(rec.t_dec, rec.t_dec - rec.t_cap)
            self.output_q.append((rec, pcm))
            self.pending.popleft()
            if self.pending:
                nxt = self.pending[0]
                nxt.t_dec0 = max(nxt.t_dec0, rec.t_dec)
            self.obs.pcm_ready(rec, pcm)
            while len(self.output_q) > self.output_max:
                self.obs.dropped(self.output_q.popleft()[0], "output")

    def close(self) -> None:
        """After the loop stopped: frames stepped but not decoded are abandoned (their stages up
        to the model still count); both codecs closed."""
        for rec in list(self.pending):
            if not rec.silent:
                self.obs.abandoned(rec)
        for codec in (self.codec, self.next_codec):
            if codec is not None:
                codec.close()
