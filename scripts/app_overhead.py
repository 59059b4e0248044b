"""Does the app slow the pipeline? Demo sessions with the app open vs headless, interleaved.

    python -m scripts.app_overhead [--runs 3] [--seconds 60] [--json out.json]

Each run is a fresh `moshi-tui --demo` process on the same WAV input (the bundled speech looped
to cover --seconds), output null, stopped by --seconds. The app runs in a pseudo-terminal (a
real Textual driver drawing at full speed, 120x40) and is quit once its status bar says STOPPED.
Prints processing p50/p95 and underruns per run, then the app/headless ratios of the medians.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def looped_wav(seconds: float, folder: Path) -> Path:
    import numpy as np

    from engine.audio.wavio import read_wav, write_wav

    pcm = read_wav(ROOT / "engine" / "audio" / "data" / "speech.wav")  # float32 at 24 kHz
    out = folder / "input.wav"
    write_wav(out, np.resize(pcm, int((seconds + 5) * 24000)).astype(np.float32))
    return out


def run_headless(cmd: list[str]) -> int:
    return subprocess.run(cmd + ["--headless"], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=600).returncode


def run_app(cmd: list[str], cols: int = 120, rows: int = 40, timeout: float = 600) -> int:
    pid, fd = pty.fork()
    if pid == 0:  # child: the app, on the pty
        os.chdir(ROOT)
        os.execv(cmd[0], cmd)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    tail, sent, t0 = b"", False, time.monotonic()
    while True:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            tail = (tail + data)[-4096:]
        if not sent and (b"STOPPED" in tail or time.monotonic() - t0 > timeout):
            os.write(fd, b"q")
            sent = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def figures(stats_path: Path) -> dict:
    s = json.loads(stats_path.read_text())
    proc = s["stages_ms"]["processing"]
    return {"p50": proc["p50"], "p95": proc["p95"], "underruns": s["counters"]["underruns"],
            "client_cpu": (s.get("processes") or {}).get("client", {}).get("cpu_percent"),
            "ui_cpu": (s.get("ui") or {}).get("ui_thread_cpu_percent"),
            "frames": s["frames"]["processed"], "drops": sum(v for k, v in s["counters"].items()
                                                             if k.startswith("drops_"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="moshi-tui-overhead-"))
    wav = looped_wav(a.seconds, work)
    results: dict[str, list[dict]] = {"headless": [], "app": []}
    for i in range(a.runs):
        for mode in ("headless", "app") if i % 2 == 0 else ("app", "headless"):
            stats = work / f"{mode}-{i}.json"
            cmd = [sys.executable, "-m", "tui.cli", "--demo", "--input", str(wav), "--output", "null",
                   "--seconds", str(a.seconds), "--stats-json", str(stats),
                   "--session-dir", str(work / f"{mode}-{i}")]
            code = run_headless(cmd) if mode == "headless" else run_app(cmd)
            if code != 0 or not stats.exists():
                print(f"{mode} run {i}: exit code {code}", file=sys.stderr)
                return 1
            f = figures(stats)
            results[mode].append(f)
            print(f"{mode:8s} run {i}: processing p50 {f['p50']:7.1f} p95 {f['p95']:7.1f} ms  "
                  f"underruns {f['underruns']:4d}  drops {f['drops']:4d}  frames {f['frames']}  "
                  f"client CPU {f['client_cpu']}%" + (f" (UI thread {f['ui_cpu']}%)" if f["ui_cpu"] else ""),
                  flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p95", "underruns")}
           for m, rs in results.items()}
    ratio = {k: med["app"][k] / med["headless"][k] for k in ("p50", "p95")}
    print(f"median headless: p50 {med['headless']['p50']:.1f} p95 {med['headless']['p95']:.1f} ms, "
          f"underruns {med['headless']['underruns']:.0f}")
    print(f"median app:      p50 {med['app']['p50']:.1f} p95 {med['app']['p95']:.1f} ms, "
          f"underruns {med['app']['underruns']:.0f}")
    print(f"ratio app/headless: p50 {ratio['p50']:.3f}  p95 {ratio['p95']:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"runs": results, "median": med, "ratio": ratio,
                                      "seconds": a.seconds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
