"""moshi-tui as a client of a Moshi server over Kyutai's websocket protocol (engine.session.remote).

- engine.session.wsproto: encoding, strict decoding, Ogg page validation;
- the jitter buffer and URL handling;
- reconnects against a small protocol server written here (loopback): a dropped connection, a
  refused reconnect, a silent (half-open) connection, a server that never comes back;
- the real thing: Kyutai's `moshi_mlx.local_web`, started here with the demo model's weights.
Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.audio.wavio import WavWriter, read_wav
from engine.errors import UsageError
from engine.session import wsproto
from engine.session.config import SessionConfig
from engine.session.remote.jitter import JitterBuffer
from engine.session.remote.session import RemoteSession
from engine.session.remote.url import normalize_url
from tests.test_serve import serve  # noqa: F401  (the fixture: `serve --demo` on loopback)

pytest_plugins = ["conftest_models"]
ROOT = Path(__file__).resolve().parents[1]


def _opus_pages(frames: int = 4, seed: int = 0) -> list[bytes]:
    import sphn

    w = sphn.OpusStreamWriter(24000)
    x = (0.2 * np.random.default_rng(seed).standard_normal(1920 * frames)).astype(np.float32)
    return [w.append_pcm(x[i * 1920:(i + 1) * 1920]) for i in range(frames)]


def _cfg(**kw) -> SessionConfig:
    kw.setdefault("input", "silence")
    kw.setdefault("output", "null")
    cfg = SessionConfig(**{k: v for k, v in kw.items() if k != "save"})
    cfg.save = kw.get("save", False)
    return cfg


# --------------------------------------------------------------------------- wsproto


def test_encode_decode_every_kind():
    hs = wsproto.decode(wsproto.encode_handshake(0, 7))
    assert hs.name == "handshake" and hs.data == (0, 7) and len(wsproto.encode_handshake()) == 9
    # the Python servers' one-byte handshake and the web client's 3-byte one are accepted
    assert wsproto.decode(b"\x00").data == (0, 0)
    assert wsproto.decode(b"\x00\x00\x00").data == (0, 0)
    page = _opus_pages(1)[0]
    audio = wsproto.decode(wsproto.encode_audio(page, validate=True))
    assert audio.payload == page and audio.pages[0].bos and len(audio.pages) >= 3  # head, tags, audio
    assert wsproto.decode(wsproto.encode_text(" héllo")).text == " héllo"
    assert wsproto.decode(wsproto.encode_control("pause")).data == "pause"
    assert wsproto.decode(wsproto.encode_metadata({"a": [1, 2]})).data == {"a": [1, 2]}
    assert wsproto.decode(wsproto.encode_error("boom")).text == "boom"
    assert wsproto.decode(wsproto.encode_ping(b"12345678")).payload == b"12345678"
    assert wsproto.decode(b"\x06").name == "ping"
    colored = wsproto.decode(b"\x07\x05hi", kinds=wsproto.CLIENT_KINDS)
    assert colored.color == 5 and colored.text == "hi"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty message"),
        (b"\x09abc", "unknown message kind 0x09"),
        (b"\x07\x05hi", "unknown message kind 0x07"),  # coloredtext is not in the spec's set
        (b"\x00\x01\x02\x03", "handshake payload of 3 bytes"),
        (b"\x01", "audio message without Ogg data"),
        (b"\x01hello world, not ogg", "not an Ogg page"),
        (b"\x02\xff\xfe", "not valid UTF-8"),
        (b"\x03", "control payload of 0 bytes"),
        (b"\x03\x09", "unknown control action 9"),
        (b"\x04{not json", "not valid JSON"),
        (b"\x04NaN", "not valid JSON"),
        (b"\x06" + b"x" * 200, "ping payload of 200 bytes"),
    ],
)
def test_malformed_messages_are_rejected(data, reason):
    with pytest.raises(wsproto.ProtocolError, match=reason):
        wsproto.decode(data)


def test_ogg_validation_catches_truncation_corruption_and_trailing_bytes():
    pages = _opus_pages(3)
    good = pages[1]
    assert wsproto.parse_ogg_pages(good)
    with pytest.raises(wsproto.ProtocolError, match="truncated Ogg page"):
        wsproto.decode(b"\x01" + good[:-5])
    with pytest.raises(wsproto.ProtocolError, match="truncated Ogg page header"):
        wsproto.decode(b"\x01" + good + good[:10])
    corrupt = bytearray(good)
    corrupt[-1] ^= 0x55
    with pytest.raises(wsproto.ProtocolError, match="checksum"):
        wsproto.decode(b"\x01" + bytes(corrupt))
    with pytest.raises(wsproto.ProtocolError, match="not an Ogg page"):
        wsproto.decode(b"\x01" + good + b"garbage-after-the-pages!!!!!!!!!")
    with pytest.raises(wsproto.ProtocolError, match="over the 1000-byte limit"):
        wsproto.decode(b"\x01" + b"x" * 2000, max_size=1000)


def test_ogg_crc_matches_the_reference_vector():
    # CRC-32/MPEG-2 without the final inversion/initial value: Ogg's checksum ("123456789" -> 0x89A1897F)
    assert wsproto.ogg_crc(b"123456789") == 0x89A1897F


# --------------------------------------------------------------------------- jitter buffer, URLs


def test_jitter_buffer_prebuffers_adapts_and_bounds_latency():
    jb = JitterBuffer()
    assert jb.pop() == (None, False)  # not started: silence, not an underrun
    jb.push("a")
    assert jb.pop() == ("a", False)
    assert jb.pop() == (None, True)  # underrun: playback pauses and the target grows
    assert jb.target == 2
    jb.push("b")
    assert jb.pop() == (None, False)  # refilling to the new target
    jb.push("c")
    assert [jb.pop()[0], jb.pop()[0]] == ["b", "c"]
    jb2 = JitterBuffer()
    for x in "abc":
        dropped = jb2.push(x)
    assert dropped == ["a", "b"] and len(jb2) == 1 and jb2.slack == 2  # cut back to the target


@pytest.mark.parametrize(
    "given, url",
    [
        ("ws://h:8998/api/chat", "ws://h:8998/api/chat"),
        ("h:8998", "ws://h:8998/api/chat"),
        ("http://h:8998/", "ws://h:8998/api/chat"),
        ("https://moshi.example/custom/path?x=1", "wss://moshi.example/custom/path?x=1"),
        ("wss://[::1]:9000", "wss://[::1]:9000/api/chat"),
    ],
)
def test_normalize_url(given, url):
    assert normalize_url(given) == url


@pytest.mark.parametrize("bad", ["", "ftp://h/x", "ws://:80/x", "ws://h:99999/"])
def test_normalize_url_rejects(bad):
    with pytest.raises(UsageError):
        normalize_url(bad)


# --------------------------------------------------------------------------- a protocol server


class FakeServer:
    """A Moshi-protocol stand-in on loopback: handshake, then for every audio message from the
    client it echoes the client's own Ogg/Opus stream and sends one text piece "c<conn>w<n> ".

    `plan[i]` is what connection i does: "ok", "refuse" (HTTP 503, no websocket),
    ("drop", n) (the TCP connection is cut after n audio messages), ("stall", n) (after n audio
    messages it stops reading and answering, like a half-open connection).
    """

    def __init__(self, plan=(), handshake=b"\x00"):
        self.plan = list(plan)
        self.handshake = handshake
        self.connections = 0
        self.audio_in = {}
        self.close_codes = []
        self.port = None
        self._loop = None
        self._runner = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self):
        await self._runner.cleanup()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:  # handlers still waiting (a stalled connection)
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/api/chat"

    def _run(self):
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/api/chat", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _handle(self, request):
        import aiohttp
        from aiohttp import web

        i = self.connections
        self.connections += 1
        todo = self.plan[i] if i < len(self.plan) else "ok"
        if todo == "refuse":
            return web.Response(status=503, text="busy")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(self.handshake)
        n = 0
        self.audio_in[i] = 0
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY or msg.data[:1] != b"\x01":
                continue
            n += 1
            self.audio_in[i] = n
            await ws.send_bytes(msg.data)
            await ws.send_bytes(b"\x02" + f" c{i}w{n}".encode())
            if isinstance(todo, tuple) and n >= todo[1]:
                if todo[0] == "drop":
                    request.transport.abort()
                    return ws
                if todo[0] == "stall":
                    await asyncio.sleep(3600)
        self.close_codes.append(ws.close_code)
        return ws


def _eventually(cond, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _run_session(session: RemoteSession, timeout: float = 20.0) -> RemoteSession:
    session.prepare()
    session.start()
    try:
        assert session.wait(timeout), "the session did not end"
    finally:
        session.stop()
    return session


def test_audio_and_text_through_a_protocol_server_then_clean_close():
    with FakeServer() as srv:
        s = _run_session(RemoteSession(_cfg(seconds=1.5, keep_records=True), srv.url, ping_every_s=0.2))
        assert _eventually(lambda: srv.close_codes == [1000])
    snap = s.snapshot()
    assert s.exit_code == 0 and snap.error is None and s.end_reason == "time limit"
    assert snap.info.server["protocol_version"] == 0  # the one-byte handshake of the Python servers
    assert srv.audio_in[0] >= 12
    assert snap.frames_processed >= 8 and snap.frames_played >= 6
    assert snap.text.startswith(" c0w1 c0w2")
    stats = s.tel.stage_stats()
    for stage in ("encode", "encode_work", "decode_work", "rtt", "e2e"):
        assert stats[stage]["n"] > 0, stage
    assert snap.counters["protocol_errors"] == 0
    assert snap.info.close_code == 1000
    # shown as a server without step timings (Kyutai's) is: measured figures, not "-"
    _assert_remote_figures(snap, server_step=False)
    # --trace: the frames' client-side stamps (encode, decode, wait for the speaker)
    from engine.telemetry.trace import build_trace

    slices = {e["name"].split(" #")[0] for e in build_trace(s.tel)["traceEvents"] if e["ph"] == "X"}
    assert {"input wait", "encode", "decode", "output wait"} <= slices


def test_reconnects_with_backoff_and_the_transcript_survives():
    # connection 0 is cut after 8 frames, the first reconnect is refused, the next one works
    with FakeServer(plan=[("drop", 8), "refuse", "ok"]) as srv:
        s = _run_session(RemoteSession(_cfg(seconds=3.0), srv.url, backoff_s=(0.1, 0.4)))
    snap = s.snapshot()
    assert s.exit_code == 0 and snap.error is None, snap.error
    assert srv.connections == 3
    assert snap.counters["reconnects"] == 1
    assert "c0w1" in snap.text and "c2w1" in snap.text  # before and after the drop
    assert snap.text.index("c0w") < snap.text.index("c2w")
    assert any("connection lost" in w for w in snap.warnings)
    assert snap.counters["drops_offline"] >= 1  # frames captured while disconnected


def test_a_silent_connection_is_declared_dead_and_replaced():
    with FakeServer(plan=[("stall", 5), "ok"]) as srv:
        s = _run_session(RemoteSession(_cfg(seconds=3.0), srv.url, backoff_s=(0.1, 0.4),
                                       ping_every_s=0.2, dead_after_s=0.8))
    snap = s.snapshot()
    assert snap.error is None, snap.error
    assert srv.connections == 2 and snap.counters["reconnects"] == 1
    assert "c0w1" in snap.text and "c1w1" in snap.text
    assert any("nothing from the server" in w for w in snap.warnings)


def test_gives_up_when_the_server_does_not_come_back():
    with FakeServer(plan=[("drop", 4)] + ["refuse"] * 50) as srv:
        s = _run_session(RemoteSession(_cfg(seconds=20), srv.url, backoff_s=(0.1, 0.2), give_up_s=1.0))
    snap = s.snapshot()
    assert s.exit_code == 1 and snap.state == "error"
    assert "could not reconnect within 1 s" in snap.error and "HTTP 503" in snap.error
    assert "c0w1" in snap.text  # what was said before the drop is kept


def test_cannot_connect_fails_fast_with_one_line():
    with socket.socket() as sock:  # a port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    s = _run_session(RemoteSession(_cfg(seconds=5), f"ws://127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 5
    assert s.exit_code == 1 and s.snapshot().error.startswith(f"cannot connect to ws://127.0.0.1:{port}/api/chat")
    assert "\n" not in s.snapshot().error


def test_a_server_that_never_answers_times_out_and_stop_does_not_wait_for_it():
    with socket.socket() as sock:  # accepts TCP connections, never answers the HTTP upgrade
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}"
        s = _run_session(RemoteSession(_cfg(seconds=5), url, connect_timeout_s=0.5))
        assert s.exit_code == 1 and "no answer within" in s.snapshot().error
        s = RemoteSession(_cfg(seconds=5), url)
        s.prepare()
        s.start()
        time.sleep(0.5)
        assert s.snapshot().state == "connecting"
        t0 = time.monotonic()
        s.stop()
        assert time.monotonic() - t0 < 1.0 and s.end_reason == "stopped" and s.snapshot().error is None


def test_messages_breaking_the_protocol_are_discarded_not_fatal():
    class Noisy(FakeServer):
        async def _handle(self, request):
            from aiohttp import web

            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_bytes(b"\x04{\"instance_name\": \"rust\", \"text_topk\": 25}")
            await ws.send_bytes(wsproto.encode_handshake())
            for bad in (b"\x09??", b"\x01OggS-truncated", b"\x02\xff", b""):
                await ws.send_bytes(bad)
            await ws.send_str("text frame")
            await ws.send_bytes(b"\x05server says hi")
            await ws.send_bytes(b"\x02 still here")
            async for _ in ws:
                pass
            return ws

    with Noisy() as srv:
        s = _run_session(RemoteSession(_cfg(seconds=0.8), srv.url))
    snap = s.snapshot()
    assert snap.error is None and snap.text == " still here"
    assert snap.counters["protocol_errors"] == 5 and snap.counters["server_errors"] == 1
    assert snap.info.server["instance_name"] == "rust" and snap.info.server["text_topk"] == 25


def _assert_remote_figures(snap, *, server_step: bool) -> None:
    """The headless status line and the diagnosis of a remote session name what it measured:
    the round trip, the end-to-end estimate, the Opus work (and the server's step if sent)."""
    from engine.telemetry.diagnose import diagnose
    from engine.telemetry.stats import status_line

    line = status_line(snap)
    num = r" *\d+\.\d"
    assert re.search(rf"\| rtt p50{num} e2e p50{num} ms \|", line), line
    assert re.search(rf"\| opus{num} \+{num} ms \|", line), line
    assert "processing" not in line and ("server step p50" in line) is server_step, line
    verdicts = diagnose(snap)
    assert "measuring" not in {v.rule for v in verdicts}, verdicts
    ok = [v for v in verdicts if v.rule == "all_ok"]
    if ok:  # (a loaded host may warn instead: then the warning is one of the remote rules')
        assert "round trip p50" in ok[0].text and "end-to-end estimate" in ok[0].text, ok


# --------------------------------------------------------------------------- Kyutai's local_web


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"local_web exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"local_web did not listen within {timeout:.0f} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def local_web(demo_files, tmp_path_factory):
    """Kyutai's moshi_mlx.local_web serving the demo model's weights on loopback."""
    port = _free_port()
    log = tmp_path_factory.mktemp("local_web") / "local_web.log"
    f = demo_files
    cmd = [sys.executable, "-m", "moshi_mlx.local_web", "--lm-config", str(f.lm_config),
           "--moshi-weight", str(f.moshi_bf16), "--mimi-weight", str(f.mimi),
           "--tokenizer", str(f.tokenizer), "--static", "none", "--no-browser",
           "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        _wait_port(port, proc, log, timeout=120)
        yield f"ws://127.0.0.1:{port}/api/chat", proc, log
    finally:
        # local_web terminates its two worker processes on SIGINT; the group kill is the fallback
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def test_against_kyutai_local_web(local_web, speech_wav, tmp_path):
    url, proc, log = local_web
    clip = tmp_path / "speech3.wav"
    w = WavWriter(clip, 24000)
    w.write(read_wav(speech_wav)[: 24000 * 3])
    w.close()
    out = tmp_path / "out.wav"
    s = _run_session(RemoteSession(_cfg(input=str(clip), output=str(out), seconds=10), url), timeout=60)
    snap = s.snapshot()
    assert snap.error is None and s.exit_code == 0, snap.error
    assert s.end_reason == "end of input"
    # handshake: local_web sends the single byte 0x00
    assert snap.info.server["protocol_version"] == 0
    # audio both ways: ~3 s sent, Moshi's audio came back, decoded and played
    st = s.tel.stage_stats()
    assert st["encode_work"]["n"] >= 36
    assert snap.frames_processed >= 5 and snap.frames_played >= 3
    assert np.abs(read_wav(out)).max() > 0
    assert st["decode_work"]["n"] >= 5 and st["e2e"]["n"] >= 3 and st["rtt"]["n"] >= 1
    # text arrives (the demo model's words are random, but they are words)
    assert len(s.tel.tokens) >= 5 and snap.text.strip()
    # everything local_web sent passed the strict decoder
    assert snap.counters["protocol_errors"] == 0
    # clean close: our close frame answered with 1000, and local_web saw the connection end
    # (its send loop may still race the closed socket and log a traceback: Kyutai's code)
    assert snap.info.close_code == 1000
    deadline = time.monotonic() + 5
    while "connection closed" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "accepted connection" in log.read_text() and "connection closed" in log.read_text()
    # ... and it takes the next conversation
    async def next_handshake():
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws:
                msg = await asyncio.wait_for(ws.receive(), 20)
                return msg.data

    assert asyncio.run(next_handshake()) == b"\x00"
    assert proc.poll() is None


def test_headless_cli_remote(local_web, tmp_path):
    """`moshi-tui --remote URL --headless` against Kyutai's local_web."""
    url, _, _ = local_web
    stats = tmp_path / "stats.json"
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--remote", url, "--headless", "--input", "silence",
         "--output", "null", "--seconds", "2", "--stats-json", str(stats), "--no-save"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(stats.read_text())
    assert data["model"]["model"] == f"remote {url}"
    assert data["stages_ms"]["encode_work"]["n"] > 0
    assert "session ended (time limit)" in r.stdout


async def test_the_app_drives_a_remote_session_unchanged(tmp_path):
    """The Textual app takes a RemoteSession as it takes a Session (against the stand-in server)."""
    from tui.app import MoshiApp

    with FakeServer() as srv:
        session = RemoteSession(_cfg(), srv.url)
        session.prepare()
        app = MoshiApp(lambda: session, session_dir=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + 20
            while len(session.tel.tokens) < 5 or app.snapshot is None or app.snapshot.state != "live":
                assert time.monotonic() < deadline, "the remote session did not go live in the app"
                assert session.snapshot().error is None
                await pilot.pause(0.2)
            await pilot.pause(0.5)  # a few UI refreshes with remote telemetry
            await pilot.press("q")
            await app.workers.wait_for_complete()
            await pilot.pause()
        assert app.return_code == 0
        assert session.done.is_set() and session.snapshot().info.close_code == 1000
        assert _eventually(lambda: srv.close_codes == [1000])


def test_headless_remote_against_serve_shows_and_judges_what_it_measures(serve, speech_wav, tmp_path):  # noqa: F811
    """`--remote --headless` against `serve --demo` (which sends its step times): every status
    line after the first second prints the round trip, the end-to-end estimate and the Opus
    work, and the server's step once it comes; the diagnosis judges them, never "0 frames
    processed so far" while audio flows; and the user's voice activity is measured, as in a
    local session."""
    stats = tmp_path / "stats.json"
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--remote", serve.url, "--headless", "--input",
         str(speech_wav), "--output", "null", "--seconds", "8", "--stats-json", str(stats),
         "--no-save"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    status = [ln for ln in r.stdout.splitlines() if re.match(r" *\d+\.\ds frames", ln)]
    # (before the server's first audio has played there is no estimate yet)
    flowing = [ln for ln in status if int(re.match(r" *[\d.]+s frames +(\d+)", ln).group(1)) > 0]
    assert len(flowing) >= 3, r.stdout
    num = r" *\d+\.\d"
    for line in flowing[1:]:
        assert re.search(rf"\| rtt p50{num} e2e p50{num} ms \|", line), line
        assert re.search(rf"\| opus{num} \+{num} ms \|", line) and "processing" not in line, line
    assert any(re.search(rf"\| server step p50{num} ms \|", ln) for ln in status), r.stdout
    diagnoses = [ln for ln in r.stdout.splitlines() if "diagnosis:" in ln]
    assert diagnoses and not any("processed so far" in ln for ln in diagnoses), r.stdout
    assert "measuring" not in diagnoses[-1], r.stdout
    data = json.loads(stats.read_text())
    assert data["diagnosis"][0]["rule"] != "measuring", data["diagnosis"]
    assert data["stages_ms"]["model"]["n"] > 0 and data["stages_ms"]["rtt"]["n"] > 0
    # turn-taking from the remote audio too: the user's speech heard, the VAD's cost a stage
    assert data["stages_ms"]["vad"]["n"] > 0, data["stages_ms"].get("vad")
    assert data["turns"]["summary"]["speech_s"]["user"] > 0, data["turns"]["summary"]


def test_kyutai_server_script_reads_the_servers_log_and_the_clients_stats(tmp_path, speech_wav):
    """scripts/gpu_kyutai_server.sh's Python part (the GPU run itself needs a GPU): the input
    WAV stretched to the session's length, and its figures from a `moshi.server` log (ANSI
    colours included) and the client's stats.json."""
    from scripts import gpu_kyutai_server as ks

    wav = tmp_path / "in.wav"
    assert ks.main(["wav", str(speech_wav), str(wav), "30"]) == 0
    x = read_wav(wav)
    assert x.size == 30 * 24000 and np.abs(x).max() > 0
    blue = "\x1b[1;34m[Info]\x1b[0m"
    log = tmp_path / "server.log"
    log.write_text("\n".join([f"{blue} accepted connection", f"{blue} text token ' hi'",
                              *(f"{blue} frame handled in {ms:.1f}ms" for ms in (40.0, 50.0, 90.0)),
                              f"{blue} connection closed"]))
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({
        "end_reason": "time limit", "frames": {"captured": 750, "processed": 740, "played": 735},
        "stages_ms": {"rtt": {"p50": 0.4, "n": 59}, "e2e": {"p50": 160.0, "n": 735},
                      "processing": {"n": 0}},
        "model": {"model": "remote ws://x", "server_protocol_version": 0}, "counters": {}}))
    out = tmp_path / "k.json"
    assert ks.main(["figures", "--stats", str(stats), "--server-log", str(log), "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["server"]["frame_handled_ms"] == {"n": 3, "p50": 50.0, "p95": 86.0, "p99": 89.2,
                                                 "max": 90.0, "over_80ms": 1}
    assert fig["server"]["text_tokens"] == 1 and fig["server"]["connections"] == 1
    assert fig["client"]["frames"]["processed"] == 740 and set(fig["client"]["stages_ms"]) == {"rtt", "e2e"}
    assert fig["client"]["server"] == {"server_protocol_version": 0}
    assert ks.main(["figures", "--stats", str(tmp_path / "none.json"), "--server-log", str(log),
                    "--json", str(out)]) == 2
