"""engine.audio.wavio and engine.audio.resample: WAV parsing for every encoding, resampling quality, the crash-safe writer."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from engine.audio.resample import Resampler, resample
from engine.audio.wavio import WavWriter, read_wav, read_wav_native, write_wav
from engine.errors import AudioError

SR = 24000


# --------------------------------------------------------------------------- WAV builders

KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def encode(x: np.ndarray, kind: str) -> tuple[bytes, int, int]:
    """(interleaved sample bytes, format tag, bits) for float samples in [-1, 1]."""
    if kind == "u8":
        return (np.round(x * 127) + 128).astype(np.uint8).tobytes(), 1, 8
    if kind == "i16":
        return np.round(x * 32767).astype("<i2").tobytes(), 1, 16
    if kind == "i24":
        v = np.round(x * 8388607).astype("<i4")
        b = v.view(np.uint8).reshape(-1, 4)[:, :3]
        return b.tobytes(), 1, 24
    if kind == "i32":
        return np.round(x * 2147483647.0).astype("<i4").tobytes(), 1, 32
    if kind == "f32":
        return x.astype("<f4").tobytes(), 3, 32
    if kind == "f64":
        return x.astype("<f8").tobytes(), 3, 64
    raise ValueError(kind)


def make_wav(
    x: np.ndarray,
    rate: int = SR,
    kind: str = "i16",
    *,
    extensible: bool = False,
    extra_chunks: list[tuple[bytes, bytes]] = (),
    data_size: int | None = None,
    fact: bool = False,
) -> bytes:
    """A WAV file; `x` is (n,) or (n, channels) float in [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    ch = 1 if x.ndim == 1 else x.shape[1]
    data, tag, bits = encode(x.reshape(-1), kind)
    block = ch * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHH", 0xFFFE, ch, rate, rate * block, block, bits)
        fmt += struct.pack("<HHI", 22, bits, (1 << ch) - 1) + struct.pack("<H", tag)
        fmt += KSDATAFORMAT_TAIL
    else:
        fmt = struct.pack("<HHIIHH", tag, ch, rate, rate * block, block, bits)
        if tag == 3:
            fmt += struct.pack("<H", 0)  # cbSize
    chunks = [(b"fmt ", fmt)]
    if fact:
        chunks.append((b"fact", struct.pack("<I", len(x))))
    chunks.extend(extra_chunks)
    body = b"WAVE"
    for cid, payload in chunks:
        body += cid + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def peak_hz(y: np.ndarray, rate: int = SR) -> float:
    w = y * np.hanning(len(y))
    spec = np.abs(np.fft.rfft(w))
    k = int(np.argmax(spec))
    # parabolic interpolation of the peak bin
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    off = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + off) * rate / len(y)


def write(tmp_path, name: str, raw: bytes):
    p = tmp_path / name
    p.write_bytes(raw)
    return p


# --------------------------------------------------------------------------- encodings

TOL = {"u8": 1 / 64, "i16": 1e-4, "i24": 1e-6, "i32": 1e-6, "f32": 1e-7, "f64": 1e-7}


@pytest.mark.parametrize("kind", ["u8", "i16", "i24", "i32", "f32", "f64"])
@pytest.mark.parametrize("extensible", [False, True])
def test_round_trip_each_encoding(tmp_path, kind, extensible):
    x = tone(440, SR, 0.5, amp=0.8)
    x[:4] = [0.0, 0.99, -0.99, -1.0]
    p = write(tmp_path, f"{kind}.wav", make_wav(x, kind=kind, extensible=extensible))
    y = read_wav(p)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == len(x)
    assert np.max(np.abs(y - x)) <= TOL[kind]


def test_8bit_is_unsigned_with_128_as_zero(tmp_path):
    raw = bytes([128, 255, 0, 192, 64])
    wav = make_wav(np.zeros(1), kind="u8")[:-1]  # header for one sample; replace the data
    head = wav[: wav.index(b"data")]
    p = write(tmp_path, "u8.wav", head + b"data" + struct.pack("<I", 5) + raw + b"\x00")
    y = read_wav(p)
    np.testing.assert_allclose(y, [0, 127 / 128, -1, 0.5, -0.5], atol=1e-7)


def test_stereo_48k_is_averaged_and_resampled(tmp_path):
    left = tone(1000, 48000, 1.0, amp=0.6)
    right = tone(1000, 48000, 1.0, amp=0.2)
    p = write(tmp_path, "st.wav", make_wav(np.stack([left, right], 1), 48000, "i16"))
    y = read_wav(p)
    assert len(y) == 24000
    assert abs(peak_hz(y[1000:-1000]) - 1000) < 1.0
    assert abs(np.abs(y[1000:-1000]).max() - 0.4) < 2e-3


def test_opposite_channels_cancel(tmp_path):
    x = tone(300, SR, 0.2)
    p = write(tmp_path, "cancel.wav", make_wav(np.stack([x, -x], 1), kind="f32"))
    assert np.abs(read_wav(p)).max() < 1e-6


def test_many_channels(tmp_path):
    x = np.stack([tone(500, SR, 0.1, amp=a) for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)], 1)
    p = write(tmp_path, "6ch.wav", make_wav(x, kind="i24", extensible=True))
    y = read_wav(p)
    np.testing.assert_allclose(y, x.mean(1), atol=1e-6)


@pytest.mark.parametrize("rate", [48000, 44100, 32000, 22050, 16000, 11025, 8000, 96000])
def test_tone_keeps_frequency_and_amplitude(tmp_path, rate):
    p = write(tmp_path, f"t{rate}.wav", make_wav(tone(1000, rate, 1.0, amp=0.5), rate, "f32"))
    y = read_wav(p)
    assert len(y) == 24000  # ceil(n * 24000 / rate) for exactly one second
    mid = y[1200:-1200]
    assert abs(peak_hz(mid) - 1000.0) < 0.5
    assert abs(np.abs(mid).max() - 0.5) < 1e-3
    # and against the ideal 24 kHz tone, sample by sample
    ref = tone(1000, SR, 1.0, amp=0.5)[1200:-1200]
    assert np.abs(mid - ref).max() < 1e-3


def test_resampler_rejects_aliases():
    # 14 kHz at 48 kHz is above the 12 kHz output Nyquist: must vanish, not fold to 10 kHz
    y = resample(tone(14000, 48000, 0.5, amp=1.0).astype(np.float32), 48000, 24000)
    assert 20 * np.log10(np.abs(y[500:-500]).max()) < -60
    # 11 kHz passes (passband reaches 90 % of the 12 kHz Nyquist: 10.8 kHz is the edge)
    y = resample(tone(10000, 44100, 0.5, amp=1.0).astype(np.float32), 44100, 24000)
    assert abs(np.abs(y[500:-500]).max() - 1.0) < 0.01


def test_streaming_resampler_matches_one_shot():
    rng = np.random.default_rng(1)
    for sr_in, sr_out in [(48000, 24000), (44100, 24000), (24000, 48000), (16000, 24000)]:
        x = rng.standard_normal(sr_in // 2).astype(np.float32)
        r = Resampler(sr_in, sr_out)
        parts, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 4000))
            parts.append(r.process(x[i : i + n]))
            i += n
        parts.append(r.flush())
        ys = np.concatenate(parts)
        y1 = resample(x, sr_in, sr_out)
        assert len(ys) == len(y1) == -(-len(x) * sr_out // sr_in)
        assert np.abs(ys - y1).max() < 1e-5
        assert r.latency_s < 0.010


def test_resampler_speed_60s_48k_stereo(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.5, 0.5, (60 * 48000, 2))
    p = write(tmp_path, "long.wav", make_wav(x, 48000, "i16"))
    read_wav(p)  # warm-up (filter design, page cache)
    t = time.perf_counter()
    y = read_wav(p)
    dt = time.perf_counter() - t
    assert len(y) == 60 * SR
    assert dt < 3.0, f"read+resample of 60 s 48 kHz stereo took {dt:.2f} s"


def test_odd_rate_still_resamples(tmp_path):
    # 44101 Hz has no small ratio to 24 kHz: the resampler approximates it
    p = write(tmp_path, "odd.wav", make_wav(tone(1000, 44101, 0.5), 44101, "i16"))
    y = read_wav(p)
    assert len(y) == -(-22050 * 24000 // 44101)
    assert abs(peak_hz(y[500:-500]) - 1000) < 1.0


def test_native_rate_is_reported(tmp_path):
    p = write(tmp_path, "n.wav", make_wav(tone(100, 16000, 0.1), 16000))
    x, rate = read_wav_native(p)
    assert rate == 16000 and len(x) == 1600


# --------------------------------------------------------------------------- chunk layout


def test_extra_chunks_and_odd_padding(tmp_path):
    x = tone(700, SR, 0.2)
    extra = [(b"LIST", b"INFOISFT\x05\x00\x00\x00abcd\x00\x00"), (b"junk", b"xyz"), (b"bext", b"\x01")]
    p = write(tmp_path, "chunks.wav", make_wav(x, kind="f32", extra_chunks=extra, fact=True))
    np.testing.assert_allclose(read_wav(p), x, atol=1e-7)


def test_chunk_after_data(tmp_path):
    x = tone(700, SR, 0.1)
    raw = make_wav(x) + b"LIST" + struct.pack("<I", 5) + b"hello\x00"
    raw = raw[:4] + struct.pack("<I", len(raw) - 8) + raw[8:]
    y = read_wav(write(tmp_path, "after.wav", raw))
    assert len(y) == len(x)


def test_truncated_recording_reads_what_exists(tmp_path):
    x = tone(700, SR, 0.5)
    raw = make_wav(x)
    cut = raw[: len(raw) - 1001]  # data chunk claims more than the file holds; half a sample
    y = read_wav(write(tmp_path, "cut.wav", cut))
    assert len(y) == len(x) - 501
    np.testing.assert_allclose(y, x[: len(y)], atol=1e-4)


def test_unpatched_streaming_header(tmp_path):
    x = tone(700, SR, 0.2)
    for size in (0, 0xFFFFFFFF):
        y = read_wav(write(tmp_path, f"s{size}.wav", make_wav(x, data_size=size)))
        assert len(y) == len(x)


def test_rf64(tmp_path):
    x = tone(700, SR, 0.1)
    data, _, _ = encode(x, "i16")
    fmt = struct.pack("<HHIIHH", 1, 1, SR, SR * 2, 2, 16)
    ds64 = struct.pack("<QQQI", 0, len(data), len(x), 0)
    body = b"WAVE" + b"ds64" + struct.pack("<I", len(ds64)) + ds64
    body += b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF) + data
    raw = b"RF64" + struct.pack("<I", 0xFFFFFFFF) + body
    y = read_wav(write(tmp_path, "rf64.wav", raw))
    np.testing.assert_allclose(y, x, atol=1e-4)


# --------------------------------------------------------------------------- errors


def test_empty_wav(tmp_path):
    p = write(tmp_path, "empty.wav", make_wav(np.zeros(0)))
    with pytest.raises(AudioError, match=r"^empty WAV file \(no audio samples\): .*empty\.wav$"):
        read_wav(p)


def test_zero_byte_file_is_not_wav(tmp_path):
    p = write(tmp_path, "zero.wav", b"")
    with pytest.raises(AudioError, match=r"^not a WAV file: .*zero\.wav$"):
        read_wav(p)


def test_not_wav(tmp_path):
    p = write(tmp_path, "text.wav", b"hello, this is certainly not audio\n" * 10)
    with pytest.raises(AudioError, match=r"^not a WAV file: "):
        read_wav(p)


def test_truncated_header(tmp_path):
    raw = make_wav(tone(100, SR, 0.1))
    for n in (4, 12, 20, 30):
        with pytest.raises(AudioError, match=r"^not a WAV file: "):
            read_wav(write(tmp_path, f"h{n}.wav", raw[:n]))
    # fmt complete but the data chunk header is cut: no samples
    with pytest.raises(AudioError, match=r"^empty WAV file"):
        read_wav(write(tmp_path, "h40.wav", raw[:40]))


def test_unsupported_encoding(tmp_path):
    raw = bytearray(make_wav(tone(100, 8000, 0.1), 8000, "u8"))
    raw[20:22] = struct.pack("<H", 7)  # mu-law
    with pytest.raises(AudioError, match=r"^unsupported WAV encoding \(format 0x0007, 8 bits\): "):
        read_wav(write(tmp_path, "ulaw.wav", bytes(raw)))
    raw = bytearray(make_wav(tone(100, SR, 0.1), kind="i16"))
    raw[20:22] = struct.pack("<H", 3)  # "float" with 16 bits
    with pytest.raises(AudioError, match=r"^unsupported WAV encoding \(format 0x0003, 16 bits\): "):
        read_wav(write(tmp_path, "f16.wav", bytes(raw)))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioError, match=r"^cannot read .*nope\.wav: \[Errno 2\] "):
        read_wav(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match=r"^cannot read .*: \[Errno \d+\] "):
        read_wav(tmp_path)


def test_errors_are_one_line_with_usage_exit_code(tmp_path):
    with pytest.raises(AudioError) as ei:
        read_wav(write(tmp_path, "bad.wav", b"RIFF1234WAVE"))
    assert "\n" not in str(ei.value)
    assert ei.value.exit_code == 2


def test_fuzz_only_audio_errors(tmp_path):
    rng = np.random.default_rng(1234)
    seed = make_wav(tone(440, 16000, 0.05), 16000, "i16", extensible=True, fact=True)
    p = tmp_path / "fuzz.wav"
    outcomes = {"ok": 0, "error": 0}
    for i in range(400):
        mode = i % 4
        if mode == 0:  # pure random bytes
            raw = rng.bytes(int(rng.integers(0, 200)))
        elif mode == 1:  # random bytes behind a valid RIFF/WAVE magic
            raw = b"RIFF" + rng.bytes(4) + b"WAVE" + rng.bytes(int(rng.integers(0, 300)))
        elif mode == 2:  # a valid file with a few header bytes flipped
            b = bytearray(seed)
            for _ in range(int(rng.integers(1, 6))):
                b[int(rng.integers(0, 80))] = int(rng.integers(0, 256))
            raw = bytes(b)
        else:  # a valid file cut anywhere
            raw = seed[: int(rng.integers(0, len(seed)))]
        p.write_bytes(raw)
        try:
            y = read_wav(p)
        except AudioError as e:
            assert str(e) and "\n" not in str(e)
            outcomes["error"] += 1
        else:
            assert y.dtype == np.float32 and y.ndim == 1 and len(y) > 0
            assert np.all(np.isfinite(y))
            outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


# --------------------------------------------------------------------------- writer


def test_writer_file_is_readable_after_every_write(tmp_path):
    p = tmp_path / "live.wav"
    w = WavWriter(p)
    frames = [tone(300 + 100 * i, SR, 0.08).astype(np.float32) for i in range(5)]
    for i, f in enumerate(frames):
        w.write(f)
        y = read_wav(p)  # no close, no flush call: the header already describes the data
        assert len(y) == 1920 * (i + 1)
        np.testing.assert_allclose(y[-1920:], f, atol=1 / 32767)
    w.close()
    w.close()  # idempotent
    assert w.closed
    raw = p.read_bytes()
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    assert struct.unpack_from("<I", raw, 40)[0] == 5 * 1920 * 2


def test_writer_clips_and_context_manager(tmp_path):
    p = tmp_path / "clip.wav"
    with WavWriter(p) as w:
        w.write(np.array([2.0, -3.0, 0.5, np.nan], np.float32))
    y = read_wav(p)
    np.testing.assert_allclose(y, [32767 / 32768, -32767 / 32768, 0.5, 0.0], atol=1e-4)
    with pytest.raises(AudioError):
        w.write(np.zeros(3))


def test_writer_only_header_is_empty(tmp_path):
    p = tmp_path / "none.wav"
    WavWriter(p).close()
    with pytest.raises(AudioError, match="empty WAV file"):
        read_wav(p)


def test_writer_other_rate(tmp_path):
    p = tmp_path / "48k.wav"
    write_wav(p, tone(1000, 48000, 0.5), 48000)
    x, rate = read_wav_native(p)
    assert rate == 48000 and len(x) == 24000


def test_writer_unwritable_path(tmp_path):
    with pytest.raises(AudioError, match=r"^cannot write .*: \[Errno \d+\] "):
        WavWriter(tmp_path / "no" / "such" / "dir" / "out.wav")
    with pytest.raises(AudioError, match=r"^cannot write "):
        WavWriter(tmp_path)  # a directory


def test_bundled_speech(speech_wav):
    x = read_wav(speech_wav)
    assert 12.0 <= len(x) / SR <= 15.0
    assert 0.2 < np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x**2)) > 0.02
