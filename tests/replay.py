"""A deterministic, recorded-style telemetry feed with the `Session` interface, for tests and demos.

`ReplaySession` drives a real `engine.telemetry.collect.Telemetry` through loading, warm-up and a live
conversation on a fake clock: every `snapshot()` call advances it by one UI tick (125 ms), so
what the app shows depends only on how many ticks it has read -- never on wall-clock time.
Snapshot tests use it with a frozen app clock; `python -m tests.replay` previews the app with no model.
"""

from __future__ import annotations

import dataclasses
import random

from engine.audio import FRAME_NS
from engine.session.base import ConversationSession
from engine.session.config import SessionConfig
from engine.telemetry.collect import Snapshot, Telemetry
from engine.telemetry.info import SessionInfo

TICK_NS = 125_000_000  # one UI refresh at 8 Hz
T0 = 1_000_000_000_000  # fake monotonic origin

LOADING = [
    ("loading", "resolving model files"),
    ("loading", "demo model: generating tiny random weights 40%"),
    ("loading", "demo model: generating tiny random weights 100%"),
    ("loading", "loading model in the server process"),
    ("warming up", "warming up the model (codec + LM)"),
]
# (start s, segment, utterance) -- what Moshi says, one word every two frames.
SCRIPT = [
    (0.8, 0, "Hello, I'm Moshi. How are you doing today?"),
    (5.0, 0, "That sounds great. Tell me more about the project you are working on."),
    (11.0, 0, "Latency matters a lot in a real conversation, so let's look at every stage."),
    (17.2, 1, "Sure. Every frame has eighty milliseconds, and the queues tell you where it waits."),
]
# (start s, end s) -- when the person talks: answered, answered, interrupting Moshi, answered
USER_SPEECH = [(2.6, 4.4), (9.0, 10.2), (12.2, 13.0), (15.6, 16.6), (21.0, 23.0)]
SEGMENT_AT_S = 17.0
SLOW_FRAMES = range(150, 156)  # an encode hiccup: over budget, an input drop
UNDERRUN_FRAMES = (158, 159)


class ReplaySession(ConversationSession):
    """A session (engine.session.base) whose conversation is recorded, not live."""

    def __init__(self, *, live_seconds: float = 24.0, loading_ticks_per_step: int = 3,
                 error_at_s: float | None = None, end: str = "hold", seed: int = 4) -> None:
        super().__init__(SessionConfig(save=False), Telemetry())
        self.tel.t_launch = T0
        self.tel.info = SessionInfo(model="demo · tiny random Moshi (bf16)", codec="rustymimi",
                                    server={"mlx_device": "Device(cpu, 0)"},
                                    input="speech.wav (file, real time)", output="null")
        self.live_seconds = live_seconds
        self.loading_ticks = loading_ticks_per_step * len(LOADING)
        self.per_step = loading_ticks_per_step
        self.error_at_s = error_at_s
        self.end = end  # "hold": stay live at the end; "stop": end like a finished input file
        self.rng = random.Random(seed)
        self.tick = 0
        self.frame = 0
        self.started = False
        self.stopped = False
        self.finished = False
        self._words = self._schedule()

    # ------------------------------------------------------------------ Session interface
    def prepare(self) -> None:
        pass

    def start(self) -> None:
        self.started = True

    def request_stop(self) -> None:
        self.done.set()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            if self.tel.state != "error":
                self.end_reason = self.end_reason or "stopped"
                self.tel.set_state("stopped", self.end_reason)
        self.done.set()

    def process_figures(self) -> dict:
        return {}

    def snapshot(self) -> Snapshot:
        if not self.finished and not self.stopped:
            self._advance()
        now = T0 + self.tick * TICK_NS
        snap = self.tel.snapshot()
        t_start = self.tel.t_start
        return dataclasses.replace(
            snap, t=now / 1e9, elapsed_s=(now - t_start) / 1e9 if t_start else 0.0,
            startup_ms=(self.tel.t_first_out - T0) / 1e6 if self.tel.t_first_out else None,
        )

    # ------------------------------------------------------------------ the recording
    def _schedule(self) -> list[tuple[int, int, str]]:
        """(frame, segment, piece) for every word of the script."""
        out = []
        for start_s, segment, line in SCRIPT:
            f0 = int(start_s * 1000 / 80)
            for i, word in enumerate(line.split()):
                out.append((f0 + 2 * i, segment, " " + word))
        return out

    def _advance(self) -> None:
        self.tick += 1
        tel = self.tel
        if self.tick <= self.loading_ticks:
            state, detail = LOADING[min(len(LOADING) - 1, (self.tick - 1) // self.per_step)]
            tel.set_state(state, detail)
            return
        if tel.state != "live":
            tel.set_state("live", "")
            self._live_t0 = T0 + self.tick * TICK_NS
        now = T0 + self.tick * TICK_NS
        while self._live_t0 + self.frame * FRAME_NS <= now:
            t = self.frame * 0.08
            if self.error_at_s is not None and t >= self.error_at_s:
                msg = "the model server process died (exit code -9)"
                tel.error = msg
                tel.set_state("error", msg)
                self.end_reason, self.exit_code, self.finished = "server died", 1, True
                self.done.set()
                return
            if t >= self.live_seconds:
                self.finished = True
                if self.end == "stop":
                    self.end_reason = "end of input"
                    self.done.set()
                return
            self._frame(self.frame, self._live_t0 + self.frame * FRAME_NS)
            self.frame += 1

    def _frame(self, i: int, t_cap: int) -> None:
        tel, rng = self.tel, self.rng
        g = lambda mu, sd: max(0.05, rng.gauss(mu, sd))  # noqa: E731
        rec = tel.new_frame(i, t_cap)
        rec.step = i
        enc = g(27.0, 2.5) + (52.0 if i in SLOW_FRAMES else 0.0)
        enc_work = enc - g(1.0, 0.3)
        up, queue, model, dec = g(0.4, 0.1), g(0.3, 0.1), g(14.0, 1.5), g(31.0, 3.0)
        ms = lambda v: int(v * 1e6)  # noqa: E731
        rec.t_enc0 = t_cap + ms(enc - enc_work)
        rec.t_enc = t_cap + ms(enc)
        rec.t_srv_in = rec.t_enc + ms(up)
        rec.t_step0 = rec.t_srv_in + ms(queue)
        rec.t_step1 = rec.t_step0 + ms(model)
        rec.t_dec0 = rec.t_step1 + ms(1.0)
        rec.t_dec = rec.t_step1 + ms(dec)
        tel.steps += 1
        if i < 2:  # codebook delays: no audio for the first steps
            tel.count("delay_steps")
            tel.frame_retired(rec)
        else:
            rec.has_audio = True
            tel.frame_decoded(rec)
            rec.t_play = rec.t_dec + ms(g(88.0, 6.0))
            tel.frame_played(rec)
        if i == SLOW_FRAMES[3]:
            tel.count("drops_input")
            tel.warn("input dropped: pipeline behind real time")
        if i in UNDERRUN_FRAMES:
            tel.count("underruns")
        t_s = i * 0.08
        if i == int(SEGMENT_AT_S / 0.08):
            tel.mark_segment(i, t_cap)
        slow = i in SLOW_FRAMES
        tel.sample_queues({
            "input": 2 if slow else (1 if rng.random() < 0.15 else 0),
            "c2s": 1 if rng.random() < 0.2 else 0,
            "s2c": 1 if rng.random() < 0.25 else 0,
            "output": 0 if i in UNDERRUN_FRAMES else (1 if rng.random() < 0.7 else 2),
        })
        speaking = any(f <= i < f + 2 for f, _, _ in self._words)
        user = any(a <= t_s < b for a, b in USER_SPEECH)
        tel.add_level("input", (0.05 + 0.1 * rng.random()) if user else 0.002 * rng.random())
        tel.add_level("output", (0.08 + 0.12 * rng.random()) if speaking else 0.001)
        if tel.voice is not None:  # both sides' voice activity, as the VAD would find it
            det = tel.voice.detector
            det.add("user", (t_cap - FRAME_NS) / 1e6, 80.0, user)
            det.add("moshi", t_cap / 1e6 + 120.0, 80.0, speaking)
            det.advance()
        for f, segment, piece in self._words:
            if f == i:
                tel.segment = segment
                tel.add_token(piece, 100 + len(tel.tokens), i, t_cap)


def main() -> None:  # pragma: no cover - manual preview
    import tempfile
    from pathlib import Path

    from tui.app import MoshiApp

    app = MoshiApp(session_factory=lambda: ReplaySession(live_seconds=60.0),
                   session_dir=Path(tempfile.mkdtemp(prefix="moshi-tui-replay-")))
    app.run()


if __name__ == "__main__":
    main()
