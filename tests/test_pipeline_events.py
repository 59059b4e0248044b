"""The pipeline tells its observers what happens (engine.pipeline.events): the telemetry hears
every event, other observers (the recorder, serve's conversation) only those they implement."""

from __future__ import annotations

import numpy as np

from engine.files.recorder import SessionRecorder
from engine.pipeline.events import EVENTS, Observers, PipelineObserver
from engine.telemetry.collect import Telemetry
from engine.telemetry.stages import FrameRecord


def test_telemetry_implements_every_event():
    tel = Telemetry()  # an instance: an attribute of the same name would hide the method
    missing = [name for name in EVENTS if not callable(getattr(tel, name, None))]
    assert not missing, f"Telemetry would not hear: {missing}"


def test_each_event_reaches_each_observer_that_implements_it(tmp_path):
    heard = []

    class Conversation(PipelineObserver):
        def text_token(self, piece, token_id, step, t_ns):
            heard.append(("conv", piece))

    tel = Telemetry()
    rec_dir = tmp_path / "s"
    rec_dir.mkdir()
    recorder = SessionRecorder(rec_dir, tel)
    obs = Observers(tel, None, Conversation(), recorder)
    frame = FrameRecord(frame=0, t_cap=1_000)
    pcm = np.full(1920, 0.5, np.float32)
    obs.captured(frame, pcm)
    obs.text_token(" hi", 7, 0, 2_000)
    obs.silence(480, 3_000, True)
    obs.dropped(frame, "input", "input dropped: pipeline behind real time")
    recorder.close()
    # the telemetry: frame bookkeeping, level, transcript, the underrun and the drop
    assert tel.frames_captured == 1 and tel.input_level > 0.4
    assert tel.text == " hi" and heard == [("conv", " hi")]
    assert tel.counters["underruns"] == 1 and tel.counters["drops_input"] == 1
    assert "input dropped: pipeline behind real time" in tel.warnings and not tel.frames
    # the recorder: the captured frame, and the 20 ms of silence the speaker played
    from engine.audio.wavio import read_wav

    assert len(read_wav(rec_dir / "input.wav")) == 1920
    assert len(read_wav(rec_dir / "output.wav")) == 480


def test_a_telemetry_configured_for_paired_frames_times_no_stage_from_the_pairing():
    """A remote session's telemetry (engine.session.remote.session.REMOTE_TELEMETRY): its own
    stages and counters, and frames paired with the returned audio in arrival order give no
    stage, slowest frame or underrun explanation; the session reports its stages itself."""
    from engine.session.remote.session import REMOTE_TELEMETRY

    tel = Telemetry(config=REMOTE_TELEMETRY)
    assert list(tel.stage_stats()) == [*Telemetry().stage_stats(), "rtt", "e2e"]
    assert tel.counters["reconnects"] == 0 and tel.counters["drops_offline"] == 0
    obs = Observers(tel)
    pcm = np.full(1920, 0.5, np.float32)
    rec = FrameRecord(frame=0, t_cap=1_000_000)
    obs.captured(rec, pcm)
    rec.step, rec.t_enc, rec.t_dec0, rec.t_dec = 0, 2_000_000, 3_000_000, 4_000_000
    rec.t_play = 9_000_000
    obs.stepped(rec)
    obs.pcm_ready(rec, pcm)
    obs.silence(480, 5_000_000, True)
    obs.stage("e2e", 160.0)
    obs.played(rec, pcm, None)
    assert tel.steps == 1 and tel.frames_processed == 1 and tel.frames_played == 1
    assert tel.counters["underruns"] == 1 and not tel.underrun_times
    st = tel.stage_stats()
    assert st["e2e"]["n"] == 1 and st["playback"]["n"] == 0 and st["processing"]["n"] == 0
    assert tel.slowest.frames() == [] and not tel.frames and tel.output_level > 0.4
    obs.dropped(FrameRecord(frame=1, t_cap=6_000_000), "offline")
    assert tel.counters["drops_offline"] == 1
