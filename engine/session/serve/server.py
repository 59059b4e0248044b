"""`moshi-tui serve`: our MLX model server exposed over Kyutai's websocket protocol (`/api/chat`).

    client (web UI, Rust CLI, moshi.client, moshi-tui --remote)
      0x01 Ogg/Opus --> Opus decode -> 80 ms frames -> ClientPipeline (rustymimi encode -> the
                        spawned MLX server process -> text token + rustymimi decode)
      0x01 Ogg/Opus <-- Opus encode <------------------------------------------- decoded PCM
      0x02 text     <-- each text token as soon as the model produces it

The model runs in the same spawned model process as a local session (engine.session.host), driven
by the same ClientPipeline, so the measured path is the same.  One conversation at a time, like
Kyutai's servers: a second client is accepted and waits (no handshake) until the first leaves;
every conversation starts from a fresh LM state and a fresh Mimi codec.  What one conversation
sends and accepts: engine.session.serve.conversation.  A websocket frame over 1 MiB closes that
connection (1009); that never stops the server either.
"""

from __future__ import annotations

import asyncio
import os
import signal

from engine.errors import MoshiTuiError, UsageError
from engine.model.messages import WorkerOptions
from engine.model.sampling import Sampling
from engine.model.source import ModelOptions, resolve
from engine.session import wsproto
from engine.session.host import ModelHost
from engine.session.serve.conversation import Conversation, log

STOP_GRACE_S = 2.0  # how long the model process gets to exit when serve stops


def run_server(model: ModelOptions, *, address: str, port: int, max_steps: int | None = None,
               sampling: Sampling | None = None, static: str | None = None,
               max_conversations: int | None = None) -> int:
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
        server = ChatServer(host, static=static, max_conversations=max_conversations)
        return asyncio.run(server.serve(address, port))
    finally:
        host.stop(STOP_GRACE_S)


class ChatServer:
    """The websocket endpoint (/api/chat, and a static web client at / with `static`): one
    Conversation at a time on `host`; `serve()` runs until stopped, `max_conversations`
    conversations ended, or the model process died, and returns the exit code."""

    def __init__(self, host: ModelHost, *, static: str | None = None,
                 max_conversations: int | None = None):
        self.host = host
        self.static = static
        self.max_conversations = max_conversations
        self.lock = asyncio.Lock()
        self.conversations = 0
        self.stop_event = asyncio.Event()
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
        log(f"connection from {peer}")
        async with self.lock:
            if ws.closed or self.stop_event.is_set():
                return ws
            if not self.host.alive():
                await ws.send_bytes(wsproto.encode_error("the model server is not running"))
                await ws.close(code=1011)
                return ws
            try:
                conv = Conversation(self.host, ws, peer, self.conversations + 1,
                                    dict(request.query))
            except UsageError as e:  # a malformed sampling parameter in the URL
                log(f"connection from {peer} refused: {e}")
                await ws.send_bytes(wsproto.encode_error(f"rejected: {e}"))
                await ws.close(code=1008, message=b"bad query parameter")
                return ws
            self.conversations += 1
            log(f"conversation {conv.index} with {peer} started"
                 + (f" (sampling: {conv.sampling.describe()})" if conv.query_applied else ""))
            try:
                await conv.run()
            except Exception as e:  # a conversation may fail; the server goes on
                log(f"conversation {conv.index} failed: {type(e).__name__}: {e}")
            finally:
                if not ws.closed:
                    try:
                        await ws.close()
                    except Exception:
                        pass
                self._summary(conv)
                if conv.fatal or not self.host.alive():
                    self.exit_code = 1
                    self.stop_event.set()
                elif self.max_conversations and self.conversations >= self.max_conversations:
                    self.stop_event.set()
        return ws

    def _summary(self, conv: Conversation) -> None:
        tel = conv.tel
        if tel is None:
            log(f"conversation {conv.index} ended before it started")
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

    async def serve(self, host: str, port: int) -> int:
        from aiohttp import web

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
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
            break
        watch = asyncio.create_task(self._watch_model())
        try:
            await self.stop_event.wait()
        finally:
            watch.cancel()
            log("shutting down")
            await runner.cleanup()
        return self.exit_code

    async def _watch_model(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.host.alive() and not self.lock.locked():
                log(f"the model server process died (exit code {self.host.exitcode})")
                self.exit_code = 1
                self.stop_event.set()
                return
