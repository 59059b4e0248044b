"""How long a live client waits for `serve`'s handshake after connections that were opened and
dropped without a word.

    python -m scripts.serve_drops [--drops 1,5,20] [-- serve options...]

Starts `moshi-tui serve --demo` on a free loopback port (plus the serve options given after
`--`), and for each count N: opens N websocket connections (the HTTP upgrade, then the socket
closed, nothing sent), connects a live client at once and prints how long it waited for the
handshake (0x00).  The helpers are also what tests/test_serve_queue.py drives the server with.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPGRADE = ("GET /api/chat HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")


def upgrade_request(host: str, port: int) -> bytes:
    """A websocket upgrade request for /api/chat (RFC 6455 section 4.1)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return UPGRADE.format(host=host, port=port, key=key).encode()


async def open_and_drop(host: str, port: int, timeout: float = 30.0) -> None:
    """Open a websocket connection (the server's 101 read), then close the socket without a
    websocket message or close frame."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(upgrade_request(host, port))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"no websocket upgrade: {head[:60]!r}")
    finally:
        writer.close()


async def handshake_wait(url: str, timeout: float = 120.0) -> float:
    """Seconds from connecting to `url` until the server's handshake (0x00) came; the
    connection is closed after it."""
    import aiohttp

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            msg = await asyncio.wait_for(ws.receive(), timeout)
            took = time.monotonic() - t0
            if msg.type != aiohttp.WSMsgType.BINARY or msg.data[:1] != b"\x00":
                raise RuntimeError(f"no handshake: {msg.type.name} {str(msg.data)[:80]}")
            await ws.close()
    return took


async def measure(host: str, port: int, counts: list[int], settle_s: float = 3.0) -> list[float]:
    """The live client's handshake wait after each count of dropped connections."""
    url = f"ws://{host}:{port}/api/chat"
    await handshake_wait(url)  # (the first conversation out of the way)
    out = []
    for n in counts:
        await asyncio.sleep(settle_s)
        for _ in range(n):
            await open_and_drop(host, port)
        out.append(await handshake_wait(url))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(prog="python -m scripts.serve_drops")
    p.add_argument("--drops", default="1,5,20", help="counts of dropped connections (1,5,20)")
    p.add_argument("--log", action="store_true", help="print serve's log, each line timed")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    counts = [int(x) for x in args.drops.split(",")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.serve", "--demo", "--host", "127.0.0.1", "--port", "0",
         *extra], cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    listening = threading.Event()
    t0 = time.monotonic()

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if args.log:
                print(f"{time.monotonic() - t0:8.2f} {lines[-1]}", flush=True)
            if "listening on" in line:
                listening.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not listening.wait(180):
            print("serve did not start:\n" + "\n".join(lines[-20:]), file=sys.stderr)
            return 1
        port = int(re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", "\n".join(lines)).group(1))
        waits = asyncio.run(measure("127.0.0.1", port, counts))
        for n, w in zip(counts, waits):
            print(f"{time.monotonic() - t0:8.2f} " if args.log else "", end="")
            print(f"{n:3d} dropped connections: handshake after {w:.3f} s")
        return 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
