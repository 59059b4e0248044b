"""End-to-end: the real two-process pipeline, the demo model, real rustymimi, real processes."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from engine.audio.wavio import read_wav
from engine.telemetry.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["conftest_models"]


def run_cli(args, env, timeout=120, **kw):
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout, **kw,
    )


@pytest.fixture(scope="module")
def headless_run(demo_env, speech_wav, tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    out_wav, stats = d / "out.wav", d / "stats.json"
    trace = d / "trace.json"
    r = run_cli(["--demo", "--headless", "--input", str(speech_wav), "--output", str(out_wav),
                 "--stats-json", str(stats), "--trace", str(trace),
                 "--session-dir", str(d / "session")], demo_env)
    assert r.returncode == 0, r.stderr
    return r, out_wav, json.loads(stats.read_text()), trace


def test_session_folder(headless_run, speech_wav):
    r, out_wav, stats, _ = headless_run
    folder = out_wav.parent / "session"
    assert f"session files: {folder}" in r.stdout
    # the microphone recording is the input, frame for frame
    rec_in = read_wav(folder / "input.wav")
    src = read_wav(speech_wav)
    assert rec_in.size == math.ceil(src.size / 1920) * 1920
    assert np.allclose(rec_in[: src.size], src, atol=2e-4)
    # the speaker recording is what the output file received
    assert abs(read_wav(folder / "output.wav").size - read_wav(out_wav).size) <= 1920
    saved = json.loads((folder / "stats.json").read_text())
    assert saved["transcript"]["text"] == stats["transcript"]["text"]
    md = (folder / "transcript.md").read_text()
    assert stats["transcript"]["tokens"][0]["text"].strip() in md
    assert json.loads((folder / "transcript.json").read_text())
    assert json.loads((folder / "trace.json").read_text())["traceEvents"]


def test_output_wav_has_input_length(headless_run, speech_wav):
    _, out_wav, stats, _ = headless_run
    n_in = math.ceil(read_wav(speech_wav).size / 1920)
    out = read_wav(out_wav)
    assert abs(out.size / 1920 - n_in) <= 1, (out.size / 1920, n_in)
    assert np.abs(out).max() > 0, "the model's audio never reached the output file"
    assert stats["frames"]["captured"] == n_in


def test_transcript_and_stages(headless_run):
    r, _, stats, _ = headless_run
    tokens = stats["transcript"]["tokens"]
    assert tokens, "no text tokens in the transcript"
    steps = [t["step"] for t in tokens]
    assert steps == sorted(steps)
    assert stats["transcript"]["text"] == "".join(t["text"] for t in tokens)
    for stage in STAGES:
        st = stats["stages_ms"][stage]
        assert st["n"] > 0, stage
        assert 0 <= st["p50"] <= st["p95"] <= st["p99"] <= st["max"], (stage, st)
    # The codebook delays (max delay 1 in Moshi's config): the first step gives no audio, and
    # is counted; every other step's audio is decoded unless the decoder fell behind.
    assert stats["frames"]["delay_steps"] == 1
    decoded = stats["frames"]["processed"] + stats["counters"]["drops_decode"]
    # (the session ends one period after the input: the last frame or two may be in flight)
    assert 0 <= stats["frames"]["steps"] - 1 - decoded <= 2
    assert stats["startup"]["launch_to_first_frame_ms"] > 0
    # one status line per second while live
    assert sum("processing p50" in line for line in r.stdout.splitlines()) >= 5


def test_slowest_frames_and_the_collectors(headless_run):
    """stats.json names the session's slowest frames with their stages, and shows that the
    model process collects garbage only between steps (its automatic collection is off)."""
    _, _, stats, _ = headless_run
    slow = stats["slowest_frames"]
    assert len(slow) == 12
    procs = [f["processing"] for f in slow]
    assert procs == sorted(procs, reverse=True)
    assert procs[0] == pytest.approx(stats["stages_ms"]["processing"]["max"], abs=1e-3)
    for f in slow:
        parts = f["encode"] + f["uplink"] + f["queue"] + f["model"] + f["decode"]
        assert parts == pytest.approx(f["processing"], abs=0.01), f
        assert 0 <= f["t_s"] <= stats["duration_s"]
    server, client = stats["gc"]["server"], stats["gc"]["client"]
    assert server["automatic"] is False and client["automatic"] is True
    assert server["frozen_objects"] > 1000 and client["frozen_objects"] > 1000


def test_trace_frames_aligned_by_step(headless_run):
    _, _, stats, trace = headless_run
    ev = json.loads(trace.read_text())["traceEvents"]
    slices = [e for e in ev if e["ph"] == "X"]
    by_name: dict[str, list] = {}
    for e in slices:
        by_name.setdefault(e["name"], []).append(e)
    assert {"encode", "model step", "decode"} <= set(by_name)
    assert {e["pid"] for e in by_name["model step"]} == {2}
    assert {e["pid"] for e in by_name["encode"]} == {1}
    steps = sorted(e["args"]["step"] for e in by_name["model step"])
    # one model slice per step, and no step missing: the model's steps are 0, 1, 2, ...
    assert steps == list(range(len(steps))), "one model slice per step, every step"
    # every decode slice belongs to a step that was modelled before it
    model_end = {e["args"]["step"]: e["ts"] + e["dur"] for e in by_name["model step"]}
    for e in by_name["decode"]:
        assert e["ts"] >= model_end[e["args"]["step"]] - 1e-3


def _descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _exited(proc):
    """True once the process has ended: gone, or a zombie its new parent has not reaped yet
    (a container's first process often never reaps the children it inherits)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs, timeout):
    """The processes still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        alive = [p for p in alive if not _exited(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return alive


def test_no_server_remains_after_session(headless_run):
    _, _, stats, _ = headless_run
    pid = stats["model"]["server_pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_client_killed_leaves_no_process(demo_env, sig, tmp_path):
    stats = tmp_path / "stats.json"
    p = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--demo", "--headless", "--input", "silence",
         "--output", "null", "--stats-json", str(stats), "--session-dir", str(tmp_path / "s")],
        cwd=ROOT, env=demo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        for line in p.stdout:  # wait until frames flow through the whole pipeline
            m = re.search(r"frames\s+(\d+)", line)
            if (m and int(m.group(1)) > 0) or time.monotonic() > deadline:
                break
        kids = _descendants(p.pid)
        assert kids, "no server process was started"
        p.send_signal(sig)
        p.wait(timeout=30)  # a clean stop writes files first; orphans are what is timed
        alive = _wait_gone(kids, timeout=2.0)
        assert not alive, f"orphans after {sig!r}: {[k.pid for k in alive]}"
        # whatever killed it, the recording so far is a valid WAV
        assert read_wav(tmp_path / "s" / "input.wav").size > 0
        if sig != signal.SIGKILL:
            # a clean stop still writes complete statistics
            data = json.loads(stats.read_text())
            assert data["frames"]["processed"] > 0
    finally:
        if p.poll() is None:
            p.kill()


def test_bad_input_one_line_exit_2(demo_env, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio")
    r = run_cli(["--demo", "--headless", "--input", str(bad), "--output", "null", "--no-save"],
                demo_env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a WAV file" in r.stderr


def test_ctrl_c_while_loading_exits_130_and_keeps_the_folder(demo_env, tmp_path):
    """Ctrl+C before the session is live: one line, exit 130, no process left, and the session
    folder still gets its transcript and stats (nothing a user had is lost)."""
    folder = tmp_path / "s"
    p = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--demo", "--headless", "--input", "silence",
         "--output", "null", "--session-dir", str(folder)],
        cwd=ROOT, env=demo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for line in p.stdout:
        if "loading model in the server process" in line:
            break
    kids = _descendants(p.pid)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert err.strip() == "interrupted while loading", err
    assert not _wait_gone(kids, timeout=2.0)
    assert (folder / "transcript.md").exists() and (folder / "stats.json").exists()
    assert json.loads((folder / "stats.json").read_text())["error"] is None


def app_in_a_pty(args, env):
    """(pid, fd of the terminal) of the app started in a new 120x40 pseudo-terminal."""
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "tui.cli", *args],
                      dict(env, TERM="xterm-256color", COLUMNS="120", LINES="40"))
        finally:
            os._exit(127)
    return pid, fd


@pytest.mark.parametrize("demo", ["moshi", "hibiki"])
def test_the_app_in_a_terminal(demo_env, speech_wav, tmp_path, demo):
    """The full-screen app as a user starts it, in a real terminal (a pty): it goes live, the
    session ends at --seconds, `q` quits with 0, and what is left is the session folder (no
    empty stderr.log), a line saying where it is, and no process."""
    import os
    import select

    folder = tmp_path / "session"
    pid, fd = app_in_a_pty(["--demo", demo, "--input", str(speech_wav), "--output", "null",
                            "--seconds", "3", "--session-dir", str(folder)], demo_env)
    screen = bytearray()
    children: set = set()  # the model server and whatever else the app started
    quit_sent = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                screen += data
            try:
                children.update(psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
            stats = folder / "stats.json"
            if not quit_sent and stats.exists() and '"time limit"' in stats.read_text():
                os.write(fd, b"q")
                quit_sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    text = screen.decode("utf-8", "replace")
    assert quit_sent, text[-2000:]
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "LIVE" in text and "Conversation" in text  # the screen was drawn
    assert f"session files: {folder}" in text
    names = {p.name for p in folder.iterdir()}
    assert {"input.wav", "output.wav", "stats.json", "transcript.md", "transcript.json"} <= names
    assert "stderr.log" not in names  # nothing was printed around the UI: no empty file
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["frames"]["processed"] > 10
    if demo == "hibiki":  # the Hibiki-shaped demo: a translation, said on screen and in stats
        assert stats["model"]["mode"] == "translation" and "translation" in text
    assert children, "the app started no model server?"
    alive = _wait_gone(list(children), timeout=10)
    assert not alive, alive


def test_sigterm_quits_the_app_even_when_its_terminal_stopped_reading(demo_env, tmp_path):
    """A terminal that is gone or stopped reading (closed window, Ctrl+S) fills Textual's
    output queue and blocks the app's event loop; SIGTERM/SIGHUP must still stop the session,
    write its files and exit, leaving no process."""
    import os
    import select

    folder = tmp_path / "session"
    pid, fd = app_in_a_pty(["--demo", "--input", "silence", "--output", "null",
                            "--session-dir", str(folder)], demo_env)
    children: set = set()
    try:
        deadline = time.monotonic() + 120
        while not (folder / "stats.json").exists() and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                os.read(fd, 65536)  # read while it starts
            try:
                children.update(psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        assert (folder / "stats.json").exists(), "the app did not go live"
        time.sleep(8.0)  # stop reading: the terminal buffer and then Textual's queue fill up
        os.kill(pid, signal.SIGTERM)
        t0 = time.monotonic()
        status = None
        while time.monotonic() - t0 < 40:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the app did not exit after SIGTERM")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["end_reason"] == "stopped" and stats["frames"]["captured"] > 50
    assert (folder / "transcript.md").exists()
    assert children
    alive = _wait_gone(list(children), timeout=10)
    assert not alive, alive
