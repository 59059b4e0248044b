"""A loop of the pipeline that raises ends the conversation with one clear message -- it never
dies silently while the rest of the app waits for frames that will not come.  A failure is
injected into each of the four loops in turn; then, end to end, a headless session whose loop
fails exits 1 with one line and keeps its transcript and recordings."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from engine.audio import FRAME
from engine.model.load import load_text_tokenizer
from engine.pipeline.client import ClientPipeline
from engine.pipeline.codec import StreamingCodec
from engine.telemetry.collect import Telemetry
from tests.fake_model import FakeServer

pytest_plugins = ["conftest_models"]


class FakeCodec:
    """A codec backend that answers at once (codes of zeros, PCM of zeros), and raises in the
    call named `fail` from its `after`-th call on."""

    def __init__(self, fail: str | None = None, after: int = 3):
        self.fail, self.after = fail, after
        self.calls: dict[str, int] = {}
        self.enc: list = []
        self.dec: list = []

    def _call(self, name: str) -> None:
        n = self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.fail and n > self.after:
            raise RuntimeError(f"injected failure in {name}")

    def encode(self, pcm) -> None:
        self._call("encode")
        self.enc.append(np.zeros((8, 1), np.uint32))

    def get_encoded(self):
        if not self.enc:
            return None
        self._call("get_encoded")
        return self.enc.pop(0)

    def decode(self, codes) -> None:
        self._call("decode")
        self.dec.append(np.zeros(FRAME, np.float32))

    def get_decoded(self):
        if not self.dec:
            return None
        self._call("get_decoded")
        return self.dec.pop(0)


CASES = [  # (loop, how it fails)
    ("encode loop", dict(codec_fail="encode")),
    ("send to model loop", dict(codec_fail="get_encoded")),
    # (token 5000: not a piece)
    ("receive results loop", dict(text_token=lambda step: 5000 if step >= 3 else 0)),
    ("decode loop", dict(codec_fail="get_decoded")),
]


@pytest.mark.parametrize("loop, how", CASES, ids=[c[0] for c in CASES])
def test_a_failing_loop_ends_the_pipeline_with_a_message(demo_files, loop, how):
    spm = load_text_tokenizer(demo_files.tokenizer)  # 1000 pieces: token 5000 is not one
    client, server_end = mp.Pipe()
    server = FakeServer(server_end, audio=np.zeros((1, 8), np.uint32),
                        text_token=how.get("text_token", lambda step: 0))
    server.start()
    tel = Telemetry()
    pipe = ClientPipeline(StreamingCodec(FakeCodec(how.get("codec_fail"))), client, spm, tel)
    pipe.start()
    try:
        deadline = time.monotonic() + 10
        t = time.monotonic_ns()
        while pipe.error is None and time.monotonic() < deadline:
            pipe.on_frame(np.zeros(FRAME, np.float32), t)
            t += 80_000_000
            time.sleep(0.02)
        assert pipe.error is not None, "the loop died silently"
        assert pipe.error.startswith(f"the {loop} failed: ")
        assert pipe.failed_loop == loop.replace(" ", "_")
        # the telemetry says so, as the app's error modal and the headless runner read it
        assert tel.state == "error" and tel.error == pipe.error
    finally:
        t0 = time.monotonic()
        pipe.stop()
        assert time.monotonic() - t0 < 5  # the other loops still stop
        server.stop.set()
        server.join(2)


def test_a_session_whose_loop_fails_exits_1_in_one_line_and_keeps_its_files(
        demo_files, demo_cache, speech_wav, tmp_path, monkeypatch, capsys):
    from engine.cli.headless import run_headless
    from engine.cli.options import build_parser, run_config

    calls = {"n": 0}
    original = ClientPipeline._on_result

    def failing(self, msg):
        calls["n"] += 1
        if calls["n"] > 30:
            raise IndexError("piece id is out of range.")
        original(self, msg)

    monkeypatch.setattr(ClientPipeline, "_on_result", failing)
    folder = tmp_path / "session"
    args = build_parser().parse_args(["--demo", "--headless", "-i", str(speech_wav), "-o", "null",
                                      "--session-dir", str(folder)])
    code = run_headless(run_config(args))
    out, err = capsys.readouterr()
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["moshi-tui: error: the receive results loop failed: IndexError: piece id"
                     " is out of range."]
    assert "Traceback" not in out + err
    for name in ("transcript.md", "stats.json", "input.wav", "output.wav"):
        assert (folder / name).is_file(), name
    assert "receive results loop failed" in (folder / "stats.json").read_text()
