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

from .audio import FRAME, FRAME_NS, HEAD, SAMPLE_RATE
from .telemetry import FrameRecord, Telemetry


class ServerGone(Exception):
    pass


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float32)))) if pcm.size else 0.0


class _CodecWaiter:
    """Poll a rustymimi result getter efficiently while results are outstanding.

    The typical codec time is learned per kind of work (`kind`: a whole frame, or the rest of
    one whose first half went in early), so that switching between the two neither sleeps
    past a result nor polls for long."""

    def __init__(self, getter, fine_s: float = 0.0005):
        self.getter = getter
        self.fine_s = fine_s
        self.expected: dict[str, float] = {}
        self.hist: dict[str, deque] = {}
        self.polls = 0

    def inherit(self, other: "_CodecWaiter") -> None:
        """Start from another waiter's typical times (a new codec of the same model)."""
        self.expected = dict(other.expected)

    def wait(self, submitted_ns: int, stop: threading.Event, kind: str = "whole"):
        # Sleep until ~85 % of the typical codec time has elapsed since submission, then poll.
        expected = self.expected.get(kind, 0.020)
        target = submitted_ns + int(expected * 0.85e9)
        now = time.monotonic_ns()
        if target > now:
            time.sleep((target - now) / 1e9)
        while not stop.is_set():
            self.polls += 1
            out = self.getter()
            if out is not None:
                took = (time.monotonic_ns() - submitted_ns) / 1e9
                hist = self.hist.setdefault(kind, deque(maxlen=32))
                hist.append(took)
                if len(hist) >= 4:
                    self.expected[kind] = float(np.median(hist))
                return out
            time.sleep(self.fine_s)
        return None


class _InputQueue:
    """Frames from the source callback to the send loop: bounded, the oldest dropped first, but
    never the frame whose first half is already in the encoder (dropping it would leave half a
    frame in the codec's stream).  `put` never blocks."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._q: deque = deque()
        self._cv = threading.Condition(threading.Lock())

    def put(self, item, keep_frame: int | None = None):
        """Append `item` = (rec, pcm); return the (rec, pcm) dropped to make room, or None."""
        with self._cv:
            dropped = None
            if len(self._q) >= self.maxsize:
                i = 1 if self._q[0][0].frame == keep_frame and len(self._q) > 1 else 0
                dropped = self._q[i]
                del self._q[i]
            self._q.append(item)
            self._cv.notify()
        return dropped

    def get(self, timeout: float):
        """The oldest item, or None after `timeout` seconds."""
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
                if not self._q:
                    return None
            return self._q.popleft()

    def qsize(self) -> int:
        return len(self._q)

    def empty(self) -> bool:
        return not self._q


class Playout:
    """The jitter buffer in front of the speaker, kept in time rather than in whole frames.

    Every frame plays `delay` after its capture, so the speaker keeps the microphone's 80 ms
    spacing.  The delay aims at the slowest frame of the last `window_s` (capture -> decoded
    PCM), but never more than `max_hold_ms` above the window's median (a stall of the machine
    costs a gap and dropped frames, not seconds of extra latency), plus a margin.  The margin
    starts at `start_margin_ms`, shrinks by 10 ms every `decay_s` without an underrun down to
    `min_margin_ms`, and grows by 20 ms (up to `max_margin_ms`) at each underrun, which also
    doubles the wait before the next shrink (up to a minute): a jittery machine settles on a
    margin that keeps underruns rare.

    Playback starts at the speaker block nearest the moment the first frame's delay reaches the
    aim.  A frame that is not ready
    when the speaker reaches it is an underrun: the speaker plays silence one block at a time
    (20 ms, or the device's callback size) and resumes once the late frame's delay reaches the
    new aim, so the delay grows by just what that frame needed.  When the slow frames leave the
    window the delay comes back down: a frame that would play later than aimed loses up to
    `trim_ms` at its start (faded in over 2 ms), at most once every `trim_every` frames
    (~30 ms per second), and when the delay is two frames or more too long (the machine got
    faster), whole frames are dropped.
    Thread-safe: `observe` runs in the decoder loop, `decide` in the audio callback.
    """

    def __init__(self, window_s: float = 20.0, min_margin_ms: float = 0.0,
                 max_margin_ms: float = 80.0, start_margin_ms: float = 40.0, decay_s: float = 5.0,
                 trim_ms: float = 10.0, trim_every: int = 4, max_hold_ms: float = 240.0):
        self.window_ns = int(window_s * 1e9)
        self.max_hold_ns = int(max_hold_ms * 1e6)
        self.min_margin_ns = int(min_margin_ms * 1e6)
        self.max_margin_ns = int(max_margin_ms * 1e6)
        self.margin_ns = int(start_margin_ms * 1e6)
        self.decay_ns = int(decay_s * 1e9)
        self.trim_ns = int(trim_ms * 1e6)
        self.trim_every = trim_every
        self.playing = False  # False before the first frame and while waiting for a late one
        self.aim_ns: int | None = None  # the delay aimed at, as of the last decision
        self._next_decay: int | None = None
        self._recent: deque = deque()  # (t_decoded_ns, processing_ns)
        self._lock = threading.Lock()
        self._since_trim = 0
        self._waited_at: int | None = None  # the previous call that played nothing
        self.block_ns = 0  # the speaker's block, as seen between two such calls

    def observe(self, t_ns: int, processing_ns: int) -> None:
        """A frame's PCM is ready `processing_ns` after its capture."""
        with self._lock:
            self._recent.append((t_ns, processing_ns))

    def aim(self, now_ns: int) -> int | None:
        with self._lock:
            recent = self._recent
            while len(recent) > 1 and recent[0][0] < now_ns - self.window_ns:
                recent.popleft()
            if not recent:
                return None
            ps = sorted(p for _, p in recent)
        # (a stall of the machine must not hold the whole conversation back for the window)
        slowest = min(ps[-1], ps[len(ps) // 2] + self.max_hold_ns)
        if self._next_decay is not None and now_ns >= self._next_decay:
            self.margin_ns = max(self.min_margin_ns, self.margin_ns - 10 * 1_000_000)
            self._next_decay = now_ns + self.decay_ns
        self.aim_ns = slowest + self.margin_ns
        return self.aim_ns

    def decide(self, head_delay_ns: int | None, depth: int, now_ns: int) -> tuple[int, int, bool, bool]:
        """For the frame the speaker reaches now (`head_delay_ns` = now - its capture; None when
        the output queue is empty): (frames to drop first, ns to trim off the start of the frame
        played, play a frame now?, is this an underrun?)."""
        if not self.playing or head_delay_ns is None or depth == 0:
            if self._waited_at is not None and 0 < now_ns - self._waited_at < 200_000_000:
                self.block_ns = now_ns - self._waited_at
            self._waited_at = now_ns
        if head_delay_ns is None or depth == 0:
            if self.playing:
                self.playing = False
                self.margin_ns = min(self.max_margin_ns, self.margin_ns + 20 * 1_000_000)
                self.decay_ns = min(2 * self.decay_ns, 60_000_000_000)  # shrink more warily
                self._next_decay = now_ns + self.decay_ns
                return 0, 0, False, True
            return 0, 0, False, False
        aim = self.aim(now_ns)
        if not self.playing:
            # Start at the block boundary nearest the aim (a device with 80 ms callbacks would
            # otherwise add up to a whole period to it).
            if aim is not None and head_delay_ns < aim - self.block_ns // 2:
                return 0, 0, False, False  # not yet: the frame would play earlier than aimed
            self.playing = True
            self._since_trim = 0
            if self._next_decay is None:
                self._next_decay = now_ns + self.decay_ns
            return 0, 0, True, False
        self._since_trim += 1
        excess = head_delay_ns - aim if aim is not None else 0
        if excess >= 2 * FRAME_NS and depth > 1:
            return min(depth - 1, excess // FRAME_NS - 1), 0, True, False
        if excess > self.trim_ns // 2 and self._since_trim >= self.trim_every:
            self._since_trim = 0
            return 0, min(excess, self.trim_ns), True, False
        return 0, 0, True, False


_FADE = np.linspace(0.0, 1.0, SAMPLE_RATE // 500, endpoint=False, dtype=np.float32)  # 2 ms


def _trimmed(pcm: np.ndarray, trim_ns: int) -> np.ndarray:
    """The frame without its first `trim_ns`, faded in so that the cut does not click."""
    n = min(len(pcm) - len(_FADE), trim_ns * SAMPLE_RATE // 1_000_000_000)
    out = np.array(pcm[n:], dtype=np.float32)
    out[: len(_FADE)] *= _FADE
    return out


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
        self._reset_before: int | None = None  # send ("reset",) before this frame id
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
        self.tel.add_level("input", _rms(pcm))
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
        self.tel.add_level("output", _rms(pcm))
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
                        self.conn.send(("reset",))
                    self.conn.send(("frame", rec.frame, codes))
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
            kind = msg[0]
            if kind == "result":
                _, frame_id, step, text_token, audio, t_in, t0, t1 = msg
                self._returned += 1
                tel.steps = step + 1
                if self._dec_switch_at is not None and frame_id >= self._dec_switch_at:
                    self._switch_decoder(step)
                rec = tel.frames.get(frame_id) or FrameRecord(frame=frame_id)
                rec.step, rec.t_srv_in, rec.t_step0, rec.t_step1 = step, t_in, t0, t1
                if text_token not in (0, 3):
                    piece = self.spm.id_to_piece(text_token).replace("\u2581", " ")
                    tel.add_token(piece, text_token, step, t1)
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
            elif kind == "segment":
                tel.mark_segment(msg[1], time.monotonic_ns())
            elif kind == "error":
                self.server_exit_code = msg[2] if len(msg) > 2 else 1
                self._server_died(msg[1])
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

    def send_control(self, *msg) -> None:
        try:
            with self.send_lock:
                self.conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            pass


def warm_codec(audio_tokenizer, frames: int = 4, timeout_s: float = 20.0) -> float:
    """Push a few silent frames through encode and decode so the first live frame is fast."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    pcm = np.zeros(FRAME, dtype=np.float32)
    for i in range(frames):
        if i % 2:  # the early-encode path too: a frame in two halves
            audio_tokenizer.encode(pcm[:HEAD])
            audio_tokenizer.encode(pcm[HEAD:])
        else:
            audio_tokenizer.encode(pcm)
        codes = None
        while codes is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the audio codec did not answer during warmup")
            time.sleep(0.002)
            codes = audio_tokenizer.get_encoded()
        audio_tokenizer.decode(np.asarray(codes, dtype=np.uint32).reshape(1, -1)[:, :8])
        out = None
        while out is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the audio codec did not answer during warmup")
            time.sleep(0.002)
            out = audio_tokenizer.get_decoded()
    return (time.perf_counter() - t0) * 1000.0
