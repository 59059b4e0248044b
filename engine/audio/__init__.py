"""Audio in and out of the pipeline: 80 ms frames of 24 kHz mono float32.

The frame constants are defined here, once, for the whole engine:

    endpoints.py   what every source and sink is (protocols, error bookkeeping, block feeding)
    paced.py       WAV files, silence and null output, paced in real time in software
    portaudio.py   microphones and speakers through PortAudio (sounddevice)
    devices.py     listing devices and turning --input/--output into endpoints
    wavio.py       reading any common WAV, a crash-safe WAV writer
    resample.py    streaming polyphase resampling to and from 24 kHz
"""

from __future__ import annotations

import os

import numpy as np

SAMPLE_RATE = 24000  # Mimi's rate
FRAME = 1920  # samples in one 80 ms frame: Mimi's and the model's step (12.5 Hz)
FRAME_NS = FRAME * 1_000_000_000 // SAMPLE_RATE  # 80 ms
FRAME_MS = FRAME_NS / 1e6  # 80.0: the frame budget every stage must keep up with
HEAD = FRAME // 2  # 40 ms: one step of Mimi's encoder (25 Hz), handed over early by `on_head`
OUT_BLOCK = 480  # 20 ms: the block of the software-paced sinks

# the speech recording played as the microphone by the demo without one, and by the benches
BUNDLED_SPEECH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "speech.wav")


def rms(pcm: np.ndarray) -> float:
    """The level of a block of samples (for the meters)."""
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float32)))) if pcm.size else 0.0
