"""The full session through real sounddevice callbacks on a JACK dummy sound card."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.audio import BUNDLED_SPEECH, devices
from engine.audio.wavio import read_wav, write_wav
from engine.errors import AudioError
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


CARDS = [("jack_server", 20), ("jack_card_20ms", 8), ("jack_card_48k", 8)]  # (card, seconds)


@pytest.mark.parametrize("card,seconds", CARDS, ids=[c for c, _ in CARDS])
def test_session_on_jack_devices(card, seconds, request, demo_cache):
    """A session on the 80 ms card for 20 s; shorter on a 20 ms card (docs/benchmarks.md's latency
    figures) and on a 48 kHz card (both streams resampled through real PortAudio)."""
    jack_server = request.getfixturevalue(card)
    cfg = SessionConfig(
        model=ModelOptions(demo=True),
        input=str(_jack_device("input")),
        output=str(_jack_device("output")),
        seconds=seconds,
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
    assert len(caps) >= seconds / 0.08 * 0.9
    assert abs(np.median(gaps_ms) - 80.0) < 2.0, np.median(gaps_ms)
    # the output callback too: one per period for the whole session
    assert s.sink.callbacks >= seconds / 0.08 * 0.9
    assert any(r.t_play for r in s.tel.done_frames), "nothing was played"
    c = snap.counters
    starved = c["drops_input"] + c["drops_decode"]
    print(f"session on {card}: starved {starved}, underruns at {s.tel.underrun_times}, "
          f"playback {snap.stage_stats['playback']}, frames in {s.source.frames_delivered} "
          f"out {s.sink.frames_pulled}")
    processing = snap.stage_stats["processing"]
    if starved == 0 and processing["p95"] <= 80.0:
        # A machine that keeps real time (nothing dropped, frames computed within their 80 ms):
        # the jitter buffer sizes itself to this machine's jitter, so the speaker runs dry
        # rarely (a frame slower than every frame of the last 20 s by more than the margin); on
        # a machine with headroom, never.
        times = [t for t in s.tel.underrun_times if not t_wired <= t <= t_wired + 1.0]
        diag = (c, s.tel.underrun_times, t_wired, s.tel.info.playout_ms)
        assert len(times) <= 3, diag
        # and it keeps mic-to-speaker within the aim: the slowest recent frame + the margin
        play = snap.stage_stats["playback"]
        assert play["p50"] <= processing["max"] + 80 + 80, (play, diag)
    else:
        # a machine too slow or too busy for real time (codec + model > 80 ms of CPU per
        # frame, e.g. a shared 2-core box): input is dropped (or frames take longer than their
        # 80 ms, the speaker running dry) while latency stays bounded, and the session goes on
        # playing what it could compute
        assert snap.frames_played >= 0.5 * (snap.frames_captured - starved), c
        assert snap.queues["output"] <= 4
    assert snap.frames_processed >= 0.4 * seconds / 0.08
    # the speaker's own latency, as measured from PortAudio's DAC times (or reported): a
    # JACK card has at least one period of it
    assert snap.info.output_latency_ms == round(s.sink.latency_s * 1000.0, 1)
    assert 20.0 <= snap.info.output_latency_ms < 1000.0
    if jack_server.rate != 24000:  # the card's rate, resampled both ways, frame after frame
        for end in (s.source, s.sink):
            assert end.device_rate == jack_server.rate and end.label.endswith(
                f"({jack_server.rate} Hz, resampled)")
        assert snap.info.input == s.source.label and snap.info.output == s.sink.label
        # a frame captured per 80 ms of the session (not one per 1920 samples at 48 kHz), and
        # the speaker asking for one at least as often (more: a late frame is asked for again
        # at each 20 ms block)
        n = s.source.frames_delivered
        assert seconds / 0.08 * 0.9 <= n <= seconds / 0.08 * 1.1 + 5, n
        assert s.sink.frames_pulled >= seconds / 0.08 * 0.9


def test_demo_without_a_microphone_goes_on_after_the_speech(demo_cache, monkeypatch, tmp_path):
    """--demo on a machine with no microphone: the bundled speech (1 s of it here) stands in
    for the user, then silence, and the session goes on until it is stopped (here its time
    limit) instead of ending with the recording."""
    short = tmp_path / "speech1s.wav"
    write_wav(short, read_wav(BUNDLED_SPEECH)[:24000])
    monkeypatch.setattr(devices, "BUNDLED_SPEECH", str(short))

    def no_mic(*a, **k):
        raise AudioError("no audio input device found")

    monkeypatch.setattr(devices, "DeviceSource", no_mic)
    cfg = SessionConfig(model=ModelOptions(demo=True), output="null", seconds=3, save=False)
    s = Session(cfg)
    s.prepare()
    s.start()
    try:
        assert s.live.wait(120), s.snapshot().error
        assert s.wait(30)
    finally:
        s.stop()
    snap = s.snapshot()
    assert snap.error is None and s.end_reason == "time limit"
    assert snap.info.input == "speech1s.wav (bundled), then silence"
    assert snap.frames_captured >= 3 / 0.08 * 0.8 > 2 * 13  # well past the 13 frames of speech
    assert not s.source.finished.is_set()
