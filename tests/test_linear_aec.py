"""The linear echo filter in front of AEC3 (engine.audio.linear_aec): it subtracts the echo it
has learnt and touches nothing else -- the user's voice, while both talk, passes untouched."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import SAMPLE_RATE
from engine.audio.linear_aec import BLOCK, LinearEchoFilter
from engine.audio.wavio import read_wav
from engine.bench.aec import erle_db, speech_kept
from tests.conftest import SPEECH_WAV
from tests.test_aec import SECOND_TALKER, room

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def signals():
    far = read_wav(SPEECH_WAV).astype(np.float32)[: 10 * SR]
    voice = read_wav(SECOND_TALKER).astype(np.float32)
    near = np.zeros_like(far)
    start = 5 * SR
    n = min(len(voice), len(far) - start)
    near[start:start + n] = 0.6 * voice[:n] / np.abs(voice).max()
    echo = np.convolve(far, room(gain=0.25))[: len(far)].astype(np.float32)
    return far, echo, near, start


def _run(f: LinearEchoFilter, far: np.ndarray, mic: np.ndarray, ahead: int = 2 * BLOCK):
    """The speaker's samples reach the filter `ahead` samples before the microphone's."""
    f.far(far[:ahead])
    out = np.zeros_like(mic)
    for i in range(0, len(mic) - BLOCK + 1, BLOCK):
        f.far(far[i + ahead:i + ahead + BLOCK])
        out[i:i + BLOCK] = f.process(mic[i:i + BLOCK], i)
    return out


def test_with_nothing_played_it_changes_nothing(signals):
    far, _echo, near, _start = signals
    f = LinearEchoFilter()
    out = _run(f, np.zeros_like(far), near)
    np.testing.assert_array_equal(out, near)


def test_it_learns_the_room_and_keeps_the_user(signals):
    """On the echo alone (a living room's, 280 ms of reverberation) it converges: 11.6 dB less
    echo over 2-5 s, 15-16 dB per 0.5 s by 3 s (measured); while both talk it goes on removing
    the echo (19 dB, it learns on) and the user's voice comes out as it went in (magnitude-
    spectrum correlation 0.994): it subtracts, never gates.  AEC3 after it does the rest."""
    far, echo, near, start = signals
    mic = echo + near
    out = _run(LinearEchoFilter(), far, mic)
    assert erle_db(echo[2 * SR:start], out[2 * SR:start]) >= 8.0
    talk = slice(start + SR // 2, len(out) - BLOCK)
    assert erle_db(echo[talk], (out - near)[talk]) >= 12.0
    assert speech_kept(out[talk], near[talk]) >= 0.98


def test_a_moved_alignment_starts_over(signals):
    far, echo, _near, _start = signals
    f = LinearEchoFilter()
    _run(f, far[: 3 * SR], echo[: 3 * SR])
    assert np.abs(f.w).max() > 0 and f.resets == 0
    f.process(echo[3 * SR:3 * SR + BLOCK], 3 * SR + 5 * BLOCK)  # not where the last block ended
    assert f.resets == 1
