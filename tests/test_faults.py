"""Sessions that never break: a dead server, a slow model, a full context, and bad input."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from engine.audio.wavio import read_wav
from tests.conftest import require_portaudio

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["conftest_models"]


def cli(args, env, timeout=120):
    r = subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return r


def _wait_frames(p, deadline_s=90):
    deadline = time.monotonic() + deadline_s
    for line in p.stdout:
        m = re.search(r"frames\s+(\d+)", line)
        if (m and int(m.group(1)) > 0) or time.monotonic() > deadline:
            return


def _server_of(pid):
    for c in psutil.Process(pid).children(recursive=True):
        if "resource_tracker" not in " ".join(c.cmdline()):
            return c
    raise AssertionError("no server process")


def test_server_killed_mid_session(demo_env, speech_wav, tmp_path):
    folder = tmp_path / "s"
    p = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--demo", "--headless", "--input", str(speech_wav),
         "--output", "null", "--session-dir", str(folder), "--stats-json", str(tmp_path / "st.json")],
        cwd=ROOT, env=demo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_frames(p)
        time.sleep(1.0)
        server = _server_of(p.pid)
        server.kill()
        t_kill = time.monotonic()
        out, err = p.communicate(timeout=20)
        noticed_s = time.monotonic() - t_kill
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1
    assert "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "server" in err
    assert noticed_s < 5  # noticed within a second; the rest is writing files and exiting
    # nothing is lost: transcript and recordings are in the session folder
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["error"] and "server" in stats["error"]
    assert stats["frames"]["processed"] > 0
    assert (folder / "transcript.md").read_text().strip()
    assert read_wav(folder / "input.wav").size > 0
    assert json.loads((tmp_path / "st.json").read_text())["frames"]["processed"] > 0


def test_slow_model_drops_instead_of_creeping(demo_env, speech_wav, tmp_path):
    st = tmp_path / "st.json"
    # every step takes 120 ms more than it should: 1.5 x slower than real time
    r = cli(["--demo", "--headless", "--input", str(speech_wav), "--output", "null", "--no-save",
             "--stats-json", str(st), "--debug-step-delay-ms", "120", "--seconds", "8"], demo_env)
    assert r.returncode == 0, r.stderr
    s = json.loads(st.read_text())
    assert s["counters"]["drops_input"] > 0
    assert any("dropped" in w for w in s["warnings"])
    # queues stay bounded: input queue (3) + encoder backlog (2), 4 frames in flight to the server
    assert s["queues_max"]["input"] <= 5
    assert s["queues_max"]["c2s"] <= 4
    assert s["queues_max"]["output"] <= 6


def test_context_limit_starts_new_segments(demo_env, speech_wav, tmp_path):
    st = tmp_path / "st.json"
    r = cli(["--demo", "--headless", "--input", str(speech_wav), "--output", "null", "--no-save",
             "--stats-json", str(st), "--max-steps", "30"], demo_env)
    assert r.returncode == 0, r.stderr
    s = json.loads(st.read_text())
    assert s["counters"]["segments"] >= 2
    assert s["frames"]["steps"] > 60  # the session went on past the context, twice
    segs = [t["segment"] for t in s["transcript"]["tokens"]]
    assert segs == sorted(segs) and segs[-1] >= 2
    # each new segment starts with the codebook delay again, and is counted
    assert s["frames"]["delay_steps"] == 1 + s["counters"]["segments"]


# ------------------------------------------------------------------ bad input: exit 2, one line

def _st_header_only(path: Path, tensors: dict):
    header = json.dumps(tensors).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, demo_files):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.wav").write_bytes(
        b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16)
        + b"data" + struct.pack("<I", 0))
    (d / "text.wav").write_text("hello")
    (d / "junk.model").write_bytes(os.urandom(2000))
    (d / "bad.json").write_text("{ not json")
    (d / "missing_key.json").write_text(json.dumps({"dim": 256}))
    data = demo_files.moshi_bf16.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    # a real file with one tensor missing
    import mlx.core as mx

    w = mx.load(str(demo_files.moshi_bf16))
    w.pop(sorted(w)[0])
    mx.save_safetensors(str(d / "missing.safetensors"), w)
    return d


BAD = [
    (["--input", "{d}/nonexistent.wav"], "cannot read"),
    (["--input", "{d}/empty.wav"], "empty WAV"),
    (["--input", "{d}/text.wav"], "not a WAV file"),
    (["--moshi-weight", "{d}/nope.safetensors"], "moshi weights not found"),
    (["--moshi-weight", "{d}/truncated.safetensors"], "truncated"),
    (["--moshi-weight", "{d}/missing.safetensors"], "missing tensor"),
    (["--tokenizer", "{d}/junk.model"], "sentencepiece"),
    (["--lm-config", "{d}/bad.json"], "bad.json"),
    (["--lm-config", "{d}/missing_key.json"], "missing_key.json"),
    (["--input", "no-such-device-xyz"], "input device"),
    (["--output", "{d}/text.wav/out.wav"], "cannot write"),
    (["--session-dir", "{d}/text.wav/session"], "session folder"),
    (["--stats-json", "{d}/nodir/stats.json"], "does not exist"),
    (["--stats-json", "{d}"], "is a folder"),
    (["--trace", "/proc/moshi-tui-trace.json"], "cannot write trace to /proc/"),
    (["--input", "{d}"], "is a folder"),
    (["--output", "{d}"], "is a folder"),
    (["-q", "5"], "invalid choice"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[b[1] for b in BAD])
def test_bad_input_exits_2_with_one_line(args, message, bad_files, demo_env, tmp_path):
    args = [a.format(d=bad_files) for a in args]
    if "no-such-device-xyz" in args:  # a device name: PortAudio lists the devices to match
        require_portaudio()
    base = ["--demo", "--headless", "--seconds", "3", "--session-dir", str(tmp_path / "s")]
    if "--input" not in args:
        base += ["--input", "silence"]
    if "--output" not in args:
        base += ["--output", "null"]
    r = cli(base + args, demo_env)
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr
    assert len(err.splitlines()) == 1, err
    assert message in err, err


def test_output_over_the_input_file_is_refused(demo_env, speech_wav, tmp_path):
    """`-i talk.wav -o talk.wav` would destroy the user's recording: refused, file untouched."""
    talk = tmp_path / "talk.wav"
    talk.write_bytes(speech_wav.read_bytes())
    for out in (talk, tmp_path / "." / "talk.wav"):
        r = cli(["--demo", "--headless", "--no-save", "--seconds", "2", "--input", str(talk),
                 "--output", str(out)], demo_env)
        assert r.returncode == 2 and "is the input file" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert talk.read_bytes() == speech_wav.read_bytes()


def test_a_file_that_cannot_be_written_at_the_end_does_not_hide_the_others(tmp_path):
    from engine.files.outputs import write_outputs

    def fail(path):
        raise PermissionError(13, "Permission denied")

    written = []
    errors = write_outputs([("stats to", str(tmp_path / "a.json"), fail),
                            ("trace to", None, fail),  # not asked: not written
                            ("trace to", str(tmp_path / "t.json"), written.append)])
    assert errors == [f"could not write stats to {tmp_path / 'a.json'}: Permission denied"]
    assert written == [str(tmp_path / "t.json")]


def test_odd_wavs_simply_work(demo_env, tmp_path):
    """8-bit and 48 kHz stereo inputs are converted, not refused."""
    t = np.arange(48000 * 2) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = tmp_path / "stereo48k.wav"

    def wav(path, data: bytes, rate, ch, bits):
        fmt = struct.pack("<HHIIHH", 1, ch, rate, rate * ch * bits // 8, ch * bits // 8, bits)
        path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
                         + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    pcm16 = (np.stack([tone, tone], axis=1) * 32767).astype("<i2").tobytes()
    wav(stereo, pcm16, 48000, 2, 16)
    u8 = tmp_path / "u8.wav"
    wav(u8, ((tone[::2] * 127) + 128).astype(np.uint8).tobytes(), 24000, 1, 8)
    for path in (stereo, u8):
        st = tmp_path / f"{path.stem}.json"
        r = cli(["--demo", "--headless", "--input", str(path), "--output", "null", "--no-save",
                 "--stats-json", str(st)], demo_env)
        assert r.returncode == 0, r.stderr
        assert json.loads(st.read_text())["frames"]["captured"] == 25  # 2 s = 25 frames


def test_fuzz_random_files_never_traceback(demo_env, tmp_path):
    rng = np.random.default_rng(1234)
    for i in range(2):
        blob = rng.integers(0, 256, size=int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
        for flag, name in (("--input", "x.wav"), ("--moshi-weight", "x.safetensors"),
                           ("--lm-config", "x.json"), ("--tokenizer", "x.model")):
            f = tmp_path / f"{i}-{name}"
            f.write_bytes(blob)
            args = ["--demo", "--headless", "--no-save", "--seconds", "2", flag, str(f)]
            if flag != "--input":
                args += ["--input", "silence"]
            r = cli(args + ["--output", "null"], demo_env)
            assert r.returncode == 2, (flag, r.returncode, r.stderr)
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unreachable_hub_says_so(demo_env, tmp_path):
    env = dict(demo_env, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = cli(["--headless", "--input", "silence", "--output", "null", "--no-save"], env)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "kyutai/moshiko-mlx-q4" in err and "--demo" in err


def test_memory_stays_flat_across_segments(demo_env, tmp_path):
    """Each segment swaps in a fresh Mimi codec; the old one's memory must be given back."""
    js = tmp_path / "soak.json"
    r = subprocess.run(
        [sys.executable, "-m", "tui.cli", "bench", "soak", "--demo", "--minutes", "0.4",
         "--minute-seconds", "6", "--max-steps", "40", "--input", "silence", "--json", str(js)],
        cwd=ROOT, env=demo_env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    s = json.loads(js.read_text())
    assert s["totals"]["counters"]["segments"] >= 3
    rss = [m["rss_min_mb"]["client"] for m in s["minutes"]]
    assert all(m["rss_min_mb"]["client"] <= m["rss_mb"]["client"] for m in s["minutes"])
    rss[0] = s["minutes"][0]["rss_mb"]["client"]  # (the first minute's end: start-up done)
    # A codec that is not given back costs hundreds of MB per segment; the codec's own KV cache
    # grows by ~128 KB per frame (~10 MB here).  Each minute's lowest RSS: two codecs coexist
    # briefly at each boundary, and on a slow host a last sample can fall there.
    assert max(rss[1:]) - rss[0] < 150, rss


def test_restart_after_the_server_died(demo_cache, tmp_path):
    """The app's restart: same audio endpoints, telemetry and session folder, a new server."""
    from engine.model.source import ModelOptions
    from engine.session.config import SessionConfig
    from engine.session.local import Session

    s = Session(SessionConfig(model=ModelOptions(demo=True), input="silence", output="null",
                              session_dir=str(tmp_path / "s")))
    s.prepare()
    s.start()
    try:
        assert s.live.wait(120), s.snapshot().error
        time.sleep(1.0)
        first_pid = s.server.pid
        psutil.Process(first_pid).kill()
        assert s.wait(5), "the client did not notice the dead server"
        assert s.snapshot().error and s.can_restart
        # While the error is shown, the input keeps coming: frames with no model to go to are
        # neither "dropped, pipeline behind" nor is the silence after them an underrun.
        counters = dict(s.snapshot().counters)
        time.sleep(1.0)
        after = s.snapshot()
        for name in ("drops_input", "underruns"):
            assert after.counters[name] == counters[name], (name, counters, after.counters)
        assert "input dropped: pipeline behind real time" not in after.warnings[-3:]
        before = s.snapshot().frames_processed
        s.restart_server()
        deadline = time.monotonic() + 60
        while s.snapshot().frames_processed < before + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        snap = s.snapshot()
        assert snap.state == "live" and snap.error is None
        assert snap.frames_processed >= before + 10
        assert s.server.pid != first_pid and s.server.alive()
        assert snap.counters["segments"] >= 1
        # the new segment is named as a restart, not as a full context
        assert s.tel.segment_reason == "restart"
        assert any(w.startswith("model server restarted at step") for w in snap.warnings)
        assert not any(w.startswith("context full") for w in snap.warnings)
    finally:
        s.stop()
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"
    assert json.loads((tmp_path / "s" / "stats.json").read_text())["frames"]["processed"] > before


def test_stop_while_the_server_process_is_being_started(demo_cache, tmp_path, monkeypatch):
    """Quitting at the very start (the app's q while the server process is spawning): the
    session stops cleanly, keeps its folder's files, and leaves no server behind (stop()
    must not join a process that has not started yet)."""
    import multiprocessing.context as mpc
    import threading

    from engine.cli.options import build_parser, session_config
    from engine.session.local import Session

    orig = mpc.SpawnProcess.start
    starting = threading.Event()

    def slow_start(self):
        starting.set()
        time.sleep(0.5)  # the spawn takes its time: stop() arrives meanwhile
        orig(self)

    monkeypatch.setattr(mpc.SpawnProcess, "start", slow_start)
    args = build_parser().parse_args(["--demo", "--input", "silence", "--output", "null",
                                      "--session-dir", str(tmp_path / "s")])
    s = Session(session_config(args))
    s.prepare()
    s.start()
    assert starting.wait(30)
    s.stop()
    assert s.tel.state == "stopped" and s.tel.error is None
    assert (tmp_path / "s" / "transcript.md").exists()
    assert s.server is None or not s.server.alive()
