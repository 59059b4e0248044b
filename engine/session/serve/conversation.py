"""One conversation of `moshi-tui serve`: a websocket client's Opus audio through a
ClientPipeline to the model host, its text and audio back.

Protocol handling (engine.session.wsproto): after the handshake (0x00 + two u32, as protocol.md)
the server sends one metadata message (0x04) in the Rust backend's schema, so Kyutai's web UI
shows it, plus a "moshi_tui" key.  A client that answers with metadata
{"moshi_tui": {"timings": true}} (moshi-tui --remote does) then receives the server's step
timings every TIMINGS_EVERY_S as metadata {"timings": {"model": [ms...], "queue": [ms...]}}.
An app-level ping (0x06) is echoed.  A malformed message -- unknown kind, empty, over 64 KiB,
not whole checksum-valid Ogg pages (a truncated page), undecodable Opus, bad UTF-8/JSON, a text
websocket frame -- is answered with an error message (0x05) and dropped, before it reaches the
Opus decoder; the conversation goes on, and the server too.

The conversation runs on a codec the server prepared for it (`run(codec)`); its pipeline starts,
and the LM's fresh state (Configure, with this conversation's sampling) is asked for, with the
client's first audio, so a client that never sends audio costs the model nothing.  A conversation
with no audio from its client for `idle_timeout_s` (IDLE_TIMEOUT_S unless told) is closed (1000,
"idle"), from the handshake on: pings, metadata and malformed messages do not count as audio.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np

from engine.audio import SAMPLE_RATE
from engine.audio.endpoints import FrameChunker
from engine.pipeline.events import PipelineObserver
from engine.session import wsproto
from engine.session.host import ModelHost
from engine.telemetry.collect import Telemetry

MAX_ERRORS = 100  # malformed messages tolerated per connection before it is closed (1008)
IDLE_TIMEOUT_S = 30.0  # a conversation with no audio from the client for this long is closed
TIMINGS_EVERY_S = 0.25


def log(msg: str) -> None:
    """One line of serve's log."""
    print(f"[serve] {msg}", flush=True)


class Conversation(PipelineObserver):
    """One websocket client: its Opus audio through the pipeline, text and audio back; an
    observer of the pipeline (text tokens, decoded PCM and step timings go to the client).
    `audio_pushed`: whether audio came and the pipeline started (else the codec is still a
    fresh one)."""

    def __init__(self, host: ModelHost, ws, peer: str, index: int, query: dict | None = None,
                 *, idle_timeout_s: float = IDLE_TIMEOUT_S):
        import sphn

        self.host = host
        self.ws = ws
        self.peer = peer
        self.index = index
        self.idle_timeout_s = idle_timeout_s
        # the sampling Kyutai's web UI asks for in the URL (UsageError when a value is bad)
        self.sampling, self.query_applied, self.query_ignored = host.options.sampling.with_query(
            dict(query or {}))
        self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self.writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self.chunker = FrameChunker()  # client audio -> frames (and their first 40 ms early)
        self.errors = 0
        self.frames_in = 0
        self.frames_out = 0
        self.texts: deque[str] = deque()
        self.timings: dict[str, list] = {"model": [], "queue": []}
        self.want_timings = False
        self.fatal: str | None = None
        self.audio_pushed = False
        self._audio_at = 0.0  # when the client's last valid audio came
        self.pipeline = None  # (from the first audio on)
        self.codec = None
        self.tel = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    # called from the pipeline's threads
    def _notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass

    def text_token(self, piece: str, token_id: int, step: int, t_ns: int) -> None:
        self.texts.append(piece)
        self._notify()

    def pcm_ready(self, rec, pcm) -> None:
        self._notify()

    def stepped(self, rec) -> None:
        if self.want_timings:
            self.timings["queue"].append(round((rec.t_step0 - rec.t_srv_in) / 1e6, 3))
            self.timings["model"].append(round((rec.t_step1 - rec.t_step0) / 1e6, 3))

    async def run(self, codec) -> None:
        """The conversation on `codec` (a fresh one: engine.session.host.ModelHost.new_codec),
        until the client leaves, idles or the model fails."""
        self._loop = asyncio.get_running_loop()
        self.tel = Telemetry()
        self.codec = codec
        ws = self.ws
        tasks = []
        try:  # once started, the pipeline is stopped whatever happens (it shares the pipe)
            try:
                await ws.send_bytes(wsproto.encode_handshake())
                await ws.send_bytes(wsproto.encode_metadata(self._server_metadata()))
            except ConnectionError:
                log(f"conversation {self.index}: the client left before its handshake")
                return
            tasks = [asyncio.create_task(c) for c in (self._reader(), self._writer(), self._watchdog())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if exc is not None and not isinstance(exc, ConnectionError):
                    log(f"conversation {self.index}: {type(exc).__name__}: {exc}")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.fatal and not ws.closed:
                try:
                    await ws.send_bytes(wsproto.encode_error(self.fatal))
                    await ws.close(code=1011, message=b"model server failed")
                except Exception:
                    pass
            if self.pipeline is not None:
                await self._loop.run_in_executor(None, self._finish, codec)

    def _server_metadata(self) -> dict:
        info = self.host.info
        resolved = self.host.resolved
        # The Rust backend's MetaData schema (what Kyutai's web UI validates and shows) ...
        meta = {
            # the sampling this conversation really uses (its URL's query, else serve's own)
            "text_temperature": self.sampling.text_temperature,
            "text_topk": self.sampling.text_top_k,
            "audio_temperature": self.sampling.audio_temperature,
            "audio_topk": self.sampling.audio_top_k,
            "pad_mult": 0.0, "repetition_penalty_context": 0, "repetition_penalty": 1.0,
            "lm_model_file": str(resolved.moshi_weight or ""),
            "mimi_model_file": str(resolved.mimi_weight),
            "instance_name": "moshi-tui serve",
            "build_info": {k: "" for k in (
                "build_timestamp", "build_date", "git_branch", "git_timestamp", "git_date",
                "git_hash", "git_describe", "rustc_host_triple", "rustc_version", "cargo_target_triple")},
        }
        # ... plus ours.
        meta["moshi_tui"] = {
            "version": _version(), "model": resolved.label, "max_steps": info.get("max_steps"),
            "mode": resolved.kind.mode,
            "mlx_device": info.get("mlx_device"), "lm_step": info.get("lm_mode"),
            "codec": self.host.codec_backend, "timings_available": True,
            "sampling": self.sampling.as_dict(), "sampling_from_query": self.query_applied,
            # what Kyutai's web UI sends that the MLX sampler cannot do (pad_mult, repetition
            # penalty: fixed at 0 / 1.0 above) or that is unknown
            "ignored_query": self.query_ignored,
        }
        return meta

    async def _reader(self) -> None:
        import aiohttp

        ws = self.ws
        self._audio_at = time.monotonic()  # (each valid audio message moves it on)
        while True:
            left = self._audio_at + self.idle_timeout_s - time.monotonic()
            if left <= 0:  # (checked before reading: a stream of other messages cannot delay it)
                log(f"conversation {self.index}: no audio from the client for "
                    f"{self.idle_timeout_s:g} s: closing")
                await ws.close(code=1000, message=b"idle")
                return
            try:
                msg = await ws.receive(timeout=left)
            except asyncio.TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._on_binary(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await self._reject("text websocket frames are not part of the protocol (binary only)")
            elif msg.type == aiohttp.WSMsgType.ERROR:
                log(f"conversation {self.index}: websocket error: {ws.exception()}")
                return
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return
            if self.errors > MAX_ERRORS:
                log(f"conversation {self.index}: over {MAX_ERRORS} malformed messages: closing")
                await ws.close(code=1008, message=b"too many malformed messages")
                return

    async def _reject(self, reason: str) -> None:
        self.errors += 1
        if self.errors <= 5 or self.errors % 50 == 0:
            log(f"conversation {self.index}: rejected message ({self.errors}): {reason}")
        try:
            await self.ws.send_bytes(wsproto.encode_error(f"rejected: {reason}"))
        except Exception:
            pass

    async def _on_binary(self, data: bytes) -> None:
        try:
            m = wsproto.decode(data, kinds=wsproto.SPEC_KINDS, max_size=wsproto.MAX_MESSAGE)
        except wsproto.ProtocolError as e:
            await self._reject(e.reason)
            return
        if m.kind == wsproto.AUDIO:
            try:
                pcm = self.reader.append_bytes(m.payload)
            except Exception as e:
                import sphn

                self.reader = sphn.OpusStreamReader(SAMPLE_RATE)  # its stream state is now unusable
                await self._reject(f"undecodable Opus audio: {e}")
                return
            self._audio_at = time.monotonic()
            pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
            if pcm.size == 0:
                return
            if self.pipeline is None:
                self._start_pipeline()
            t = time.monotonic_ns()
            for frame in self.chunker.push(pcm):
                self.pipeline.on_frame(frame, t)
                self.frames_in += 1
            head = self.chunker.head()
            if head is not None:
                self.pipeline.on_head(head, t)
        elif m.kind == wsproto.PING:
            await self.ws.send_bytes(wsproto.encode_ping(m.payload))
        elif m.kind == wsproto.METADATA:
            req = m.data.get("moshi_tui") if isinstance(m.data, dict) else None
            if isinstance(req, dict) and "timings" in req:
                self.want_timings = bool(req["timings"])
        # handshake, text, control, error from a client: valid, nothing to do in full streaming

    def _start_pipeline(self) -> None:
        """With the first audio: a fresh LM state asked for (before any of this conversation's
        frames can reach the model), then the pipeline on this conversation's codec."""
        from engine.pipeline.client import ClientPipeline

        self.host.configure(self.sampling)
        self.audio_pushed = True
        segments = self.host.codec_segments(self.tel.warn)  # (as in a local session)
        self.pipeline = ClientPipeline(self.codec, self.host.conn, self.host.spm, self.tel, self,
                                       segments=segments, input_max=8, inflight_max=4,
                                       output_max=64)
        self.pipeline.start()

    async def _writer(self) -> None:
        ws = self.ws
        last_timings = time.monotonic()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.texts:
                await ws.send_bytes(wsproto.encode_text(self.texts.popleft()))
            q = self.pipeline.output_q if self.pipeline is not None else ()
            while q:
                _rec, pcm = q.popleft()
                ogg = self.writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32))
                if ogg:
                    await ws.send_bytes(wsproto.encode_audio(ogg))
                self.frames_out += 1
            now = time.monotonic()
            if self.want_timings and now - last_timings >= TIMINGS_EVERY_S and (
                    self.timings["model"] or self.timings["queue"]):
                batch, self.timings = self.timings, {"model": [], "queue": []}
                await ws.send_bytes(wsproto.encode_metadata({"timings": batch}))
                last_timings = now

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            error = self.pipeline.error if self.pipeline is not None else None
            if error or not self.host.alive():
                self.fatal = f"model server failed: {error or 'process died'}"
                log(f"conversation {self.index}: {self.fatal}")
                return

    def _finish(self, codec) -> None:
        """Let in-flight frames come back (so the next conversation starts clean), then stop the
        pipeline."""
        p = self.pipeline
        deadline = time.monotonic() + 2.0
        while not p.idle() and time.monotonic() < deadline and not self.fatal:
            time.sleep(0.01)
        p.stop()
        # Anything the codec still holds belongs to this conversation.
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end and not codec.idle():
            pass


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("moshi-tui")
    except Exception:
        return "0"
