"""`moshi-tui serve`: our MLX model server exposed over Kyutai's websocket protocol (`/api/chat`).

    client (web UI, Rust CLI, moshi.client, moshi-tui --remote)
      0x01 Ogg/Opus --> Opus decode -> 80 ms frames -> ClientPipeline (rustymimi encode -> the
                        spawned MLX server process -> text token + rustymimi decode)
      0x01 Ogg/Opus <-- Opus encode <------------------------------------------- decoded PCM
      0x02 text     <-- each text token as soon as the model produces it

The model runs in the same spawned model process as a local session (engine.session.host), driven
by the same ClientPipeline, so the measured path is the same.  One conversation at a time, like
Kyutai's servers.  Every other client is accepted and waits in line (no handshake yet), in the
order it connected (FIFO); one peer address holds at most `max_waiting_per_client` places in
line, and a connection over that (once a second has not freed one) gets an error message
(0x05) and close code 1013 (try again later).  A waiting connection is watched: one that closes
or is dropped leaves the line at once and costs the model nothing; anything it sends before its
turn is dropped (clients wait for the handshake).  When its turn comes, a connection that is
gone is skipped.

Every conversation gets a fresh Mimi codec and a fresh LM state, but neither is made for a client
that has left: the codec is prepared while no one talks (when serve starts, and right after each
conversation that used its own), so a client's handshake does not wait for it, and a conversation
that never sent audio hands its untouched codec on to the next; the pipeline starts, and the LM's
fresh state (Configure) is asked for, with a conversation's first audio.  What one conversation sends and accepts, and
when an idle one is closed: engine.session.serve.conversation.  A websocket frame over 1 MiB
closes that connection (1009); that never stops the server either.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from engine.errors import MoshiTuiError, UsageError
from engine.model.messages import WorkerOptions
from engine.model.sampling import Sampling
from engine.model.source import ModelOptions, resolve
from engine.session import wsproto
from engine.session.host import ModelHost
from engine.session.serve.conversation import IDLE_TIMEOUT_S, Conversation, log

STOP_GRACE_S = 2.0  # how long the model process gets to exit when serve stops
MAX_WAITING_PER_CLIENT = 1  # places in line one peer address may hold (serve's default)
BUSY_CLOSE_CODE = 1013  # "try again later": a connection over its address's places in line
BUSY_GRACE_S = 1.0  # how long such a connection waits for one of those places to be freed


def run_server(model: ModelOptions, *, address: str, port: int, max_steps: int | None = None,
               sampling: Sampling | None = None, static: str | None = None,
               max_conversations: int | None = None,
               max_waiting_per_client: int = MAX_WAITING_PER_CLIENT) -> int:
    """Resolve and load the model, then serve it on `address`:`port` until stopped; the exit
    code.  Each step is logged; the model process is gone when this returns."""
    resolved = resolve(model, progress=log)
    # `sampling`: each conversation's, unless its URL asks for another
    options = WorkerOptions(max_steps=max_steps, lm_mode=model.lm_step,
                            sampling=sampling or Sampling())
    host = ModelHost(resolved, options, codec=model.codec)
    try:
        log(f"model: {resolved.label}, codec: {host.codec_backend}")
        host.start()
        host.load_tokenizer()
        info = host.wait_ready(log)
        log("model ready (load {load_ms} ms, warmup {warmup_ms} ms, {mlx_device})".format(
            **{k: info.get(k) for k in ("load_ms", "warmup_ms", "mlx_device")}))
        server = ChatServer(host, static=static, max_conversations=max_conversations,
                            max_waiting_per_client=max_waiting_per_client)
        return asyncio.run(server.serve(address, port))
    finally:
        host.stop(STOP_GRACE_S)


def _gone(msg) -> bool:
    """A message from `ws.receive()` that says the peer closed or the connection broke."""
    import aiohttp

    return msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def _connection_lost(ws, request) -> bool:
    """The client's connection is closed or closing (checked without reading from it)."""
    transport = request.transport
    return ws.closed or transport is None or transport.is_closing()


class ChatServer:
    """The websocket endpoint (/api/chat, and a static web client at / with `static`): one
    Conversation at a time on `host`, the others waiting in line (see the module's docstring);
    `serve()` runs until stopped, `max_conversations` conversations ended, or the model process
    died, and returns the exit code.  `idle_timeout_s`: how long a conversation may go without
    audio from its client (engine.session.serve.conversation)."""

    def __init__(self, host: ModelHost, *, static: str | None = None,
                 max_conversations: int | None = None,
                 max_waiting_per_client: int = MAX_WAITING_PER_CLIENT,
                 idle_timeout_s: float = IDLE_TIMEOUT_S):
        self.host = host
        self.static = static
        self.max_conversations = max_conversations
        self.max_waiting_per_client = max_waiting_per_client
        self.idle_timeout_s = idle_timeout_s
        self.lock = asyncio.Lock()  # the model's turn; its waiters are woken in order (FIFO)
        self.waiting: dict[str, int] = {}  # peer address -> its connections waiting in line
        self.conversations = 0
        self.skipped = 0  # connections that left before their turn, or were gone at it
        self.refused = 0  # connections over their address's places in line
        self.codecs_made = 0  # fresh codecs asked of the host
        self._codec: asyncio.Future | None = None  # the next conversation's codec
        self.stop_event = asyncio.Event()
        self.listening = asyncio.Event()  # set once the port is open (`port` then holds it)
        self.port: int | None = None
        self.exit_code = 0

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/api/chat", self.handle_chat)
        if self.static:
            index = os.path.join(self.static, "index.html")

            async def handle_root(_request):
                return web.FileResponse(index)

            app.router.add_get("/", handle_root)
            app.router.add_static("/", path=self.static, name="static")
        return app

    async def handle_chat(self, request):
        from aiohttp import web

        ws = web.WebSocketResponse(max_msg_size=wsproto.MAX_TRANSPORT, autoping=True)
        await ws.prepare(request)
        peer = request.remote or "?"
        held = await self._places_held(peer)
        if held >= self.max_waiting_per_client:
            self.refused += 1
            log(f"connection from {peer} refused: {held} of its connections already wait")
            await _close(ws, wsproto.encode_error(
                f"busy: {held} connection(s) from {peer} already wait for the model (at most "
                f"{self.max_waiting_per_client} per address); try again later"),
                BUSY_CLOSE_CODE, b"busy")
            return ws
        log(f"connection from {peer}")
        self.waiting[peer] = held + 1
        try:
            turn = await self._wait_turn(ws, request, peer)
        finally:
            self.waiting[peer] -= 1
            if not self.waiting[peer]:
                del self.waiting[peer]
        if not turn:
            return ws
        try:
            await self._converse(ws, request, peer)
        finally:
            self.lock.release()
        return ws

    async def _places_held(self, peer: str) -> int:
        """How many places in line `peer` holds, once a place it holds was given the time to be
        freed (BUSY_GRACE_S: a client that reconnects at once may be seen before the close of
        its previous connection)."""
        deadline = time.monotonic() + BUSY_GRACE_S
        limit = self.max_waiting_per_client
        while self.waiting.get(peer, 0) >= limit and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.waiting.get(peer, 0)

    async def _wait_turn(self, ws, request, peer: str) -> bool:
        """Wait for the model's turn, in arrival order, reading the connection meanwhile: True
        with the turn (the lock) held; False, without it, when the client left first, is gone
        at its turn, or serve stops."""
        acquire = asyncio.ensure_future(self.lock.acquire())
        receive = None
        early = 0
        got = False
        try:
            while True:
                receive = receive or asyncio.ensure_future(ws.receive())
                await asyncio.wait({acquire, receive}, return_when=asyncio.FIRST_COMPLETED)
                if receive.done():
                    msg, receive = receive.result(), None
                    if _gone(msg):
                        break
                    early += 1
                elif acquire.done():
                    got = True
                    break
        finally:
            if receive is not None:
                receive.cancel()  # (a message it had not taken yet stays in the socket's queue)
                await asyncio.gather(receive, return_exceptions=True)
            if not got:
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
                if not acquire.cancelled():
                    self.lock.release()
        if early:
            log(f"connection from {peer}: {early} message(s) before its turn dropped")
        if got and (_connection_lost(ws, request) or self.stop_event.is_set()):
            self.lock.release()
            got = False
        if not got and not self.stop_event.is_set():
            self.skipped += 1
            log(f"connection from {peer} left before its turn: skipped")
        return got

    async def _converse(self, ws, request, peer: str) -> None:
        """One conversation with the client whose turn it is (the lock held)."""
        if not self.host.alive():
            await _close(ws, wsproto.encode_error("the model server is not running"), 1011)
            return
        try:
            conv = Conversation(self.host, ws, peer, self.conversations + 1, dict(request.query),
                                idle_timeout_s=self.idle_timeout_s)
        except UsageError as e:  # a malformed sampling parameter in the URL
            log(f"connection from {peer} refused: {e}")
            await _close(ws, wsproto.encode_error(f"rejected: {e}"), 1008, b"bad query parameter")
            return
        try:
            codec = await self._take_codec()
        except Exception as e:  # the codec cannot be made: this client is told, serve goes on
            log(f"connection from {peer}: cannot prepare the audio codec: {e}")
            await _close(ws, wsproto.encode_error(
                f"the server cannot prepare its audio codec: {e}"), 1011)
            return
        self.conversations += 1
        log(f"conversation {conv.index} with {peer} started"
             + (f" (sampling: {conv.sampling.describe()})" if conv.query_applied else ""))
        try:
            await conv.run(codec)
        except Exception as e:  # a conversation may fail; the server goes on
            log(f"conversation {conv.index} failed: {type(e).__name__}: {e}")
        finally:
            if not ws.closed:
                try:
                    await ws.close()
                except Exception:
                    pass
            self._summary(conv)
            self._hand_on(None if conv.audio_pushed else codec)
            if conv.fatal or not self.host.alive():
                self.exit_code = 1
                self.stop_event.set()
            elif self.max_conversations and self.conversations >= self.max_conversations:
                self.stop_event.set()

    # ------------------------------------------------------------ the next conversation's codec
    @property
    def codec_ready(self) -> bool:
        """A fresh codec is made and waits for the next conversation."""
        fut = self._codec
        return fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None

    def _prepare_codec(self) -> None:
        """Start making the next conversation's codec (in a worker thread), unless one is ready
        or being made."""
        if self._codec is None:
            self.codecs_made += 1
            self._codec = asyncio.get_running_loop().run_in_executor(None, self.host.new_codec)

    async def _take_codec(self):
        """The prepared codec (waiting for it if it is still being made)."""
        self._prepare_codec()
        fut, self._codec = self._codec, None
        return await fut

    def _hand_on(self, untouched) -> None:
        """After a conversation: its codec when it never got audio (still fresh) goes to the
        next one; else a fresh one is made now, before anyone asks for it."""
        if untouched is not None and self._codec is None:
            self._codec = asyncio.get_running_loop().create_future()
            self._codec.set_result(untouched)
        elif not self.stop_event.is_set():
            self._prepare_codec()

    def _summary(self, conv: Conversation) -> None:
        tel = conv.tel
        if tel is None:
            log(f"conversation {conv.index} ended before it started")
            return
        if not conv.audio_pushed:
            log(f"conversation {conv.index} ended before any audio ({conv.errors} rejected "
                "messages): nothing to reset, its codec goes on to the next")
            return
        st = tel.stage_stats()
        model = st.get("model", {}).get("p50")
        c = tel.counters
        log(
            f"conversation {conv.index} ended: {conv.frames_in} frames in, {conv.frames_out} out, "
            f"{len(tel.tokens)} text tokens, model p50 {model if model is not None else '-'} ms, "
            f"drops {c['drops_input'] + c['drops_decode']}, rejected messages {conv.errors}, "
            f"{c.get('early_encodes', 0)} frames encoded early, {c.get('segments', 0)} new segments"
        )

    async def serve(self, host: str, port: int, *, handle_signals: bool = True) -> int:
        """Listen on `host`:`port` (0: a free one) until stopped (SIGINT/SIGTERM too, with
        `handle_signals`); the exit code."""
        from aiohttp import web

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
            try:
                loop.add_signal_handler(sig, self.stop_event.set)
            except (NotImplementedError, RuntimeError):
                pass
        runner = web.AppRunner(self.app(), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise MoshiTuiError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        for sock in site._server.sockets if site._server else ():
            addr = sock.getsockname()
            shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            log(f"listening on ws://{shown}:{addr[1]}/api/chat")
            self.port = addr[1]
            break
        self._prepare_codec()  # (the first client's, while no one waits)
        self.listening.set()
        watch = asyncio.create_task(self._watch_model())
        try:
            await self.stop_event.wait()
        finally:
            watch.cancel()
            log("shutting down")
            await runner.cleanup()
            if self._codec is not None:  # (no codec is left being made when this returns)
                await asyncio.gather(self._codec, return_exceptions=True)
        return self.exit_code

    async def _watch_model(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.host.alive() and not self.lock.locked():
                log(f"the model server process died (exit code {self.host.exitcode})")
                self.exit_code = 1
                self.stop_event.set()
                return


async def _close(ws, message: bytes, code: int, reason: bytes = b"") -> None:
    """Send `message` (an error, 0x05), then close with `code`; a peer already gone is fine."""
    try:
        await ws.send_bytes(message)
        await ws.close(code=code, message=reason)
    except Exception:
        pass
