"""The jitter buffer's policy, on a simulated speaker (no clocks: times are given).

Frames are captured every 80 ms and ready `processing` ms later; the speaker asks for the next
frame when it reaches it, or, while it waits, once per 20 ms block (like the file and null
sinks)."""

import numpy as np

from engine.pipeline.playout import replay as simulate
from engine.pipeline.playout import trimmed

MS = 1_000_000


def test_steady_machine_ends_just_in_time():
    r = simulate([100.0] * 600)
    assert r["underruns"] == 0 and r["drops"] == 0
    assert 130 <= r["delays"][0] <= 150  # at first 40 ms of margin: jitter unknown
    late = r["delays"][-100:]
    # then the slowest frame plus the 30 ms floor (a trim stops within 5 ms of its aim)
    assert max(late) - min(late) < 1 and 125 <= late[0] <= 130
    assert r["trims"] >= 1  # it came down from 40 ms of margin to 30 by a trim, no frame lost


def test_a_late_frame_costs_a_short_gap_then_the_delay_comes_back():
    proc = [100.0] * 900
    proc[500] = 170.0  # one slow frame, 40 s in
    r = simulate(proc)
    assert r["underruns"] == 1 and r["drops"] == 0
    assert r["gaps"] and r["gaps"][0] <= 100  # silence until it is ready (+ margin), in blocks
    i = next(k for k, t in enumerate(r["times"]) if t > 40.5e3)
    assert r["delays"][i] >= 170  # the frames after it keep the longer delay...
    assert max(r["delays"][-20:]) <= 135  # ...until it leaves the 20 s window


def test_a_frame_a_little_slower_than_any_before_plays_in_time():
    """The margin's floor: a steady machine whose frames now and then take 10 ms more than the
    slowest of the last 20 s (a busy moment) keeps playing; with no floor they are underruns."""
    proc = [100.0] * 1500
    for k in range(400, 1500, 300):
        proc[k] = 110.0
    assert simulate(proc)["underruns"] == 0
    assert simulate(proc, min_margin_ms=0.0)["underruns"] >= 2


def test_jitter_within_the_window_causes_no_more_than_one_underrun():
    rng = np.random.default_rng(3)
    proc = list(rng.uniform(90.0, 160.0, 900))
    r = simulate(proc)
    assert r["underruns"] <= 1
    assert np.median(r["delays"][450:]) < 195  # ~ the slowest frame of the window + 30


def test_a_backlog_is_dropped_when_the_machine_gets_faster():
    proc = [300.0] * 150 + [100.0] * 500
    r = simulate(proc)
    assert r["drops"] >= 1 and r["underruns"] == 0
    assert max(r["delays"][-20:]) <= 135


def test_a_stall_costs_a_gap_and_drops_not_lasting_latency():
    proc = [100.0] * 900
    for k in range(8):  # the machine stalls for 600 ms at 40 s: eight frames come out at once
        proc[500 + k] = 700.0 - 80.0 * k
    r = simulate(proc)
    assert r["drops"] >= 2  # the backlog the stall left is cut...
    i = next(k for k, t in enumerate(r["times"]) if t > 42e3)
    # ...to at most median + 240 ms + the largest margin + the 2 frames kept before dropping
    assert max(r["delays"][i:]) <= 100 + 240 + 80 + 160
    assert max(r["delays"][i + 40:]) < max(r["delays"][i:i + 10])  # and on its way down
    assert max(r["delays"][-20:]) <= 135


def test_a_trimmed_frame_is_shorter_and_fades_in():
    pcm = np.ones(1920, np.float32)
    out = trimmed(pcm, 10 * MS)
    assert len(out) == 1920 - 240 and out[0] == 0.0 and out[47] < 1.0 and out[48] == 1.0
