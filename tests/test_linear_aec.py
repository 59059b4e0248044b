"""The linear echo filter in front of AEC3 (engine.audio.linear_aec): it subtracts the echo it
has learnt and touches nothing else -- the user's voice, while both talk, passes untouched."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import SAMPLE_RATE
from engine.audio import linear_aec
from engine.audio.linear_aec import BLOCK, COLD_BLOCKS, REPLAY, LinearEchoFilter
from engine.audio.wavio import read_wav
from engine.bench.aec import erle_db, speech_kept
from tests.conftest import SPEECH_WAV
from tests.test_aec import SECOND_TALKER, _user_talks, room

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
    """On the echo alone (a living room's, 280 ms of reverberation) it converges: 25.5 dB less
    echo over 2-5 s, 27-30 dB per 0.5 s from 2.5 s (measured); while both talk it goes on
    removing the echo (it learns on) and the user's voice comes out as it went in (magnitude-
    spectrum correlation 0.99): it subtracts, never gates.  AEC3 after it does the rest."""
    far, echo, near, start = signals
    mic = echo + near
    out = _run(LinearEchoFilter(), far, mic)
    assert erle_db(echo[2 * SR:start], out[2 * SR:start]) >= 18.0
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


def test_a_cold_filter_learns_again_from_what_it_just_heard(signals, monkeypatch):
    """For its first 2 s of far sound a new filter replays the last second's blocks after each
    block: the echo alone is 15.6-16.3 dB down over 1-2 s and 25-26 dB over 2-5 s in three
    rooms (7.7-8.4 and 10.5-11.6 dB without replays); then the replays stop, also after a
    moved alignment (AEC3 behind it is warm by then: it learns at the usual pace)."""
    far, echo, _near, start = signals
    cut = slice(SR, 2 * SR)
    f = LinearEchoFilter()
    out = _run(f, far[:start], echo[:start])
    assert 0 < f.replays <= REPLAY * COLD_BLOCKS
    replayed = erle_db(echo[cut], out[cut])
    monkeypatch.setattr(linear_aec, "REPLAY", 0)
    plain = LinearEchoFilter()
    out0 = _run(plain, far[:start], echo[:start])
    assert plain.replays == 0
    without = erle_db(echo[cut], out0[cut])
    assert replayed >= without + 5.0, (replayed, without)
    monkeypatch.undo()
    # warm: no more replays; moved: cold again
    n = f.replays
    for i in range(start, start + 10 * BLOCK, BLOCK):
        f.far(far[i + 2 * BLOCK:i + 3 * BLOCK])
        f.process(echo[i:i + BLOCK], i)
    assert f.replays == n
    for i in range(start - 20 * BLOCK, start - 10 * BLOCK, BLOCK):  # (far still in its ring)
        f.process(echo[i:i + BLOCK], i)
    assert f.resets == 1 and f.replays == n
    assert np.abs(f.w).max() > 0  # (learning again)


def test_replays_while_the_user_talks_keep_the_user(signals, monkeypatch):
    """The user talks from 0.5 s, while the filter is still cold and replaying: a replayed
    block's own error power (the user's voice in it) slows its step as the live one was, so the
    voice comes out as it went in, as it does from a filter that never replays, and the echo
    goes on being removed, no less than without replays.  (A replay that ignored the voice in
    its block would move the filter by the voice: both fall well below these bounds.)"""
    far, echo, _near, _start = signals
    near, st, _n = _user_talks(far, SR // 2)
    talk = slice(st + SR // 2, len(far) - BLOCK)

    def session(f: LinearEchoFilter) -> tuple[float, float]:
        out = _run(f, far, echo + near)
        return speech_kept(out[talk], near[talk]), erle_db(echo[talk], (out - near)[talk])

    f = LinearEchoFilter()
    kept, erle = session(f)
    assert f.replays > 0
    monkeypatch.setattr(linear_aec, "REPLAY", 0)
    kept_plain, erle_plain = session(LinearEchoFilter())
    assert kept >= 0.95 and kept >= kept_plain - 0.01, (kept, kept_plain)
    assert erle >= 10.0 and erle >= erle_plain, (erle, erle_plain)
