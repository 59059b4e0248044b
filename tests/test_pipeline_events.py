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
