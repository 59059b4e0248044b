"""Microphones and speakers through PortAudio (sounddevice), as 24 kHz mono endpoints, whatever
rate (resampled) and channels (mixed down / duplicated) the device runs at."""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from engine.audio import FRAME, HEAD, OUT_BLOCK, SAMPLE_RATE
from engine.audio.endpoints import FrameChunker, OnFrame, OnHead, Pull, _Endpoint, _Feeder
from engine.audio.resample import Resampler
from engine.errors import AudioError

# the rates probed to say what a device offers, when it takes neither 24 kHz nor its default
COMMON_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)


def load_sounddevice():
    """Import sounddevice (PortAudio) on first use; failures become one-line AudioErrors."""
    try:
        import sounddevice as sd
    except OSError as e:  # raised by sounddevice when the PortAudio library is missing
        raise AudioError(
            f"cannot use audio devices: {e} (on Linux install libportaudio2; "
            "or use --input FILE.wav / --output FILE.wav)"
        ) from None
    except ImportError as e:
        raise AudioError(f"cannot use audio devices: {e}") from None
    return sd


def _pa_message(e: BaseException) -> str:
    msg = e.args[0] if getattr(e, "args", None) else str(e)
    return str(msg)


def _describe(sd, device, kind: str) -> tuple[int, str, int, int]:
    """(index, name, default rate, max channels) of a device index, or of the default device
    for None."""
    try:
        info = sd.query_devices(device, kind) if device is not None else sd.query_devices(kind=kind)
    except Exception as e:
        if device is None:
            raise AudioError(
                f"no audio {kind} device found: use --{kind} FILE.wav (see `moshi-tui devices`)",
                exit_code=2,
            ) from None
        raise AudioError(f"unknown {kind} device {device!r}: {_pa_message(e)}", exit_code=2) from None
    return (int(info["index"]), str(info["name"]), int(round(info["default_samplerate"] or 0)),
            int(info.get(f"max_{kind}_channels") or 0))


def _channel_choices(max_channels: int) -> list[int]:
    """Mono first; then stereo, then all the device has (some USB interfaces refuse mono)."""
    return [1, 2] + ([max_channels] if max_channels > 2 else [])


def _refusal(check, index: int, channels: int, rate: int) -> str | None:
    """PortAudio's reason for refusing these settings, or None when it takes them."""
    try:
        check(device=index, channels=channels, dtype="float32", samplerate=rate)
        return None
    except Exception as e:
        return _pa_message(e)


def _offered_rates(check, index: int, channels: list[int]) -> list[int]:
    """The common rates the device takes (with any of `channels`), for the error message."""
    return [r for r in COMMON_RATES if any(_refusal(check, index, c, r) is None for c in channels)]


def _choose_format(sd, index: int, kind: str, default_rate: int, max_channels: int,
                   label: str) -> tuple[int, int]:
    """(rate, channels) to open the device with: 24000 Hz if it takes it, else its default rate
    (resampled in software); mono if it takes it, else the fewest channels it takes (mixed
    down / duplicated).  A device that takes neither rate names the rates it does take."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rates = [SAMPLE_RATE] + ([default_rate] if default_rate and default_rate != SAMPLE_RATE else [])
    channels = _channel_choices(max_channels)
    first = None
    for rate in rates:
        for ch in channels:
            why = _refusal(check, index, ch, rate)
            if why is None:
                return rate, ch
            first = first or why
    tried = f"{SAMPLE_RATE} Hz" + (f" nor at its default {rates[1]} Hz" if len(rates) > 1 else "")
    offered = _offered_rates(check, index, channels)
    if offered:
        hint = (f"it offers {', '.join(map(str, offered))} Hz: set its rate to one of them in "
                "the system's sound settings, or use another device")
    else:
        hint = (f"none of {', '.join(map(str, COMMON_RATES))} Hz passed either "
                f"(with {_either(channels)} channels)")
    raise AudioError(f"{kind} {label} cannot run at {tried} ({first}); {hint}")


def _either(xs: list[int]) -> str:
    return " or ".join(filter(None, [", ".join(map(str, xs[:-1])), str(xs[-1])]))


def _format_note(rate: int, channels: int, kind: str) -> str:
    """What the label says about a device not opened as 24 kHz mono."""
    notes = []
    if rate != SAMPLE_RATE:
        notes.append(f"{rate} Hz, resampled")
    if channels > 1:
        how = "mixed to mono" if kind == "input" else "the same on each"
        notes.append(f"{channels} channels, {how}")
    return f" ({'; '.join(notes)})" if notes else ""


class _DeviceEndpoint(_Endpoint):
    """What both PortAudio endpoints share: closing the stream, and noticing it died."""

    _kind = "audio"
    _stopping = False
    _stream = None

    def _setup(self, device: int | None) -> None:
        """Find the device and the rate and channels it will be opened with."""
        sd = load_sounddevice()
        self._sd = sd
        self.index, self.name, default_rate, max_channels = _describe(sd, device, self._kind)
        self.label = f"device {self.index}: {self.name}"
        self.device_rate, self.channels = _choose_format(
            sd, self.index, self._kind, default_rate, max_channels, self.label)
        self.label += _format_note(self.device_rate, self.channels, self._kind)

    def _finished(self) -> None:
        if not self._stopping:
            self._record(f"{self._kind} device stopped unexpectedly (disconnected?)")
            self.finished.set()

    def _close_stream(self) -> None:
        s, self._stream = self._stream, None
        if s is None:
            return
        for close in (s.abort, s.close):
            try:
                close()
            except Exception:
                pass

    def stop(self) -> None:
        if not self._end():
            return
        self._stopping = True
        self._close_stream()


class DeviceSource(_DeviceEndpoint):
    """A PortAudio input device: 24 kHz mono float32 blocks of 1920 samples (960 when started
    with `on_head`: each callback hands over one half of a frame).

    If the device refuses 24 kHz it is opened at its default rate and each block is resampled
    in software (streaming polyphase filter, ~5 ms of extra latency); `device_rate` tells which.
    A device that refuses mono (stereo-only USB interfaces) is opened with the fewest channels it
    takes, averaged to mono (`channels`).  Blocks of another size than asked for (some hosts) are
    re-chunked to 1920 samples.
    """

    _kind = "input"

    def __init__(self, device: int | None = None, *, latency: str | float = "low"):
        super().__init__()
        self._setup(device)
        self.latency = latency
        self.finished = threading.Event()
        self.overflows = 0  # callbacks flagged with input overflow (audio was lost)
        self.frames_delivered = 0
        self.callbacks = 0
        self.last_callback_ns = 0
        self.latency_s = 0.0  # device-reported input latency, known once started
        self._stream = None
        self._on_frame: OnFrame | None = None
        self._on_head: OnHead | None = None
        self._chunker = FrameChunker()
        self._rs = Resampler(self.device_rate, SAMPLE_RATE) if self.device_rate != SAMPLE_RATE else None
        self._stopping = False

    def start(self, on_frame: OnFrame, on_head: OnHead | None = None) -> None:
        self._begin()
        self._on_frame, self._on_head = on_frame, on_head
        sd = self._sd
        block = round((FRAME if on_head is None else HEAD) * self.device_rate / SAMPLE_RATE)
        try:
            self._stream = sd.InputStream(
                samplerate=self.device_rate, channels=self.channels, blocksize=block,
                dtype="float32", device=self.index, latency=self.latency,
                callback=self._callback, finished_callback=self._finished,
            )
            self._stream.start()
            self.latency_s = float(self._stream.latency)
        except Exception as e:
            self._close_stream()
            raise AudioError(f"cannot open input {self.label}: {_pa_message(e)}") from None

    def _callback(self, indata, frames, time_info, status) -> None:
        t = time.monotonic_ns()
        self.callbacks += 1
        self.last_callback_ns = t
        try:
            if status.input_overflow:
                self.overflows += 1
            x = indata[:, 0] if self.channels == 1 else np.mean(indata, axis=1, dtype=np.float32)
            if self._rs is None and frames == FRAME and self._chunker._n == 0:
                frames_out = [x.copy()]
            else:
                if self._rs is not None:
                    x = self._rs.process(x)
                frames_out = self._chunker.push(x)
            for f in frames_out:
                self._on_frame(f, t)
                self.frames_delivered += 1
            if self._on_head is not None:
                head = self._chunker.head()
                if head is not None:
                    self._on_head(head, t)
        except Exception as e:
            self._record(e)


class DeviceSink(_DeviceEndpoint):
    """A PortAudio output device, played as 24 kHz mono.

    The Python callback plays 20 ms blocks (`OUT_BLOCK`, like the file and null sinks), so a
    late frame costs a 20 ms gap and playback can start within 20 ms of the jitter buffer's aim;
    Kyutai's CLI asks for 80 ms blocks, which on most devices also means 80 ms host buffers.
    Frames are pulled as the callbacks reach them, so any block size works.

    When the host plays a period in several callbacks back to back (a 20 ms block on an 80 ms
    period), the callback's own time is not when its block plays: PortAudio's DAC times say
    when.  A block is stamped `callback time + (its DAC lead - the smallest DAC lead seen)`,
    and that smallest lead, the device's own output latency, is `latency_s` (PortAudio's
    reported latency until DAC times are seen; some hosts under-report it by a period).

    A device that refuses 24 kHz is opened at its default rate with software resampling; the
    resampler is primed with a few ms of silence so that its look-ahead does not make the first
    callback pull two frames.  A device that refuses mono gets the same signal on each of its
    `channels`.
    """

    _kind = "output"

    def __init__(self, device: int | None = None, *, latency: str | float = "low"):
        super().__init__()
        self._setup(device)
        self.latency = latency
        self.latency_s = 0.0
        self.underflows = 0  # callbacks flagged with output underflow (a gap was heard)
        self.callbacks = 0
        self.last_callback_ns = 0
        self.finished = threading.Event()  # set if the stream ends on its own
        self._stream = None
        self._feed: _Feeder | None = None
        self._rs = Resampler(SAMPLE_RATE, self.device_rate) if self.device_rate != SAMPLE_RATE else None
        self._extra_s = 0.0
        self._stopping = False

    @property
    def frames_pulled(self) -> int:
        return self._feed.frames_pulled if self._feed is not None else 0

    def start(self, pull: Pull) -> None:
        self._begin()
        sd = self._sd
        prime = 0
        block = round(OUT_BLOCK * self.device_rate / SAMPLE_RATE)
        if self._rs is not None:
            r = self._rs
            prime = int(math.ceil(r.q * r.block_in * self.device_rate / SAMPLE_RATE)) + 2
        self._feed = _Feeder(self, pull, self.device_rate, self._rs, prime)
        try:
            self._stream = sd.OutputStream(
                samplerate=self.device_rate, channels=self.channels, blocksize=block,
                dtype="float32", device=self.index, latency=self.latency,
                callback=self._callback, finished_callback=self._finished,
            )
            self._extra_s = self._rs.latency_s if self._rs is not None else 0.0
            self.latency_s = float(self._stream.latency) + self._extra_s
            self._stream.start()
        except Exception as e:
            self._close_stream()
            raise AudioError(f"cannot open output {self.label}: {_pa_message(e)}") from None

    _lead_min: float | None = None  # seconds

    def _block_time(self, t_ns: int, time_info) -> int:
        """When this block plays, on the callbacks' clock (see the class docstring)."""
        try:
            lead = float(time_info.outputBufferDacTime) - float(time_info.currentTime)
        except (AttributeError, TypeError):
            return t_ns
        if not (time_info.outputBufferDacTime > 0 and 0.0 <= lead < 2.0):
            return t_ns  # this host gives no DAC times
        if self._lead_min is None or lead < self._lead_min:
            self._lead_min = lead
            self.latency_s = lead + self._extra_s
        return t_ns + int((lead - self._lead_min) * 1e9)

    def _callback(self, outdata, frames, time_info, status) -> None:
        t = time.monotonic_ns()
        self.callbacks += 1
        self.last_callback_ns = t
        try:
            if status.output_underflow:
                self.underflows += 1
            outdata[:, 0] = self._feed.fill(frames, self._block_time(t, time_info))
            if outdata.shape[1] > 1:
                outdata[:, 1:] = outdata[:, :1]
        except Exception as e:
            self._record(e)
            outdata.fill(0)
