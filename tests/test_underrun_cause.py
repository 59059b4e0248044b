"""When the speaker runs dry, the user is told why: which stage of the frame it was waiting for
took longer than usual.  The client pipeline here is the real one (rustymimi on the demo's
Mimi) facing a stand-in model process whose step 5 takes a whole second; the speaker is driven
by hand (each frame pulled once decoded, late enough that only a missing frame can make an
underrun, whatever the host's speed), and asked for audio once while that step runs."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from engine.bench.measure import speech_frames
from engine.pipeline.client import ClientPipeline
from engine.pipeline.codec import open_codec
from engine.telemetry.collect import Telemetry
from engine.telemetry.stats import build_stats
from tests.fake_model import FakeServer, offer_frame, wait_handled

pytest_plugins = ["conftest_models"]

SLOW = 5  # the step that takes SLOW_S of model time
SLOW_S = 1.0
LATE_S = 3.0


def test_an_underrun_names_the_stage_its_frame_lost_its_time_in(demo_files):
    frames = speech_frames(9)
    codes = np.zeros((1, 8), np.uint32)
    client, server_end = mp.Pipe()
    server = FakeServer(server_end, audio=codes,
                        step_s=lambda step: SLOW_S if step == SLOW else 0.0)
    server.start()
    tel = Telemetry()
    pipe = ClientPipeline(open_codec(str(demo_files.mimi)), client, None, tel)
    pipe.start()
    try:
        for i, f in enumerate(frames):
            t_cap = offer_frame(pipe, f)
            if i == SLOW:  # the speaker wants audio while the model is still on this frame
                deadline = time.monotonic() + 20
                while len(server.order) <= i and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert pipe.pull(time.monotonic_ns()) is None
            wait_handled(pipe, server, i)
            assert pipe.pull(t_cap + int(LATE_S * 1e9)) is not None, (i, dict(tel.counters))
    finally:
        pipe.stop()
        server.stop.set()
        server.join(2)
    assert tel.counters["underruns"] == 1
    (e,) = tel.underruns_explained
    assert e["frame"] == SLOW and e["stage"] == "model" and e["dropped_before"] == 0
    assert e["stages_ms"]["model"] >= 1000 * SLOW_S and e["usual_ms"]["model"] < 100
    assert e["processing_ms"] >= e["stages_ms"]["model"]
    # the user sees it as one line, and stats.json keeps it
    line = tel.warnings[-1]
    assert line.startswith(f"underrun at {e['t_s']:.1f} s: frame {SLOW} (due ") and "model took" in line
    assert e["due_ms"] < e["processing_ms"]  # it was wanted before it was ready
    assert build_stats(tel)["underruns_explained"] == [e]
