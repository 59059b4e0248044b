"""Early encode: the first 40 ms of a frame go into rustymimi while the rest is captured.

What a user relies on: the model hears exactly the codes it would hear if every frame were
encoded whole (so the conversation is the same, only sooner), whatever the pipeline's load,
and a frame whose first half is in the encoder is never dropped (half a frame left in the
codec's stream would shift every later code)."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from engine.audio import FRAME, HEAD
from engine.bench.measure import speech_frames
from engine.pipeline.client import ClientPipeline
from engine.pipeline.codec import open_codec
from engine.pipeline.input_queue import InputQueue
from engine.pipeline.segments import Segments
from engine.telemetry.collect import Telemetry
from engine.telemetry.stages import FrameRecord
from tests.fake_model import FakeServer

pytest_plugins = ["conftest_models"]


def reference_codes(mimi: str, frames: list[np.ndarray], ids: list[int]) -> dict[int, np.ndarray]:
    """The codes of frames `ids`, each encoded whole, in that order, by a fresh codec."""
    import rustymimi

    tok = rustymimi.Tokenizer(mimi)
    out = {}
    warm = np.zeros(FRAME, np.float32)
    for _ in range(4):  # what warm_codec pushed through the session's codec
        tok.encode_step(warm.reshape(1, 1, -1))
    for i in ids:
        out[i] = tok.encode_step(frames[i].reshape(1, 1, -1))[0]
    return out


def run_pipeline(mimi: str, frames, *, server_delay_s=0.0, heads=True, pace_s=0.040,
                 head_lead_s=None, segment_frames=None, keep_up=True):
    """Feed `frames` as a source would (head, then the frame `head_lead_s` later).

    With `keep_up`, each frame waits until the server has the one before it: a host whose
    codec needs more than 80 ms per frame would otherwise (rightly) drop frames, and these
    tests are about which codes the model gets, not about the host's speed."""
    client, server_end = mp.Pipe()
    server = FakeServer(server_end, server_delay_s)
    server.start()
    tel = Telemetry()
    segments = Segments(segment_frames, lambda: open_codec(mimi)) if segment_frames else None
    pipe = ClientPipeline(open_codec(mimi), client, None, tel, segments=segments,
                          input_max=3, inflight_max=4)
    pipe.start()
    try:
        for i, f in enumerate(frames):
            deadline = time.monotonic() + 10
            while keep_up and len(server.order) < i and time.monotonic() < deadline:
                time.sleep(0.002)
            t = time.monotonic_ns()
            if heads:
                pipe.on_head(f[:HEAD].copy(), t)
            lead = pace_s if head_lead_s is None else head_lead_s
            time.sleep(lead)
            pipe.on_frame(f.copy(), time.monotonic_ns())
            time.sleep(2 * pace_s - lead)
        deadline = time.monotonic() + 10
        while not pipe.idle() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pipe.stop()
        server.stop.set()
        server.join(2)
    return server, tel


@pytest.fixture(scope="module")
def speech():
    return speech_frames(24)


def test_early_encode_gives_the_codes_of_whole_frames(demo_files, speech):
    mimi = str(demo_files.mimi)
    server, tel = run_pipeline(mimi, speech)
    assert server.order == list(range(len(speech)))  # an idle pipeline keeps every frame
    # every frame went in as two halves, and the model got exactly the whole-frame codes
    assert tel.counters["early_encodes"] == len(speech)
    ref = reference_codes(mimi, speech, server.order)
    for i in server.order:
        np.testing.assert_array_equal(server.codes[i].reshape(-1), ref[i].reshape(-1),
                                      err_msg=f"frame {i}")


def test_a_busy_pipeline_drops_whole_frames_and_stays_in_phase(demo_files, speech):
    """The server answers 4x slower than real time: frames are dropped and heads are turned
    down while frames wait, yet every code the server gets is the whole-frame code of that
    frame, encoded after the frames before it."""
    mimi = str(demo_files.mimi)
    server, tel = run_pipeline(mimi, speech, server_delay_s=0.32, keep_up=False)
    sent = server.order
    assert sent == sorted(sent) and len(sent) < len(speech)
    assert tel.counters["drops_input"] > 0
    assert 0 < tel.counters["early_encodes"] < len(sent) + 1
    ref = reference_codes(mimi, speech, sent)
    for i in sent:
        np.testing.assert_array_equal(server.codes[i].reshape(-1), ref[i].reshape(-1),
                                      err_msg=f"frame {i}")


def test_heads_that_come_with_their_frame_are_not_used(demo_files):
    """A host with 80 ms periods hands both halves over at once: after a couple of seconds
    the pipeline stops splitting (it would cost work for nothing), and the codes stay right."""
    frames = speech_frames(60)
    mimi = str(demo_files.mimi)
    server, tel = run_pipeline(mimi, frames, head_lead_s=0.0)
    assert server.order == list(range(len(frames)))
    assert 0 < tel.counters["early_encodes"] <= 30
    ref = reference_codes(mimi, frames, server.order)
    for i in server.order:
        np.testing.assert_array_equal(server.codes[i].reshape(-1), ref[i].reshape(-1))


def test_codec_switch_at_a_segment_boundary_keeps_the_codes_right(demo_files):
    """Every 12 frames a fresh codec takes over (what a session does every 3600): the frame at
    the boundary is never split across the two codecs, so each segment's codes are those of a
    fresh codec encoding that segment's frames whole."""
    frames = speech_frames(40)
    mimi = str(demo_files.mimi)
    server, tel = run_pipeline(mimi, frames, segment_frames=12)
    assert server.order == list(range(len(frames)))
    assert server.resets >= 2 and tel.counters["early_encodes"] > len(frames) // 2
    for seg in range(server.resets + 1):
        ids = [i for i in server.order if server.segment_of[i] == seg]
        ref = reference_codes(mimi, frames, ids)
        for i in ids:
            np.testing.assert_array_equal(server.codes[i].reshape(-1), ref[i].reshape(-1),
                                          err_msg=f"segment {seg}, frame {i}")


def test_heads_are_optional(demo_files, speech):
    server, tel = run_pipeline(str(demo_files.mimi), speech[:6], heads=False)
    assert server.order == list(range(6))
    assert tel.counters["early_encodes"] == 0


def test_input_queue_never_drops_the_frame_whose_head_is_encoded():
    q = InputQueue(3)
    recs = [(FrameRecord(frame=i), np.zeros(FRAME, np.float32)) for i in range(6)]
    assert q.put(recs[0], keep_frame=0) is None
    assert q.put(recs[1], keep_frame=0) is None
    assert q.put(recs[2], keep_frame=0) is None
    dropped = q.put(recs[3], keep_frame=0)  # full: frame 0 stays, the next oldest goes
    assert dropped[0].frame == 1
    dropped = q.put(recs[4])  # nothing protected: the oldest goes
    assert dropped[0].frame == 0
    assert [q.get(0.01)[0].frame for _ in range(3)] == [2, 3, 4]
    assert q.get(0.01) is None and q.empty()
