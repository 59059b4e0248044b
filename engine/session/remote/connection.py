"""One websocket connection to a Moshi server: a fresh Opus stream each way and its tasks.

The sender takes captured frames from the session's inbox, Opus-encodes them and sends them;
the reader decodes the server's Opus into 80 ms frames for the jitter buffer (pairing each with
the oldest frame sent, in arrival order: the servers answer one frame per frame), takes text and
metadata, and answers pings; the pinger measures the round trip and declares a silent
connection dead.  engine.session.remote.session reconnects with a new `Connection` when one
is lost; the transcript lives on in the telemetry.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from typing import Callable

import numpy as np

from engine.audio import FRAME, SAMPLE_RATE
from engine.session import wsproto
from engine.session.remote.jitter import JitterBuffer
from engine.telemetry.collect import Telemetry
from engine.telemetry.stages import FrameRecord


class ConnectionLost(Exception):
    pass


class Connection:
    def __init__(self, ws, index: int, tel: Telemetry, jitter: JitterBuffer, inbox: deque,
                 wake: asyncio.Event, *, ping_every_s: float, dead_after_s: float):
        import sphn

        self.ws = ws
        self.index = index
        self.tel = tel
        self.jitter = jitter
        self.inbox = inbox  # (rec, pcm) captured, waiting to be sent (shared with the session)
        self.wake = wake  # set by the session when the inbox has a frame
        self.ping_every_s = ping_every_s
        self.dead_after_s = dead_after_s
        self.end: asyncio.Event | None = None
        self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self.writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self.handshake = asyncio.Event()
        self.online = False
        self.sent = 0  # frames sent
        self.played = 0  # of the frames received, those the speaker has started playing
        self.fifo: deque[FrameRecord] = deque()  # sent frames not yet paired with returned audio
        self.pending = np.zeros(0, np.float32)  # decoded samples short of a whole frame
        self.last_rx = time.monotonic()
        self.last_audio_rx = 0.0
        self.lost_reason = ""
        self.pings: dict[int, int] = {}
        self.tasks: set = set()

    def retire(self) -> None:
        """Frames sent on this connection that will never come back."""
        while self.fifo:
            self.tel.retired(self.fifo.popleft())

    async def converse(self, end: asyncio.Event, first: bool,
                       on_online: Callable[[bool], None]) -> bool:
        """Run this connection until it is lost or `end` is set; True once the handshake came
        (the conversation ran).  `on_online(first)` runs when frames start to flow."""
        tel = self.tel
        self.end = end
        reader = asyncio.create_task(self._reader())
        pinger = asyncio.create_task(self._pinger())
        end_wait = asyncio.create_task(self.end.wait())
        hs_wait = asyncio.create_task(self.handshake.wait())
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
            if hs_wait in done and not self.end.is_set() and not (reader.done() or pinger.done()):
                handshaken = True
                # Anything captured before the handshake is stale: start from now.
                while self.inbox:
                    try:
                        rec, _ = self.inbox.popleft()
                    except IndexError:
                        break
                    tel.retired(rec)
                for conn_, rec, _ in self.jitter.clear():
                    tel.retired(rec)
                self.online = True
                sender = asyncio.create_task(self._sender())
                on_online(first)
                await asyncio.wait({reader, pinger, end_wait, sender}, return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, pinger, sender):
                if t is not None and t.done() and not t.cancelled():
                    exc = t.exception()
                    if isinstance(exc, ConnectionLost):
                        self.lost_reason = str(exc)
                    elif exc is not None and not self.lost_reason:
                        self.lost_reason = f"{type(exc).__name__}: {exc}"
            self.online = False
            if self.end.is_set():
                # Clean close: the close handshake, answered by the server (code 1000).
                try:
                    await asyncio.wait_for(self.ws.close(code=1000), timeout=2.0)
                except (asyncio.TimeoutError, Exception):
                    pass
        finally:
            self.online = False
            for t in (reader, pinger, end_wait, hs_wait, sender):
                if t is not None and not t.done():
                    t.cancel()
            await asyncio.gather(*(t for t in (reader, pinger, end_wait, hs_wait, sender) if t),
                                 return_exceptions=True)
        return handshaken

    async def _sender(self) -> None:
        """Frames from the source -> Opus -> websocket."""
        tel = self.tel
        ws = self.ws
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.inbox and self.online:
                try:
                    rec, pcm = self.inbox.popleft()
                except IndexError:
                    break
                rec.t_enc0 = time.monotonic_ns()
                ogg = self.writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32))
                rec.t_enc = time.monotonic_ns()
                tel.stage("encode_work", (rec.t_enc - rec.t_enc0) / 1e6)
                tel.stage("encode", (rec.t_enc - rec.t_cap) / 1e6)
                if ogg:
                    try:
                        await ws.send_bytes(wsproto.encode_audio(ogg))
                    except (ConnectionError, RuntimeError) as e:
                        tel.retired(rec)
                        raise ConnectionLost(f"send failed: {e}") from None
                self.sent += 1
                self.fifo.append(rec)
                while len(self.fifo) > 256:  # a server that never answers: keep memory bounded
                    tel.retired(self.fifo.popleft())

    async def _pinger(self) -> None:
        """Websocket pings for the round trip time; a silent connection is declared dead."""
        ws = self.ws
        while True:
            await asyncio.sleep(self.ping_every_s)
            silent = time.monotonic() - self.last_rx
            if silent > self.dead_after_s:
                raise ConnectionLost(f"nothing from the server for {silent:.0f} s")
            t = time.monotonic_ns()
            self.pings[t] = t
            if len(self.pings) > 32:
                self.pings.pop(next(iter(self.pings)))
            try:
                await ws.ping(struct.pack("<Q", t))
            except (ConnectionError, RuntimeError) as e:
                raise ConnectionLost(f"ping failed: {e}") from None

    async def _reader(self) -> None:
        import aiohttp

        ws = self.ws
        tel = self.tel
        while True:
            msg = await ws.receive()
            self.last_rx = time.monotonic()
            kind = msg.type
            if kind == aiohttp.WSMsgType.BINARY:
                self._on_message(msg.data)
            elif kind == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif kind == aiohttp.WSMsgType.PONG:
                data = msg.data or b""
                if len(data) == 8:
                    (t,) = struct.unpack("<Q", data)
                    if self.pings.pop(t, None) is not None:
                        tel.stage("rtt", (time.monotonic_ns() - t) / 1e6)
            elif kind == aiohttp.WSMsgType.TEXT:
                tel.count("protocol_errors")
                tel.warn("the server sent a text websocket frame (the protocol is binary): ignored")
            elif kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = ws.close_code
                self.lost_reason = self.lost_reason or f"the server closed the connection (code {code})"
                return
            elif kind == aiohttp.WSMsgType.ERROR:
                raise ConnectionLost(f"websocket error: {ws.exception() or msg.data}")

    def _on_message(self, data: bytes) -> None:
        tel = self.tel
        try:
            m = wsproto.decode(data, kinds=wsproto.CLIENT_KINDS, max_size=wsproto.MAX_TRANSPORT)
        except wsproto.ProtocolError as e:
            tel.count("protocol_errors")
            tel.warn(f"discarded a message from the server: {e.reason}")
            return
        k = m.kind
        if k == wsproto.AUDIO:
            self._on_audio(m.payload)
        elif k in (wsproto.TEXT, wsproto.COLORED_TEXT):
            if m.text:
                tel.text_token(m.text, -1, tel.steps, time.monotonic_ns())
        elif k == wsproto.HANDSHAKE:
            if not self.handshake.is_set():
                tel.info.server["protocol_version"], tel.info.server["model_version"] = m.data
                self.handshake.set()
        elif k == wsproto.METADATA:
            self._on_metadata(m.data)
        elif k == wsproto.ERROR:
            tel.count("server_errors")
            tel.warn(f"server error: {m.text}")
        # control and ping from a server: nothing to do

    def _on_audio(self, payload: bytes) -> None:
        tel = self.tel
        t0 = time.monotonic_ns()
        try:
            pcm = self.reader.append_bytes(payload)
        except Exception as e:  # an Opus stream the decoder rejects: start a fresh decoder
            import sphn

            self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
            tel.count("protocol_errors")
            tel.warn(f"undecodable audio from the server: {e}")
            return
        t1 = time.monotonic_ns()
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0:
            return
        tel.stage("decode_work", (t1 - t0) / 1e6)
        self.last_audio_rx = time.monotonic()
        buf = np.concatenate((self.pending, pcm)) if self.pending.size else pcm
        n = buf.size // FRAME
        for i in range(n):
            frame = buf[i * FRAME: (i + 1) * FRAME]
            rec = self.fifo.popleft() if self.fifo else FrameRecord(frame=-1)
            rec.step = tel.steps
            rec.t_dec0, rec.t_dec, rec.has_audio = t0, t1, True
            tel.stepped(rec)
            tel.pcm_ready(rec, frame)
            for _c, old, _p in self.jitter.push((self, rec, frame)):
                tel.dropped(old, "output", "playback resynchronised: stale output dropped")
        self.pending = buf[n * FRAME:].copy() if buf.size % FRAME else np.zeros(0, np.float32)

    def _on_metadata(self, data) -> None:
        tel = self.tel
        if not isinstance(data, dict):
            return
        ours = data.get("moshi_tui")
        if isinstance(ours, dict):
            for key in ("model", "max_steps", "mlx_device", "version", "lm_step", "codec",
                        "sampling", "ignored_query"):
                if key in ours:
                    tel.info.server[key] = ours[key]
            tel.info.server["kind"] = "moshi-tui serve"
            if ours.get("timings_available") and self.ws is not None:
                # Ask for the server's step timings (Kyutai's servers never see this message).
                task = asyncio.ensure_future(
                    self._send_quiet(wsproto.encode_metadata({"moshi_tui": {"timings": True}})))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        timings = data.get("timings")
        if isinstance(timings, dict):
            for stage in ("model", "queue"):
                values = timings.get(stage)
                if isinstance(values, list):
                    for v in values:
                        if isinstance(v, (int, float)) and 0 <= v < 1e6:
                            tel.stage(stage, float(v))
        # Kyutai's Rust backend: sampling parameters and model files.
        for key, value in data.items():
            if key in ("moshi_tui", "timings", "build_info"):
                continue
            if isinstance(value, (str, int, float, bool)):
                tel.info.server[key] = value

    async def _send_quiet(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except Exception:
            pass
