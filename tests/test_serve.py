"""`moshi-tui serve`: our MLX server over Kyutai's websocket protocol, on loopback.

The server runs as a real process with the demo model.  It is talked to by a minimal protocol
client written here from the spec (kyutai-labs/moshi rust/protocol.md: binary messages, first
byte the kind, Ogg/Opus 24 kHz mono audio) and by our own client (engine.session.remote).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.audio.wavio import WavWriter, read_wav
from engine.session.config import SessionConfig
from engine.session.remote.session import RemoteSession
from scripts.serve_drops import handshake_wait, open_and_drop

pytest_plugins = ["conftest_models"]
ROOT = Path(__file__).resolve().parents[1]
FRAME = 1920


class ServeProcess:
    def __init__(self, env, demo: str = "moshi", extra: tuple = ()):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli.serve", "--demo", demo, "--host", "127.0.0.1",
             "--port", "0", *extra],
            cwd=ROOT, env=dict(env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[re.Match]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in (re.search(pattern, ln) for ln in list(self.lines)) if m]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in the serve log after {timeout:.0f} s:\n{self.log[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the spawned model process, if still there
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def serve(demo_env):
    sp = ServeProcess(demo_env)
    try:
        m = sp.wait_for(r"listening on (ws://127\.0\.0\.1:\d+/api/chat)", timeout=120)[0]
        sp.url = m.group(1)
        yield sp
    finally:
        sp.stop()
    assert sp.proc.returncode == 0, sp.log[-3000:]
    assert "shutting down" in sp.log


def _ended(sp: ServeProcess) -> int:
    return len([ln for ln in sp.lines if re.search(r"conversation \d+ ended", ln)])


def _speech_frames(speech_wav, seconds: float) -> np.ndarray:
    x = read_wav(speech_wav)[: int(24000 * seconds)]
    n = x.size // FRAME
    return x[: n * FRAME].reshape(n, FRAME)


class SpecClient:
    """A minimal client written from the protocol spec (aiohttp + sphn, nothing from engine/)."""

    def __init__(self, ws):
        import sphn

        self.ws = ws
        self.writer = sphn.OpusStreamWriter(24000)
        self.reader = sphn.OpusStreamReader(24000)
        self.messages: list[bytes] = []
        self.samples = 0
        self.texts: list[str] = []
        self.errors: list[str] = []
        self.pings: list[bytes] = []
        self.closed = asyncio.Event()

    async def first(self, n: int, timeout: float = 20.0) -> list[bytes]:
        out = []
        for _ in range(n):
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            assert msg.type.name == "BINARY", msg
            out.append(msg.data)
        return out

    async def receive_all(self):
        import aiohttp

        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            data = msg.data
            self.messages.append(data)
            kind, payload = data[0], data[1:]
            if kind == 1:
                self.samples += self.reader.append_bytes(payload).shape[-1]
            elif kind == 2:
                self.texts.append(payload.decode("utf-8"))
            elif kind == 5:
                self.errors.append(payload.decode("utf-8"))
            elif kind == 6:
                self.pings.append(payload)
        self.closed.set()

    async def send_audio(self, frames: np.ndarray, pace_s: float = 0.08, per_page: bool = False):
        """80 ms frames, one message each; per_page: one message per Ogg page, as Kyutai's web
        client (opus-recorder, streamPages) and Rust CLI send them (40 ms of audio each)."""
        for f in frames:
            ogg = self.writer.append_pcm(f.astype(np.float32))
            chunks = _split_ogg_pages(ogg) if per_page else [ogg]
            for chunk in chunks:
                await self.ws.send_bytes(b"\x01" + chunk)
                await asyncio.sleep(pace_s / len(chunks))


def _split_ogg_pages(data: bytes) -> list[bytes]:
    """Ogg framing (RFC 3533): 27-byte header, segment table, body of sum(table) bytes."""
    pages, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 4] == b"OggS"
        nseg = data[pos + 26]
        size = 27 + nseg + sum(data[pos + 27: pos + 27 + nseg])
        pages.append(data[pos: pos + size])
        pos += size
    return pages


async def _until(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_spec_client_conversation(serve, speech_wav):
    import aiohttp

    before = _ended(serve)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(serve.url) as ws:
            c = SpecClient(ws)
            handshake, metadata = await c.first(2)
            # 0x00 + protocol version u32 + model version u32 (protocol.md)
            assert handshake == b"\x00" + bytes(8)
            assert metadata[0] == 0x04
            meta = json.loads(metadata[1:].decode("utf-8"))
            assert meta["instance_name"] == "moshi-tui serve" and meta["moshi_tui"]["model"] == "demo (bf16)"
            rx = asyncio.create_task(c.receive_all())
            await ws.send_bytes(b"\x06nonce-1")  # the app-level ping is echoed
            await c.send_audio(_speech_frames(speech_wav, 2.0), per_page=True)
            assert await _until(lambda: c.samples >= 10 * FRAME and c.texts, 60), (c.samples, c.texts)
            await ws.close()
            await asyncio.wait_for(rx, 10)
            assert ws.close_code == 1000
    assert c.pings == [b"nonce-1"]
    assert c.errors == []
    assert c.samples % 960 == 0  # whole Opus frames of Moshi's 24 kHz audio
    assert all(isinstance(t, str) and t for t in c.texts)
    m = serve.wait_for(r"conversation \d+ ended: (\d+) frames in, (\d+) out.*, (\d+) frames "
                       r"encoded early", count=before + 1)[-1]
    assert int(m.group(1)) == 25
    # 40 ms Ogg pages: the first half of a frame reaches the encoder before the second
    assert int(m.group(3)) > 0


async def test_malformed_messages_rejected_and_the_server_keeps_serving(serve, speech_wav):
    import aiohttp

    pages = []
    import sphn

    w = sphn.OpusStreamWriter(24000)
    frames = _speech_frames(speech_wav, 1.5)
    for f in frames:
        pages.append(w.append_pcm(f))
    bad_crc = bytearray(pages[1])
    bad_crc[-1] ^= 0xFF
    malformed = [
        (b"\x09unknown", "unknown message kind 0x09"),
        (b"", "empty message"),
        (b"\x01" + pages[0][: len(pages[0]) // 2], "truncated Ogg page"),  # truncated Opus
        (b"\x01" + bytes(bad_crc), "checksum"),
        (b"\x01" + pages[0] + b"trailing", "not an Ogg page"),
        (b"\x01" + b"\0" * (70 * 1024), "over the 65536-byte limit"),  # oversized message
        (b"\x02\xc3\x28", "not valid UTF-8"),
        (b"\x04{", "not valid JSON"),
        (b"\x03\x07", "unknown control action 7"),
        (b"\x00\x01\x02\x03\x04\x05", "handshake payload of 5 bytes"),
        ("a text frame", "binary only"),
    ]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(serve.url, max_msg_size=8 * 2**20) as ws:
            c = SpecClient(ws)
            assert (await c.first(2))[0][0] == 0x00
            for data, reason in malformed:
                if isinstance(data, str):
                    await ws.send_str(data)
                else:
                    await ws.send_bytes(data)
                (reply,) = await c.first(1)
                assert reply[0] == 0x05 and reason in reply[1:].decode(), (reason, reply)
            # The conversation goes on: the Opus decoder never saw the bad pages.
            rx = asyncio.create_task(c.receive_all())
            w2 = sphn.OpusStreamWriter(24000)
            for f in frames:
                await ws.send_bytes(b"\x01" + w2.append_pcm(f))
                await asyncio.sleep(0.08)
            assert await _until(lambda: c.samples >= 5 * FRAME, 60), c.samples
            assert c.errors == []
            # A websocket frame over the transport limit closes this connection (1009) ...
            await ws.send_bytes(b"\x01" + bytes(2 * 2**20))
            await asyncio.wait_for(rx, 10)
            assert ws.close_code == 1009
        # ... and the server takes the next one.
        async with http.ws_connect(serve.url) as ws:
            c = SpecClient(ws)
            handshake, _ = await c.first(2)
            assert handshake[0] == 0x00
            await ws.close()
    assert serve.proc.poll() is None
    assert "rejected message" in serve.log


async def test_sampling_from_the_web_uis_query_parameters(serve):
    """Kyutai's web UI sends its sliders with the websocket URL: the ones the MLX sampler
    supports are applied for that conversation and reported back as used; the others are
    named as ignored.  A malformed value is refused with an error, and the server goes on."""
    import aiohttp

    query = ("?text_temperature=0.6&text_topk=25&audio_temperature=0.7&audio_topk=250"
             "&pad_mult=0&repetition_penalty_context=64&repetition_penalty=1&text_seed=42")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(serve.url + query) as ws:
            _, metadata = await SpecClient(ws).first(2)
            meta = json.loads(metadata[1:].decode("utf-8"))
            assert (meta["text_temperature"], meta["text_topk"]) == (0.6, 25)
            assert (meta["audio_temperature"], meta["audio_topk"]) == (0.7, 250)
            ours = meta["moshi_tui"]
            assert ours["sampling"]["seed"] == 42
            assert sorted(ours["ignored_query"]) == ["pad_mult", "repetition_penalty",
                                                     "repetition_penalty_context"]
        async with http.ws_connect(serve.url) as ws:  # the next conversation: serve's defaults
            _, metadata = await SpecClient(ws).first(2)
            meta = json.loads(metadata[1:].decode("utf-8"))
            assert (meta["text_temperature"], meta["text_topk"]) == (0.8, 0)
            assert meta["moshi_tui"]["sampling"]["seed"] is None
        async with http.ws_connect(serve.url + "?text_temperature=hot") as ws:
            (err,) = await SpecClient(ws).first(1)
            assert err[0] == 0x05 and b"text_temperature='hot' is not a number" in err
    assert serve.proc.poll() is None


async def test_one_conversation_at_a_time(serve):
    """One conversation at a time; the next client waits in line (no handshake) and one address
    holds one place in line by default: a second waiting connection is told "busy" (0x05) and
    closed with 1013, a connection that leaves the line frees its place."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        a = await http.ws_connect(serve.url)
        assert (await SpecClient(a).first(1))[0][0] == 0x00
        arrived, skipped = _count(serve, _ARRIVED), _count(serve, _FATES["skipped"])
        gone = await http.ws_connect(serve.url)  # waits for its turn, then gives up
        serve.wait_for(_ARRIVED, count=arrived + 1)
        busy = await http.ws_connect(serve.url)  # a second place in line: refused
        (err,) = await SpecClient(busy).first(1)
        assert err[0] == 0x05 and b"busy" in err, err
        assert (await busy.receive(timeout=10)).type.name == "CLOSE" and busy.close_code == 1013
        await gone.close()  # leaves the line at once ...
        serve.wait_for(_FATES["skipped"], count=skipped + 1)
        b = await http.ws_connect(serve.url)  # ... so this one may wait
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.receive(), 1.0)
        await a.close()
        (handshake,) = await SpecClient(b).first(1, timeout=30)
        assert handshake[0] == 0x00
        await b.close()
    assert serve.proc.poll() is None


async def test_dropped_connections_are_skipped(serve):
    """20 connections opened and dropped without a word are skipped, refused or end as
    conversations without audio, none of which resets anything: the next client is served
    after them, and its conversation (no audio either) resets nothing."""
    before = {k: _count(serve, p) for k, p in _FATES.items()}
    unused = _count(serve, _UNUSED)
    for _ in range(20):
        await open_and_drop("127.0.0.1", _port(serve))
    assert await _until(lambda: sum(_count(serve, p) - before[k] for k, p in _FATES.items()) >= 20,
                        60), serve.log[-3000:]
    await handshake_wait(serve.url)
    started = _count(serve, _FATES["started"]) - before["started"]  # (the live client's too)
    assert started >= 1
    assert await _until(lambda: _count(serve, _UNUSED) - unused >= started, 60), serve.log[-3000:]


_UNUSED = r"conversation \d+ ended before any audio .*: nothing to reset"
_ARRIVED = r"connection from 127\.0\.0\.1$"
_FATES = {"started": r"conversation \d+ with \S+ started", "skipped": r"left before its turn: skipped",
          "refused": r"connection from \S+ refused"}


def _count(sp: ServeProcess, pattern: str) -> int:
    return len([ln for ln in list(sp.lines) if re.search(pattern, ln)])


def _port(sp: ServeProcess) -> int:
    return int(re.search(r":(\d+)/api/chat", sp.url).group(1))


def test_our_client_against_serve(serve, speech_wav, tmp_path):
    clip = tmp_path / "speech3.wav"
    wr = WavWriter(clip, 24000)
    wr.write(read_wav(speech_wav)[: 24000 * 3])
    wr.close()
    before = _ended(serve)
    cfg = SessionConfig(input=str(clip), output=str(tmp_path / "out.wav"), seconds=10)
    cfg.save = False
    s = RemoteSession(cfg, serve.url.replace("/api/chat", ""))  # the path is filled in
    s.prepare()
    s.start()
    assert s.wait(60)
    s.stop()
    snap = s.snapshot()
    assert snap.error is None and s.exit_code == 0, snap.error
    assert snap.info.server["kind"] == "moshi-tui serve" and snap.info.server["protocol_version"] == 0
    st = s.tel.stage_stats()
    assert st["encode_work"]["n"] >= 36 and snap.frames_processed >= 5
    assert np.abs(read_wav(tmp_path / "out.wav")).max() > 0
    assert len(s.tel.tokens) >= 5
    # the server's own step times, sent as metadata on request
    assert st["model"]["n"] >= 5 and 0 < st["model"]["p50"] < 5000
    assert st["rtt"]["n"] >= 1 and st["e2e"]["n"] >= 3
    assert snap.counters["protocol_errors"] == 0 and snap.counters["server_errors"] == 0
    assert snap.info.close_code == 1000
    serve.wait_for(r"conversation \d+ ended", count=before + 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--static", "/nonexistent-dir"], "--static: no index.html"),
        (["--max-conversations", "0"], "--max-conversations must be at least 1"),
        (["--max-waiting-per-client", "0"], "--max-waiting-per-client must be at least 1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_serve_usage_errors(args, message):
    r = subprocess.run([sys.executable, "-m", "tui.cli", "serve", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_serve_runs_the_hibiki_shaped_demo(demo_env, speech_wav):
    """serve runs any of the models: the Hibiki-shaped demo (16 codebooks each way, a
    conditioned LM) answers with audio and text, and its metadata says it translates.  With a
    short context the conversation goes through new segments (a fresh codec each time, as
    rustymimi's stream is limited) and goes on."""
    import aiohttp

    sp = ServeProcess(demo_env, demo="hibiki", extra=("--max-steps", "10"))
    try:
        url = sp.wait_for(r"listening on (ws://127\.0\.0\.1:\d+/api/chat)", timeout=120)[0].group(1)

        async def talk():
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(url) as ws:
                    c = SpecClient(ws)
                    _, metadata = await c.first(2)
                    meta = json.loads(metadata[1:].decode("utf-8"))
                    rx = asyncio.create_task(c.receive_all())
                    frames = _speech_frames(speech_wav, 2.0)

                    async def speak():  # the user talks on (in real time) until answered:
                        while True:  # a slow host drops frames, it must still answer
                            await c.send_audio(frames, per_page=True)

                    talking = asyncio.create_task(speak())
                    answered = await _until(lambda: c.samples >= 10 * FRAME and c.texts, 120)
                    talking.cancel()
                    assert answered, (c.samples, c.texts)
                    await ws.close()
                    await asyncio.wait_for(rx, 10)
                    return meta, c

        meta, c = asyncio.run(talk())
        assert meta["moshi_tui"]["model"] == "demo Hibiki (bf16)"
        assert meta["moshi_tui"]["mode"] == "translation" and c.errors == []
        m = sp.wait_for(r"conversation \d+ ended: .*, (\d+) new segments", timeout=20)[0]
        assert int(m.group(1)) >= 1
    finally:
        sp.stop()
    assert sp.proc.returncode == 0, sp.log[-3000:]
