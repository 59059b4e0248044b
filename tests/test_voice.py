"""Voice activity beside the audio path (engine.telemetry.voice): the VAD hears the bundled
speech and not silence, and a slow VAD never holds up the audio callbacks that hand it work."""

from __future__ import annotations

import threading
import time

import numpy as np

from engine.audio import BUNDLED_SPEECH, FRAME, FRAME_NS
from engine.audio.wavio import read_wav
from engine.telemetry.collect import Telemetry
from engine.telemetry.stages import FrameRecord
from engine.telemetry.voice import FrameVad, VoiceActivity


def test_the_vad_hears_speech_and_not_silence_or_a_hum():
    x = read_wav(BUNDLED_SPEECH)
    vad = FrameVad()
    speech = [vad(x[i:i + FRAME]) > 0.5 for i in range(int(4.12 * 24000), int(4.9 * 24000), FRAME)]
    vad = FrameVad()
    hum = 0.2 * np.sin(2 * np.pi * 100 * np.arange(FRAME * 25) / 24000).astype(np.float32)
    quiet = [vad(hum[i:i + FRAME]) > 0.5 for i in range(0, hum.size, FRAME)]
    assert sum(speech) >= len(speech) - 2 and not any(quiet)


class SlowVad:
    gate = threading.Event()

    def __call__(self, pcm):
        self.gate.wait(5)
        return 0.0


def test_a_slow_vad_skips_frames_and_never_blocks_the_callback():
    calls = []
    va = VoiceActivity(lambda name, ms: calls.append(ms), vad_factory=SlowVad, queue_max=4)
    pcm = np.zeros(FRAME, np.float32)
    t0 = time.perf_counter()
    for i in range(50):
        va.offer("user", i * FRAME_NS, pcm)
    took = time.perf_counter() - t0
    assert took < 0.5  # 50 hand-overs while the VAD is stuck: none waited for it
    assert va.skipped >= 50 - 4 - 1
    SlowVad.gate.set()
    va.close()
    assert len(calls) == 50 - va.skipped  # what was not skipped was analysed, and timed


def test_the_telemetry_hands_both_sides_over_with_their_times():
    tel = Telemetry()
    seen = []
    tel.voice.detector.add = lambda side, t_ms, dur_ms, active: seen.append((side, t_ms, dur_ms))
    pcm = np.zeros(FRAME, np.float32)
    rec = FrameRecord(frame=0, t_cap=10 * FRAME_NS)
    tel.captured(rec, pcm)
    rec.t_play = 20 * FRAME_NS
    tel.played(rec, pcm, None)
    tel.silence(480, 21 * FRAME_NS, False)
    tel.voice.close()
    ms = FRAME_NS / 1e6
    assert seen == [("user", 9 * ms, ms), ("moshi", 20 * ms, ms), ("moshi", 21 * ms, 20.0)]


def test_a_vad_that_fails_is_said_once_and_the_audio_goes_on():
    said = []

    def broken():
        raise RuntimeError("no model")

    va = VoiceActivity(lambda name, ms: None, vad_factory=broken, warn=said.append)
    pcm = np.zeros(FRAME, np.float32)
    for i in range(5):
        va.offer("user", i * FRAME_NS, pcm)
    va.close()
    assert said == ["voice activity stopped: no model"] and va.error == said[0]
    va.offer("user", 9 * FRAME_NS, pcm)  # (still never raises into the callback)
