"""WAV reading (any common encoding, any rate, any channel count -> float32 mono 24 kHz),
crash-safe incremental WAV writing, and a vectorised polyphase resampler (numpy only).

Reading
    `read_wav(path)` parses the RIFF chunks itself (Python's `wave` cannot read float WAV):
    PCM 8-bit unsigned, 16/24/32-bit signed, IEEE float 32/64, plain or WAVE_FORMAT_EXTENSIBLE;
    RIFF and RF64.  Unknown chunks (LIST, fact, bext, ...) are skipped, odd-sized chunks are
    padded as the spec says, a data chunk that claims more bytes than the file holds
    (a recording that was cut off) yields what exists, and a trailing partial sample is dropped.
    A data chunk whose size field is 0 or 0xFFFFFFFF (a streaming writer that never patched its
    header) and that is not followed by another chunk is read to the end of the file.
    Every failure is an `AudioError` with one line naming the file.

Writing
    `WavWriter` writes 16-bit PCM mono.  After every `write()` the samples are handed to the OS
    first and the RIFF/data sizes patched second, with no Python-side buffering, so a process
    killed at any moment leaves a file that any reader opens (at worst missing the last frame).

Resampling
    `Resampler(sr_in, sr_out)` is a streaming polyphase windowed-sinc (Kaiser, ~80 dB stopband,
    passband flat to 90 % of the lower Nyquist frequency) filter with a few milliseconds of
    latency; `resample(x, sr_in, sr_out)` is the one-shot form (zero-phase: output sample k is
    the input at time k/sr_out).  The filter is applied as a handful of dense matrix products
    (BLAS) over blocks of one or more ratio periods, so it is fast without scipy.
"""

from __future__ import annotations

import os
import struct
import threading

import numpy as np

from engine.audio import SAMPLE_RATE
from engine.audio.resample import resample
from engine.errors import AudioError

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


# Sample rates outside this range are treated as a corrupt header (and would make the filter huge).
MIN_RATE = 1000
MAX_RATE = 768000


def _read_error(path, exc: OSError) -> AudioError:
    if exc.errno is not None:
        detail = f"[Errno {exc.errno}] {exc.strerror}"
    else:
        detail = str(exc)
    return AudioError(f"cannot read {path}: {detail}", exit_code=2)


def _not_wav(path) -> AudioError:
    return AudioError(f"not a WAV file: {path}", exit_code=2)


def read_wav(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV file as float32 mono at `sample_rate` (24 kHz).  Raises AudioError."""
    data, rate = read_wav_native(path)
    if rate != sample_rate:
        data = resample(data, rate, sample_rate)
    return data


def read_wav_native(path) -> tuple[np.ndarray, int]:
    """Read a WAV file as (float32 mono samples, its own sample rate).  Raises AudioError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise _read_error(path, e) from None
    return _decode(raw, path)


def _decode(raw: bytes, path) -> tuple[np.ndarray, int]:
    n = len(raw)
    if n < 12 or raw[8:12] != b"WAVE" or raw[0:4] not in (b"RIFF", b"RF64"):
        raise _not_wav(path)
    rf64 = raw[0:4] == b"RF64"
    ds64_data_size = None
    fmt = None
    data_span = None  # (start, end)
    pos = 12
    while pos + 8 <= n:
        cid = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = pos + 8
        if cid == b"ds64" and rf64 and size >= 16 and body + 16 <= n:
            (ds64_data_size,) = struct.unpack_from("<Q", raw, body + 8)
        elif cid == b"fmt ":
            fmt = raw[body : body + size]
        elif cid == b"data" and data_span is None:
            if rf64 and size == 0xFFFFFFFF and ds64_data_size is not None:
                size = ds64_data_size
            end = body + size
            if size in (0, 0xFFFFFFFF) and not _looks_like_chunk(raw, body):
                end = n  # header never patched by a streaming writer: the rest is audio
            data_span = (body, min(end, n))
            if end >= n:
                break
            size = end - body
        pos = body + size + (size & 1)
    if fmt is None:
        raise _not_wav(path)
    if len(fmt) < 16:
        raise _not_wav(path)
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt, 0)
    code = tag
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise AudioError(
                f"unsupported WAV encoding (format 0x{tag:04x}, {bits} bits): {path}", exit_code=2
            )
        # SubFormat GUID: its first two bytes are the format code.
        (code,) = struct.unpack_from("<H", fmt, 24)
    if channels == 0 or not (MIN_RATE <= rate <= MAX_RATE):
        if channels == 0:
            raise _not_wav(path)
        raise AudioError(f"unsupported WAV sample rate ({rate} Hz): {path}", exit_code=2)
    width = block_align // channels if block_align and block_align % channels == 0 else 0
    if width == 0:
        width = (bits + 7) // 8
    dtype = None
    scale = None
    if code == WAVE_FORMAT_PCM and 1 <= bits <= 32:
        if width == 1:
            dtype, scale = np.uint8, 1.0 / 128.0
        elif width == 2:
            dtype, scale = np.dtype("<i2"), 1.0 / 32768.0
        elif width == 3:
            dtype, scale = "i24", 1.0 / 2147483648.0
        elif width == 4:
            dtype, scale = np.dtype("<i4"), 1.0 / 2147483648.0
    elif code == WAVE_FORMAT_IEEE_FLOAT:
        if width == 4 and bits in (0, 32):
            dtype = np.dtype("<f4")
        elif width == 8 and bits in (0, 64):
            dtype = np.dtype("<f8")
    if dtype is None:
        raise AudioError(
            f"unsupported WAV encoding (format 0x{code:04x}, {bits} bits): {path}", exit_code=2
        )
    frame_bytes = width * channels
    if data_span is None:
        raise AudioError(f"empty WAV file (no audio samples): {path}", exit_code=2)
    start, end = data_span
    frames = (end - start) // frame_bytes
    if frames <= 0:
        raise AudioError(f"empty WAV file (no audio samples): {path}", exit_code=2)
    buf = memoryview(raw)[start : start + frames * frame_bytes]
    if dtype == "i24":
        b = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 3)
        w = np.zeros((b.shape[0], 4), dtype=np.uint8)
        w[:, 1:] = b  # little-endian: the sample lands in the top 24 bits of an int32
        samples = w.view("<i4").reshape(-1).astype(np.float32) * np.float32(scale)
    elif dtype is np.uint8:
        samples = (np.frombuffer(buf, dtype=np.uint8).astype(np.float32) - 128.0) * np.float32(scale)
    else:
        samples = np.frombuffer(buf, dtype=dtype)
        if scale is not None:
            samples = samples.astype(np.float32) * np.float32(scale)
        else:
            samples = np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def _looks_like_chunk(raw: bytes, pos: int) -> bool:
    """True when `pos` starts a plausible chunk: 4 printable ASCII bytes and a size that fits."""
    if pos + 8 > len(raw):
        return len(raw) == pos  # nothing after: an honest empty data chunk
    cid = raw[pos : pos + 4]
    (size,) = struct.unpack_from("<I", raw, pos + 4)
    return all(32 <= c < 127 for c in cid) and pos + 8 + size <= len(raw)


def wav_duration_s(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return len(samples) / float(sample_rate)


class WavWriter:
    """Incremental 16-bit PCM mono WAV writer; the file is valid after every `write()`."""

    HEADER_BYTES = 44
    MAX_DATA_BYTES = 0xFFFFFFFF - 36  # RIFF size field limit (~12 h at 24 kHz 16-bit mono)

    def __init__(self, path, sample_rate: int = SAMPLE_RATE):
        self.path = os.fspath(path)
        self.sample_rate = int(sample_rate)
        self.samples_written = 0
        self._lock = threading.Lock()
        self._closed = False
        try:
            # Unbuffered: every write is handed to the OS at once (survives a process crash).
            self._f = open(self.path, "w+b", buffering=0)
            self._f.write(self._header(0))
        except OSError as e:
            detail = f"[Errno {e.errno}] {e.strerror}" if e.errno is not None else str(e)
            raise AudioError(f"cannot write {self.path}: {detail}", exit_code=2) from None

    def _header(self, data_bytes: int) -> bytes:
        sr = self.sample_rate
        return (
            b"RIFF"
            + struct.pack("<I", 36 + data_bytes)
            + b"WAVE"
            + b"fmt "
            + struct.pack("<IHHIIHH", 16, WAVE_FORMAT_PCM, 1, sr, sr * 2, 2, 16)
            + b"data"
            + struct.pack("<I", data_bytes)
        )

    @property
    def duration_s(self) -> float:
        return self.samples_written / float(self.sample_rate)

    def write(self, frame) -> None:
        """Append float samples (clipped to [-1, 1]) and make the header describe them."""
        x = np.asarray(frame, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return
        pcm = (np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767.0).round().astype("<i2")
        with self._lock:
            if self._closed:
                raise AudioError(f"cannot write {self.path}: the file is closed")
            room = (self.MAX_DATA_BYTES - 2 * self.samples_written) // 2
            if room <= 0:
                return  # RIFF cannot describe more; keep what fits
            pcm = pcm[:room]
            try:
                f = self._f
                f.seek(self.HEADER_BYTES + 2 * self.samples_written)
                _write_all(f, pcm.tobytes())
                self.samples_written += len(pcm)
                data_bytes = 2 * self.samples_written
                f.seek(4)
                _write_all(f, struct.pack("<I", 36 + data_bytes))
                f.seek(40)
                _write_all(f, struct.pack("<I", data_bytes))
            except OSError as e:
                detail = f"[Errno {e.errno}] {e.strerror}" if e.errno is not None else str(e)
                raise AudioError(f"cannot write {self.path}: {detail}") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._f.close()
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if n is None:  # non-blocking raw file with nothing written: retry
            continue
        view = view[n:]


def write_wav(path, samples, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float samples as a 16-bit PCM mono WAV in one go."""
    with WavWriter(path, sample_rate) as w:
        w.write(samples)
