"""`serve`'s line of waiting clients: dropped, idle and slow clients cost the others nothing.

The ChatServer runs in this process on the demo model's real model process (one per module), on
a loopback port; clients are real websockets (aiohttp) and raw sockets.  The host counts the
work a conversation costs -- fresh codecs made, Configure (the LM's fresh state) sent -- so the
tests assert what was skipped and in which order clients were served, not how fast the host is.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from engine.audio.wavio import read_wav
from engine.session.host import ModelHost
from engine.session.serve.server import BUSY_CLOSE_CODE, ChatServer
from scripts.serve_drops import handshake_wait, open_and_drop, upgrade_request

pytest_plugins = ["conftest_models"]
FRAME = 1920
LONG = 30.0  # bound of every wait that a working server ends long before, on any host


class CountingHost(ModelHost):
    """A ModelHost that counts the work each conversation asks of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.codecs = 0  # fresh codecs made (each: load + warm-up)
        self.configures = 0  # Configure sent: a fresh LM state

    def new_codec(self):
        self.codecs += 1
        return super().new_codec()

    def configure(self, sampling) -> None:
        self.configures += 1
        super().configure(sampling)


@pytest.fixture(scope="module")
def host(demo_cache):
    from engine.model.messages import WorkerOptions
    from engine.model.source import ModelOptions, resolve

    resolved = resolve(ModelOptions(demo=True, codec="rustymimi"))
    h = CountingHost(resolved, WorkerOptions(), codec="rustymimi")
    h.start()
    try:
        h.load_tokenizer()
        h.wait_ready()
        t0 = time.monotonic()
        h.new_codec()
        h.reset_s = time.monotonic() - t0  # what one fresh codec costs on this host
        yield h
    finally:
        h.stop(2.0)


@pytest.fixture
async def start_server(host):
    started = []

    async def start(**kwargs) -> ChatServer:
        server = ChatServer(host, **kwargs)
        task = asyncio.create_task(server.serve("127.0.0.1", 0, handle_signals=False))
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({task, listening}, timeout=LONG, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        assert server.listening.is_set(), task.exception() if task.done() else "not listening"
        started.append((server, task))
        await _until(lambda: server.codec_ready)  # (made once, before any client)
        return server

    yield start
    for server, task in started:
        server.stop_event.set()
        assert await asyncio.wait_for(task, LONG) == 0


def url(server: ChatServer) -> str:
    return f"ws://127.0.0.1:{server.port}/api/chat"


async def _until(cond, timeout: float = LONG) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def waiting(server: ChatServer) -> int:
    return sum(server.waiting.values())


async def connect(http, server: ChatServer, *, queued: bool = True):
    """A websocket client; with `queued`, once the server has it in line."""
    before = waiting(server)
    ws = await http.ws_connect(url(server))
    if queued:
        await _until(lambda: waiting(server) > before)
    return ws


async def handshake(ws, timeout: float = LONG) -> None:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type.name == "BINARY" and msg.data[:1] == b"\x00", msg


async def no_message(ws, seconds: float = 0.5) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.receive(), seconds)


async def test_dropped_connections_cost_no_reset(host, start_server):
    """20 connections opened and dropped without a word, while the model is free: no fresh
    codec and no LM reset is made for them, and a live client then gets its handshake within
    1 s plus two resets' time (where each drop costing one reset would take 20)."""
    server = await start_server(max_waiting_per_client=32)
    codecs, configures = host.codecs, host.configures
    for _ in range(20):
        await open_and_drop("127.0.0.1", server.port)
    took = await handshake_wait(url(server))
    assert host.codecs == codecs and host.configures == configures  # nothing made for them
    assert took < 1.0 + 2 * host.reset_s, (took, host.reset_s)
    await _until(lambda: server.conversations + server.skipped == 21)
    assert server.refused == 0


async def test_waiting_clients_served_in_order_gone_ones_skipped(host, start_server, speech_wav):
    """A talks; B, C, D, E wait in that order.  C's socket is dropped and D closes while they
    wait: they leave the line at once.  B is served when A leaves, E only after B; a client
    that sent audio costs one fresh codec (made after it left), the others none."""
    import aiohttp
    import sphn

    server = await start_server(max_waiting_per_client=8)
    codecs, configures = host.codecs, host.configures
    async with aiohttp.ClientSession() as http:
        a = await connect(http, server, queued=False)
        await handshake(a)
        b = await connect(http, server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # C
        writer.write(upgrade_request("127.0.0.1", server.port))
        await reader.readuntil(b"\r\n\r\n")
        await _until(lambda: waiting(server) == 2)
        d = await connect(http, server)
        e = await connect(http, server)
        writer.close()  # C dropped
        await d.close()  # D leaves properly
        await _until(lambda: waiting(server) == 2 and server.skipped == 2)
        await no_message(b)
        # A talks (audio: a fresh LM state for it), then leaves: B's turn, not E's.
        opus = sphn.OpusStreamWriter(24000)
        for f in read_wav(speech_wav)[: 10 * FRAME].reshape(10, FRAME):
            await a.send_bytes(b"\x01" + opus.append_pcm(f.astype(np.float32)))
        await _until(lambda: host.configures == configures + 1)
        await a.close()
        await handshake(b)
        await no_message(e)
        assert host.codecs == codecs + 1  # A's used codec replaced, once
        await b.close()  # B sent no audio: its codec goes on to E untouched
        await handshake(e)
        await e.close()
    await _until(lambda: server.conversations == 3)
    assert host.codecs == codecs + 1 and host.configures == configures + 1
    assert server.skipped == 2


async def test_idle_client_does_not_hold_the_model(host, start_server):
    """A client that gets its turn and sends no audio (only pings and metadata) is closed after
    the idle timeout, and the client waiting behind it is served."""
    import aiohttp

    server = await start_server(max_waiting_per_client=8, idle_timeout_s=1.0)
    configures = host.configures
    async with aiohttp.ClientSession() as http:
        idle = await connect(http, server, queued=False)
        await handshake(idle)
        nxt = await connect(http, server)

        async def chatter():  # keeps talking, never audio
            while True:
                await idle.send_bytes(b"\x06ping")
                await idle.send_bytes(b'\x04{"moshi_tui": {"timings": true}}')
                await asyncio.sleep(0.1)

        talk = asyncio.create_task(chatter())
        deadline = time.monotonic() + LONG
        try:
            while time.monotonic() < deadline:  # (its pings come back until it is closed)
                msg = await asyncio.wait_for(idle.receive(), LONG)
                if msg.type.name != "BINARY":
                    break
        finally:
            talk.cancel()
        assert msg.type.name == "CLOSE" and idle.close_code == 1000, msg
        await handshake(nxt)
        await nxt.close()
    assert host.configures == configures  # (no audio: no LM reset either)


async def test_one_address_holds_one_place_in_line(host, start_server):
    """By default one peer address waits with one connection at most: another one is told
    "busy" (0x05) and closed with 1013 (try again later); the one in conversation is not in
    line, and once the waiting one left, the address may queue again."""
    import aiohttp

    server = await start_server()
    async with aiohttp.ClientSession() as http:
        a = await connect(http, server, queued=False)
        await handshake(a)
        b = await connect(http, server)
        c = await connect(http, server, queued=False)
        msg = await asyncio.wait_for(c.receive(), LONG)
        assert msg.data[:1] == b"\x05" and b"busy" in msg.data, msg
        msg = await asyncio.wait_for(c.receive(), LONG)
        assert msg.type.name == "CLOSE" and c.close_code == BUSY_CLOSE_CODE
        assert server.refused == 1
        await b.close()
        await _until(lambda: waiting(server) == 0)
        d = await connect(http, server)  # its place again
        await a.close()
        await handshake(d)
        await d.close()
    assert server.refused == 1


async def test_slow_client_holds_no_one_up(host, start_server):
    """A client that sends its websocket upgrade a few bytes at a time is not in line until
    it is done: a live client connecting meanwhile is served first, the slow one after it."""
    import aiohttp

    server = await start_server(max_waiting_per_client=8)
    request = upgrade_request("127.0.0.1", server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for i in range(0, 40, 4):  # (the request's first 40 bytes, slowly)
        writer.write(request[i:i + 4])
        await writer.drain()
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:
        live = await connect(http, server, queued=False)
        await handshake(live)
        writer.write(request[40:])  # the slow one finishes: it waits behind the live one
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LONG)
        assert head.startswith(b"HTTP/1.1 101")
        await _until(lambda: waiting(server) == 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.5)  # no handshake while the live one talks
        await live.close()
        first = await asyncio.wait_for(reader.readexactly(3), LONG)  # a websocket frame ...
        assert first[0] == 0x82 and first[2] == 0x00  # ... binary, and its payload: 0x00
    writer.close()
    await _until(lambda: server.conversations == 2)
