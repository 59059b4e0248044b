"""A conversation with a Moshi server on another machine, over Kyutai's websocket protocol.

`RemoteSession` is a `ConversationSession` (engine.session.base), like the local `Session`, so
the headless runner and the app drive it unchanged:

    source callback -> [net loop] Opus encode -> websocket 0x01 --->  moshi.server, local_web,
    sink pull       <- jitter buffer <- Opus decode <- 0x01/0x02 <--  moshi-backend, `serve`

The audio endpoints run in their own threads as in a local session; everything network-side
(connect, handshake, Opus encode/decode, ping, reconnect) runs in one asyncio thread: this
module connects and reconnects, engine.session.remote.connection runs one connection.  What
happens to a frame reaches the telemetry and the recorder as the pipeline's observer events
(engine.pipeline.events), as in a local session.

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
import dataclasses
import random
import socket
import threading
import time
from collections import deque

import numpy as np

from engine.audio import FRAME, FRAME_MS
from engine.errors import MoshiTuiError
from engine.pipeline.events import Observers
from engine.session import wsproto
from engine.session.base import ConversationSession
from engine.session.remote.connection import Connection
from engine.session.remote.jitter import JitterBuffer
from engine.session.remote.url import normalize_url, with_query
from engine.telemetry.collect import Telemetry, TelemetryConfig
from engine.telemetry.stages import FrameRecord

# What the telemetry measures here besides the pipeline's stages and counters (above); frames
# are paired with the returned audio in arrival order, so no stage is timed from that pairing.
REMOTE_TELEMETRY = TelemetryConfig(
    stages=("rtt", "e2e"),
    counters=("reconnects", "drops_offline", "protocol_errors", "server_errors"),
    frame_timeline=False)


class RemoteSession(ConversationSession):
    """Talk to a remote Moshi server."""

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
        # (a telemetry passed in measures REMOTE_TELEMETRY)
        super().__init__(cfg, telemetry or Telemetry(
            config=dataclasses.replace(REMOTE_TELEMETRY, turns=cfg.turns)))
        self.events = Observers(self.tel)  # the recorder joins when the session goes live
        self.url_arg = url
        self.url: str | None = None
        self.reconnect = reconnect
        self.give_up_s = give_up_s
        self.backoff_s = backoff_s
        self.ping_every_s = ping_every_s
        self.dead_after_s = dead_after_s
        self.connect_timeout_s = connect_timeout_s
        self.input_max = max(2, cfg.input_max)
        self.jitter = JitterBuffer()
        self.connections = 0
        self._in: deque = deque()  # (rec, pcm) waiting for the net loop
        self._frame_id = 0
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._end: asyncio.Event | None = None
        self._t_live: float | None = None
        self._closing = False  # the session is ending: later frames are not part of it
        self._connecting = False  # a websocket connection attempt is under way
        self._conn_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ setup
    def prepare(self) -> None:
        """Cheap validation: the URL, the audio endpoints, the folder. Raises MoshiTuiError."""
        # the sampling asked for goes in the query string, as Kyutai's web UI sends it (what
        # the URL itself says wins)
        self.url = with_query(normalize_url(self.url_arg), self.cfg.sampling.to_query())
        model = self.cfg.model
        if any(getattr(model, k) for k in ("hf_repo", "voice", "quantized", "moshi_weight",
                                          "mimi_weight", "tokenizer", "lm_config", "random")):
            self.tel.warn("model options are ignored with --remote: the server chooses the model")
        super().prepare()
        base = self.url.split("?", 1)[0]
        self.tel.info.model, self.tel.info.remote_url = f"remote {base}", self.url

    # ------------------------------------------------------------------ audio callbacks
    def on_frame(self, pcm: np.ndarray, t_cap: int) -> None:
        """Audio source callback: stamp, hand to the net loop, never block."""
        if self._closing:
            return
        pcm = self._mic_frame(pcm, t_cap)
        if self.muted:
            pcm = np.zeros_like(pcm)
        events = self.events
        rec = FrameRecord(frame=self._frame_id, t_cap=t_cap)
        self._frame_id += 1
        events.captured(rec, pcm)
        conn = self._conn
        if conn is None or not conn.online:
            events.dropped(rec, "offline")
        else:
            self._in.append((rec, pcm))
            while len(self._in) > self.input_max:
                try:
                    old, _ = self._in.popleft()
                except IndexError:
                    break
                events.dropped(old, "input", "input dropped: the network is behind real time")
            self._notify()
        events.queues(self.depths())

    def pull(self, t_play: int, room: int = FRAME):
        """Audio sink callback: the PCM to play from `t_play`, or None (`room` samples of
        silence)."""
        item, underrun = self.jitter.pop()
        if item is None:
            self.events.silence(room, t_play, underrun)
            return self._speaker(None, room, t_play)
        conn, rec, pcm = item
        rec.t_play = t_play
        # The web client's estimate: mic audio sent minus audio played before this frame.
        self.events.stage("e2e", (conn.sent - conn.played) * FRAME_MS)
        conn.played += 1
        self.events.played(rec, pcm, None)
        return self._speaker(pcm, room, t_play)

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
    def _run(self) -> None:
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
        super()._fail(message, exit_code)
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
            conn = Connection(ws, self.connections, tel, self.jitter, self._in, self._wake,
                              ping_every_s=self.ping_every_s, dead_after_s=self.dead_after_s)
            self._conn = conn
            try:
                ok = await conn.converse(self._end, first, self._online)
            finally:
                conn.online = False
                if not ws.closed:
                    try:
                        await asyncio.wait_for(ws.close(), timeout=2.0)
                    except (asyncio.TimeoutError, Exception):
                        pass
                tel.info.close_code = ws.close_code
                conn.retire()
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

    def _online(self, first: bool) -> None:
        """A connection's handshake came: go live, or carry on after a reconnect."""
        if first:
            self._go_live()
        else:
            self.tel.count("reconnects")
            self.tel.warn(f"reconnected to {self.url}")
            self.tel.set_state("live", "")

    def _go_live(self) -> None:
        tel = self.tel
        self._new_recorder()
        self.events = Observers(tel, self.recorder)
        self._watch_gc()
        self._cpu_start()
        self.sink.start(self.pull)
        self._note_endpoints()
        self.source.start(self.on_frame)
        tel.set_state("live", "")
        self._t_live = time.monotonic()
        self.live.set()

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
            self._note_endpoints()
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
    def stop(self) -> None:
        """Stop everything; idempotent; the websocket is closed cleanly when this returns."""
        if not self._begin_stop():
            return
        self._closing = True
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
        self._close_files()


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
