"""Turn-taking measured on the real client pipeline, in real time, against a stand-in model that
speaks on a script (tests.fake_model.ScriptedCodec: Moshi's k-th step says the script's k-th
80 ms) and a microphone that plays a scripted WAV.  The user relies on the figures matching
what happened: the measured response and stop latencies equal the scripted ones (Moshi's onset
as played minus the end of the user's speech as captured; Moshi's offset as played minus the
user's onset) within one frame plus the VAD's lag; the user's short pause does not end a turn.

Speech is cut from the bundled recording at places inside words, so each edge is a known
sample; the stretches chosen have no gap a VAD could take for a pause."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import numpy as np
import pytest

from engine.audio import BUNDLED_SPEECH, FRAME, FRAME_NS, SAMPLE_RATE
from engine.audio.paced import NullSink, WavFileSource
from engine.audio.wavio import WavWriter, read_wav
from engine.pipeline.client import ClientPipeline
from engine.pipeline.codec import StreamingCodec
from engine.files.export import transcript_json, transcript_markdown
from engine.telemetry.collect import Telemetry
from engine.telemetry.stats import build_stats
from engine.telemetry.trace import build_trace
from engine.telemetry.voice import OFFSET_LAG_MS
from tests.fake_model import FakeServer, ScriptedCodec

SR = SAMPLE_RATE
# continuous speech in the bundled recording (s): no gap of 100 ms or more inside
A, B, C = (4.12, 4.96), (8.00, 8.58), (9.28, 10.02)
TOL_MS = FRAME_NS / 1e6 + OFFSET_LAG_MS  # one frame plus the VAD's lag


def _cut(x, span):
    return x[int(span[0] * SR):int(span[1] * SR)]


def _place(n_s, parts):
    """A track of n_s seconds with each (start_s, samples) placed; the speech's (start, end) s."""
    track = np.zeros(int(n_s * SR), np.float32)
    spans = []
    for t, pcm in parts:
        i = int(t * SR)
        track[i:i + pcm.size] = pcm
        spans.append((i / SR, (i + pcm.size) / SR))
    return track, spans


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """One scripted conversation through the pipeline: (telemetry, user spans, Moshi spans,
    captured_ms, played_ms)."""
    tmp_path = tmp_path_factory.mktemp("turns")
    x = read_wav(BUNDLED_SPEECH)
    a, b, c = _cut(x, A), _cut(x, B), _cut(x, C)
    # the user: a sentence with a 320 ms pause inside (shorter than the end-of-turn pause),
    # then, while Moshi answers, an interruption
    mic, user = _place(9.0, [(0.48, a), (0.48 + a.size / SR + 0.32, c), (5.2, np.concatenate([b, a]))])
    # Moshi (per model step = per mic frame): its answer from 3.6 s, stopping at 6.0 s
    moshi_track, moshi = _place(9.0, [(3.6, np.concatenate([a, c, a]))])
    w = WavWriter(tmp_path / "mic.wav")
    w.write(mic)
    w.close()

    client, server_end = mp.Pipe()
    server = FakeServer(server_end, audio=ScriptedCodec.step_codes)
    server.start()
    tel = Telemetry()
    tel.keep_records = True
    pipe = ClientPipeline(StreamingCodec(ScriptedCodec(moshi_track), "scripted"), client, None,
                          tel, early_encode=False)
    pipe.start()
    src, sink = WavFileSource(tmp_path / "mic.wav"), NullSink()
    try:
        sink.start(pipe.pull)
        src.start(pipe.on_frame)
        assert src.finished.wait(30)
        time.sleep(1.0)  # Moshi's last frames play, the end-of-turn pause passes
    finally:
        src.stop()
        sink.stop()
        pipe.stop()
        server.stop.set()
        server.join(2)
    tel.voice.close()

    recs = {r.frame: r for r in tel.done_frames}
    by_step = {r.step: r for r in recs.values() if r.t_play}
    t0_ms = tel.voice.detector.t0_ms

    def captured_ms(t_s):  # when the mic's sample at t_s was captured, on the detector's clock
        i = int(t_s * SR)
        r = recs[i // FRAME]
        return (r.t_cap - (FRAME - 1 - i % FRAME) * 1e9 / SR) / 1e6 - t0_ms

    def played_ms(t_s):  # when Moshi's sample at t_s was heard
        i = int(t_s * SR)
        r = by_step[i // FRAME]
        return (r.t_play + (i % FRAME) * 1e9 / SR) / 1e6 - t0_ms

    return tel, user, moshi, captured_ms, played_ms


def test_measured_response_and_stop_latencies_equal_the_scripted_ones(scripted):
    tel, user, moshi, captured_ms, played_ms = scripted
    turns = tel.voice.detector.turns
    kinds = [t.kind for t in turns]
    assert kinds.count("response") == 1, kinds
    assert "unanswered" not in kinds and "takeover" not in kinds  # the pause did not end a turn
    resp = next(t for t in turns if t.kind == "response")
    want = played_ms(moshi[0][0]) - captured_ms(user[1][1])
    assert abs(resp.latency_ms - want) <= TOL_MS, (resp, want, tel.voice.skipped)
    stop = [t for t in turns if t.kind == "stop"]
    assert len(stop) == 1, kinds
    want = played_ms(moshi[0][1]) - captured_ms(user[2][0])
    assert abs(stop[0].latency_ms - want) <= TOL_MS, (stop[0], want, tel.voice.skipped)
    assert len(tel.stage_all["vad"]) > 100  # its cost per frame, a stage


def test_stats_transcript_and_trace_show_the_same_turns(scripted):
    tel = scripted[0]
    stats = build_stats(tel)
    rec = stats["turns"]
    det = tel.voice.detector
    assert [t["kind"] for t in rec["turns"]] == [t.kind for t in det.turns]
    assert [t["latency_ms"] for t in rec["turns"]] == [t.to_dict()["latency_ms"] for t in det.turns]
    summ = rec["summary"]
    assert summ["counts"]["response"] == 1 and summ["response_ms"]["n"] == 1
    assert summ["stop_ms"]["p50"] == next(t["latency_ms"] for t in rec["turns"] if t["kind"] == "stop")
    # times in s since the first capture, as the transcript's: the user's first word near 0.48 s
    assert abs(rec["speech_s"]["user"][0][0] - 0.48) <= 0.2
    assert len(rec["speech_s"]["user"]) >= 2 and len(rec["speech_s"]["moshi"]) >= 1
    md = transcript_markdown(stats)
    assert "## Who spoke when" in md and "- **[00:00]** You," in md and "Moshi, " in md
    assert f"| stop latency (ms) | {summ['stop_ms']['p50']:.0f} |" in md
    assert json.loads(transcript_json(stats))["turns"] == json.loads(json.dumps(rec))
    ev = build_trace(tel)["traceEvents"]
    for side in ("user", "moshi"):
        slices = [e for e in ev if e.get("name") == f"{side} speaking" and e["ph"] == "X"]
        assert len(slices) == len(det.segments[side]) and all(e["dur"] > 0 for e in slices)
