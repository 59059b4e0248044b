"""Each diagnosis rule on recorded telemetry: frames fed through a real Telemetry (as the
pipeline feeds it), judged both live (Snapshot) and after the session (build_stats dict)."""

from __future__ import annotations

import pytest

from engine.telemetry import diagnose as dg
from engine.telemetry.collect import Telemetry
from engine.telemetry.diagnose import Diagnoser, Verdict, diagnose, verdict_line, worst
from engine.telemetry.stages import FrameRecord
from engine.telemetry.stats import build_stats

MS = 1_000_000


def feed(tel: Telemetry, n: int = 40, *, enc_wait=1.0, enc=30.0, uplink=0.3, queue=0.0,
         model=15.0, dec_wait=0.4, dec=30.0, out_wait=40.0, start_frame=0, t0_ms=1000.0,
         model_series=None):
    """n frames, one per 80 ms, with these stage durations (ms), through the Telemetry API."""
    for i in range(n):
        f = start_frame + i
        t = int((t0_ms + 80.0 * f) * MS)
        rec = tel.new_frame(f, t)
        m = model_series[i % len(model_series)] if model_series else model
        rec.step = f
        rec.t_enc0 = rec.t_cap + int(enc_wait * MS)
        rec.t_enc = rec.t_enc0 + int(enc * MS)
        rec.t_srv_in = rec.t_enc + int(uplink * MS)
        rec.t_step0 = rec.t_srv_in + int(queue * MS)
        rec.t_step1 = rec.t_step0 + int(m * MS)
        rec.t_dec0 = rec.t_step1 + int(dec_wait * MS)
        rec.t_dec = rec.t_dec0 + int(dec * MS)
        tel.frame_decoded(rec)
        rec.t_play = rec.t_dec + int(out_wait * MS)
        tel.frame_played(rec)
    tel.steps = start_frame + n
    return tel


def both(tel: Telemetry):
    """The live snapshot and the end-of-session stats of the same telemetry."""
    return [tel.snapshot(), build_stats(tel)]


def rules(verdicts):
    return {v.rule for v in verdicts}


def by_rule(verdicts, rule) -> Verdict:
    return next(v for v in verdicts if v.rule == rule)


@pytest.mark.parametrize("form", [0, 1], ids=["snapshot", "stats"])
class TestRules:
    def test_all_within_budget(self, form):
        v = diagnose(both(feed(Telemetry()))[form])
        assert [x.level for x in v] == ["ok"]
        assert v[0].rule == "all_ok"
        assert v[0].text.startswith("all stages within budget")
        assert "model 15 ms" in v[0].text

    def test_model_too_slow(self, form):
        v = diagnose(both(feed(Telemetry(), model=91.0, enc=20, dec=20))[form])
        m = by_rule(v, "model_budget")
        assert m.level == "bad"
        assert m.text.startswith("model step 91 ms > 80 ms frame budget: the model is too slow")
        assert m.text.endswith("try -q 4")
        assert v[0].level == "bad"  # worst first

    def test_model_too_slow_already_q4(self, form):
        tel = feed(Telemetry(), model=91.0, enc=20, dec=20)
        tel.info.model = "kyutai/moshiko-mlx-q4 (q4)"
        m = by_rule(diagnose(both(tel)[form]), "model_budget")
        assert "-q 4" not in m.text and "faster machine" in m.text

    def test_model_advice_follows_the_device(self, form, monkeypatch):
        """On a CPU the quantized demo steps slower than bf16 (measured), so -q 4 is not the
        advice there; on CUDA every dtype steps alike and the step mode is the lever."""
        from engine.telemetry import diagnose as dg

        tel = feed(Telemetry(), model=91.0, enc=20, dec=20)
        tel.info.model, tel.info.server["mlx_device"] = "demo (q4)", "Device(cpu, 0)"
        m = by_rule(diagnose(both(tel)[form]), "model_budget")
        assert "-q 4" not in m.text and "try without -q" in m.text
        tel.info.model = "demo (bf16)"
        m = by_rule(diagnose(both(tel)[form]), "model_budget")
        assert "-q" not in m.text and "GPU" in m.text
        monkeypatch.setattr(dg.sys, "platform", "linux")
        tel.info.model = "random Moshi v0.1 7B (q4)"
        tel.info.server.update(mlx_device="Device(gpu, 0)", lm_mode="onesync")
        m = by_rule(diagnose(both(tel)[form]), "model_budget")
        assert "try --lm-step layered (the fastest step on CUDA" in m.text
        from engine.model.graph.lm_step import CUDA_MODE
        assert dg.CUDA_FASTEST_STEP == CUDA_MODE

    def test_model_headroom(self, form):
        v = diagnose(both(feed(Telemetry(), model=65.0, enc=5, dec=5))[form])
        assert by_rule(v, "model_headroom").level == "warn"
        assert "model_budget" not in rules(v)

    def test_model_p95_over_budget(self, form):
        series = [15.0] * 18 + [95.0, 95.0]  # 10 % of the steps are late
        v = diagnose(both(feed(Telemetry(), model_series=series))[form])
        assert by_rule(v, "model_p95").level == "warn"

    def test_decode_slower_than_budget(self, form):
        v = diagnose(both(feed(Telemetry(), dec=95.0, enc=20, model=10))[form])
        d = by_rule(v, "decode_budget")
        assert d.level == "bad" and d.text.startswith("decode 95 ms > 80 ms frame budget")

    def test_encode_slower_than_budget(self, form):
        v = diagnose(both(feed(Telemetry(), enc=85.0, dec=20, model=10))[form])
        assert by_rule(v, "encode_budget").level == "bad"

    def test_codec_plus_model_over_one_frame(self, form):
        # Each stage fits, their sum does not (the official CLI's situation on these machines).
        v = diagnose(both(feed(Telemetry(), enc=33.0, model=15.0, dec=36.0))[form])
        c = by_rule(v, "compute_sum")
        assert c.level == "warn"
        assert "84 ms > 80 ms: the machine cannot run codec + model in one frame" in c.text

    def test_input_wait_starved(self, form):
        v = diagnose(both(feed(Telemetry(), enc_wait=30.0))[form])
        w = by_rule(v, "input_wait")
        assert w.level == "bad"
        assert w.text == "encode waits 30 ms in the input queue: the client is starved of CPU"

    def test_input_wait_warn(self, form):
        v = diagnose(both(feed(Telemetry(), enc_wait=15.0))[form])
        assert by_rule(v, "input_wait").level == "warn"

    def test_uplink_and_server_queue(self, form):
        v = diagnose(both(feed(Telemetry(), uplink=20.0, queue=12.0))[form])
        assert {"uplink_wait", "server_queue"} <= rules(v)

    def test_downlink_wait(self, form):
        v = diagnose(both(feed(Telemetry(), dec_wait=14.0))[form])
        assert by_rule(v, "downlink_wait").level == "warn"

    def test_output_backlog_two_frames(self, form):
        # Kyutai's local.py here: processing ~67 ms, mic-to-speaker a constant 240 ms.
        v = diagnose(both(feed(Telemetry(), enc=30, model=14, dec=22, out_wait=173.0))[form])
        b = by_rule(v, "output_backlog")
        assert b.level == "bad"
        assert b.text == "output queue holds a 2-frame backlog: +160 ms mic-to-speaker"

    def test_output_backlog_one_frame(self, form):
        v = diagnose(both(feed(Telemetry(), out_wait=100.0))[form])
        b = by_rule(v, "output_backlog")
        assert b.level == "warn" and "1-frame backlog: +80 ms" in b.text

    def test_delay_held_by_the_jitter_buffer_is_not_a_backlog(self, form):
        tel = feed(Telemetry(), enc=30, model=14, dec=22, out_wait=173.0)
        play = tel.snapshot().stage_stats["playback"]["p50"]
        for _ in range(5):  # the buffer aimed at (about) this delay on purpose, frame by frame
            tel.playout_aim(play - 10)
        v = diagnose(both(tel)[form])
        assert "output_backlog" not in rules(v)
        assert by_rule(v, "jitter_buffer").text == (
            f"jitter buffer adds 173 ms to mic-to-speaker to absorb late frames (it aims at "
            f"{play - 10:.0f} ms: the slowest recent frame + a margin)")
        tel2 = feed(Telemetry(), enc=30, model=14, dec=22, out_wait=173.0)
        tel2.playout_aim(play - 90)  # played a frame later than it aimed: that is a backlog
        assert by_rule(diagnose(both(tel2)[form]), "output_backlog").level == "bad"

    def test_no_backlog_when_output_waits_less_than_a_period(self, form):
        v = diagnose(both(feed(Telemetry(), out_wait=79.0))[form])
        assert "output_backlog" not in rules(v)

    def test_jitter(self, form):
        series = [15.0] * 45 + [60.0] * 3
        v = diagnose(both(feed(Telemetry(), n=48, model_series=series))[form])
        assert by_rule(v, "jitter").level == "warn"

    def test_plumbing_without_a_named_wait(self, form):
        # 8 ms of overhead spread over stages, none above its own threshold.
        v = diagnose(both(feed(Telemetry(), enc_wait=4, uplink=2, dec_wait=2))[form])
        p = by_rule(v, "plumbing")
        assert p.level == "warn" and "plumbing adds 8.0 ms" in p.text

    def test_underruns_and_drops_totals(self, form):
        tel = feed(Telemetry())
        tel.count("underruns", 3)
        tel.count("drops_input", 2)
        tel.count("drops_decode", 1)
        v = diagnose(both(tel)[form])
        assert by_rule(v, "underruns").text.startswith("3 underruns since playback started")
        assert by_rule(v, "drops").text == "3 frames dropped (input 2, decode 1)"

    def test_slow_output_device(self, form):
        tel = feed(Telemetry())
        tel.info.output_latency_ms = 40.0  # a wired device, as measured from its DAC times
        assert "device_latency" not in rules(diagnose(both(tel)[form]))
        tel.info.output_latency_ms = 210.0  # Bluetooth headphones
        d = by_rule(diagnose(both(tel)[form]), "device_latency")
        assert d.level == "warn" and d.text.startswith("the output device adds 210 ms")

    def test_measuring_when_too_few_frames(self, form):
        v = diagnose(both(feed(Telemetry(), n=dg.MIN_FRAMES - 1))[form])
        assert [x.rule for x in v] == ["measuring"]

    def test_error(self, form):
        tel = feed(Telemetry())
        tel.error = "the model server process died"
        v = diagnose(both(tel)[form])
        assert v[0].level == "bad" and "server process died" in v[0].text


def test_rising_counters_with_previous():
    tel = feed(Telemetry(), n=30)
    tel.count("underruns", 2)  # start-up underruns
    before = tel.snapshot()
    feed(tel, n=30, start_frame=30)
    same = diagnose(tel.snapshot(), previous=before)
    assert not {"underruns", "underruns_rising"} & rules(same), "old underruns are not rising"
    tel.count("underruns", 4)
    tel.count("drops_output", 2)
    after = diagnose(tel.snapshot(), previous=before)
    u = by_rule(after, "underruns_rising")
    assert u.level == "bad" and u.text.startswith("underruns rising: +4")
    assert by_rule(after, "drops_rising").text.startswith("frames dropped: +2")


def test_diagnoser_window(monkeypatch):
    import engine.telemetry.collect as telemetry

    clock = {"t": 0}
    monkeypatch.setattr(telemetry.time, "monotonic_ns", lambda: clock["t"])
    tel = Telemetry()
    d = Diagnoser(window_s=5.0)
    feed(tel, n=20, t0_ms=1000.0)

    def at(seconds):
        clock["t"] = tel.t_start + int(seconds * 10**9)
        return rules(d.update(tel.snapshot()))

    tel.count("underruns", 1)  # at start-up: reported once, as a total
    assert "underruns" in at(2)
    assert not {"underruns", "underruns_rising"} & at(3)
    tel.count("underruns", 2)
    assert "underruns_rising" in at(4)
    clock["t"] = tel.t_start + 5 * 10**9
    assert d.line(tel.snapshot()).startswith("bad: underruns rising: +2")
    assert "underruns_rising" in at(8)  # the baseline (t=3 s) is still before them
    assert "underruns_rising" not in at(9.5)  # baseline now t=4 s: nothing new since
    assert not {"underruns", "underruns_rising"} & at(30)  # after a gap: still no total


def test_bench_pipeline_result_uses_codec_service_times():
    tel = feed(Telemetry(), enc=100.0)  # encode_work includes a wait inside rustymimi
    stats = build_stats(tel)
    assert "encode_budget" in rules(diagnose(stats))
    service = {"p50": 35.0, "p95": 40.0, "p99": 41.0, "max": 42.0, "mean": 35.0, "n": 40}
    result = {"session": stats, "frame_breakdown_ms": {"encode_service": service}}
    assert "encode_budget" not in rules(diagnose(result))


def test_stalled_pipeline():
    # rustymimi's StreamTokenizer thread dies silently (e.g. past its max_seq_len): capture goes
    # on, nothing comes out.
    tel = feed(Telemetry(), n=40)
    before = tel.snapshot()
    for f in range(40, 70):
        tel.new_frame(f, int((1000.0 + 80.0 * f) * 1_000_000))
    v = diagnose(tel.snapshot(), previous=before)
    st = by_rule(v, "stalled")
    assert st.level == "bad" and "while 30 frames were captured" in st.text
    assert "stalled" not in rules(diagnose(tel.snapshot(), previous=tel.snapshot()))


def test_throughput_from_totals():
    tel = feed(Telemetry(), n=100)
    for f in range(100, 200):
        tel.new_frame(f, int((1000.0 + 80.0 * f) * 1_000_000))
    for form in both(tel):
        t = by_rule(diagnose(form), "throughput")
        assert t.level == "bad" and t.text.startswith("only 50% of the captured frames")
    assert "throughput" not in rules(diagnose(both(feed(Telemetry(), n=120))[1]))


def test_bench_cpu_demand():
    stats = build_stats(feed(Telemetry()))
    ok = diagnose({"session": stats, "summary": {"cpu_demand_cores": 0.8, "cpus": 2}})
    assert "cpu_demand" not in rules(ok)
    warn = diagnose({"session": stats, "summary": {"cpu_demand_cores": 1.6, "cpus": 2}})
    c = by_rule(warn, "cpu_demand")
    assert c.level == "warn" and c.text.startswith("codec + model need 1.6 of the 2 CPU cores")
    bad = diagnose({"session": stats, "summary": {"cpu_demand_cores": 2.4, "cpus": 2}})
    assert by_rule(bad, "cpu_demand").level == "bad"


def test_verdict_line_and_worst():
    vs = [Verdict("bad", "a", "x"), Verdict("warn", "b", "y"), Verdict("warn", "c", "z")]
    assert verdict_line(vs) == "bad: a (+2 more)"
    assert worst(vs) == "bad"
    assert worst([]) == "ok"
    assert verdict_line([Verdict("ok", "all stages within budget", "all_ok")]) == (
        "ok: all stages within budget")
    assert str(vs[0]) == "[bad] a"


def test_rejects_other_types():
    with pytest.raises(TypeError):
        diagnose(42)


def test_thresholds_are_documented_constants():
    assert dg.BUDGET_MS == 80.0
    for name in ("INPUT_WAIT_WARN_MS", "INPUT_WAIT_BAD_MS", "PLUMBING_WARN_MS", "JITTER_WARN_MS",
                 "BACKLOG_WARN_FRAMES", "BACKLOG_BAD_FRAMES", "HEADROOM_FRACTION", "MIN_FRAMES"):
        assert isinstance(getattr(dg, name), (int, float))


def test_frame_record_import_is_the_pipeline_one():
    # the helper above builds the same records the pipeline does
    assert FrameRecord(frame=0).stages_ms() == {}


def test_session_stats_carry_the_diagnosis():
    """stats.json (headless --stats-json, the session folder) says in words what the app shows."""
    slow = build_stats(feed(Telemetry(), model=95.0))
    assert {"level": "bad", "rule": "model_budget"} == {k: slow["diagnosis"][0][k] for k in ("level", "rule")}
    assert slow["diagnosis"][0]["text"].startswith("model step 95 ms > 80 ms")
    assert [d["rule"] for d in build_stats(feed(Telemetry()))["diagnosis"]] == ["all_ok"]


def test_session_info_in_stats_by_the_same_names():
    """The session's typed info (engine.telemetry.info) lands in stats.json as the flat keys it
    always had: model/mode/codec and server_<key> under "model", the audio items under "audio";
    what is not known is left out of "model" and null under "audio"."""
    tel = feed(Telemetry())
    tel.info.model, tel.info.codec, tel.info.input = "demo (bf16)", "rustymimi", "speech.wav"
    tel.info.server.update(pid=7, max_steps=3000)
    tel.info.aec = "off"
    stats = build_stats(tel)
    assert stats["model"] == {"model": "demo (bf16)", "codec": "rustymimi", "server_pid": 7,
                              "server_max_steps": 3000}
    audio = stats["audio"]
    assert audio["input"] == "speech.wav" and audio["aec"] == "off" and audio["output"] is None
    assert list(audio) == ["input", "output", "output_latency_ms", "aec", "early_encode",
                           "playout_ms"]
    assert stats["startup"]["codec_warmup_ms"] is None
    assert tel.snapshot().info.server is not tel.info.server  # a snapshot keeps its own copy


# --------------------------------------------------------------------------- remote sessions


def feed_remote(n: int = 40, *, rtt=20.0, e2e=200.0, model=None, enc_work=2.0, dec_work=1.0,
                back: bool = True) -> Telemetry:
    """n frames of a remote session (engine.session.remote), with the events it reports: Opus
    work, the round trip (a pong every other frame), the end-to-end estimate when a frame plays,
    the server's step when it sends one; `back=False`: nothing came back from the server."""
    from engine.session.remote.session import REMOTE_TELEMETRY

    tel = Telemetry(config=REMOTE_TELEMETRY)
    tel.info.model, tel.info.remote_url = "remote ws://127.0.0.1:1/api/chat", "ws://127.0.0.1:1/api/chat"
    for f in range(n):
        rec = tel.new_frame(f, int((1000.0 + 80.0 * f) * MS))
        tel.stage("encode_work", enc_work)
        tel.stage("encode", enc_work + 0.5)
        if f % 2 == 0:
            tel.stage("rtt", rtt[(f // 2) % len(rtt)] if isinstance(rtt, list) else rtt)
        if not back:
            continue
        if model is not None:
            tel.stage("model", model)
        tel.stage("decode_work", dec_work)
        tel.frame_decoded(rec)
        tel.stage("e2e", e2e)
        tel.frame_played(rec)
    return tel


@pytest.mark.parametrize("form", [0, 1], ids=["snapshot", "stats"])
class TestRemote:
    """A remote session is judged on what it measures, not on the frame stages it cannot time."""

    def test_all_within_budget_names_what_was_measured(self, form):
        v = diagnose(both(feed_remote())[form])
        assert [(x.level, x.rule) for x in v] == [("ok", "all_ok")]
        assert v[0].text == ("all measured within budget: round trip p50 20 ms, end-to-end "
                             "estimate 200 ms, Opus 2.0 ms + 1.0 ms")
        with_step = diagnose(both(feed_remote(model=30.0))[form])
        assert "server step 30 ms" in with_step[0].text and with_step[0].rule == "all_ok"

    def test_nothing_back_yet_is_measuring_not_processing(self, form):
        v = diagnose(both(feed_remote(n=5, back=False))[form])
        assert [x.rule for x in v] == ["measuring"]
        assert v[0].text.startswith("measuring: 0 frames back from the server so far")

    def test_round_trip(self, form):
        assert by_rule(diagnose(both(feed_remote(rtt=150.0))[form]), "rtt").level == "warn"
        bad = by_rule(diagnose(both(feed_remote(rtt=400.0))[form]), "rtt")
        assert bad.level == "bad" and bad.text.startswith("network round trip 400 ms")
        assert "rtt" not in rules(diagnose(both(feed_remote(rtt=60.0))[form]))
        # uneven: p50 20 ms, p95 well above it
        uneven = diagnose(both(feed_remote(rtt=[20.0] * 7 + [200.0] * 3))[form])
        assert by_rule(uneven, "rtt_jitter").level == "warn" and "rtt" not in rules(uneven)

    def test_end_to_end_estimate(self, form):
        assert by_rule(diagnose(both(feed_remote(e2e=600.0))[form]), "e2e").level == "warn"
        bad = by_rule(diagnose(both(feed_remote(e2e=1500.0))[form]), "e2e")
        assert bad.level == "bad" and bad.text.startswith("end-to-end estimate 1500 ms > 400 ms")
        assert "e2e" not in rules(diagnose(both(feed_remote(e2e=300.0))[form]))

    def test_server_step_over_budget(self, form):
        m = by_rule(diagnose(both(feed_remote(model=120.0))[form]), "model_budget")
        assert m.level == "bad" and m.text.startswith("server step 120 ms > 80 ms frame budget")
        assert "on the server" in m.text and "-q" not in m.text  # no advice for the local model


def test_remote_stall_blames_the_server():
    tel = feed_remote(n=10)
    before = tel.snapshot()
    for f in range(10, 40):
        tel.new_frame(f, int((1000.0 + 80.0 * f) * MS))
    st = by_rule(diagnose(tel.snapshot(), previous=before), "stalled")
    assert st.level == "bad" and "the server has stopped answering" in st.text
