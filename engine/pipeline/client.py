"""The client side of the pipeline: four loops around a streaming codec, each on its own thread.

    source callback -> input q -> [encode] encoder -> [send to model] -> pipe -> model process
    sink callback   <- output q <- [decode] decoder <- [receive results] <- pipe <- model process

- encode: frames from the input queue into the encoder (or dropped when the model is behind);
- send to model: the encoder's codes, in order, to the model process;
- receive results: the model's messages; a result's text token out, its audio into the decoder;
- decode: the decoder's PCM, in order, into the output queue the sink callback pulls from.

Kyutai's CLI polls each loop every 1 ms, all the time.  Here each loop blocks on the event it
waits for (a queue item, a pipe message); only while the codec has work outstanding do the
send-to-model and decode loops poll its result, first sleeping most of the expected codec time
(the running median), then in short steps.  Idle loops cost nothing; busy loops wake a few
times per frame.

Around the loops, each in its own module: the codec (codec.py), the decoder's side
(decoding.py), early encode (early.py), codec segments (segments.py), the input queue
(input_queue.py) and the jitter buffer in front of the speaker (playout.py).  What happens is
told to observers (events.py): the telemetry, the recorder, `serve`'s conversation.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from engine.audio import FRAME, HEAD
from engine.model.messages import Failed, Frame, Memory, Reset, Result, Segment
from engine.pipeline.codec import StreamingCodec
from engine.pipeline.decoding import Decoding
from engine.pipeline.early import EarlyEncode
from engine.pipeline.events import Observers, PipelineObserver
from engine.pipeline.input_queue import InputQueue
from engine.pipeline.playout import Playout, trimmed
from engine.pipeline.segments import Segments
from engine.telemetry.stages import FrameRecord


class ClientPipeline:
    def __init__(self, codec: StreamingCodec, conn, text_tokenizer, *observers: PipelineObserver,
                 early_encode: bool = True, segments: Segments | None = None,
                 input_max: int = 6, inflight_max: int = 4, output_max: int = 6,
                 codec_max: int = 2):
        self.obs = Observers(*observers)
        # The encoder and decoder sides each hold their own direction: at a segment boundary
        # they move to a fresh codec at different frames (see engine.pipeline.segments).
        self.enc = codec.encoder
        self.conn = conn
        self.spm = text_tokenizer
        self.early = EarlyEncode(early_encode)
        self.segments = segments
        self.input_q = InputQueue(input_max)
        self.output_q: deque = deque()  # (rec, pcm) decoded, for the speaker (or serve's writer)
        self.inflight_max = inflight_max
        self.codec_max = codec_max  # frames inside each codec direction at most
        self.playout = Playout()
        self.muted = False
        self.stop_ev = threading.Event()
        self.send_lock = threading.Lock()
        self.decoding = Decoding(codec, self.obs, self.playout, self.output_q, self.stop_ev,
                                 segments, codec_max, output_max)
        self._enc_pending: deque[FrameRecord] = deque()  # submitted, awaiting their codes
        self._inflight: dict[int, FrameRecord] = {}  # sent to the model, awaiting its result
        self._enc_ev = threading.Event()
        self._enc_room = threading.Event()
        # Frames sent to the server whose result has not come back = sent - returned; each
        # counter has a single writer thread, so no lock is needed.
        self._sent = 0
        self._returned = 0
        self._frame_id = 0
        self.threads: list[threading.Thread] = []
        self.error: str | None = None  # what ended the pipeline: the model process, or a loop
        self.exit_code = 1
        self.failed_loop: str | None = None  # the loop that raised, when one did

    # ---------------------------------------------------------------- source / sink callbacks
    def on_frame(self, pcm: np.ndarray, t_cap: int) -> None:
        """Audio source callback: stamp, enqueue, never block."""
        if self.stop_ev.is_set():
            return
        if self.muted:
            pcm = np.zeros_like(pcm)
        rec = FrameRecord(frame=self._frame_id, t_cap=t_cap)
        self._frame_id += 1
        self.obs.captured(rec, pcm)
        in_use = self.early.frame_arrived(t_cap)
        if in_use is not None:
            self.obs.early_encode(in_use)
        if self.error is not None:
            # No model to send it to (the UI says why; the recording goes on): not a drop.
            self.obs.retired(rec)
            return
        dropped = self.input_q.put((rec, pcm), keep_frame=self.early.head_of)
        if dropped is not None:
            # The pipeline is behind: the oldest frame goes, so latency cannot creep.
            self.obs.dropped(dropped[0], "input", "input dropped: pipeline behind real time")
        self.obs.queues(self.depths())

    def on_head(self, pcm: np.ndarray, t_ns: int) -> None:
        """Audio source callback: the first HEAD samples of the next frame, just captured; into
        the encoder at once when that keeps it in order (engine.pipeline.early).  Never blocks."""
        if self.stop_ev.is_set() or self.error is not None:
            return
        self.early.offer(self._frame_id, t_ns, self._head_fits,
                         lambda: self.enc.submit(np.zeros_like(pcm) if self.muted else pcm))

    def _head_fits(self) -> bool:
        return (self.input_q.empty() and len(self._enc_pending) < self.codec_max
                and self.inflight + len(self._enc_pending) < self.inflight_max
                and not (self.segments is not None and self.segments.switch_due()))

    def pull(self, t_play: int, room: int = FRAME):
        """Audio sink callback: the PCM to play from `t_play`, or None (`room` samples of
        silence)."""
        q = self.output_q
        head = q[0][0] if q else None  # only this callback pops; the decoder loop appends
        delay = t_play - head.t_cap if head is not None and head.t_cap else None
        drop, trim, play, underrun = self.playout.decide(delay, len(q), t_play)
        for _ in range(drop):
            # The delay is two frames or more longer than the jitter needs: catch up at once.
            self.obs.dropped(q.popleft()[0], "output", "playback resynchronised: stale output dropped")
        if not play:
            # (after the model process died, silence is expected: not an underrun)
            self.obs.silence(room, t_play, underrun and self.error is None)
            return None
        rec, pcm = q.popleft()
        if trim:
            pcm = trimmed(pcm, trim)
            self.obs.trimmed(rec)
        if rec.silent:  # (its frame was counted as a delay step)
            self.obs.silence(len(pcm), t_play, False)
            return pcm
        rec.t_play = t_play
        aim = self.playout.aim_ns
        self.obs.played(rec, pcm, aim / 1e6 if aim is not None else None)
        return pcm

    @property
    def inflight(self) -> int:
        return self._sent - self._returned

    def depths(self) -> dict[str, int]:
        return {
            "input": self.input_q.qsize() + len(self._enc_pending),
            "c2s": self.inflight,
            "s2c": len(self.decoding.pending),
            "output": len(self.output_q),
        }

    # ------------------------------------------- the four loops (decode: Decoding.decode_loop)
    def _encode_loop(self) -> None:
        """input q -> encoder."""
        while not self.stop_ev.is_set():
            if len(self._enc_pending) >= self.codec_max:
                # The codec is behind: leave frames in the bounded input queue (which drops the
                # oldest) instead of an unbounded backlog inside the encoder.
                self._enc_room.wait(0.2)
                self._enc_room.clear()
                continue
            item = self.input_q.get(timeout=0.2)
            if item is None:
                continue
            with self.early.lock:
                self._submit(*item)
            self._enc_ev.set()

    def _submit(self, rec: FrameRecord, pcm: np.ndarray) -> None:
        """Encode a frame (or, when its first half went in early, the rest), or drop it."""
        t_head = self.early.take(rec.frame)
        # (a frame whose first half is in the encoder always goes on: the checks on_head made
        # still hold, since nothing was submitted in between)
        if not t_head and self.inflight + len(self._enc_pending) >= self.inflight_max:
            # The server is behind: dropping here keeps the c2s queue bounded.
            self.obs.dropped(rec, "input", "input dropped: model step slower than real time")
            return
        if self.segments is not None:
            new = self.segments.before_encode(rec.frame, not t_head, self._drain_encoder)
            if new is not None:
                new.encoder.inherit(self.enc)
                self.enc = new.encoder
                self.decoding.next_codec = new
        rec.t_enc0 = time.monotonic_ns()
        self._enc_pending.append(rec)
        if t_head:
            rec.t_head = t_head
            self.enc.submit(pcm[HEAD:])
            self.obs.early_encoded(rec)
        else:
            self.enc.submit(pcm)
        if self.segments is not None:
            self.segments.count += 1

    def _drain_encoder(self) -> None:
        """Every frame of the old segment leaves the old encoder first."""
        while self._enc_pending and not self.stop_ev.is_set():
            self._enc_room.wait(0.05)
            self._enc_room.clear()

    def _send_to_model_loop(self) -> None:
        """Encoded codes -> model process."""
        while not self.stop_ev.is_set():
            if not self._enc_pending:
                self._enc_ev.wait(0.2)
                self._enc_ev.clear()
                continue
            rec = self._enc_pending[0]
            codes = self.enc.wait(rec.t_enc0, self.stop_ev, "rest" if rec.t_head else "whole")
            if codes is None:
                return
            rec.t_enc = time.monotonic_ns()
            self._enc_pending.popleft()
            # The codec encodes one frame at a time, in order: a frame submitted while this one
            # was encoding starts its own work now (the wait belongs to "input wait").
            if self._enc_pending:
                nxt = self._enc_pending[0]
                nxt.t_enc0 = max(nxt.t_enc0, rec.t_enc)
            self._enc_room.set()
            self._sent += 1
            self._inflight[rec.frame] = rec
            try:
                with self.send_lock:
                    if self.segments is not None and self.segments.take_reset(rec.frame):
                        self.conn.send(Reset())
                    self.conn.send(Frame(rec.frame, codes))
            except (BrokenPipeError, EOFError, OSError):
                self._fail("connection to the model server lost")
                return

    def _receive_results_loop(self) -> None:
        """Model process -> text token + decoder."""
        obs = self.obs
        while not self.stop_ev.is_set():
            try:
                if not self.conn.poll(0.2):
                    continue
                msg = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                if not self.stop_ev.is_set():
                    self._fail("the model server process died")
                return
            if isinstance(msg, Result):
                self._on_result(msg)
            elif isinstance(msg, Memory):
                obs.model_memory(msg.step, msg.active_bytes / 2**20, msg.gc)
            elif isinstance(msg, Segment):
                obs.segment_started(msg.step, time.monotonic_ns())
            elif isinstance(msg, Failed):
                self.exit_code = msg.exit_code
                self._fail(msg.message)
                return

    def _on_result(self, msg: Result) -> None:
        try:
            self._place_result(msg)
        finally:
            # (counted back only once the frame is placed -- pending decode, retired or
            # dropped -- so that idle() never sees it out of flight and not yet pending)
            self._returned += 1

    def _place_result(self, msg: Result) -> None:
        obs = self.obs
        if self.segments is not None and self.segments.decoder_switch_due(msg.frame_id):
            self.decoding.switch(msg.step)
        rec = self._inflight.pop(msg.frame_id, None) or FrameRecord(frame=msg.frame_id)
        rec.step, rec.t_srv_in, rec.t_step0, rec.t_step1 = (msg.step, msg.t_srv_in, msg.t_step0,
                                                            msg.t_step1)
        obs.stepped(rec)
        if msg.text_token not in (0, 3):  # (0: end of padding, 3: padding)
            piece = self.spm.id_to_piece(msg.text_token).replace("\u2581", " ")
            obs.text_token(piece, msg.text_token, msg.step, msg.t_step1)
        self.decoding.place(rec, msg.audio)

    # ---------------------------------------------------------------- lifecycle
    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            self.obs.failed(message)

    def start(self) -> None:
        for fn in (self._encode_loop, self._send_to_model_loop, self._receive_results_loop,
                   self.decoding.decode_loop):
            name = fn.__name__.strip("_")
            t = threading.Thread(target=self._guarded, args=(fn, name), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _guarded(self, loop, name: str) -> None:
        """A loop that raises ends the conversation with a message; it never dies silently."""
        try:
            loop()
        except Exception as e:
            if self.error is None:
                self.failed_loop = name
            self._fail(f"the {name.replace('_', ' ')} failed: {type(e).__name__}: {e}")

    def idle(self) -> bool:
        """Nothing left in flight between capture and the output queue."""
        return (self.input_q.empty() and not self._enc_pending and self.inflight <= 0
                and not self.decoding.pending)

    def stop(self) -> None:
        # Collect outstanding codec results first: dropping a StreamTokenizer while its threads
        # still work makes rustymimi print "sending on a closed channel".
        deadline = time.monotonic() + 0.3
        while (self._enc_pending or self.decoding.pending) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.stop_ev.set()
        self._enc_ev.set()
        self.decoding.ev.set()
        for t in self.threads:
            t.join(timeout=1.0)
        # Frames the model stepped but the session ended before decoding: their stages up to
        # the model still count (the trace shows them too).
        self.decoding.close()
        if self.segments is not None:
            self.segments.close()
