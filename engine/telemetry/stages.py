"""What is measured per frame: the stamps of a `FrameRecord`, the stages between them, the queue
and counter names, and the percentile summary every report uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stage name -> (start stamp, end stamp): encode (capture to codes ready), uplink (codes to the
# model process), queue (waiting for the model), model (the LM step), decode (back to the client
# and decoded), processing (capture to PCM ready), playback (capture to the speaker).
STAGE_DEFS: dict[str, tuple[str, str]] = {
    "encode": ("t_cap", "t_enc"),
    "uplink": ("t_enc", "t_srv_in"),
    "queue": ("t_srv_in", "t_step0"),
    "model": ("t_step0", "t_step1"),
    "decode": ("t_step1", "t_dec"),  # downlink + decode
    "processing": ("t_cap", "t_dec"),
    "playback": ("t_cap", "t_play"),  # mic-to-speaker
}


STAGES = tuple(STAGE_DEFS)


# Pure codec work, measured from the call into rustymimi to its result (no queue waits), the
# echo canceller's work per frame (microphone and speaker reference together), and the voice
# activity detector's per frame of either side (beside the audio path, engine.telemetry.voice).
WORK_STAGES = ("encode_work", "decode_work", "aec", "vad")
ALL_STAGES = STAGES + WORK_STAGES
QUEUES = ("input", "c2s", "s2c", "output")

# Counter -> what it counts (a kind of session can count more: engine.telemetry.collect's
# TelemetryConfig)
COUNTERS: dict[str, str] = {
    "underruns": "output period with nothing to play after playback started",
    "drops_input": "captured frames dropped because the pipeline was behind",
    "drops_output": "decoded frames dropped to resynchronise playback",
    "drops_decode": "model frames not decoded because the decoder was behind",
    "overruns": "device input overflow flags",
    "underflows": "device output underflow flags",
    "delay_steps": "server steps that returned no audio (codebook delays)",
    "segments": "context resets",
    "trims_output": "frames shortened (<= 10 ms) to bring the playback delay down",
    "early_encodes": "frames whose first half was encoded before the frame was complete",
}


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float | None]:
    """p50/p95/p99/max (and count) of a sequence of milliseconds; None when empty."""
    out: dict[str, float | None] = {}
    if len(values) == 0:
        for q in qs:
            out[f"p{q}"] = None
        out["max"] = None
        out["mean"] = None
        out["n"] = 0
        return out
    a = np.asarray(values, dtype=np.float64)
    for q, v in zip(qs, np.percentile(a, qs)):
        out[f"p{q}"] = round(float(v), 3)
    out["max"] = round(float(a.max()), 3)
    out["mean"] = round(float(a.mean()), 3)
    out["n"] = int(a.size)
    return out


@dataclass
class FrameRecord:
    """All stamps of one frame, indexed by capture id; `step` is the server step that used it."""

    frame: int
    step: int = -1
    t_head: int = 0  # its first 40 ms went into the encoder (early encode), before t_cap
    t_cap: int = 0
    t_enc0: int = 0
    t_enc: int = 0
    t_srv_in: int = 0
    t_step0: int = 0
    t_step1: int = 0
    t_dec0: int = 0
    t_dec: int = 0
    t_play: int = 0
    has_audio: bool = False
    silent: bool = False  # a step without audio in mid-conversation: played as silence, on time

    def stages_ms(self) -> dict[str, float]:
        out = {}
        for name, (a, b) in STAGE_DEFS.items():
            ta, tb = getattr(self, a), getattr(self, b)
            if ta and tb:
                out[name] = (tb - ta) / 1e6
        if self.t_enc0 and self.t_enc:
            out["encode_work"] = (self.t_enc - self.t_enc0) / 1e6
        if self.t_dec0 and self.t_dec:
            out["decode_work"] = (self.t_dec - self.t_dec0) / 1e6
        return out
