"""Screenshots of the real app running the demo model on the bundled speech WAV.

    python -m scripts.screenshots [--out screenshots] [--seconds 9]

Drives `tui.app.MoshiApp` on a real `engine.session.local.Session` (`--demo`, input = WAV,
output = null) with Textual's `run_test`, and saves what the app shows with `save_screenshot`:
main.svg (140x42), latency.svg (queues hidden), queues.svg (latency hidden), turns.svg (the
Turns panel, queues and latency hidden), main-80x24.svg,
and loading.svg when the model takes long enough to load to be seen.
Each SVG is also converted to PNG when `rsvg-convert` (apt: librsvg2-bin) or cairosvg exists.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDE = (140, 42)
SMALL = (80, 24)


async def _wait(pilot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        snap = pilot.app.snapshot
        if snap is not None and snap.error:
            raise SystemExit(f"screenshots: the session failed: {snap.error}")
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
        await pilot.pause(0.2)


async def shoot(out: Path, wav: Path, seconds: float) -> list[Path]:
    from engine.cli.options import build_parser, run_config
    from engine.session.runner import open_prepared
    from tui.app import MoshiApp

    session_dir = Path(tempfile.mkdtemp(prefix="moshi-tui-screenshots-"))
    args = build_parser().parse_args(["--demo", "--input", str(wav), "--output", "null",
                                      "--session-dir", str(session_dir)])
    session = open_prepared(run_config(args))  # as run_app opens it
    app = MoshiApp(lambda: session)
    shots: list[Path] = []

    def save(name: str) -> None:
        shots.append(Path(app.save_screenshot(filename=name, path=str(out))))

    async with app.run_test(size=WIDE) as pilot:
        # the start-up checklist, if loading lasts long enough to be seen (a cold demo cache)
        await _wait(pilot, lambda: app.snapshot is not None
                    and (len(app.loading.steps) >= 1 or app.snapshot.state == "live"), 120, "loading")
        await pilot.pause(0.2)  # let the new step be drawn
        if app.snapshot.state != "live":
            save("loading.svg")
        await _wait(pilot, lambda: app.snapshot is not None and app.snapshot.state == "live", 120, "live")
        await _wait(pilot, lambda: app.snapshot.elapsed_s >= seconds and app.transcript.count >= 5,
                    seconds + 30, "the conversation")
        save("main.svg")
        await pilot.press("u", "l", "t")  # queues and latency off, turns on: who spoke when
        await pilot.pause(0.3)
        save("turns.svg")
        await pilot.press("t", "l")  # queues off: latency + log
        await pilot.pause(0.3)
        save("latency.svg")
        await pilot.press("u", "l")  # latency off: queues + log
        await pilot.pause(0.3)
        save("queues.svg")
        await pilot.press("l")
        await pilot.resize_terminal(*SMALL)
        await pilot.pause(0.5)
        save("main-80x24.svg")
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
    shutil.rmtree(session_dir, ignore_errors=True)
    return shots


def to_png(svg: Path) -> Path | None:
    """Render with rsvg-convert or cairosvg; None when neither is installed."""
    png = svg.with_suffix(".png")
    # Rich writes spaces as &#160;; rsvg drops them at the start of a <text> unless told to keep them.
    text = svg.read_text(encoding="utf-8").replace("<svg ", '<svg xml:space="preserve" ', 1)
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "--zoom", "1.5", "-o", str(png)], input=text.encode(), check=True)
        return png
    try:
        import cairosvg
    except ImportError:
        return None
    cairosvg.svg2png(bytestring=text.encode(), write_to=str(png), scale=1.5)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "screenshots")
    p.add_argument("--input", type=Path, default=ROOT / "engine" / "audio" / "data" / "speech.wav")
    p.add_argument("--seconds", type=float, default=9.0, help="live audio before the first shot")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    shots = asyncio.run(shoot(a.out, a.input, a.seconds))
    for svg in shots:
        png = to_png(svg)
        print(svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg,
              f"+ {png.name}" if png else "(no PNG converter: apt install librsvg2-bin)")
    return 0


if __name__ == "__main__":  # the session spawns its server: keep the guard
    sys.exit(main())
