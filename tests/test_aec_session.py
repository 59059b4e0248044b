"""Echo cancellation in a real session: a `Session` (the demo model, the two-process pipeline)
on a private JACK dummy card with 20 ms periods, with `--aec auto`, its speaker looped into its
microphone through scripts.bench_aec's simulated living room (a JACK client: 30 ms direct
path, 50 ms decay), the user (a second talker) joining at NEAR_AT s.  The microphone as the
device delivered it is tapped at the source's callback; the session's input.wav is compared
with it, sample for sample.

What the speaker plays is the pipeline's output, when and as long as the pipeline gives it
(its underruns and trims included), with the bundled speech in place of the demo model's
samples: the demo's random weights make a flat noise 33 dB below full scale, not a voice
(the canceller takes such noise down by only 25-28 dB, offline, with exact stamps), and the
claim is about Moshi's voice."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.audio import FRAME, SAMPLE_RATE
from engine.audio.wavio import read_wav
from engine.bench.aec import align, erle_db, speech_kept
from engine.model.source import ModelOptions
from engine.session.config import SessionConfig
from engine.session.local import Session
from scripts import bench_aec, jackdummy
from tests.conftest import require

pytest_plugins = ["conftest_models"]

SECONDS = 11.0  # of the room's timeline, from the first sound the speaker plays once wired
NEAR_AT = 6.0
SR = SAMPLE_RATE
ROOM_GAIN = 0.25  # bench_aec's: the echo about as loud as the user


def _dbfs(x: np.ndarray) -> float:
    return 10.0 * float(np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _glitches(s: Session, room) -> int:
    """The JACK graph's glitches so far: the room's xruns, the sink's underflows, the source's
    overflows (each loses or repeats samples: the echo path jumps, and the canceller has to
    find it again -- the host's load, not the canceller)."""
    return room.xruns + s.sink.underflows + s.source.overflows


def _looped_session(server, devices, near: np.ndarray, folder) -> dict:
    """One session, its speaker looped through the room into its microphone once it plays:
    the raw microphone and input.wav from the room's start, the room, and when (room seconds)
    the first glitch came, or None."""
    room = bench_aec.Room(server.name, bench_aec.room_response(0.03, gain=ROOM_GAIN), near)
    cfg = SessionConfig(model=ModelOptions(demo=True), input=str(devices[0]),
                        output=str(devices[1]), aec="auto", seconds=SECONDS + 30,
                        session_dir=str(folder))
    s = Session(cfg)
    raw: list[np.ndarray] = []
    glitch_s = None
    try:
        s.prepare()
        start = s.source.start

        def tapped(on_frame, on_head=None):  # the microphone as the device hands it over
            def frame(pcm, t_ns):
                raw.append(np.array(pcm, np.float32))
                on_frame(pcm, t_ns)

            return start(frame, on_head)

        s.source.start = tapped
        s.start()
        assert s.live.wait(120), s.snapshot().error
        pull, far = s.pipeline.pull, {"pos": 0, "x": bench_aec.load_wav(bench_aec.SPEECH)}

        def speech(t_play, room_):  # the pipeline's output, its samples the bundled speech
            pcm = pull(t_play, room_)
            if pcm is None:
                return None
            i, x = far["pos"], far["x"]
            far["pos"] = (i + len(pcm)) % (x.size - FRAME)
            return x[i:i + len(pcm)].copy()

        s.pipeline.pull = speech
        deadline = time.monotonic() + 30
        while s.snapshot().frames_played < 5:  # Moshi talks: the speaker plays its audio
            assert time.monotonic() < deadline and not s.done.is_set(), s.snapshot().error
            time.sleep(0.05)
        bench_aec.wire(server, room)  # speaker -> room -> microphone, nothing else into it
        time.sleep(0.3)  # past the rewiring's first cycles
        mic_start = max(0, len(raw) - 1)  # a frame early: the room's sample 0 comes later
        room.arm()
        before = _glitches(s, room)
        deadline = time.monotonic() + SECONDS + 30
        while not room.done:
            assert time.monotonic() < deadline, f"the room got {room.n / SR:.1f} s"
            assert not s.done.is_set(), s.snapshot().error
            if glitch_s is None and _glitches(s, room) > before:
                glitch_s = max(0.0, room.n / SR - 0.1)  # (polled: a little earlier)
            time.sleep(0.05)
        time.sleep(bench_aec.TAIL_S)
    finally:
        s.stop()
        room.close()
    assert s.snapshot().error is None
    recorded = read_wav(folder / "input.wav")
    n = min(len(raw) * FRAME, recorded.size)
    assert n >= (len(raw) - 2) * FRAME  # every captured frame is in input.wav
    return {"session": s, "mic": np.concatenate(raw)[mic_start * FRAME:n],
            "cleaned": recorded[mic_start * FRAME:n], "room": room, "glitch_s": glitch_s,
            "glitches": _glitches(s, room) - before}


ATTEMPTS = 3
MEASURED_S = 2.0  # the far-only part measured: at least this long, before any glitch


@pytest.fixture
def looped_session(jack_card_20ms, demo_cache, tmp_path):
    """A session whose far-only part had MEASURED_S free of glitches after its first 2 s (a
    glitched one is run again, ATTEMPTS in all), and the near speech."""
    devices = (jackdummy.device_index("input"), jackdummy.device_index("output"))
    if None in devices:
        require(f"no JACK devices in PortAudio (input, output: {devices})")
    voice = bench_aec.load_wav(bench_aec.SECOND_TALKER)
    near = np.zeros(int(SECONDS * SR), np.float32)
    a = int(NEAR_AT * SR)
    k = min(voice.size, near.size - a)
    near[a:a + k] = 0.6 * voice[:k] / np.abs(voice).max()
    seen = []
    for attempt in range(ATTEMPTS):
        r = _looped_session(jack_card_20ms, devices, near, tmp_path / f"session{attempt}")
        r["near"] = near
        r["measured_until"] = NEAR_AT if r["glitch_s"] is None else min(NEAR_AT, r["glitch_s"])
        if r["measured_until"] >= bench_aec.CONVERGE_SKIP_S + MEASURED_S:
            return r
        seen.append(f"{r['glitches']} glitches, the first at {r['glitch_s']:.1f} s")
    pytest.fail(f"the JACK graph glitched before {bench_aec.CONVERGE_SKIP_S + MEASURED_S:g} s "
                f"in {ATTEMPTS} sessions in a row ({'; '.join(seen)}): a host too loaded to "
                "measure echo cancellation")


def test_a_session_on_devices_cancels_the_echo_into_input_wav(looped_session):
    """`--aec auto` on audio devices turns echo cancellation on; over the far-only part after
    its first 2 s (up to a glitch of the JACK graph, if one came) the session's input.wav holds
    >= 25 dB less echo than the microphone got (which carried the room's echo, well above
    silence), and while the user talks input.wav holds the user: it is the cleaned microphone,
    not the raw one and not silence."""
    r = looped_session
    s, mic, cleaned, room, near = (r[k] for k in ("session", "mic", "cleaned", "room", "near"))
    snap = s.snapshot()
    assert snap.info.aec == "on"
    assert snap.stage_stats["aec"]["n"] >= 0.9 * SECONDS / 0.08  # it ran on every frame
    # the microphone trails the room's timeline by `lag` (and heard what the room emitted)
    lag = align(mic[:3 * SR], room.emitted[:3 * SR], max_lag=int(bench_aec.MAX_LAG_S * SR))
    end = min(room.n, mic.size - lag)
    assert end >= (SECONDS - 0.1) * SR

    def span(x, a, b):
        return x[lag + int(a * SR):lag + int(b * SR)]

    erle_windows = " ".join(f"{erle_db(span(mic, t, t + 0.5), span(cleaned, t, t + 0.5)):.0f}"
                            for t in np.arange(0.0, NEAR_AT, 0.5))

    far_only = (bench_aec.CONVERGE_SKIP_S, r["measured_until"])
    echo_dbfs = _dbfs(span(mic, *far_only))
    erle = erle_db(span(mic, *far_only), span(cleaned, *far_only))
    talk = (NEAR_AT + bench_aec.TALK_SKIP_S, SECONDS)
    near_t = near[int(talk[0] * SR):int(talk[1] * SR)]
    kept = speech_kept(span(cleaned, *talk), near_t)
    figures = (f"echo {echo_dbfs:.1f} dBFS, ERLE {erle:.1f} dB, near speech kept {kept:.3f} "
               f"(raw {speech_kept(span(mic, *talk), near_t):.3f}), cleaned while the user talks "
               f"{_dbfs(span(cleaned, *talk)):.1f} dBFS, the user {_dbfs(near_t):.1f} dBFS, "
               f"aec p50 {snap.stage_stats['aec']['p50']} ms; ERLE per 0.5 s from 0 s: "
               f"{erle_windows} dB; {r['glitches']} glitches of the JACK graph, the first at "
               f"{r['glitch_s']} s; speaker underruns {snap.counters['underruns']}")
    print(figures)
    assert echo_dbfs > -35.0, figures
    assert erle >= 25.0, figures
    assert kept >= 0.8, figures
    assert _dbfs(span(cleaned, *talk)) > _dbfs(near_t) - 6.0, figures
