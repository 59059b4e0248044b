"""engine.audio (paced file/silence endpoints, devices under a JACK dummy
server (real PortAudio callbacks, looped back), a fake PortAudio for the resampling/re-chunking
paths no JACK server can exercise, and device-spec resolution."""

from __future__ import annotations

import json
import sys
import threading
import time
import types

import numpy as np
import pytest

from engine.audio import FRAME, HEAD, OUT_BLOCK, devices, paced, portaudio
from engine.audio.devices import (
    format_devices,
    list_devices,
    open_sink,
    open_source,
    resolve_device,
)
from engine.audio.endpoints import AudioSink, AudioSource
from engine.audio.paced import NullSink, SilenceSource, WavFileSink, WavFileSource
from engine.audio.portaudio import DeviceSink, DeviceSource
from engine.audio.wavio import read_wav, write_wav
from engine.errors import AudioError

SR = 24000


class Collector:
    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.times: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, pcm, t_ns):
        assert pcm.dtype == np.float32 and pcm.shape == (FRAME,)
        with self.lock:
            self.frames.append(pcm)
            self.times.append(t_ns)


def intervals_ms(times) -> np.ndarray:
    return np.diff(np.asarray(times, dtype=np.int64)) / 1e6


# --------------------------------------------------------------------------- paced endpoints


def test_wav_file_source_paces_frames_and_finishes(tmp_path):
    n = 10 * FRAME + 700  # not a whole number of frames: the last one is zero-padded
    x = (np.random.default_rng(0).uniform(-0.5, 0.5, n)).astype(np.float32)
    p = tmp_path / "in.wav"
    write_wav(p, x)
    x = read_wav(p)  # what 16-bit quantisation left
    src = WavFileSource(p)
    assert isinstance(src, AudioSource)
    assert src.label == "file in.wav (0.8 s)"
    got = Collector()
    t0 = time.monotonic_ns()
    src.start(got)
    assert src.finished.wait(5.0)
    src.stop()
    src.stop()  # idempotent
    assert len(got.frames) == -(-n // FRAME) == 11
    assert all(b > a for a, b in zip(got.times, got.times[1:]))  # monotonic
    d = intervals_ms(got.times)
    assert 60 < float(np.median(d)) < 100  # ~80 ms, not a burst
    # absolute schedule: frame k is delivered around t0 + (k + 1) * 80 ms
    assert (got.times[-1] - t0) / 1e6 > 11 * 80 - 40
    sent = np.concatenate(got.frames)
    np.testing.assert_array_equal(sent[:n], x)
    assert not sent[n:].any()
    assert src.error is None and src.overflows == 0


def test_wav_file_source_loops(tmp_path):
    p = tmp_path / "short.wav"
    write_wav(p, np.full(FRAME + 10, 0.25, np.float32))
    src = WavFileSource(p, loop=True)
    got = Collector()
    src.start(got)
    time.sleep(0.5)
    src.stop()
    assert len(got.frames) >= 4
    assert not src.finished.is_set()
    # frames alternate: full frame of 0.25, then 10 samples + padding
    assert got.frames[2][0] == pytest.approx(0.25, abs=1e-4)
    assert got.frames[3][10:].max() == 0


def test_wav_file_source_then_silence_never_finishes(tmp_path):
    """The demo's stand-in for a user: the file once, then silence for as long as it runs."""
    p = tmp_path / "two.wav"
    write_wav(p, np.full(2 * FRAME - 5, 0.25, np.float32))
    src = WavFileSource(p, then_silence=True)
    assert src.label == "file two.wav (0.2 s), then silence"
    got = Collector()
    src.start(got)
    time.sleep(0.6)
    assert not src.finished.is_set()
    src.stop()
    assert len(got.frames) >= 5 and not src.finished.is_set()
    assert got.frames[0].min() == got.frames[1][: FRAME - 5].min() == pytest.approx(0.25, abs=1e-4)
    assert not got.frames[1][FRAME - 5 :].any() and not any(f.any() for f in got.frames[2:])


NO_MIC_WARNING = ("no input device: playing the bundled speech recording as the microphone, "
                  "then silence")


def _demo_plays_the_speech_instead(error: str, output=None) -> list[str]:
    """The demo on default devices: the bundled speech stands in for the microphone (what it
    warned is returned); without --demo the default input's `error` stands."""
    warned = []
    src, _sink = devices.open_endpoints(None, output, demo=True, warn=warned.append)
    assert isinstance(src, WavFileSource) and src.path == devices.BUNDLED_SPEECH
    assert src.then_silence and src.label == "speech.wav (bundled), then silence"
    with pytest.raises(AudioError, match=error):
        devices.open_endpoints(None, "null", demo=False, warn=print)
    return warned


def test_demo_without_a_microphone_plays_the_speech_then_silence(monkeypatch, speech_wav):
    def no_mic(*a, **k):
        raise AudioError("no audio input device found: use --input FILE.wav")

    monkeypatch.setattr(devices, "load_sounddevice", lambda: fake_sounddevice(24000))
    monkeypatch.setattr(devices, "DeviceSource", no_mic)  # (the default input cannot open)
    warned = _demo_plays_the_speech_instead("no audio input device", output="null")
    assert warned == [NO_MIC_WARNING]
    # a WAV given with --input ends at its end (headless runs and the tests rely on it)
    src, _ = devices.open_endpoints(str(speech_wav), "null", demo=True, warn=warned.append)
    assert not src.then_silence and not src.loop and src.label.startswith("file speech.wav (13.")


def test_demo_without_portaudio_plays_the_speech_and_drops_the_audio(no_portaudio):
    """A machine without the PortAudio library (a bare Linux box): the demo still runs on the
    bundled speech, Moshi's audio goes nowhere, each said once; without --demo the error names
    the package to install."""
    warned = _demo_plays_the_speech_instead("PortAudio library not found.*libportaudio2")
    assert warned == [NO_MIC_WARNING, "no output device: Moshi's audio is not played"]


def test_silence_source_duration_and_endless():
    src = SilenceSource(0.4)
    got = Collector()
    src.start(got)
    assert src.finished.wait(3.0)
    assert len(got.frames) == 5 and not any(f.any() for f in got.frames)
    assert src.label == "silence (0.4 s)"
    endless = SilenceSource()
    got2 = Collector()
    endless.start(got2)
    time.sleep(0.3)
    endless.stop()
    n = len(got2.frames)
    time.sleep(0.2)
    assert len(got2.frames) == n >= 2  # stopped means stopped
    assert not endless.finished.is_set() and endless.label == "silence"


def test_source_catches_up_then_drops_like_a_device(tmp_path):
    """A consumer that blocks 1 s: up to MAX_BURST late frames are delivered back-to-back,
    the rest are skipped (counted as overflows), and the timeline stays on the wall clock."""
    p = tmp_path / "long.wav"
    write_wav(p, np.zeros(30 * FRAME, np.float32))
    src = WavFileSource(p)
    got = Collector()

    def slow(pcm, t):
        got(pcm, t)
        if len(got.frames) == 1:
            time.sleep(1.0)

    src.start(slow)
    assert src.finished.wait(5.0)
    src.stop()
    assert src.overflows > 0
    assert len(got.frames) + src.overflows == 30
    d = intervals_ms(got.times)
    burst = d[1 : paced.MAX_BURST]
    assert (burst < 40).all()  # the catch-up frames came back-to-back


class HeadsAndFrames:
    """on_head / on_frame of an early-encoding pipeline: every event, in order."""

    def __init__(self):
        self.events: list[tuple[str, np.ndarray, int]] = []

    def head(self, pcm, t_ns):
        assert pcm.dtype == np.float32 and pcm.shape == (HEAD,)
        self.events.append(("head", pcm, t_ns))

    def frame(self, pcm, t_ns):
        assert pcm.dtype == np.float32 and pcm.shape == (FRAME,)
        self.events.append(("frame", pcm, t_ns))

    def frames(self):
        return [e for e in self.events if e[0] == "frame"]

    def check_heads(self, every_frame: bool = True, open_end: bool = False):
        """Each head comes right before its frame and is that frame's first HEAD samples
        (`open_end`: the stream stopped after a head, before the rest of its frame)."""
        pending = None
        for kind, pcm, t in self.events:
            if kind == "head":
                assert pending is None, "two heads for one frame"
                pending = (pcm, t)
            else:
                assert pending is not None or not every_frame, "a frame without its head"
                if pending is not None:
                    np.testing.assert_array_equal(pending[0], pcm[:HEAD])
                    assert pending[1] <= t
                pending = None
        assert pending is None or open_end


def test_file_source_hands_over_each_frame_head_40ms_early(tmp_path):
    """With on_head, the first 40 ms of every frame arrive as soon as they are 'captured', and
    the frames themselves keep their 80 ms schedule."""
    x = np.concatenate([np.full(FRAME, k / 10, np.float32) for k in range(6)])
    x[5 * FRAME + HEAD:] = -0.5  # the halves of the last frame differ
    p = tmp_path / "six.wav"
    write_wav(p, x)
    src = WavFileSource(p)
    got = HeadsAndFrames()
    t0 = time.monotonic_ns()
    src.start(got.frame, got.head)
    assert src.finished.wait(5.0)
    src.stop()
    assert [e[0] for e in got.events] == ["head", "frame"] * 6
    got.check_heads()
    lead = [(f[2] - h[2]) / 1e6 for h, f in zip(got.events[::2], got.events[1::2])]
    assert 20 < float(np.median(lead)) < 60  # ~40 ms before the frame
    assert (got.events[-1][2] - t0) / 1e6 > 6 * 80 - 40  # frames still at t0 + (k + 1) * 80
    np.testing.assert_allclose(np.concatenate([f[1] for f in got.frames()]), read_wav(p))


def test_silence_source_with_heads_counts_frames_not_ticks():
    src = SilenceSource(0.4)
    got = HeadsAndFrames()
    src.start(got.frame, got.head)
    assert src.finished.wait(3.0)
    assert len(got.frames()) == 5 and len(got.events) == 10
    got.check_heads()


def test_source_with_heads_catches_up_then_drops_whole_frames(tmp_path):
    """A consumer that blocks 1 s: missed periods lose whole frames (never a half), a frame
    whose head period was missed comes whole, and the count still adds up."""
    n = 30
    x = np.concatenate([np.full(FRAME, (k + 1) / 100, np.float32) for k in range(n)])
    p = tmp_path / "long.wav"
    write_wav(p, x)
    src = WavFileSource(p)
    got = HeadsAndFrames()

    def slow(pcm, t):
        got.frame(pcm, t)
        if len(got.frames()) == 1:
            time.sleep(1.0)

    src.start(slow, got.head)
    assert src.finished.wait(5.0)
    src.stop()
    frames = got.frames()
    assert src.overflows > 0 and len(frames) + src.overflows == n
    got.check_heads(every_frame=False)
    ids = [round(float(f[1][0]) * 100) - 1 for f in frames]  # each frame is whole and in order
    assert ids == sorted(ids) and all(np.ptp(f[1]) < 1e-3 for f in frames)


def heads_device_source(monkeypatch, rate: int):
    """A DeviceSource on the fake PortAudio, started with on_head: (source, events, stream)."""
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(rate))
    FakeStream.instances.clear()
    src = DeviceSource(None)
    got = HeadsAndFrames()
    src.start(got.frame, got.head)
    return src, got, FakeStream.instances[-1]


def test_device_source_with_heads_asks_for_40ms_blocks(monkeypatch):
    src, got, stream = heads_device_source(monkeypatch, 24000)
    assert stream.blocksize == HEAD
    x = np.random.default_rng(5).uniform(-0.5, 0.5, 10 * FRAME).astype(np.float32)
    for i in range(0, len(x), HEAD):
        stream.callback(x[i : i + HEAD].reshape(-1, 1), HEAD, None, FakeFlags())
    assert [e[0] for e in got.events] == ["head", "frame"] * 10
    got.check_heads()
    np.testing.assert_array_equal(np.concatenate([f[1] for f in got.frames()]), x)
    src.stop()


def test_device_source_heads_with_any_host_block_size(monkeypatch):
    """A host that ignores the block size (and resampling): still one head per frame at most,
    each the first 40 ms of its frame, handed over once those samples are in."""
    src, got, stream = heads_device_source(monkeypatch, 48000)
    assert stream.blocksize == 2 * HEAD  # 40 ms at 48 kHz
    rng = np.random.default_rng(4)
    x = rng.uniform(-0.5, 0.5, 48000 * 2).astype(np.float32)
    i = 0
    while i < len(x):
        n = int(rng.integers(100, 3000))
        stream.callback(x[i : i + n].reshape(-1, 1), len(x[i : i + n]), None, FakeFlags())
        i += n
    got.check_heads(every_frame=False, open_end=True)
    heads = sum(e[0] == "head" for e in got.events)
    assert len(got.frames()) >= 23 and heads >= len(got.frames()) - 3
    src.stop()


def test_callback_exceptions_are_recorded_not_fatal(tmp_path):
    calls = []

    def boom(pcm, t):
        calls.append(t)
        raise ValueError("consumer bug")

    src = SilenceSource(0.4)
    src.start(boom)
    assert src.finished.wait(3.0)
    assert len(calls) == 5
    assert src.error == "ValueError: consumer bug" and src.errors == 5


def test_wav_file_sink_plays_frames_and_waits_in_blocks(tmp_path):
    """A file sink is a 20 ms speaker: frames are pulled when the speaker reaches them, a None
    pull is one block of silence (not a whole frame), and the file holds exactly what was
    played, one block per elapsed period."""
    p = tmp_path / "out.wav"
    sink = WavFileSink(p)
    assert isinstance(sink, AudioSink) and sink.latency_s == 0.0
    played, pulls = [], []

    def pull(t_ns, room):
        k = len(pulls)
        pulls.append((t_ns, room))
        if k % 3 == 2:
            played.append(np.zeros(room, np.float32))
            return None  # not ready: silence until the end of this block
        f = np.full(FRAME if k % 4 else 1000, (k + 1) / 100, np.float32)  # some trimmed
        played.append(f)
        return f

    t0 = time.monotonic()
    sink.start(pull)
    time.sleep(1.0)
    sink.stop()
    elapsed = time.monotonic() - t0
    sink.stop()
    y = read_wav(p)
    assert len(y) % OUT_BLOCK == 0 and abs(len(y) / OUT_BLOCK - elapsed / 0.02) <= 3
    expect = np.concatenate(played)
    assert len(expect) >= len(y) > len(expect) - FRAME  # the last pull may be partly played
    assert np.allclose(y, expect[: len(y)], atol=1e-4)
    rooms = [r for _, r in pulls]
    assert set(rooms) <= set(range(1, OUT_BLOCK + 1)) and min(rooms) < OUT_BLOCK  # mid-block
    # each pull is stamped with the moment its first sample plays: the samples played so far
    offsets = np.cumsum([0] + [len(x) for x in played[:-1]]) / SR * 1e3
    t = (np.array([t for t, _ in pulls]) - pulls[0][0]) / 1e6
    assert np.median(np.abs(t - offsets)) < 5.0
    assert sink.frames_written == len(y) // FRAME and sink.error is None


def test_sink_records_bad_pulls(tmp_path):
    sink = WavFileSink(tmp_path / "bad.wav")
    n = [0]

    def pull(t, room):
        n[0] += 1
        if n[0] == 1:
            raise RuntimeError("pipeline bug")
        return np.ones(3000, np.float32)  # too long: cut to one frame

    sink.start(pull)
    time.sleep(0.3)
    sink.stop()
    assert sink.error == "RuntimeError: pipeline bug" and sink.errors >= 2
    y = read_wav(tmp_path / "bad.wav")
    assert not y[:OUT_BLOCK].any() and y[OUT_BLOCK:OUT_BLOCK + FRAME].min() > 0.99


def test_null_sink_pulls_once_per_block_while_waiting():
    sink = NullSink()
    pulled = []
    sink.start(lambda t, room: pulled.append(room))
    time.sleep(0.35)
    sink.stop()
    assert 14 <= len(pulled) <= 20 and set(pulled) == {OUT_BLOCK} and sink.label == "null"


def test_file_source_and_sink_same_length(speech_wav, tmp_path):
    """File in -> file out for as long as the input lasts: lengths agree within one frame."""
    src = open_source(str(speech_wav))
    src_total = src.n_frames
    # 2 s of the speech file is enough to check the contract without a 13 s test
    short = tmp_path / "speech2s.wav"
    write_wav(short, read_wav(speech_wav)[: 2 * SR])
    src = open_source(str(short))
    sink = open_sink(str(tmp_path / "echo.wav"))
    q: list[np.ndarray] = []
    lock = threading.Lock()

    def on_frame(pcm, t):
        with lock:
            q.append(pcm)

    def pull(t, room):
        with lock:
            return q.pop(0) if q else None

    sink.start(pull)
    src.start(on_frame)
    assert src.finished.wait(5.0)
    sink.stop()
    src.stop()
    out = read_wav(tmp_path / "echo.wav")
    assert abs(len(out) / FRAME - src.n_frames) <= 1.5
    assert src_total == -(-len(read_wav(speech_wav)) // FRAME)


# --------------------------------------------------------------------------- specs


def test_open_source_and_sink_specs(tmp_path, speech_wav):
    assert isinstance(open_source("silence"), SilenceSource)
    assert open_source("silence:2").n_frames == 25
    assert isinstance(open_source("SILENCE"), SilenceSource)
    assert isinstance(open_sink("null"), NullSink)
    src = open_source(str(speech_wav))
    assert isinstance(src, WavFileSource) and src.label.startswith("file speech.wav (13.")
    sink = open_sink(str(tmp_path / "x.WAV"))
    assert isinstance(sink, WavFileSink)
    sink.stop()
    with pytest.raises(AudioError, match=r"^cannot read .*missing\.wav: \[Errno 2\]"):
        open_source(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match=r"^cannot write "):
        open_sink(str(tmp_path / "nodir" / "out.wav"))
    with pytest.raises(AudioError, match="invalid silence duration"):
        open_source("silence:abc")


def test_endpoints_are_single_use():
    s = SilenceSource(0.1)
    s.start(lambda f, t: None)
    with pytest.raises(RuntimeError):
        s.start(lambda f, t: None)
    s.stop()


FAKE_DEVICES = [
    {"index": 0, "name": "MacBook Pro Microphone", "hostapi": "Core Audio",
     "max_input_channels": 1, "max_output_channels": 0, "default_samplerate": 48000.0,
     "default_input": True, "default_output": False},
    {"index": 1, "name": "MacBook Pro Speakers", "hostapi": "Core Audio",
     "max_input_channels": 0, "max_output_channels": 2, "default_samplerate": 48000.0,
     "default_input": False, "default_output": True},
    {"index": 2, "name": "USB Audio Mic", "hostapi": "Core Audio",
     "max_input_channels": 2, "max_output_channels": 0, "default_samplerate": 44100.0,
     "default_input": False, "default_output": False},
    {"index": 3, "name": "USB Audio Mic Pro", "hostapi": "Core Audio",
     "max_input_channels": 2, "max_output_channels": 2, "default_samplerate": 44100.0,
     "default_input": False, "default_output": False},
]


def test_resolve_device_with_fake_list(monkeypatch):
    monkeypatch.setattr(devices, "list_devices", lambda: FAKE_DEVICES)
    assert resolve_device("macbook", "input") == 0
    assert resolve_device("MACBOOK", "output") == 1
    assert resolve_device("2", "input") == 2
    assert resolve_device(None, "input") is None
    assert resolve_device("default", "output") is None
    assert resolve_device("usb audio mic", "input") == 2  # exact name beats substrings
    with pytest.raises(AudioError, match=r"ambiguous input device 'usb'.*2: USB Audio Mic.*3: "):
        resolve_device("usb", "input")
    with pytest.raises(AudioError) as ei:
        resolve_device("xyz", "input")
    assert str(ei.value) == "unknown input device 'xyz' (see `moshi-tui devices`)"
    assert ei.value.exit_code == 2
    with pytest.raises(AudioError, match=r"^unknown output device '9'"):
        resolve_device("9", "output")
    with pytest.raises(AudioError, match=r"device 1 \(MacBook Pro Speakers\) has no input"):
        resolve_device("1", "input")
    text = format_devices(FAKE_DEVICES)
    assert "MacBook Pro Microphone" in text and "> default input" in text
    assert text.splitlines()[1].startswith(">") and text.splitlines()[2].startswith("<")


def test_resolve_pro_is_ambiguous_for_output(monkeypatch):
    monkeypatch.setattr(devices, "list_devices", lambda: FAKE_DEVICES)
    with pytest.raises(AudioError, match="ambiguous output device 'pro'"):
        resolve_device("pro", "output")


def test_no_devices_at_all(monkeypatch):
    monkeypatch.setattr(devices, "list_devices", lambda: [])
    with pytest.raises(AudioError) as ei:
        resolve_device("mic", "input")
    assert str(ei.value) == (
        "no audio input device found: use --input FILE.wav (see `moshi-tui devices`)"
    )
    assert "no audio devices found" in format_devices([])


@pytest.fixture
def no_portaudio(monkeypatch):
    """sounddevice as on a machine without the PortAudio library: importing it raises the
    OSError sounddevice raises there."""
    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio()] + sys.meta_path)


def test_missing_portaudio_is_an_audio_error(no_portaudio):
    with pytest.raises(AudioError, match="PortAudio library not found.*libportaudio2"):
        list_devices()
    with pytest.raises(AudioError, match="PortAudio library not found"):
        open_source(None)
    # files and silence never touch PortAudio
    assert isinstance(open_source("silence"), SilenceSource)


# --------------------------------------------------------------------------- fake PortAudio


class FakeFlags:
    def __init__(self, overflow=False, underflow=False):
        self.input_overflow = overflow
        self.output_underflow = underflow


class FakeStream:
    instances: list = []

    def __init__(self, *, samplerate, channels, blocksize, dtype, device, latency,
                 callback, finished_callback):
        self.samplerate, self.blocksize, self.device = samplerate, blocksize, device
        self.channels = channels
        self.callback, self.finished_callback = callback, finished_callback
        self.latency = 0.0123
        self.active = False
        FakeStream.instances.append(self)

    def start(self):
        self.active = True

    def abort(self):
        if self.active:
            self.active = False
            self.finished_callback()

    def close(self):
        pass


def fake_sounddevice(native_rate=48000, *, rates=None, min_channels=1, max_channels=2):
    """A sounddevice stand-in whose one device takes only `rates` (default: its native rate,
    which refuses 24 kHz unless it is 24 kHz) and `min_channels`..`max_channels` channels."""
    sd = types.SimpleNamespace()
    rates = {native_rate} if rates is None else set(rates)
    info = {"index": 7, "name": f"Fake {native_rate // 1000}k", "hostapi": 0,
            "default_samplerate": float(native_rate),
            "max_input_channels": max_channels, "max_output_channels": max_channels}
    sd.checks = []

    def query_devices(device=None, kind=None):
        return info

    def check(device=None, channels=None, dtype=None, samplerate=None):
        sd.checks.append((samplerate, channels))
        if samplerate not in rates:
            raise RuntimeError("Invalid sample rate")
        if not min_channels <= channels <= max_channels:
            raise RuntimeError("Invalid number of channels")

    sd.query_devices = query_devices
    sd.check_input_settings = check
    sd.check_output_settings = check
    sd.InputStream = FakeStream
    sd.OutputStream = FakeStream
    return sd


def test_device_source_resamples_and_rechunks(monkeypatch):
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(48000))
    FakeStream.instances.clear()
    src = DeviceSource(None)
    assert src.label == "device 7: Fake 48k (48000 Hz, resampled)" and src.device_rate == 48000
    got = Collector()
    src.start(got)
    stream = FakeStream.instances[-1]
    assert stream.samplerate == 48000 and stream.blocksize == 3840
    assert stream.channels == src.channels == 1  # mono, when the device takes it
    assert src.latency_s == pytest.approx(0.0123)
    rng = np.random.default_rng(3)
    t = np.arange(48000 * 2) / 48000
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    i = 0
    while i < len(x):  # a host that ignores the block size we asked for
        n = int(rng.integers(100, 5000))
        block = x[i : i + n].reshape(-1, 1)
        stream.callback(block, len(block), None, FakeFlags(overflow=(i == 0)))
        i += n
    assert src.overflows == 1 and src.error is None
    y = np.concatenate(got.frames)
    assert len(got.frames) == 24  # 2 s = 25 frames, less the resampler's few ms of look-ahead
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / SR)
    assert np.abs(y[100:] - ref[100:]).max() < 1e-3
    src.stop()
    assert src.error is None and not src.finished.is_set()  # our own stop is not an error


def test_device_source_exact_blocks_pass_through(monkeypatch):
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(24000))
    FakeStream.instances.clear()
    src = DeviceSource(None)
    got = Collector()
    src.start(got)
    stream = FakeStream.instances[-1]
    block = np.arange(FRAME, dtype=np.float32).reshape(-1, 1) / FRAME
    stream.callback(block, FRAME, None, FakeFlags())
    block[:] = 0  # the source must have copied the host's buffer
    assert len(got.frames) == 1 and got.frames[0][-1] == pytest.approx((FRAME - 1) / FRAME)
    src.stop()


def test_device_vanishing_sets_error(monkeypatch):
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(24000))
    FakeStream.instances.clear()
    src = DeviceSource(None)
    src.start(lambda f, t: None)
    FakeStream.instances[-1].finished_callback()  # PortAudio ended the stream on its own
    assert src.finished.is_set()
    assert src.error == "input device stopped unexpectedly (disconnected?)"
    src.stop()


def test_device_sink_resamples_with_one_pull_per_frame(monkeypatch):
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(48000))
    FakeStream.instances.clear()
    sink = DeviceSink(None)
    pulls = []

    def pull(t, room):
        k = len(pulls)
        pulls.append(t)
        n = np.arange(FRAME) + k * FRAME
        return (0.5 * np.sin(2 * np.pi * 1000 * n / SR)).astype(np.float32)

    sink.start(pull)
    stream = FakeStream.instances[-1]
    assert stream.blocksize == 960 and sink.latency_s > 0.0123  # 20 ms at the device's rate
    assert stream.channels == sink.channels == 1
    out = []
    per_cb = []
    for k in range(100):
        buf = np.zeros((960, 1), np.float32)
        before = len(pulls)
        stream.callback(buf, 960, None, FakeFlags(underflow=(k == 3)))
        per_cb.append(len(pulls) - before)
        out.append(buf[:, 0].copy())
    assert per_cb == [1, 0, 0, 0] * 25  # priming keeps a pull at every fourth 20 ms block
    # callbacks of another size: frames are still pulled one at a time, as the speaker needs them
    for k in range(60):
        buf = np.zeros((512, 1), np.float32)
        before = len(pulls)
        stream.callback(buf, 512, None, FakeFlags())
        assert len(pulls) - before <= 1
        out.append(buf[:, 0].copy())
    assert len(pulls) == 25 + (60 * 512 + 3839) // 3840 or len(pulls) == 25 + 60 * 512 // 3840
    assert sink.underflows == 1 and sink.error is None
    y = np.concatenate(out)
    f = np.abs(np.fft.rfft(y[4000:] * np.hanning(len(y) - 4000)))
    assert abs(np.argmax(f) * 48000 / (len(y) - 4000) - 1000) < 3
    sink.stop()


def tone(freq, n, rate, level=0.5, start=0):
    return (level * np.sin(2 * np.pi * freq * (np.arange(n) + start) / rate)).astype(np.float32)


def feed(stream, x: np.ndarray) -> None:
    """Hand `x` (samples x channels) to a fake input stream in the blocks it asked for."""
    for i in range(0, len(x), stream.blocksize):
        block = x[i : i + stream.blocksize]
        stream.callback(block, len(block), None, FakeFlags())


@pytest.mark.parametrize("rate", [24000, 48000])
def test_stereo_only_device_source_mixes_to_mono(monkeypatch, rate):
    """A USB interface that refuses mono is opened with two channels and their average is the
    microphone (at 48 kHz: mixed, then resampled)."""
    monkeypatch.setattr(portaudio, "load_sounddevice",
                        lambda: fake_sounddevice(rate, min_channels=2))
    FakeStream.instances.clear()
    src = DeviceSource(None)
    note = "2 channels, mixed to mono"
    if rate != SR:
        note = f"{rate} Hz, resampled; {note}"
    assert src.label == f"device 7: Fake {rate // 1000}k ({note})" and src.channels == 2
    got = Collector()
    src.start(got)
    stream = FakeStream.instances[-1]
    assert stream.channels == 2 and stream.samplerate == rate
    n = rate  # 1 s
    left, right = tone(1000, n, rate, 0.6), tone(1000, n, rate, -0.2) + tone(3000, n, rate, 0.3)
    feed(stream, np.stack([left, right], axis=1))
    y = np.concatenate(got.frames)
    assert len(got.frames) >= 11 and src.error is None
    ref = tone(1000, len(y), SR, 0.2) + tone(3000, len(y), SR, 0.15)  # (left + right) / 2
    assert np.abs(y[100:] - ref[100:]).max() < (1e-6 if rate == SR else 2e-3)
    src.stop()


@pytest.mark.parametrize("rate", [24000, 48000])
def test_stereo_only_device_sink_plays_mono_on_both_channels(monkeypatch, rate):
    monkeypatch.setattr(portaudio, "load_sounddevice",
                        lambda: fake_sounddevice(rate, min_channels=2))
    FakeStream.instances.clear()
    sink = DeviceSink(None)
    assert sink.channels == 2 and sink.label.endswith("2 channels, the same on each)")
    sent = []

    def pull(t, room):
        sent.append(tone(1000, FRAME, SR, 0.5, start=len(sent) * FRAME))
        return sent[-1]

    sink.start(pull)
    stream = FakeStream.instances[-1]
    assert stream.channels == 2 and stream.samplerate == rate
    out = []
    for _ in range(40):
        buf = np.full((stream.blocksize, stream.channels), np.nan, np.float32)
        stream.callback(buf, len(buf), None, FakeFlags())
        out.append(buf.copy())
    y = np.concatenate(out)
    assert sink.error is None
    np.testing.assert_array_equal(y[:, 0], y[:, 1])  # the same signal on each channel
    if rate == SR:
        np.testing.assert_array_equal(y[:, 0], np.concatenate(sent)[: len(y)])
    else:
        spec = np.abs(np.fft.rfft(y[2000:, 0] * np.hanning(len(y) - 2000)))
        assert abs(np.argmax(spec) * rate / (len(y) - 2000) - 1000) < 3
        assert 0.45 < np.abs(y[2000:, 0]).max() < 0.55
    sink.stop()


@pytest.mark.parametrize("cls", [DeviceSource, DeviceSink])
def test_device_at_no_usable_rate_names_the_rates_it_offers(monkeypatch, cls):
    """Neither 24 kHz nor the device's default rate: one line saying which common rates it
    does take (probed with every channel count tried: this one refuses mono)."""
    sd = fake_sounddevice(44100, rates={16000, 96000}, min_channels=2)
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: sd)
    with pytest.raises(AudioError) as ei:
        cls(None)
    kind = "input" if cls is DeviceSource else "output"
    assert str(ei.value) == (
        f"{kind} device 7: Fake 44k cannot run at 24000 Hz nor at its default 44100 Hz "
        "(Invalid sample rate); it offers 16000, 96000 Hz: set its rate to one of them in the "
        "system's sound settings, or use another device"
    )
    assert {r for r, _ in sd.checks} == set(portaudio.COMMON_RATES) | {44100}


def test_device_at_no_rate_at_all_says_none_passed(monkeypatch):
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(24000, rates=()))
    with pytest.raises(AudioError) as ei:
        DeviceSource(None)
    assert str(ei.value) == (
        "input device 7: Fake 24k cannot run at 24000 Hz (Invalid sample rate); none of 8000, "
        "16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000 Hz passed either "
        "(with 1 or 2 channels)"
    )


class FakeTime:
    def __init__(self, dac: float, current: float):
        self.outputBufferDacTime, self.currentTime, self.inputBufferAdcTime = dac, current, 0.0


def test_device_sink_stamps_blocks_by_their_dac_time(monkeypatch):
    """A host that plays an 80 ms period as four 20 ms callbacks back to back: each block is
    stamped when it plays (PortAudio's DAC time), not when its callback ran, and the smallest
    DAC lead is the device's output latency."""
    monkeypatch.setattr(portaudio, "load_sounddevice", lambda: fake_sounddevice(24000))
    FakeStream.instances.clear()
    sink = DeviceSink(None)
    pulls = []
    sink.start(lambda t, room: pulls.append(t) or np.zeros(FRAME, np.float32))
    stream = FakeStream.instances[-1]
    assert stream.blocksize == OUT_BLOCK
    assert sink.latency_s == pytest.approx(0.0123)  # PortAudio's figure until DAC times come
    starts = []
    orig = sink._feed.fill
    monkeypatch.setattr(sink._feed, "fill", lambda n, t: starts.append(t) or orig(n, t))
    clock = 100.0
    for period in range(3):
        for k in range(4):  # the four callbacks of one period run at once
            lead = 0.160 + 0.020 * k
            stream.callback(np.zeros((OUT_BLOCK, 1), np.float32), OUT_BLOCK,
                            FakeTime(clock + lead, clock), FakeFlags())
        clock += 0.080
    gaps = np.diff(starts) / 1e6
    # within a period the blocks are 20 ms apart (their callbacks were not)
    for p in range(3):
        np.testing.assert_allclose(gaps[4 * p: 4 * p + 3], 20.0, atol=1.0)
    assert sink.latency_s == pytest.approx(0.160)
    assert np.all(np.diff(pulls) > 0) and len(pulls) == 3
    # a host without DAC times: the callback's own time
    before = len(starts)
    t0 = time.monotonic_ns()
    stream.callback(np.zeros((OUT_BLOCK, 1), np.float32), OUT_BLOCK, FakeTime(0.0, 0.0), FakeFlags())
    assert abs(starts[before] - t0) < 50e6 and sink.latency_s == pytest.approx(0.160)
    sink.stop()


# --------------------------------------------------------------------------- JACK devices


def test_jack_device_listing_and_resolution(jack_server):
    devs = list_devices()
    names = [d["name"] for d in devs]
    assert "system" in names
    idx = names.index("system")
    sys_dev = devs[idx]
    assert sys_dev["hostapi"].startswith("JACK") and sys_dev["default_samplerate"] == 24000
    assert sys_dev["default_input"] and sys_dev["default_output"]
    assert resolve_device("system", "input") == sys_dev["index"]
    assert resolve_device("SYS", "output") == sys_dev["index"]
    assert resolve_device(str(sys_dev["index"]), "input") == sys_dev["index"]
    with pytest.raises(AudioError) as ei:
        resolve_device("xyz", "input")
    assert str(ei.value) == "unknown input device 'xyz' (see `moshi-tui devices`)"
    assert "system" in format_devices(devs)
    src = open_source("system")
    assert isinstance(src, DeviceSource) and src.label == f"device {sys_dev['index']}: system"
    sink = open_sink(None)
    assert isinstance(sink, DeviceSink) and sink.device_rate == 24000
    src.stop()
    sink.stop()


class Loopback:
    """A DeviceSink and a DeviceSource on the JACK card, the sink's frames made by `make(k)`."""

    def __init__(self, make):
        self.make = make
        self.sent: list[np.ndarray] = []
        self.pull_times: list[int] = []
        self.got = Collector()
        self.sink = open_sink(None)
        self.src = open_source(None)

    def pull(self, t_ns, room):
        self.pull_times.append(t_ns)
        self.sent.append(self.make(len(self.sent)))
        return self.sent[-1]

    def run(self, wire, seconds: float) -> float:
        """Start both, `wire()` the card, play `seconds`; returns how long wiring took (ms)."""
        self.seconds = seconds
        self.sink.start(self.pull)
        self.src.start(self.got)
        try:
            t = time.perf_counter()
            wire()
            connect_ms = (time.perf_counter() - t) * 1e3
            time.sleep(seconds)
        finally:
            self.src.stop()
            self.sink.stop()
        assert self.src.error is None and self.sink.error is None
        return connect_ms

    def check_periods(self) -> tuple[np.ndarray, np.ndarray]:
        """One frame captured and one pulled per 80 ms, whatever the card's period."""
        d_in, d_out = intervals_ms(self.got.times), intervals_ms(self.pull_times)
        least = 0.8 * self.seconds / 0.08
        assert len(self.got.frames) >= least and len(self.pull_times) >= least
        assert 75 < float(np.median(d_in)) < 85 and 75 < float(np.median(d_out)) < 85
        return d_in, d_out

    def bit_exact_lag(self, gain: float = 1.0) -> tuple[int, int] | None:
        """(captured frame, sent sample) of the first frame that came back bit-exact as gain *
        what was sent, at any sample offset (a 20 ms card need not keep frames aligned)."""
        sent = np.float32(gain) * np.concatenate(self.sent)
        for i, f in enumerate(self.got.frames):
            for p in np.flatnonzero(sent == f[0]) if f[0] else ():
                if np.array_equal(sent[p : p + FRAME], f):
                    return i, int(p)
        return None


def noisy_tone(rng):
    def make(k):
        n = np.arange(FRAME) + k * FRAME
        f = 0.4 * np.sin(2 * np.pi * 1000 * n / SR) + rng.uniform(-0.05, 0.05, FRAME)
        return f.astype(np.float32)

    return make


def test_jack_stereo_only_device(jack_server, monkeypatch):
    """Real PortAudio streams on a card that refuses mono (PortAudio's checks wrapped to say
    so): two ports each way.  Wired out_1 -> in_0 only, the captured frames are exactly half
    what was sent: the sink put the signal on its second channel too, the source averaged it
    with a silent one."""
    import sounddevice as sd

    for name in ("check_input_settings", "check_output_settings"):
        real = getattr(sd, name)

        def refuse_mono(*a, _real=real, **k):
            if k.get("channels") == 1:
                raise sd.PortAudioError("Invalid number of channels")
            return _real(*a, **k)

        monkeypatch.setattr(sd, name, refuse_mono)
    lb = Loopback(noisy_tone(np.random.default_rng(8)))
    assert lb.src.channels == lb.sink.channels == 2
    assert lb.src.label.endswith("(2 channels, mixed to mono)")
    assert lb.sink.label.endswith("(2 channels, the same on each)")
    ports = {}

    def wire():
        outs, ins = ports["out"], ports["in"] = jack_server.wait_ports()
        jack_server.client().connect(outs[1], ins[0])

    lb.run(wire, 1.5)
    assert len(ports["out"]) == len(ports["in"]) == 2
    lb.check_periods()
    assert lb.bit_exact_lag(0.5) is not None, "no frame came back as half what was sent"


@pytest.mark.parametrize("card", ["jack_server", "jack_card_20ms"])
def test_jack_loopback(card, request, record_property):
    """DeviceSink -> JACK -> DeviceSource on an 80 ms and on a 20 ms card: a frame every 80 ms
    each way, and the sink's audio comes back bit-exact."""
    jack = request.getfixturevalue(card)
    lb = Loopback(noisy_tone(np.random.default_rng(7)))
    pairs = []
    connect_ms = lb.run(lambda: pairs.extend(jack.connect_loopback()), 2.0)
    assert pairs
    d_in, d_out = lb.check_periods()
    # the last frames carry the 1 kHz tone at the sink's level
    tail = np.concatenate(lb.got.frames[-10:])
    spec = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
    assert abs(np.argmax(spec) * SR / len(tail) - 1000) < 5
    assert 0.35 < np.abs(tail).max() < 0.5
    lag = lb.bit_exact_lag()
    assert lag is not None, "no frame came back bit-exact"
    i, p = lag  # the sample sent at p plays at its frame's pull time + its place in the frame
    lag_ms = (lb.got.times[i] - lb.pull_times[p // FRAME]) / 1e6 - (p % FRAME) / SR * 1e3
    stats = {
        "jack_period": jack.period,
        "jack_setup_s": round(jack.setup_s, 3),
        "connect_ms": round(connect_ms, 2),
        "in_interval_ms_median": round(float(np.median(d_in)), 3),
        "in_jitter_p95_ms": round(float(np.percentile(np.abs(d_in - 80), 95)), 3),
        "out_interval_ms_median": round(float(np.median(d_out)), 3),
        "out_jitter_p95_ms": round(float(np.percentile(np.abs(d_out - 80), 95)), 3),
        "pull_to_capture_ms": round(lag_ms, 2),
        "sink_latency_s": lb.sink.latency_s,
        "overflows": lb.src.overflows,
        "underflows": lb.sink.underflows,
    }
    for k, v in stats.items():
        record_property(k, v)
    print("jack loopback:", stats)


def test_jack_48k_card_resamples_both_ways(jack_card_48k, monkeypatch):
    """A 48 kHz card through real PortAudio: both streams run at 48 kHz, the tone the sink
    plays comes back at 24 kHz clean and at its level.  Reported at a default rate it does not
    run at (44.1 kHz), the card is refused in one line naming the rate it does take."""
    lb = Loopback(lambda k: tone(1000, FRAME, SR, 0.4, start=k * FRAME))
    for end in (lb.src, lb.sink):
        assert end.device_rate == 48000 and end.channels == 1
        assert end.label.endswith(": system (48000 Hz, resampled)")
    lb.run(jack_card_48k.connect_loopback, 2.0)
    lb.check_periods()
    assert lb.src.frames_delivered == len(lb.got.frames) and lb.sink.frames_pulled >= 20
    tail = np.concatenate(lb.got.frames[-10:]).astype(np.float64)
    n = np.arange(len(tail))
    basis = np.stack([np.sin(2 * np.pi * 1000 * n / SR), np.cos(2 * np.pi * 1000 * n / SR)], 1)
    coef, *_ = np.linalg.lstsq(basis, tail, rcond=None)
    residual = tail - basis @ coef
    assert abs(np.hypot(*coef) - 0.4) < 0.01  # the level, through two resamplers
    assert np.sqrt(np.mean(residual**2)) < 1e-3  # and nothing but the tone

    import sounddevice as sd

    index = lb.src.index
    assert portaudio._offered_rates(sd.check_input_settings, index, [1, 2]) == [48000]
    real = sd.query_devices
    monkeypatch.setattr(sd, "query_devices",
                        lambda *a, **k: {**real(*a, **k), "default_samplerate": 44100.0})
    with pytest.raises(AudioError) as ei:
        DeviceSource(index)
    assert str(ei.value).startswith(
        f"input device {index}: system cannot run at 24000 Hz nor at its default 44100 Hz "
        "(Invalid sample rate"
    )
    assert "; it offers 48000 Hz: set its rate" in str(ei.value)


def test_devices_command_prints_json_and_refuses_unknown_options(monkeypatch, capsys):
    from engine.cli import main as cli
    from engine.errors import UsageError

    monkeypatch.setattr(devices, "list_devices", lambda: FAKE_DEVICES)
    assert cli._devices(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == FAKE_DEVICES
    assert cli._devices([]) == 0
    assert "MacBook Pro Microphone" in capsys.readouterr().out
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        cli._devices(["--bogus"])
