"""A conversation with a Moshi server on another machine, over Kyutai's websocket protocol.

`RemoteSession` has the public interface of `engine.session.Session` (prepare / start /
snapshot / set_muted / wait / request_stop / stop / done / live / end_reason / exit_code / tel /
cpu / process_figures / session_path), so the headless runner and the app drive it unchanged:

    source callback -> [net loop] Opus encode -> websocket 0x01 --->  moshi.server, local_web,
    sink pull       <- jitter buffer <- Opus decode <- 0x01/0x02 <--  moshi-backend, `serve`

The audio endpoints run in their own threads as in a local session; everything network-side
(connect, handshake, Opus encode/decode, ping, reconnect) runs in one asyncio thread.

What the telemetry holds in this mode (only what can be measured from here):
  encode        capture -> Opus pages ready to send (queue wait + encode)
  encode_work   the Opus encoder call alone             decode_work  the Opus decoder call alone
  rtt           websocket ping -> pong (network round trip + the server's event loop)
  e2e           the Moshi web client's end-to-end estimate, taken when a frame starts playing:
                seconds of microphone audio sent minus seconds of Moshi's audio played (on this
                connection); it includes the network, the server and the model's acoustic delay
  model, queue  the server's step time and queue wait, when the server sends them (`serve` does,
                on request; Kyutai's servers do not)
  queues        input: frames waiting to be encoded/sent; c2s: frames sent whose audio has not
                come back yet; s2c: a partly received frame; output: the jitter buffer
  counters      + reconnects, drops_offline (frames captured while disconnected),
                protocol_errors (messages from the server that break the protocol, discarded),
                server_errors (0x05 error messages from the server, shown as warnings)
Frames are paired with the audio that comes back in arrival order (the servers answer one frame
per frame), which is what the trace shows; stages never depend on that pairing.

The transcript survives reconnects: text keeps accumulating in the same telemetry.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from array import array
from collections import deque
from pathlib import Path

import numpy as np

from engine.audio import FRAME, FRAME_MS, SAMPLE_RATE, rms
from engine.errors import MoshiTuiError
from engine.session import wsproto
from engine.session.remote.jitter import JitterBuffer
from engine.session.remote.url import normalize_url
from engine.telemetry.collect import Telemetry
from engine.telemetry.procfigs import ProcessFigures
from engine.telemetry.stages import FrameRecord, percentiles

EXTRA_STAGES = ("rtt", "e2e")


class RemoteTelemetry(Telemetry):
    """Telemetry with the stages only a remote session has (rtt, e2e)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for s in EXTRA_STAGES:
            self.stage_hist[s] = deque(maxlen=self.window)
            self.stage_all[s] = array("d")

    def stage_stats(self, full: bool = False):
        src = self.stage_all if full else self.stage_hist
        return {s: percentiles(list(v)) for s, v in src.items()}


class _ConnectionLost(Exception):
    pass


class _Conn:
    """Per-connection state (a reconnect starts a fresh Opus stream both ways)."""

    def __init__(self, ws, index: int):
        import sphn

        self.ws = ws
        self.index = index
        self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self.writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self.handshake = asyncio.Event()
        self.online = False
        self.sent = 0  # frames sent
        self.received = 0  # 80 ms frames of audio received
        self.played = 0  # of those, frames the speaker has started playing
        self.fifo: deque[FrameRecord] = deque()  # sent frames not yet paired with returned audio
        self.pending = np.zeros(0, np.float32)  # decoded samples short of a whole frame
        self.last_rx = time.monotonic()
        self.last_audio_rx = 0.0
        self.lost_reason = ""
        self.pings: dict[int, int] = {}
        self.tasks: set = set()


class RemoteSession(ProcessFigures):
    """Talk to a remote Moshi server; same interface as `engine.session.Session`."""

    exit_code = 0

    def __init__(
        self,
        cfg,
        url: str,
        telemetry: Telemetry | None = None,
        *,
        reconnect: bool = True,
        give_up_s: float = 60.0,
        backoff_s: tuple[float, float] = (0.5, 8.0),
        ping_every_s: float = 1.0,
        dead_after_s: float = 10.0,
        connect_timeout_s: float = 10.0,
    ):
        self.cfg = cfg
        self.url_arg = url
        self.url: str | None = None
        self.tel = telemetry or RemoteTelemetry()
        for s in EXTRA_STAGES:  # a plain Telemetry passed in still gets the remote stages
            if s not in self.tel.stage_hist:
                self.tel.stage_hist[s] = deque(maxlen=self.tel.window)
                self.tel.stage_all[s] = array("d")
        self.tel.keep_records = bool(getattr(cfg, "keep_records", False))
        for c in ("reconnects", "drops_offline", "protocol_errors", "server_errors"):
            self.tel.counters.setdefault(c, 0)
        self.reconnect = reconnect
        self.give_up_s = give_up_s
        self.backoff_s = backoff_s
        self.ping_every_s = ping_every_s
        self.dead_after_s = dead_after_s
        self.connect_timeout_s = connect_timeout_s
        self.input_max = max(2, int(getattr(cfg, "input_max", 3) or 3))
        self.source = None
        self.sink = None
        self.done = threading.Event()
        self.live = threading.Event()
        self.end_reason = ""
        self.cpu: dict = {}
        self.folder: Path | None = None
        self.recorder = None
        self.muted = False
        self.jitter = JitterBuffer()
        self.connections = 0
        self._in: deque = deque()  # (rec, pcm) waiting for the net loop
        self._frame_id = 0
        self._conn: _Conn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._end: asyncio.Event | None = None
        self._stop_req = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._cpu0 = None
        self._t_live: float | None = None
        self._closing = False  # the session is ending: later frames are not part of it
        self._connecting = False  # a websocket connection attempt is under way
        self._conn_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ setup
    def prepare(self) -> None:
        """Cheap validation: the URL and the audio endpoints. Raises MoshiTuiError."""
        from engine.audio.devices import open_endpoints

        self.url = normalize_url(self.url_arg)
        model = getattr(self.cfg, "model", None)
        demo = bool(getattr(model, "demo", False))
        if model is not None and any(
            getattr(model, k, None) for k in ("hf_repo", "quantized", "moshi_weight", "mimi_weight",
                                              "tokenizer", "lm_config")
        ):
            self.tel.warn("model options are ignored with --remote: the server chooses the model")
        self.source, self.sink = open_endpoints(self.cfg.input, self.cfg.output, demo=demo,
                                                warn=self.tel.warn)
        self.tel.info.update(input=self.source.label, output=self.sink.label)
        self.tel.info.update(model=f"remote {self.url}", remote_url=self.url)
        if getattr(self.cfg, "save", False):
            from engine.files.recorder import prepare_session_dir

            self.folder = prepare_session_dir(getattr(self.cfg, "session_dir", None))
            self.tel.info["session_dir"] = str(self.folder)

    def start(self) -> None:
        if self.source is None:
            self.prepare()
        self._thread = threading.Thread(target=self._thread_main, name="remote-net", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ audio callbacks
    def on_frame(self, pcm: np.ndarray, t_cap: int) -> None:
        """Audio source callback: stamp, hand to the net loop, never block."""
        if self._closing:
            return
        if self.muted:
            pcm = np.zeros_like(pcm)
        if self.recorder is not None:
            self.recorder.input(pcm)
        tel = self.tel
        rec = tel.new_frame(self._frame_id, t_cap)
        self._frame_id += 1
        tel.add_level("input", rms(pcm))
        conn = self._conn
        if conn is None or not conn.online:
            tel.frame_retired(rec)
            tel.count("drops_offline")
        else:
            self._in.append((rec, pcm))
            while len(self._in) > self.input_max:
                try:
                    old, _ = self._in.popleft()
                except IndexError:
                    break
                tel.frame_retired(old)
                tel.count("drops_input")
                tel.warn("input dropped: the network is behind real time")
            self._notify()
        tel.sample_queues(self.depths())

    def pull(self, t_play: int, room: int = FRAME):
        """Audio sink callback: the PCM to play from `t_play`, or None (`room` samples of
        silence)."""
        item, underrun = self.jitter.pop()
        if underrun:
            self.tel.count("underruns")
        if item is None:
            self.tel.add_level("output", 0.0)
            if self.recorder is not None:
                self.recorder.output(None, room)
            return None
        conn, rec, pcm = item
        rec.t_play = t_play
        # The web client's estimate: mic audio sent minus audio played before this frame.
        self.tel.add_stage("e2e", (conn.sent - conn.played) * FRAME_MS)
        conn.played += 1
        self.tel.frames_played += 1
        self.tel.frame_retired(rec)
        self.tel.add_level("output", rms(pcm))
        if self.recorder is not None:
            self.recorder.output(pcm)
        return pcm

    def depths(self) -> dict[str, int]:
        conn = self._conn
        return {
            "input": len(self._in),
            "c2s": len(conn.fifo) if conn is not None else 0,
            "s2c": 1 if conn is not None and conn.pending.size else 0,
            "output": len(self.jitter),
        }

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop has closed
            pass

    # ------------------------------------------------------------------ the net thread
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except MoshiTuiError as e:
            self._fail(str(e), e.exit_code)
        except Exception as e:  # unexpected: one line, and the session still ends
            self._fail(f"{type(e).__name__}: {e}", 1)
        finally:
            self.done.set()

    def _fail(self, message: str, exit_code: int = 1) -> None:
        self._closing = True
        self.tel.error = message
        self.exit_code = exit_code
        self.tel.set_state("error", message)
        self.end_reason = "error"
        if self._end is not None:
            self._end.set()

    def _finish(self, reason: str) -> None:
        """End the session (called in the net loop)."""
        self._closing = True
        if not self.end_reason:
            self.end_reason = reason
        if self._end is not None:
            self._end.set()
        if self._connecting and self._conn_task is not None:
            self._conn_task.cancel()  # a connection attempt is not worth waiting for

    async def _main(self) -> None:
        import aiohttp

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._end = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._conn_task = asyncio.create_task(self._connection_loop(http))
            watch = asyncio.create_task(self._watch())
            try:
                await self._conn_task
            except asyncio.CancelledError:
                if not self._end.is_set():
                    raise
            finally:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)

    async def _connection_loop(self, http) -> None:
        import aiohttp

        tel = self.tel
        first = True
        attempt = 0
        offline_since: float | None = None
        while not self._end.is_set():
            tel.set_state("connecting" if first else "reconnecting", f"connecting to {self.url}")
            err = None
            self._connecting = True
            try:
                ws = await asyncio.wait_for(
                    http.ws_connect(self.url, autoping=False, max_msg_size=wsproto.MAX_TRANSPORT),
                    timeout=self.connect_timeout_s,
                )
            except aiohttp.WSServerHandshakeError as e:
                err = f"the server refused the websocket (HTTP {e.status} {e.message})"
            except asyncio.TimeoutError:
                err = f"no answer within {self.connect_timeout_s:g} s"
            except (aiohttp.ClientError, OSError) as e:
                err = _connect_error(e)
            finally:
                self._connecting = False
            if err is not None:
                if first:
                    raise MoshiTuiError(f"cannot connect to {self.url}: {err}", exit_code=1)
                if not self.reconnect or time.monotonic() - offline_since > self.give_up_s:
                    raise MoshiTuiError(
                        f"lost the connection to {self.url} and could not reconnect "
                        f"within {self.give_up_s:.0f} s: {err}", exit_code=1)
                lo, hi = self.backoff_s
                delay = min(hi, lo * (2 ** attempt)) * random.uniform(0.8, 1.2)
                attempt += 1
                tel.set_state("reconnecting", f"{err}; retry {attempt} in {delay:.1f} s")
                await _wait(self._end, delay)
                continue

            self.connections += 1
            conn = _Conn(ws, self.connections)
            try:
                ok = await self._converse(conn, first)
            finally:
                conn.online = False
                if not ws.closed:
                    try:
                        await asyncio.wait_for(ws.close(), timeout=2.0)
                    except (asyncio.TimeoutError, Exception):
                        pass
                tel.info["close_code"] = ws.close_code
                self._retire_conn(conn)
            if ok:
                first = False
                attempt = 0
            if self._end.is_set():
                break
            reason = conn.lost_reason or f"the server closed the connection (code {ws.close_code})"
            if first:  # never got the handshake
                raise MoshiTuiError(f"{self.url}: {reason} before the handshake", exit_code=1)
            if not self.reconnect:
                raise MoshiTuiError(f"lost the connection to {self.url}: {reason}", exit_code=1)
            if ok or offline_since is None:
                offline_since = time.monotonic()
            tel.warn(f"connection lost ({reason}): reconnecting")
            tel.set_state("reconnecting", reason)
            await _wait(self._end, self.backoff_s[0])

    async def _converse(self, conn: _Conn, first: bool) -> bool:
        """One websocket connection; True once the handshake came (the conversation ran)."""
        tel = self.tel
        self._conn = conn
        reader = asyncio.create_task(self._reader(conn))
        pinger = asyncio.create_task(self._pinger(conn))
        end_wait = asyncio.create_task(self._end.wait())
        hs_wait = asyncio.create_task(conn.handshake.wait())
        sender = None
        handshaken = False
        t0 = time.monotonic()
        tel.set_state("connecting" if first else "reconnecting", "waiting for the server's handshake")
        try:
            while True:
                done, _ = await asyncio.wait(
                    {reader, pinger, end_wait, hs_wait}, timeout=2.0,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done:
                    break
                tel.set_state(
                    tel.state,
                    f"connected; no handshake after {time.monotonic() - t0:.0f} s "
                    "(the server may be busy with another client)",
                )
            if hs_wait in done and not self._end.is_set() and not (reader.done() or pinger.done()):
                handshaken = True
                # Anything captured before the handshake is stale: start from now.
                while self._in:
                    try:
                        rec, _ = self._in.popleft()
                    except IndexError:
                        break
                    tel.frame_retired(rec)
                for conn_, rec, _ in self.jitter.clear():
                    tel.frame_retired(rec)
                conn.online = True
                sender = asyncio.create_task(self._sender(conn))
                if first:
                    self._go_live()
                else:
                    tel.count("reconnects")
                    tel.warn(f"reconnected to {self.url}")
                    tel.set_state("live", "")
                await asyncio.wait({reader, pinger, end_wait, sender}, return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, pinger, sender):
                if t is not None and t.done() and not t.cancelled():
                    exc = t.exception()
                    if isinstance(exc, _ConnectionLost):
                        conn.lost_reason = str(exc)
                    elif exc is not None and not conn.lost_reason:
                        conn.lost_reason = f"{type(exc).__name__}: {exc}"
            conn.online = False
            if self._end.is_set():
                # Clean close: the close handshake, answered by the server (code 1000).
                try:
                    await asyncio.wait_for(conn.ws.close(code=1000), timeout=2.0)
                except (asyncio.TimeoutError, Exception):
                    pass
        finally:
            conn.online = False
            for t in (reader, pinger, end_wait, hs_wait, sender):
                if t is not None and not t.done():
                    t.cancel()
            await asyncio.gather(*(t for t in (reader, pinger, end_wait, hs_wait, sender) if t),
                                 return_exceptions=True)
        return handshaken

    def _retire_conn(self, conn: _Conn) -> None:
        while conn.fifo:
            self.tel.frame_retired(conn.fifo.popleft())

    def _go_live(self) -> None:
        tel = self.tel
        if self.folder is not None:
            from engine.files.recorder import SessionRecorder

            self.recorder = SessionRecorder(self.folder, tel, getattr(self.cfg, "options", {}) or {},
                                            processes=self.process_figures)
        self._cpu_start()
        self.sink.start(self.pull)
        tel.note_endpoints(self.source, self.sink)
        self.source.start(self.on_frame)
        tel.set_state("live", "")
        self._t_live = time.monotonic()
        self.live.set()

    async def _sender(self, conn: _Conn) -> None:
        """Frames from the source -> Opus -> websocket."""
        tel = self.tel
        ws = conn.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._in and conn.online:
                try:
                    rec, pcm = self._in.popleft()
                except IndexError:
                    break
                rec.t_enc0 = time.monotonic_ns()
                ogg = conn.writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32))
                rec.t_enc = time.monotonic_ns()
                tel.add_stage("encode_work", (rec.t_enc - rec.t_enc0) / 1e6)
                tel.add_stage("encode", (rec.t_enc - rec.t_cap) / 1e6)
                if ogg:
                    try:
                        await ws.send_bytes(wsproto.encode_audio(ogg))
                    except (ConnectionError, RuntimeError) as e:
                        tel.frame_retired(rec)
                        raise _ConnectionLost(f"send failed: {e}") from None
                conn.sent += 1
                conn.fifo.append(rec)
                while len(conn.fifo) > 256:  # a server that never answers: keep memory bounded
                    tel.frame_retired(conn.fifo.popleft())

    async def _pinger(self, conn: _Conn) -> None:
        """Websocket pings for the round trip time; a silent connection is declared dead."""
        ws = conn.ws
        while True:
            await asyncio.sleep(self.ping_every_s)
            silent = time.monotonic() - conn.last_rx
            if silent > self.dead_after_s:
                raise _ConnectionLost(f"nothing from the server for {silent:.0f} s")
            t = time.monotonic_ns()
            conn.pings[t] = t
            if len(conn.pings) > 32:
                conn.pings.pop(next(iter(conn.pings)))
            try:
                await ws.ping(struct.pack("<Q", t))
            except (ConnectionError, RuntimeError) as e:
                raise _ConnectionLost(f"ping failed: {e}") from None

    async def _reader(self, conn: _Conn) -> None:
        import aiohttp

        ws = conn.ws
        tel = self.tel
        while True:
            msg = await ws.receive()
            conn.last_rx = time.monotonic()
            kind = msg.type
            if kind == aiohttp.WSMsgType.BINARY:
                self._on_message(conn, msg.data)
            elif kind == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif kind == aiohttp.WSMsgType.PONG:
                data = msg.data or b""
                if len(data) == 8:
                    (t,) = struct.unpack("<Q", data)
                    if conn.pings.pop(t, None) is not None:
                        tel.add_stage("rtt", (time.monotonic_ns() - t) / 1e6)
            elif kind == aiohttp.WSMsgType.TEXT:
                tel.count("protocol_errors")
                tel.warn("the server sent a text websocket frame (the protocol is binary): ignored")
            elif kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = ws.close_code
                conn.lost_reason = conn.lost_reason or f"the server closed the connection (code {code})"
                return
            elif kind == aiohttp.WSMsgType.ERROR:
                raise _ConnectionLost(f"websocket error: {ws.exception() or msg.data}")

    def _on_message(self, conn: _Conn, data: bytes) -> None:
        tel = self.tel
        try:
            m = wsproto.decode(data, kinds=wsproto.CLIENT_KINDS, max_size=wsproto.MAX_TRANSPORT)
        except wsproto.ProtocolError as e:
            tel.count("protocol_errors")
            tel.warn(f"discarded a message from the server: {e.reason}")
            return
        k = m.kind
        if k == wsproto.AUDIO:
            self._on_audio(conn, m.payload)
        elif k in (wsproto.TEXT, wsproto.COLORED_TEXT):
            if m.text:
                tel.add_token(m.text, -1, tel.steps, time.monotonic_ns())
        elif k == wsproto.HANDSHAKE:
            if not conn.handshake.is_set():
                tel.info["server_protocol_version"], tel.info["server_model_version"] = m.data
                conn.handshake.set()
        elif k == wsproto.METADATA:
            self._on_metadata(conn, m.data)
        elif k == wsproto.ERROR:
            tel.count("server_errors")
            tel.warn(f"server error: {m.text}")
        # control and ping from a server: nothing to do

    def _on_audio(self, conn: _Conn, payload: bytes) -> None:
        tel = self.tel
        t0 = time.monotonic_ns()
        try:
            pcm = conn.reader.append_bytes(payload)
        except Exception as e:  # an Opus stream the decoder rejects: start a fresh decoder
            import sphn

            conn.reader = sphn.OpusStreamReader(SAMPLE_RATE)
            tel.count("protocol_errors")
            tel.warn(f"undecodable audio from the server: {e}")
            return
        t1 = time.monotonic_ns()
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0:
            return
        tel.add_stage("decode_work", (t1 - t0) / 1e6)
        conn.last_audio_rx = time.monotonic()
        buf = np.concatenate((conn.pending, pcm)) if conn.pending.size else pcm
        n = buf.size // FRAME
        for i in range(n):
            frame = buf[i * FRAME: (i + 1) * FRAME]
            rec = conn.fifo.popleft() if conn.fifo else FrameRecord(frame=-1)
            rec.step = tel.steps
            rec.t_dec0, rec.t_dec, rec.has_audio = t0, t1, True
            conn.received += 1
            tel.steps += 1
            tel.frames_processed += 1
            if tel.t_first_out is None:
                tel.t_first_out = t1
            for _c, old, _p in self.jitter.push((conn, rec, frame)):
                tel.count("drops_output")
                tel.frame_retired(old)
                tel.warn("playback resynchronised: stale output dropped")
        conn.pending = buf[n * FRAME:].copy() if buf.size % FRAME else np.zeros(0, np.float32)

    def _on_metadata(self, conn: _Conn, data) -> None:
        tel = self.tel
        if not isinstance(data, dict):
            return
        ours = data.get("moshi_tui")
        if isinstance(ours, dict):
            for key in ("model", "max_steps", "mlx_device", "version"):
                if key in ours:
                    tel.info[f"server_{key}"] = ours[key]
            tel.info["server_kind"] = "moshi-tui serve"
            if ours.get("timings_available") and conn.ws is not None:
                # Ask for the server's step timings (Kyutai's servers never see this message).
                task = asyncio.ensure_future(
                    self._send_quiet(conn, wsproto.encode_metadata({"moshi_tui": {"timings": True}})))
                conn.tasks.add(task)
                task.add_done_callback(conn.tasks.discard)
        timings = data.get("timings")
        if isinstance(timings, dict):
            for stage in ("model", "queue"):
                values = timings.get(stage)
                if isinstance(values, list):
                    for v in values:
                        if isinstance(v, (int, float)) and 0 <= v < 1e6:
                            tel.add_stage(stage, float(v))
        # Kyutai's Rust backend: sampling parameters and model files.
        for key, value in data.items():
            if key in ("moshi_tui", "timings", "build_info"):
                continue
            if isinstance(value, (str, int, float, bool)):
                tel.info[f"server_{key}"] = value

    async def _send_quiet(self, conn: _Conn, data: bytes) -> None:
        try:
            await conn.ws.send_bytes(data)
        except Exception:
            pass

    async def _watch(self) -> None:
        """End the session: stop request, time limit, or the input has run out (then drain)."""
        drain_deadline = None
        while not self._end.is_set():
            await asyncio.sleep(0.05)
            if self._stop_req.is_set():
                self._finish("stopped")
                break
            if not self.live.is_set():
                continue
            self.tel.note_endpoints(self.source, self.sink)
            seconds = getattr(self.cfg, "seconds", None)
            if seconds is not None and time.monotonic() - self._t_live >= seconds:
                self._finish("time limit")
                break
            if self.source.finished.is_set():
                now = time.monotonic()
                drain_deadline = drain_deadline or now + 2.0
                conn = self._conn
                quiet = conn is None or now - max(conn.last_audio_rx, 0.0) > 0.4
                drained = not self._in and not len(self.jitter) and quiet
                periods = getattr(self.sink, "periods", None)
                covered = periods is not None and periods >= self.tel.frames_captured + 1
                if drained or covered or now > drain_deadline:
                    self._finish("end of input")
                    break

    # ------------------------------------------------------------------ control
    def snapshot(self):
        self.tel.muted = self.muted
        return self.tel.snapshot()

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        self.tel.muted = muted

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def request_stop(self) -> None:
        self._stop_req.set()

    def stop(self) -> None:
        """Stop everything; idempotent; the websocket is closed cleanly when this returns."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_req.set()
        self._closing = True
        self._cpu_end()
        if self.source is not None:
            try:
                self.source.stop()
            except Exception:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if self.sink is not None:
            try:
                self.sink.stop()
            except Exception:
                pass
        if not self.end_reason:
            self.end_reason = "stopped"
        if self.tel.state != "error":
            self.tel.set_state("stopped", self.end_reason)
        if self.recorder is not None:
            self.recorder.processes = lambda: self.cpu
            self.recorder.close(self.end_reason, trace=bool(getattr(self.cfg, "keep_records", False)))
        self.done.set()


    @property
    def session_path(self) -> Path | None:
        return self.folder


def _connect_error(e: BaseException) -> str:
    """One short line for a failed connection attempt."""
    import errno

    import aiohttp

    if isinstance(e, aiohttp.ClientConnectorError):
        os_err = e.os_error
        if getattr(os_err, "errno", None) == errno.ECONNREFUSED:
            return "connection refused (is the server running, on this port?)"
        if isinstance(os_err, socket.gaierror):
            return f"cannot resolve {e.host}: {os_err.strerror or os_err}"
        return f"{getattr(os_err, 'strerror', None) or os_err}"
    return str(e) or type(e).__name__


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
