"""What the pipeline tells the world, as it happens: one method per event.

The pipeline does not measure, record or serve anything itself.  It stamps each `FrameRecord`
where the event happens (capture callback, codec result, model result, speaker pull) and calls
its observers: the telemetry (engine.telemetry.collect.Telemetry) is one, the session's
recorder another, `serve`'s conversation a third (text tokens and PCM go to its websocket).
An observer implements the events it needs, by name (subclassing `PipelineObserver` or not:
the telemetry and the recorder sit below the pipeline; the telemetry implements every event).
Events arrive on the thread where they happen (audio callbacks, codec loops): an observer
never blocks.

    captured      a frame came from the source (rec.t_cap set; pcm after muting)
    dropped       a frame will go no further: where = "input" | "decode" | "output" | "offline"
                  (captured while a remote session is disconnected); `why` is the warning to
                  show, or "" for a routine drop
    early_encoded the frame's first half went into the encoder before the frame was complete
    early_encode  early encode turned on or off (heads arriving with their frames: off)
    queues        the depth of each queue, sampled once per captured frame
    stepped       the model's result for a frame came back (rec.step and the server's stamps)
    delay_step    a step that produced no audio (the codebook delays): the frame ends there
    text_token    a text token, decoded to its piece, at the model's stamp
    pcm_ready     a frame's PCM came out of the decoder (rec.t_dec)
    played        a frame starts playing (rec.t_play), under a jitter buffer aiming at aim_ms
    silence       the speaker played `room` samples of silence (an underrun when `underrun`)
    trimmed       a frame was shortened by a few ms to bring the playback delay down
    segment_started  a new segment began at model step `step` (a fresh codec and LM state)
    retired       a frame that will not be decoded: the model process is gone
    abandoned     a frame the model stepped but the pipeline stopped before decoding
    model_memory  what MLX holds in the model process, in MB, at model step `step`, and its
                  garbage collector's figures (engine.telemetry.gcwatch) when it sends them
    stage         a stage timed where it ran rather than from a frame's stamps: the echo
                  canceller's work on the audio path ("aec"), a remote session's round trip
    warning       something the user should know, in words
    failed        the model process died or failed, or a loop raised: the conversation
                  cannot go on
"""

from __future__ import annotations

import numpy as np

from engine.telemetry.stages import FrameRecord


class PipelineObserver:
    """Every event, doing nothing: subclasses override the ones they care about."""

    def captured(self, rec: FrameRecord, pcm: np.ndarray) -> None: ...
    def dropped(self, rec: FrameRecord, where: str, why: str = "") -> None: ...
    def early_encoded(self, rec: FrameRecord) -> None: ...
    def early_encode(self, on: bool) -> None: ...
    def queues(self, depths: dict[str, int]) -> None: ...
    def stepped(self, rec: FrameRecord) -> None: ...
    def delay_step(self, rec: FrameRecord) -> None: ...
    def text_token(self, piece: str, token_id: int, step: int, t_ns: int) -> None: ...
    def pcm_ready(self, rec: FrameRecord, pcm: np.ndarray) -> None: ...
    def played(self, rec: FrameRecord, pcm: np.ndarray, aim_ms: float | None) -> None: ...
    def silence(self, room: int, t_ns: int, underrun: bool) -> None: ...
    def trimmed(self, rec: FrameRecord) -> None: ...
    def segment_started(self, step: int, t_ns: int) -> None: ...
    def retired(self, rec: FrameRecord) -> None: ...
    def abandoned(self, rec: FrameRecord) -> None: ...
    def model_memory(self, step: int, mb: float, gc: dict | None = None) -> None: ...
    def stage(self, name: str, ms: float) -> None: ...
    def warning(self, text: str) -> None: ...
    def failed(self, message: str) -> None: ...


EVENTS = tuple(name for name in vars(PipelineObserver) if not name.startswith("_"))


class Observers(PipelineObserver):
    """Several observers seen as one: each event goes to each that implements it, in order."""

    def __init__(self, *observers) -> None:
        self.observers = tuple(o for o in observers if o is not None)
        for name in EVENTS:
            handlers = tuple(h for h in (getattr(o, name, None) for o in self.observers) if h)
            if len(handlers) == 1:
                setattr(self, name, handlers[0])
            elif handlers:
                setattr(self, name, _fanout(handlers))


def _fanout(handlers):
    def emit(*args, **kwargs):
        for h in handlers:
            h(*args, **kwargs)
    return emit
