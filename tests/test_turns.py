"""The turn detector (engine.telemetry.turns) on synthetic activity: each side's speech given as
(start, end) in ms, fed frame by frame as the pipeline would, 80 ms per frame."""

from __future__ import annotations

import pytest

from engine.telemetry.turns import TurnDetector, TurnOptions

FRAME = 80.0


def run(user, moshi, until=None, opts=TurnOptions(), user_phase=0.0, moshi_phase=37.0):
    """Feed both sides' activity, frames of each side on their own phase, and walk to the end."""
    until = until or max(e for _, e in user + moshi) + 4000
    det = TurnDetector(opts, t0_ms=0.0)
    for side, spans, phase in (("user", user, user_phase), ("moshi", moshi, moshi_phase)):
        t = phase
        while t < until:
            mid = t + FRAME / 2
            det.add(side, t, FRAME, any(a <= mid < b for a, b in spans))
            t += FRAME
    det.advance()
    return det


def kinds(det):
    return [t.kind for t in det.turns]


def test_response_latency_is_moshi_onset_minus_user_offset():
    det = run(user=[(1000, 3000)], moshi=[(3800, 6000)])
    assert kinds(det) == ["response"]
    assert det.turns[0].latency_ms == pytest.approx(800, abs=FRAME)


def test_a_pause_shorter_than_the_end_of_turn_pause_does_not_end_the_turn():
    # the user pauses 400 ms (< 600), then goes on; Moshi answers after the real end
    det = run(user=[(1000, 2000), (2400, 3500)], moshi=[(4500, 6000)])
    assert kinds(det) == ["response"]
    assert det.turns[0].latency_ms == pytest.approx(1000, abs=FRAME)
    assert det.turns[0].user_ms[0] == pytest.approx(1000, abs=FRAME)


def test_the_same_pause_ends_the_turn_with_a_shorter_threshold():
    det = run(user=[(1000, 2000), (2400, 3500)], moshi=[(4500, 6000)],
              opts=TurnOptions(end_pause_ms=300))
    assert kinds(det) == ["unanswered", "response"]


def test_moshi_starting_inside_a_mid_sentence_pause_is_a_takeover():
    det = run(user=[(1000, 2000), (2500, 5000)], moshi=[(2200, 4000)])
    assert "takeover" in kinds(det)
    assert "response" not in kinds(det)


def test_moshi_starting_in_the_pause_that_ends_the_turn_is_its_response():
    det = run(user=[(1000, 2000)], moshi=[(2300, 4000)])
    assert kinds(det) == ["response"]
    assert det.turns[0].latency_ms == pytest.approx(300, abs=FRAME)


def test_stop_latency_when_the_user_interrupts():
    det = run(user=[(3000, 4500)], moshi=[(1000, 3400)])
    assert kinds(det)[0] == "stop"
    assert det.turns[0].latency_ms == pytest.approx(400, abs=FRAME)


def test_moshi_talking_on_through_an_interruption_keeps_the_floor():
    det = run(user=[(3000, 4500)], moshi=[(1000, 8000)])
    assert kinds(det)[0] == "kept_floor"


def test_short_moshi_speech_inside_the_users_turn_is_a_backchannel():
    det = run(user=[(1000, 5000)], moshi=[(2500, 2900)])
    assert kinds(det) == ["backchannel"]
    assert det.turns[0].moshi_ms[0] == pytest.approx(2500, abs=FRAME)


def test_a_blip_shorter_than_the_minimum_utterance_is_noise():
    det = run(user=[(1000, 3000)], moshi=[(3500, 3580), (4500, 6000)])
    assert kinds(det) == ["response"]
    assert det.turns[0].latency_ms == pytest.approx(1500, abs=FRAME)


def test_the_vads_lag_is_taken_out():
    plain = run(user=[(1000, 3000)], moshi=[(3800, 6000)])
    lagged = run(user=[(1000, 3080)], moshi=[(3800, 6000)],
                 opts=TurnOptions(offset_lag_ms=80))
    assert lagged.turns[0].latency_ms == pytest.approx(plain.turns[0].latency_ms, abs=1)


def test_overlap_share():
    det = run(user=[(0, 2000)], moshi=[(1000, 3000)])
    assert det.overlap_share == pytest.approx(1 / 3, abs=0.05)


def test_nothing_is_decided_before_both_sides_are_known():
    det = TurnDetector(TurnOptions(), t0_ms=0.0)
    for i in range(50):
        det.add("user", i * FRAME, FRAME, 10 <= i < 30)
    assert det.advance() == [] and det.now is None


def _stats(resp_p50, pipe_p50):
    return {"stages_ms": {}, "counters": {}, "turns": {"summary": {
        "response_ms": {"p50": resp_p50, "p90": resp_p50, "n": 3},
        "response_pipeline_ms": {"p50": pipe_p50, "p90": pipe_p50, "n": 3}}}}


def test_the_diagnosis_splits_a_slow_answer_into_the_pipeline_and_the_models_wait():
    from engine.telemetry.diagnose import diagnose

    (v,) = [v for v in diagnose(_stats(2400.0, 300.0)) if v.rule == "answer"]
    assert v.level == "warn"
    assert "300 ms in the pipeline" in v.text and "2100 ms the model's own wait" in v.text
    assert "the model waits" in v.text
    (v,) = [v for v in diagnose(_stats(700.0, 500.0)) if v.rule == "answer"]
    assert v.level == "ok" and "most of it is the pipeline" in v.text
    assert not [v for v in diagnose({"stages_ms": {}, "counters": {}}) if v.rule == "answer"]


def test_the_thresholds_come_from_the_command_line_with_the_vads_lag():
    from engine.cli.options import build_parser, run_config
    from engine.errors import UsageError
    from engine.telemetry.voice import OFFSET_LAG_MS

    args = build_parser().parse_args(["--demo", "--turn-pause-ms", "900", "--turn-min-speech-ms", "240"])
    turns = run_config(args).session.turns
    assert (turns.end_pause_ms, turns.min_utterance_ms) == (900.0, 240.0)
    assert turns.offset_lag_ms == OFFSET_LAG_MS
    with pytest.raises(UsageError, match="--turn-pause-ms must be between 0 and 60000 ms, not -1"):
        run_config(build_parser().parse_args(["--demo", "--turn-pause-ms", "-1"]))


def test_a_session_measures_turns_with_its_thresholds():
    from engine.session.config import SessionConfig
    from engine.session.local import Session
    from engine.session.remote.session import RemoteSession
    from engine.telemetry.voice import turn_options

    opts = turn_options(end_pause_ms=900.0)
    cfg = SessionConfig(turns=opts, save=False)
    for s in (Session(cfg), RemoteSession(cfg, "ws://127.0.0.1:1/api/chat")):
        assert s.tel.voice.detector.o == opts
