"""A new segment's first step has no audio (the codebook delays start again): what the speaker
does with that frame.  The user relies on it being 80 ms of silence at the frame's time, in
order with the frames around it -- not an underrun, which would count against the machine and
raise the jitter buffer's margin (the latency) for nothing.

The client pipeline here is the real one (rustymimi on the demo's Mimi) facing a stand-in
model process whose steps 0 and 6 come back without audio, as at a session's start and at a
segment start.  The speaker is driven by hand: each frame is pulled once it is decoded, at a
time after its capture that is later than any aim, so that only a missing frame can make an
underrun, whatever the host's speed."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

from engine.audio import FRAME
from engine.bench.measure import speech_frames
from engine.pipeline.client import ClientPipeline
from engine.pipeline.codec import open_codec
from engine.telemetry.collect import Telemetry
from tests.fake_model import FakeServer, offer_frame, wait_handled

pytest_plugins = ["conftest_models"]

NO_AUDIO = (0, 6)
LATE_S = 3.0  # the speaker plays each frame this long after its capture


def test_a_segment_start_plays_as_silence_on_time_not_as_an_underrun(demo_files):
    frames = speech_frames(12)
    codes = np.zeros((1, 8), np.uint32)
    client, server_end = mp.Pipe()
    server = FakeServer(server_end, audio=lambda step: None if step in NO_AUDIO else codes)
    server.start()
    tel = Telemetry()
    pipe = ClientPipeline(open_codec(str(demo_files.mimi)), client, None, tel)
    pipe.start()
    played = []
    try:
        for i, f in enumerate(frames):
            t_cap = offer_frame(pipe, f)
            wait_handled(pipe, server, i)
            played.append(pipe.pull(t_cap + int(LATE_S * 1e9)))
    finally:
        pipe.stop()
        server.stop.set()
        server.join(2)
    assert tel.counters["underruns"] == 0
    assert tel.counters["delay_steps"] == len(NO_AUDIO)
    assert played[0] is None  # before the first audio nothing plays (nor is it an underrun)
    assert all(p is not None and len(p) >= FRAME // 2 for p in played[1:])
    assert not np.any(played[6])  # the segment start: silence, in its place
    assert all(np.any(p) for k, p in enumerate(played[1:], 1) if k != 6)  # the rest: speech


def test_a_result_being_placed_keeps_the_pipeline_busy(demo_files):
    """Between the model's answer and its place in the decoder's queue the frame is still in
    flight: idle() (how a file session knows it has drained) must not say otherwise there.
    It did, for a moment, and a test that pulled its audio then found nothing (CI, loaded)."""
    seen = []

    class Watch(Telemetry):
        def stepped(self, rec):  # (called while the result is being placed)
            seen.append(pipe.idle())
            super().stepped(rec)

    client, server_end = mp.Pipe()
    server = FakeServer(server_end, audio=np.zeros((1, 8), np.uint32))
    server.start()
    pipe = ClientPipeline(open_codec(str(demo_files.mimi)), client, None, Watch())
    pipe.start()
    try:
        for i, f in enumerate(speech_frames(3)):
            offer_frame(pipe, f)
            wait_handled(pipe, server, i)
    finally:
        pipe.stop()
        server.stop.set()
        server.join(2)
    assert len(seen) == 3 and not any(seen), seen
