"""The jitter buffer's policy, period by period (no clocks: times are given)."""

from engine.pipeline import Playout


def run(p, arrivals):
    """arrivals[i] = frames decoded during period i; returns (played, underruns, drops, depth)."""
    depth = played = underruns = drops = 0
    for i, n in enumerate(arrivals):
        depth += n
        drop, play = p.decide(depth, i * 0.08)
        depth -= drop
        drops += drop
        if play:
            depth -= 1
            played += 1
        elif p.playing and depth == 0:
            underruns += 1
    return played, underruns, drops, depth


def test_steady_machine_ends_with_no_buffer():
    p = Playout(initial=1, decay_s=5.0)
    played, underruns, drops, depth = run(p, [1] * 200)
    assert underruns == 0
    assert p.target == 0  # the buffer was given back: minimal latency
    assert depth <= 1 and drops == 1  # the one extra frame was dropped when it decayed


def test_jitter_grows_the_buffer_until_underruns_stop():
    p = Playout(initial=0, decay_s=1000.0)
    # every 10th frame comes one period late (and the next one with it)
    arrivals = []
    for i in range(300):
        arrivals.append(0 if i % 10 == 5 else (2 if i % 10 == 6 else 1))
    played, underruns, drops, _ = run(p, arrivals)
    assert p.target == 1
    assert underruns == 1  # only the first late frame: after it the buffer absorbs them


def test_backlog_beyond_target_is_dropped_not_kept():
    p = Playout(initial=0, decay_s=1000.0, resync_after=3)
    played, underruns, drops, depth = run(p, [3] + [1] * 50)  # a burst of three at start-up
    assert drops == 2 and depth == 0 and underruns == 0


def test_failed_decay_waits_longer_next_time():
    p = Playout(initial=1, decay_s=2.0)
    p.decide(2, 0.0)  # start playing
    p.decide(0, 1.0)  # underrun
    assert p.target == 2 and p.decay_s == 4.0
