"""What a conversation is asked to do (`SessionConfig`; engine.session.factory.open_session
opens the session for it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.model.sampling import Sampling
from engine.model.source import ModelOptions
from engine.telemetry.turns import TurnOptions


@dataclass
class SessionConfig:
    model: ModelOptions = field(default_factory=ModelOptions)
    input: str | None = None  # device index/name, FILE.wav, "silence"; None = default device
    output: str | None = None  # device index/name, FILE.wav, "null"; None = default device
    seconds: float | None = None
    max_steps: int | None = None  # LM context length before a new segment starts
    step_delay_ms: float = 0.0  # diagnostic: slow every model step down (simulates a slow machine)
    input_max: int = 3
    inflight_max: int = 4
    keep_records: bool = False  # keep every FrameRecord (for --trace)
    early_encode: bool = True  # encode each frame's first half while its second is captured
    session_dir: str | None = None  # None: a new folder under the user data dir
    save: bool = True  # write the session folder (recordings, transcript, stats)
    options: dict = field(default_factory=dict)  # the command line, recorded in stats
    remote: str | None = None  # ws(s)://HOST:PORT/api/chat: a remote Moshi server runs the model
    sampling: Sampling = field(default_factory=Sampling)  # how the model picks its tokens
    aec: str = "auto"  # echo cancellation: "on", "off", "auto" (on when the output is a device)
    noise_suppression: bool = False  # WebRTC's noise suppressor on the microphone, with the AEC
    turns: TurnOptions | None = None  # turn-taking thresholds (the VAD's lag in); None: defaults

