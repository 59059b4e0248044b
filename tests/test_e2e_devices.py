"""The full session through real sounddevice callbacks on a JACK dummy sound card."""

from __future__ import annotations

import time

import numpy as np

from engine.model.source import ModelOptions
from engine.session.config import SessionConfig
from engine.session.local import Session
from tests.conftest import require

pytest_plugins = ["conftest_models"]


def _jack_device(kind: str) -> int:
    import sounddevice as sd

    key = "max_input_channels" if kind == "input" else "max_output_channels"
    for d in sd.query_devices():
        if "JACK" in sd.query_hostapis(d["hostapi"])["name"] and d[key] > 0:
            return d["index"]
    require(f"no JACK {kind} device (PortAudio's JACK host API)")


def test_session_on_jack_devices(jack_server, demo_cache):
    cfg = SessionConfig(
        model=ModelOptions(demo=True),
        input=str(_jack_device("input")),
        output=str(_jack_device("output")),
        seconds=20,
        keep_records=True,
        save=False,
    )
    s = Session(cfg)
    s.prepare()
    s.start()
    try:
        assert s.live.wait(120), s.snapshot().error
        # Moshi hears itself: speaker -> microphone through JACK.  (Rewiring the JACK graph
        # can disturb a cycle or two, like plugging a cable: underruns in the second after
        # it are the test's doing, not the pipeline's.)
        jack_server.connect_loopback()
        t_wired = (time.monotonic_ns() - (s.tel.t_start or time.monotonic_ns())) / 1e9
        assert s.wait(60)
    finally:
        s.stop()
    snap = s.snapshot()
    assert snap.error is None
    assert s.end_reason == "time limit"
    caps = np.array([r.t_cap for r in s.tel.done_frames if r.t_cap], dtype=np.int64)
    caps.sort()
    gaps_ms = np.diff(caps) / 1e6
    # the input callback fires once per 80 ms period, every period
    assert len(caps) >= 20 / 0.08 * 0.9
    assert abs(np.median(gaps_ms) - 80.0) < 2.0, np.median(gaps_ms)
    # the output callback too: one per period for the whole session
    assert s.sink.callbacks >= 20 / 0.08 * 0.9
    assert any(r.t_play for r in s.tel.done_frames), "nothing was played"
    c = snap.counters
    starved = c["drops_input"] + c["drops_decode"]
    if starved == 0:
        # A machine that keeps real time: the jitter buffer sizes itself to this machine's
        # jitter, so the speaker runs dry rarely (a frame slower than every frame of the last
        # 20 s by more than the margin); on a machine with headroom, never.
        times = [t for t in s.tel.underrun_times if not t_wired <= t <= t_wired + 1.0]
        diag = (c, s.tel.underrun_times, t_wired, s.tel.info.get("playout_ms"))
        assert len(times) <= 3, diag
        # and it keeps mic-to-speaker within the aim: the slowest recent frame + the margin
        play = snap.stage_stats["playback"]
        assert play["p50"] <= snap.stage_stats["processing"]["max"] + 80 + 80, (play, diag)
    else:
        # a machine too slow or too busy for real time (codec + model > 80 ms of CPU per
        # frame, e.g. a shared 2-core box): input is dropped so latency stays bounded, and
        # the session goes on playing what it could compute
        assert snap.frames_played >= 0.5 * (snap.frames_captured - starved), c
        assert snap.queues["output"] <= 4
    assert snap.frames_processed >= 100
    # the speaker's own latency, as measured from PortAudio's DAC times (or reported): a
    # JACK card has at least one period of it
    assert snap.info["output_latency_ms"] == round(s.sink.latency_s * 1000.0, 1)
    assert 20.0 <= snap.info["output_latency_ms"] < 1000.0
