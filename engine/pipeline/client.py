"""The client side of the pipeline: four loops around a rustymimi StreamTokenizer.

    source callback -> input q -> [send] encode -> [send2] -> pipe -> server
    sink callback   <- output q <- [recv] decode <- [recv2] <- pipe <- server

The official CLI polls each loop every 1 ms, all the time.  Here each loop blocks on the event
it waits for (a queue item, a pipe message); only while rustymimi has work outstanding do the
send2/recv loops poll its result, first sleeping most of the expected codec time (the running
median), then in short steps.  Idle loops cost nothing; busy loops wake a few times per frame.

Early encode: a source that hands over each frame's first half as soon as it is captured
(`on_head`) lets the encoder start 40 ms before the frame is complete.  Mimi's encoder is
streaming in 40 ms steps, so the codes are bit-identical to encoding the frame whole, and only
the second half's work (~60 % of a whole frame's on this CPU) is left once the frame is there.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from engine.audio import FRAME, HEAD, rms
from engine.model.messages import Failed, Frame, Reset, Result, Segment
from engine.pipeline.codec import _CodecWaiter
from engine.pipeline.input_queue import _InputQueue
from engine.pipeline.playout import Playout, _trimmed
from engine.telemetry.collect import Telemetry
from engine.telemetry.stages import FrameRecord


class ClientPipeline:
    def __init__(
        self,
        telemetry: Telemetry,
        audio_tokenizer,
        conn,
        text_tokenizer,
        *,
        input_max: int = 6,
        inflight_max: int = 4,
        output_max: int = 6,
        codec_max: int = 2,
        on_server_error=None,
    ):
        self.tel = telemetry
        # The encoder and decoder sides each hold their own reference: at a segment boundary
        # they switch to a fresh tokenizer at different frames (see _rotate_encoder).
        self.enc_tok = audio_tokenizer
        self.dec_tok = audio_tokenizer
        self.conn = conn
        self.spm = text_tokenizer
        self.input_q = _InputQueue(input_max)
        self.output_q: deque = deque()
        self.output_max = output_max
        self.inflight_max = inflight_max
        self.on_server_error = on_server_error
        self.stop_ev = threading.Event()
        self.send_lock = threading.Lock()
        self._enc_pending: deque = deque()  # (rec, t_submit) awaiting get_encoded
        self._dec_pending: deque = deque()  # (rec, t_submit) awaiting get_decoded
        self._enc_ev = threading.Event()
        self._enc_room = threading.Event()
        self.codec_max = codec_max
        self._dec_ev = threading.Event()
        self._enc_wait = _CodecWaiter(audio_tokenizer.get_encoded)
        self._dec_wait = _CodecWaiter(audio_tokenizer.get_decoded)
        # Frames sent to the server whose result has not come back = sent - returned; each
        # counter has a single writer thread, so no lock is needed.
        self._sent = 0
        self._returned = 0
        self._frame_id = 0
        # Early encode (on_head): one submitter at a time, in frame order.
        self.early_encode = True
        self._submit_lock = threading.Lock()
        self._handled = -1  # the last frame the send loop encoded or dropped
        self._head_of: int | None = None  # the frame whose first half the encoder already has
        self._head_t = 0
        self._head_seen = 0  # when the last head was handed over (used or not)
        self._head_leads: deque = deque(maxlen=25)  # head -> its frame, ns, recent frames
        self._heads_help = True  # see heads_help(), updated once per frame
        self.playout = Playout()
        self.muted = False
        self.threads: list[threading.Thread] = []
        self.server_error: str | None = None
        self.server_exit_code = 1
        self.recorder = None  # optional: .input(pcm) / .output(pcm | None), never blocking
        # Segments.  rustymimi's streaming KV caches grow by ~128 KB per frame and its position
        # limit ends the stream after a few minutes; LmGen has a fixed number of steps.  So
        # every `segment_frames` frames the client starts a new segment: a fresh codec
        # (loaded and warmed in the background beforehand) and a reset of the LM.
        self.segment_frames: int | None = None
        self.codec_factory = None  # () -> a new, warmed StreamTokenizer
        self.on_codec_released = None  # () -> None, once the old codec is no longer used
        self._seg_count = 0
        self._next_tok = None
        self._loader: threading.Thread | None = None
        self._reset_before: int | None = None  # send Reset() before this frame id
        self._dec_switch_at: int | None = None  # results from this frame id use the new codec

    # ---------------------------------------------------------------- source / sink callbacks
    def on_frame(self, pcm: np.ndarray, t_cap: int) -> None:
        """Audio source callback: stamp, enqueue, never block."""
        if self.stop_ev.is_set():
            return
        if self.muted:
            pcm = np.zeros_like(pcm)
        if self.recorder is not None:
            self.recorder.input(pcm)
        rec = self.tel.new_frame(self._frame_id, t_cap)
        self._frame_id += 1
        if self._head_seen:
            self._head_leads.append(t_cap - self._head_seen)
            self._head_seen = 0
            self._heads_help = self.heads_help()
            self.tel.info["early_encode"] = self.early_encode and self._heads_help
        self.tel.add_level("input", rms(pcm))
        if self.server_error is not None:
            # No model to send it to (the UI says why; the recording goes on): not a drop.
            self.tel.frame_retired(rec)
            return
        dropped = self.input_q.put((rec, pcm), keep_frame=self._head_of)
        if dropped is not None:
            # The pipeline is behind: the oldest frame goes, so latency cannot creep.
            self.tel.frame_retired(dropped[0])
            self.tel.count("drops_input")
            self.tel.warn("input dropped: pipeline behind real time")
        self.tel.sample_queues(self.depths())

    MIN_HEAD_LEAD_NS = 10_000_000

    def heads_help(self) -> bool:
        """Heads arrive well before their frames (median of the last 2 s >= 10 ms).  A host
        that runs 80 ms periods hands both halves over at once: splitting the encode would then
        cost work and gain nothing."""
        leads = sorted(self._head_leads)
        return not leads or leads[len(leads) // 2] >= self.MIN_HEAD_LEAD_NS

    def on_head(self, pcm: np.ndarray, t_ns: int) -> None:
        """Audio source callback: the first HEAD samples of the next frame, just captured.

        They go into the encoder at once when it can take them in order (every earlier frame
        handled, nothing waiting, room in flight, no codec switch due) and heads come early
        enough to help (`heads_help`); otherwise they are ignored and the frame is encoded
        whole.  Never blocks."""
        if self.stop_ev.is_set() or not self.early_encode or self.server_error is not None:
            return
        self._head_seen = t_ns
        if not self._heads_help:
            return
        if not self._submit_lock.acquire(blocking=False):
            return  # the send loop is submitting: the frame goes whole
        try:
            fid = self._frame_id
            if (self._handled != fid - 1 or not self.input_q.empty()
                    or len(self._enc_pending) >= self.codec_max
                    or self.inflight + len(self._enc_pending) >= self.inflight_max
                    or self._switch_due()):
                return
            self.enc_tok.encode(np.zeros_like(pcm) if self.muted else pcm)
            self._head_of, self._head_t = fid, time.monotonic_ns()
        finally:
            self._submit_lock.release()

    def pull(self, t_play: int, room: int = FRAME):
        """Audio sink callback: the PCM to play from `t_play`, or None (`room` samples of
        silence)."""
        pcm = self._pull(t_play)
        if self.recorder is not None:
            self.recorder.output(pcm, room)
        return pcm

    def _pull(self, t_play: int):
        q = self.output_q
        head = q[0][0] if q else None  # only this callback pops; the decoder loop appends
        delay = t_play - head.t_cap if head is not None and head.t_cap else None
        drop, trim, play, underrun = self.playout.decide(delay, len(q), t_play)
        if drop:
            # The delay is two frames or more longer than the jitter needs: catch up at once.
            for _ in range(drop):
                rec, _pcm = q.popleft()
                self.tel.count("drops_output")
                self.tel.frame_retired(rec)
            self.tel.warn("playback resynchronised: stale output dropped")
        if not play:
            if underrun and self.server_error is None:  # (after it died, silence is expected)
                self.tel.count("underruns")
                self.tel.underrun_at(t_play)
            self.tel.add_level("output", 0.0)
            return None
        rec, pcm = q.popleft()
        if trim:
            pcm = _trimmed(pcm, trim)
            self.tel.count("trims_output")
        rec.t_play = t_play
        self.tel.frame_played(rec)
        if self.playout.aim_ns is not None:
            self.tel.playout_aim(self.playout.aim_ns / 1e6)
        self.tel.add_level("output", rms(pcm))
        return pcm

    @property
    def inflight(self) -> int:
        return self._sent - self._returned

    def depths(self) -> dict[str, int]:
        return {
            "input": self.input_q.qsize() + len(self._enc_pending),
            "c2s": self.inflight,
            "s2c": len(self._dec_pending),
            "output": len(self.output_q),
        }

    # ---------------------------------------------------------------- the four loops
    def _send_loop(self) -> None:
        """input q -> rustymimi encode."""
        while not self.stop_ev.is_set():
            if len(self._enc_pending) >= self.codec_max:
                # rustymimi is behind: leave frames in the bounded input queue (which drops the
                # oldest) instead of an unbounded backlog inside the encoder.
                self._enc_room.wait(0.2)
                self._enc_room.clear()
                continue
            item = self.input_q.get(timeout=0.2)
            if item is None:
                continue
            rec, pcm = item
            with self._submit_lock:
                self._submit(rec, pcm)
            self._enc_ev.set()

    def _submit(self, rec: FrameRecord, pcm: np.ndarray) -> None:
        """Encode a frame (or, when its first half went in early, the rest), or drop it."""
        early = self._head_of == rec.frame
        self._head_of = None
        self._handled = rec.frame
        # (a frame whose first half is in the encoder always goes on: the checks on_head made
        # still hold, since nothing was submitted in between)
        if not early and self.inflight + len(self._enc_pending) >= self.inflight_max:
            # The server is behind: dropping here keeps the c2s queue bounded.
            self.tel.frame_retired(rec)
            self.tel.count("drops_input")
            self.tel.warn("input dropped: model step slower than real time")
            return
        if self.segment_frames:
            self._maybe_rotate(rec, switch=not early)
        rec.t_enc0 = time.monotonic_ns()
        self._enc_pending.append(rec)
        if early:
            rec.t_head = self._head_t
            self.enc_tok.encode(pcm[HEAD:])
            self.tel.count("early_encodes")
        else:
            self.enc_tok.encode(pcm)
        self._seg_count += 1

    # ---------------------------------------------------------------- segments
    PRELOAD_FRAMES = 75  # start loading the next codec 6 s before the boundary

    def _switch_due(self) -> bool:
        return bool(self.segment_frames) and self._seg_count >= self.segment_frames \
            and self._next_tok is not None

    def _maybe_rotate(self, rec: FrameRecord, switch: bool = True) -> None:
        """In the send loop, before `rec` is encoded (`switch`=False: not at this frame, whose
        first half is already in the current encoder)."""
        n = self.segment_frames
        # (never more than two codecs alive: wait until the decoder has left the old one)
        if (self._seg_count >= n - self.PRELOAD_FRAMES and self._loader is None
                and self._next_tok is None and self._dec_switch_at is None):
            self._loader = threading.Thread(target=self._load_next_codec, name="codec-loader",
                                            daemon=True)
            self._loader.start()
        if self._seg_count < n or self._next_tok is None or not switch:
            return  # (a late loader only delays the boundary by a few frames)
        # Every frame of the old segment must leave the old encoder first.
        while self._enc_pending and not self.stop_ev.is_set():
            self._enc_room.wait(0.05)
            self._enc_room.clear()
        new, self._next_tok, self._loader = self._next_tok, None, None
        waiter = _CodecWaiter(new.get_encoded)
        waiter.inherit(self._enc_wait)
        self.enc_tok, self._enc_wait = new, waiter
        self._seg_count = 0
        self._dec_switch_at = rec.frame
        self._reset_before = rec.frame

    def _load_next_codec(self) -> None:
        try:
            self._next_tok = self.codec_factory()
        except Exception as e:  # keep going on the old codec; the warning says why
            self.tel.warn(f"could not prepare the next codec segment: {e}")

    def _switch_decoder(self, step: int) -> None:
        """In recv2, on the first result of the new segment: drain the old decoder, switch."""
        while self._dec_pending and not self.stop_ev.is_set():
            time.sleep(0.002)
        waiter = _CodecWaiter(self.enc_tok.get_decoded)
        waiter.inherit(self._dec_wait)
        self.dec_tok, self._dec_wait = self.enc_tok, waiter
        self._dec_switch_at = None
        if self.on_codec_released is not None:
            self.on_codec_released()
        self.tel.mark_segment(step, time.monotonic_ns())

    def _send2_loop(self) -> None:
        """rustymimi encoded codes -> server."""
        while not self.stop_ev.is_set():
            if not self._enc_pending:
                self._enc_ev.wait(0.2)
                self._enc_ev.clear()
                continue
            rec = self._enc_pending[0]
            codes = self._enc_wait.wait(rec.t_enc0, self.stop_ev, "rest" if rec.t_head else "whole")
            if codes is None:
                return
            rec.t_enc = time.monotonic_ns()
            self._enc_pending.popleft()
            # rustymimi encodes one frame at a time, in order: a frame submitted while this one
            # was encoding starts its own work now (the wait belongs to "input wait").
            if self._enc_pending:
                nxt = self._enc_pending[0]
                nxt.t_enc0 = max(nxt.t_enc0, rec.t_enc)
            self._enc_room.set()
            self._sent += 1
            try:
                with self.send_lock:
                    if self._reset_before is not None and rec.frame >= self._reset_before:
                        self._reset_before = None
                        self.conn.send(Reset())
                    self.conn.send(Frame(rec.frame, codes))
            except (BrokenPipeError, EOFError, OSError):
                self._server_died("connection to the model server lost")
                return

    def _recv2_loop(self) -> None:
        """server -> text token + rustymimi decode."""
        tel = self.tel
        while not self.stop_ev.is_set():
            try:
                if not self.conn.poll(0.2):
                    continue
                msg = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                if not self.stop_ev.is_set():
                    self._server_died("the model server process died")
                return
            if isinstance(msg, Result):
                frame_id, step, text_token, audio = msg.frame_id, msg.step, msg.text_token, msg.audio
                self._returned += 1
                tel.steps = step + 1
                if self._dec_switch_at is not None and frame_id >= self._dec_switch_at:
                    self._switch_decoder(step)
                rec = tel.frames.get(frame_id) or FrameRecord(frame=frame_id)
                rec.step, rec.t_srv_in, rec.t_step0, rec.t_step1 = (step, msg.t_srv_in, msg.t_step0,
                                                                    msg.t_step1)
                if text_token not in (0, 3):
                    piece = self.spm.id_to_piece(text_token).replace("\u2581", " ")
                    tel.add_token(piece, text_token, step, msg.t_step1)
                if audio is None:
                    tel.count("delay_steps")
                    self._fold_server_stages(rec)
                    tel.frame_retired(rec)
                    continue
                if len(self._dec_pending) >= self.codec_max:
                    # The decoder is behind: skip this frame rather than queue stale audio.
                    tel.count("drops_decode")
                    tel.warn("output dropped: decoder behind real time")
                    self._fold_server_stages(rec)
                    tel.frame_retired(rec)
                    continue
                rec.has_audio = True
                rec.t_dec0 = time.monotonic_ns()
                self._dec_pending.append(rec)
                self.dec_tok.decode(audio)
                self._dec_ev.set()
            elif isinstance(msg, Segment):
                tel.mark_segment(msg.step, time.monotonic_ns())
            elif isinstance(msg, Failed):
                self.server_exit_code = msg.exit_code
                self._server_died(msg.message)
                return

    def _fold_server_stages(self, rec: FrameRecord) -> None:
        """Stages up to the model step of a frame whose audio will not be decoded."""
        for name, ms in rec.stages_ms().items():
            if name in ("encode", "uplink", "queue", "model", "encode_work"):
                self.tel.add_stage(name, ms)

    def _recv_loop(self) -> None:
        """rustymimi decoded PCM -> output q."""
        while not self.stop_ev.is_set():
            if not self._dec_pending:
                self._dec_ev.wait(0.2)
                self._dec_ev.clear()
                continue
            rec = self._dec_pending[0]
            pcm = self._dec_wait.wait(rec.t_dec0, self.stop_ev)
            if pcm is None:
                return
            rec.t_dec = time.monotonic_ns()
            self._dec_pending.popleft()
            if self._dec_pending:
                nxt = self._dec_pending[0]
                nxt.t_dec0 = max(nxt.t_dec0, rec.t_dec)
            self.tel.frame_decoded(rec)
            pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
            if rec.t_cap:
                self.playout.observe(rec.t_dec, rec.t_dec - rec.t_cap)
            self.output_q.append((rec, pcm))
            while len(self.output_q) > self.output_max:
                old, _ = self.output_q.popleft()
                self.tel.count("drops_output")
                self.tel.frame_retired(old)

    # ---------------------------------------------------------------- lifecycle
    def _server_died(self, message: str) -> None:
        if self.server_error is None:
            self.server_error = message
            self.tel.error = message
            self.tel.set_state("error", message)
            if self.on_server_error:
                self.on_server_error(message)

    def start(self) -> None:
        for fn in (self._send_loop, self._send2_loop, self._recv2_loop, self._recv_loop):
            t = threading.Thread(target=fn, name=fn.__name__.strip("_"), daemon=True)
            t.start()
            self.threads.append(t)

    def idle(self) -> bool:
        """Nothing left in flight between capture and the output queue."""
        return (
            self.input_q.empty()
            and not self._enc_pending
            and self.inflight <= 0
            and not self._dec_pending
        )

    def stop(self) -> None:
        # Collect outstanding codec results first: dropping a StreamTokenizer while its threads
        # still work makes rustymimi print "sending on a closed channel".
        deadline = time.monotonic() + 0.3
        while (self._enc_pending or self._dec_pending) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.stop_ev.set()
        self._enc_ev.set()
        self._dec_ev.set()
        for t in self.threads:
            t.join(timeout=1.0)
        # Frames the model stepped but the session ended before decoding: their stages up to
        # the model still count (the trace shows them too).
        for rec in list(self.tel.frames.values()):
            if rec.t_step1 and not rec.t_dec:
                self._fold_server_stages(rec)
