"""Echo cancellation through real sound-device callbacks: the speaker looped into the microphone
through a simulated room on a private JACK dummy sound card, with and without AEC.

    .venv/bin/python -m scripts.bench_aec [--seconds 14] [--room living|pure] [--json PATH]
                                          [--cost-target-ms 3]

The sink (engine.audio.portaudio.DeviceSink, 20 ms blocks) plays the far speech (it stands for
Moshi: engine/audio/data/speech.wav, looped, or --far WAV); the source (DeviceSource, 40 ms heads
then whole 80 ms frames, as a session with early encode takes them) goes through
engine.audio.aec.EchoCanceller as a session calls it (`far` from the pull with what the device
plays, `near_head` / `near_frame` on the microphone).  Between the two, a JACK client of this
script is the room: PortAudio's output port feeds its input, its output feeds PortAudio's input
(nothing else does: no direct loopback), and each period it convolves what the speaker plays
with a room response (FFT overlap-add) and adds the user, the second talker
(tests/data/second_talker.wav at a 0.6 peak, from --near-at seconds on).  The default room is
room_response()'s living room (30 ms direct path, 50 ms decay) at --gain 0.25, the echo
(~ -21 dBFS) about as loud as the user; `--room pure` is its direct path alone.  The room's
timeline starts at the first sound the speaker plays (room sample i is far sample i); it
records what it heard, the echo it made, the near speech it added and what it emitted.

Three passes of the same scenario: AEC off; WebRTC's AEC3 alone (`EchoCanceller(linear=False)`);
AEC on as the app runs it (the linear filter, then AEC3), each with a fresh canceller.  Figures
per pass:

* echo reduction (ERLE): microphone vs cleaned power over the far-only part after its first
  2 s, and per 0.5 s window from the start: convergence is the time from which every window
  with echo in it stays >= 25 dB (a window > 10 dB below the echo's level is a pause in the far
  speech: its ERLE, two small powers, does not count);
* near speech kept (engine.bench.aec.speech_kept against the clean near speech the room added)
  over the double talk from 1 s after the user starts, for the cleaned signal and the raw mic;
* the canceller's added processing per frame (cost_ms: reference and microphone, p50/p95);
* delays: the microphone's lag behind the room (cross-correlation, engine.bench.aec.align; the
  aligned microphone must equal what the room emitted, sample for sample), the stream delay told
  to AEC3 against how far the reference really ran ahead of its echo in the two streams, and how
  the sink's DAC-based play stamps and the source's capture stamps compare with when the room
  took and emitted each sample.

Targets, checked on the "AEC on" pass: >= 25 dB once converged (<= 2 s), near speech kept
>= 0.9, processing p50 <= 3 ms (--cost-target-ms sets another).  Prints a table (and --json
PATH: every figure, the targets and the options).  Exit status: 0 every target met, 3 a target
missed (the figures printed and written all the same, then one line naming each missed
target), 1 JACK or the devices cannot run (one line), 2 bad options (one line), 130
interrupted (Ctrl+C or SIGTERM; the streams, the room and jackd are stopped either way).
Needs jackd (apt-get install jackd2), the JACK-Client and livekit packages (setup.sh).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from engine.audio import FRAME, HEAD, SAMPLE_RATE
from engine.bench.aec import align, erle_db, speech_kept
from engine.bench.report import fmt, table
from engine.telemetry.stages import percentiles
from scripts import jackdummy

ROOT = Path(__file__).resolve().parent.parent

SR = SAMPLE_RATE
SPEECH = ROOT / "engine" / "audio" / "data" / "speech.wav"
SECOND_TALKER = ROOT / "tests" / "data" / "second_talker.wav"

TARGET_ERLE_DB = 25.0
TARGET_CONVERGED_S = 2.0
TARGET_KEPT = 0.9
TARGET_COST_P50_MS = 3.0
CONVERGE_SKIP_S = 2.0  # ERLE is measured after the first 2 s of echo
TALK_SKIP_S = 1.0  # near speech kept: from 1 s after the user starts
WINDOW_S = 0.5
ALIGN_S = 3.0  # room -> microphone lag: cross-correlation over the first 3 s ...
MAX_LAG_S = 0.6  # ... for lags up to 0.6 s
TAIL_S = 0.5  # the microphone keeps recording this long after the room stops
QUIET_DB = 10.0  # a convergence window this far below the echo's level is a pause


class Usage(Exception):
    """A bad option: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Usage(message)


def parse_args(argv=None) -> argparse.Namespace:
    ap = _Parser(prog="bench_aec.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=14.0,
                    help="seconds of far speech per pass (default 14)")
    ap.add_argument("--near-at", type=float, default=6.0,
                    help="when the second talker starts, in seconds (default 6)")
    ap.add_argument("--room", choices=("living", "pure"), default="living",
                    help="living: 30 ms direct path + 50 ms decay (default); pure: a bare delay")
    ap.add_argument("--delay-ms", type=float, default=30.0, help="the direct path (default 30 ms)")
    ap.add_argument("--gain", type=float, default=0.25,
                    help="the room response's peak, the direct path's gain (default 0.25: the "
                         "echo about as loud as the user; room_response()'s 0.5 makes it "
                         "6 dB louder, with peaks past full scale)")
    ap.add_argument("--near-gain", type=float, default=0.6,
                    help="the second talker's peak level (default 0.6)")
    ap.add_argument("--period", type=int, default=480,
                    help="the JACK period in samples at 24 kHz (default 480 = 20 ms)")
    ap.add_argument("--far", type=Path, default=SPEECH, help="what the speaker plays (a WAV)")
    ap.add_argument("--near", type=Path, default=SECOND_TALKER, help="the user's voice (a WAV)")
    ap.add_argument("--json", metavar="PATH", help="write every figure and the options here")
    ap.add_argument("--cost-target-ms", type=float, default=TARGET_COST_P50_MS, metavar="MS",
                    help="the canceller's processing per frame, p50, this run must stay within "
                         f"(default {TARGET_COST_P50_MS:g} ms)")
    args = ap.parse_args(argv)
    if not 0.0 < args.cost_target_ms <= 80.0:
        raise Usage(f"--cost-target-ms must be in (0, 80], not {args.cost_target_ms:g}")
    if not 16 <= args.period <= 8192:
        raise Usage(f"--period must be 16..8192 samples, not {args.period}")
    if not 0.0 < args.gain <= 2.0 or not 0.0 < args.near_gain <= 1.0:
        raise Usage("--gain must be in (0, 2] and --near-gain in (0, 1]")
    if not 0.0 <= args.delay_ms <= 200.0:
        raise Usage(f"--delay-ms must be 0..200, not {args.delay_ms}")
    if args.near_at < CONVERGE_SKIP_S + WINDOW_S:
        raise Usage(f"--near-at must be >= {CONVERGE_SKIP_S + WINDOW_S:g} s (echo alone after "
                    f"the first {CONVERGE_SKIP_S:g} s is what ERLE is measured on)")
    if args.seconds > 120 or args.seconds < args.near_at + TALK_SKIP_S + 1.0:
        raise Usage(f"--seconds must be in [--near-at + {TALK_SKIP_S + 1.0:g}, 120] (at least "
                    f"1 s of measured double talk), not {args.seconds:g}")
    for what in ("far", "near"):
        p = getattr(args, what)
        if not p.is_file():
            raise Usage(f"--{what} {p}: no such file")
    return args


def load_wav(path: Path) -> np.ndarray:
    from engine.audio.wavio import read_wav

    try:
        x = np.asarray(read_wav(path), np.float32).reshape(-1)
    except Exception as e:
        raise Usage(f"cannot read {path}: {e}") from None
    if x.size < SR // 2 or not np.any(x):
        raise Usage(f"{path}: less than 0.5 s of sound")
    return x


def room_response(delay_s: float = 0.03, rt_s: float = 0.05, gain: float = 0.5,
                  seed: int = 1) -> np.ndarray:
    """The simulated room (this bench's, and tests/test_aec.py's in software): a
    speaker-to-microphone impulse response, a direct path after `delay_s`, then a reverberant
    tail decaying with time constant `rt_s` (50 ms: a reverberation time of ~0.35 s, a living
    room), scaled to a peak of `gain`."""
    d = int(delay_s * SR)
    rng = np.random.default_rng(seed)
    n = int((delay_s + 5 * rt_s) * SR)
    h = rng.normal(0, 1, n) * np.exp(-np.arange(n) / (rt_s * SR)) * 0.3
    h[:d] = 0
    h[d] = 1.0
    return (gain * h / np.abs(h).max()).astype(np.float32)


def impulse_response(kind: str, delay_s: float, gain: float) -> np.ndarray:
    """The speaker-to-microphone response: room_response() for "living", its direct path alone
    for "pure"."""
    if kind == "pure":
        d = int(delay_s * SR)
        h = np.zeros(d + 1, np.float32)
        h[d] = gain
        return h
    return room_response(delay_s, gain=gain)


# ---------------------------------------------------------------------------------- the room
class Room:
    """A JACK client between the speaker and the microphone: echo (the speaker's sound through
    `h`) plus the near talker.  Once armed it starts its timeline at the first non-zero sample
    the speaker plays (the far speech's first sample: index i of the room is far sample i) and
    records, for `cap` samples, what it heard, the echo, the near speech and what it emitted;
    the near talker plays `near[i]` at room index i."""

    def __init__(self, servername: str, h: np.ndarray, near: np.ndarray):
        import jack

        self.h = h.astype(np.float64)
        self.near = near.astype(np.float32)
        self.cap = len(near)
        self.client = jack.Client(f"aec-room-{os.getpid()}", no_start_server=True,
                                  servername=servername)
        self.name = self.client.name
        self.inp = self.client.inports.register("speaker")
        self.out = self.client.outports.register("mic")
        self.xruns = 0
        self.armed = False
        self._prepare(self.client.blocksize)
        self._reset_recording()
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()

    def _prepare(self, n: int) -> None:
        self.period = n
        self.nfft = 1 << int(np.ceil(np.log2(n + len(self.h) - 1)))
        self.H = np.fft.rfft(self.h, self.nfft)
        self.acc = np.zeros(self.nfft)  # the echo still to come, from this period's first sample

    def _reset_recording(self) -> None:
        self.n = 0
        self.started = False
        self.heard = np.zeros(self.cap, np.float32)
        self.echo = np.zeros(self.cap, np.float32)
        self.emitted = np.zeros(self.cap, np.float32)
        self.cycles: list[tuple[int, int]] = []  # (room index of the period's first sample, ns)

    def _xrun(self, delayed_usecs) -> None:
        self.xruns += 1

    def _process(self, frames: int) -> None:
        t = time.monotonic_ns()
        if frames != self.period:
            self._prepare(frames)
        x = self.inp.get_array()
        if not np.any(x) and not np.any(self.acc):  # silence in, silence out (nothing to do)
            y = np.zeros(frames, np.float32)
        else:
            self.acc += np.fft.irfft(np.fft.rfft(x, self.nfft) * self.H, self.nfft)
            y = self.acc[:frames].astype(np.float32)
            self.acc[:-frames] = self.acc[frames:]
            self.acc[-frames:] = 0.0
        out = self.out.get_array()
        out[:] = y
        if not self.armed or self.n >= self.cap:
            return
        k = 0
        if not self.started:
            nz = np.flatnonzero(x)
            if nz.size == 0:
                return
            k = int(nz[0])
            self.started = True
        # the cycle began frames_since_cycle_start samples ago: its first sample is "now" there
        t_cycle = t - self.client.frames_since_cycle_start * 1_000_000_000 // SR
        self.cycles.append((self.n - k, t_cycle))
        i, j = self.n, min(self.cap, self.n + frames - k)
        m = j - i
        out[k:k + m] += self.near[i:j]
        self.heard[i:j] = x[k:k + m]
        self.echo[i:j] = y[k:k + m]
        self.emitted[i:j] = out[k:k + m]
        self.n = j

    def arm(self) -> None:
        self.armed = False
        self._reset_recording()
        self.armed = True

    @property
    def done(self) -> bool:
        return self.n >= self.cap

    def close(self) -> None:
        try:
            self.client.deactivate()
            self.client.close()
        except Exception:
            pass


def _portaudio_ports(server: jackdummy.JackServer, room: Room, timeout: float = 5.0):
    c = server.client()
    deadline = time.monotonic() + timeout
    while True:
        skip = ("system:", f"{room.name}:", f"{c.name}:")
        ins = [p.name for p in c.get_ports(is_audio=True, is_input=True) if not p.name.startswith(skip)]
        outs = [p.name for p in c.get_ports(is_audio=True, is_output=True) if not p.name.startswith(skip)]
        if ins and outs:
            return ins, outs
        if time.monotonic() > deadline:
            raise RuntimeError(f"no PortAudio ports on the JACK server (in={ins}, out={outs})")
        time.sleep(0.01)


def wire(server: jackdummy.JackServer, room: Room) -> list[tuple[str, str]]:
    """speaker (PortAudio out) -> room -> microphone (PortAudio in), and nothing else into
    the microphone (PortAudio connects the dummy card's silent capture port by itself)."""
    c = server.client()
    ins, outs = _portaudio_ports(server, room)
    for i in ins:
        for src in c.get_all_connections(i):
            c.disconnect(src, i)
    pairs = [(o, room.inp.name) for o in outs] + [(room.out.name, i) for i in ins]
    for a, b in pairs:
        c.connect(a, b)
    return pairs


# ---------------------------------------------------------------------------------- one pass
class _DelayTap:
    """The canceller's AudioProcessingModule, with the stream delay it is told kept."""

    def __init__(self, apm):
        self._apm = apm
        self.last_ms: int | None = None

    def set_stream_delay_ms(self, ms: int) -> None:
        self.last_ms = int(ms)
        self._apm.set_stream_delay_ms(ms)

    def __getattr__(self, name):
        return getattr(self._apm, name)


PASSES = (("off", "AEC off"), ("aec3", "AEC3 alone"), ("on", "AEC on"))


def run_pass(server, room: Room, devices: tuple[int, int], far: np.ndarray, mode: str,
             seconds: float) -> dict:
    """Play `far` for the room's length, capture it through the room, clean it (mode "on": as
    the app does, "aec3": WebRTC's canceller without the linear filter before it) or not."""
    from engine.audio.aec import EchoCanceller
    from engine.audio.portaudio import DeviceSink, DeviceSource

    source = DeviceSource(devices[0])
    sink = DeviceSink(devices[1])
    aec_on = mode != "off"
    aec = EchoCanceller(enabled=aec_on, output_latency_s=lambda: sink.latency_s,
                        input_latency_s=lambda: source.latency_s, linear=mode == "on")
    tap = _DelayTap(aec.apm)
    aec.apm = tap
    lock = threading.Lock()
    st = {"playing": False, "pos": 0, "fed": 0, "start_fed": None}
    pulls: list[tuple[int, int, int, int]] = []  # (t_call, t_play, fed before, samples)
    raw, clean, costs = [], [], []
    blocks: list[tuple[int, int, int, int, int | None]] = []  # (frame, offset, size, stamp, told)
    head = {"t": None, "told": None}

    def pull(t_play: int, n: int):
        t = time.monotonic_ns()
        x = None
        if st["playing"]:
            x = far[st["pos"]:st["pos"] + FRAME]
            st["pos"] += FRAME
            if st["start_fed"] is None:
                st["start_fed"] = st["fed"]
            pulls.append((t, t_play, st["fed"], len(x)))
        aec.far(x, n, t_play)
        st["fed"] += n if x is None else len(x)
        return x

    def on_head(pcm, t):
        tap.last_ms = None
        aec.near_head(pcm, t)
        head["t"], head["told"] = t, tap.last_ms

    def on_frame(pcm, t):
        tap.last_ms = None
        out = aec.near_frame(pcm, t)
        cost = aec.cost_ms()
        with lock:
            k = len(raw)
            if head["t"] is not None:
                blocks.append((k, 0, HEAD, head["t"], head["told"]))
                blocks.append((k, HEAD, FRAME - HEAD, t, tap.last_ms))
            else:
                blocks.append((k, 0, FRAME, t, tap.last_ms))
            head["t"] = None
            raw.append(np.array(pcm, np.float32))
            clean.append(np.array(out, np.float32))
            costs.append(cost)

    try:
        source.start(on_frame, on_head)
        sink.start(pull)
        wire(server, room)
        time.sleep(0.3)  # past the rewiring's first cycles
        with lock:
            mic_start = max(0, len(raw) - 1)  # a frame early: the room's sample 0 comes later
        room.arm()
        st["playing"] = True
        deadline = time.monotonic() + seconds + 10.0
        while not room.done:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the room got {room.n / SR:.1f} s of the {seconds:g} s played "
                                   "(is the JACK graph running?)")
            for ep in (source, sink):
                if ep.error:
                    raise RuntimeError(f"{ep.label}: {ep.error}")
            time.sleep(0.05)
        time.sleep(TAIL_S)
    finally:
        source.stop()
        sink.stop()
    for ep in (source, sink):
        if ep.error:
            raise RuntimeError(f"{ep.label}: {ep.error}")
    with lock:
        mic = np.concatenate(raw[mic_start:])
        cleaned = np.concatenate(clean[mic_start:])
        costs = costs[mic_start:]
        blocks = [(k - mic_start, *rest) for k, *rest in blocks if k >= mic_start]
    return {"aec": aec_on, "mic": mic, "cleaned": cleaned, "costs": costs, "blocks": blocks,
            "pulls": pulls, "start_fed": st["start_fed"], "chunks": aec.chunks,
            "linear_resets": aec.linear.resets if aec.linear is not None else None,
            "linear_replays": aec.linear.replays if aec.linear is not None else None,
            "sink_latency_s": sink.latency_s, "source_latency_s": source.latency_s,
            "underflows": sink.underflows, "overflows": source.overflows,
            "room": {k: getattr(room, k)[:room.n].copy() for k in ("heard", "echo", "emitted")},
            "room_n": room.n, "cycles": np.array(room.cycles, np.int64).reshape(-1, 2)}


ATTEMPTS = 3  # a pass the JACK graph glitched in is run again, at most this many times in all


def _clean_pass(server, room: Room, devices, far, mode: str, label: str, seconds: float,
                number: int, discarded: list) -> dict:
    """One pass that no xrun, underflow or overflow touched: a glitch loses or repeats samples
    (the microphone is then no longer the room, and the echo path jumps), which measures the
    machine's load, not the canceller.  A glitched attempt is run again (ATTEMPTS in all) and
    noted in `discarded`; the last attempt is kept whatever happened, and its figures say so."""
    for attempt in range(1, ATTEMPTS + 1):
        print(f"[pass {number}/{len(PASSES)}] {label}: {seconds:g} s"
              + (f" (attempt {attempt})" if attempt > 1 else "") + " ...",
              file=sys.stderr, flush=True)
        before = room.xruns
        p = run_pass(server, room, devices, far, mode, seconds)
        p["xruns"], p["attempt"] = room.xruns - before, attempt
        glitches = {k: p[k] for k in ("xruns", "underflows", "overflows") if p[k]}
        if not glitches:
            break
        discarded.append({"pass": mode, "attempt": attempt, **glitches})
        print(f"[pass {number}/{len(PASSES)}] {label}: the JACK graph glitched "
              f"({', '.join(f'{k} {v}' for k, v in glitches.items())})"
              + ("; again" if attempt < ATTEMPTS else "; kept as it is"),
              file=sys.stderr, flush=True)
    return p


# ---------------------------------------------------------------------------------- figures
def _dbfs(x: np.ndarray) -> float:
    return round(10.0 * float(np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)), 1)


def _r(v, nd=2):
    return None if v is None else round(float(v), nd)


def measure(p: dict, far: np.ndarray, near: np.ndarray, near_at: float) -> dict:
    mic, cleaned, rm = p["mic"], p["cleaned"], p["room"]
    n_room = p["room_n"]
    # the room heard exactly the far speech? (index i of the room is far sample i)
    heard_err = float(np.max(np.abs(rm["heard"] - far[:n_room]))) if n_room else None
    # the microphone trails what the room emitted by `lag` samples
    s = min(int(ALIGN_S * SR), n_room, len(mic))
    lag = align(mic[:s], rm["emitted"][:s], max_lag=int(MAX_LAG_S * SR))
    n = max(0, min(n_room, len(mic) - lag))
    loop_err = float(np.max(np.abs(mic[lag:lag + n] - rm["emitted"][:n]))) if n else None

    def m(x, a, b):  # room-timeline seconds [a, b) of a microphone-timeline signal
        return x[lag + int(a * SR):lag + int(b * SR)]

    end_s = n / SR
    far_only = (CONVERGE_SKIP_S, near_at)
    near_len = np.flatnonzero(near)
    talk_end = min(end_s, (near_len[-1] + 1) / SR if near_len.size else end_s)
    talk = (near_at + TALK_SKIP_S, talk_end)
    erle = erle_db(m(mic, *far_only), m(cleaned, *far_only))
    windows = []
    t = 0.0
    while t + WINDOW_S <= near_at + 1e-9:
        a_, c_ = m(mic, t, t + WINDOW_S), m(cleaned, t, t + WINDOW_S)
        windows.append({"t_s": round(t, 2), "erle_db": _r(erle_db(a_, c_), 1),
                        "mic_dbfs": _dbfs(a_), "cleaned_dbfs": _dbfs(c_)})
        t += WINDOW_S
    # a window where the microphone is > QUIET_DB below the echo's level (a pause in the far
    # speech: only the room's tail) does not count: its ERLE is a ratio of two small numbers
    level = _dbfs(m(mic, 0.0, near_at))
    for w in windows:
        w["quiet"] = w["mic_dbfs"] < level - QUIET_DB
    converged = None
    for i in range(len(windows)):
        if all(w["erle_db"] >= TARGET_ERLE_DB for w in windows[i:] if not w["quiet"]):
            converged = windows[i]["t_s"]
            break
    near_t = near[int(talk[0] * SR):int(talk[1] * SR)]
    kept = speech_kept(m(cleaned, *talk), near_t)
    kept_raw = speech_kept(m(mic, *talk), near_t)
    echo_t = rm["echo"][int(talk[0] * SR):int(talk[1] * SR)]

    # delays: what the canceller was told vs what the samples show
    pulls = np.array(p["pulls"], np.int64).reshape(-1, 4)
    start_fed = p["start_fed"] or 0
    ci, ct = p["cycles"][:, 0], p["cycles"][:, 1]

    def play_time(idx):  # when room samples `idx` were played / emitted (monotonic ns)
        q = np.clip(np.searchsorted(ci, idx, side="right") - 1, 0, len(ci) - 1)
        return ct[q] + (np.asarray(idx, np.int64) - ci[q]) * 1_000_000_000 // SR

    told, true_d, cap_err = [], [], []
    t_calls = pulls[:, 0]
    fed_after = pulls[:, 2] + pulls[:, 3] - start_fed  # far samples analysed by each pull
    in_lat_ns = int(p["source_latency_s"] * 1e9)
    for k, off, size, stamp, d in p["blocks"]:
        m0 = k * FRAME + off
        ri = m0 - lag  # the room sample the microphone got there (its far sample, no air)
        if not 0 <= ri < n_room:
            continue
        j = np.searchsorted(t_calls, stamp, side="right") - 1
        if j < 0:
            continue
        # the reference was this far ahead of the echo when the echo was processed (AEC3's
        # stream delay, in the render buffer's own terms)
        true_d.append((fed_after[j] - ri) * 1000.0 / SR)
        if d is not None:
            told.append(d)
        claimed = stamp - size * 1_000_000_000 // SR - in_lat_ns
        cap_err.append((claimed - int(play_time(np.array([ri]))[0])) / 1e6)
    idx = pulls[:, 2] - start_fed
    ok = (idx >= 0) & (idx < n_room)
    ren_err = ((pulls[ok, 1] + int(p["sink_latency_s"] * 1e9) - play_time(idx[ok])) / 1e6).tolist()
    med = lambda v: _r(np.median(v), 1) if len(v) else None  # noqa: E731
    delays = {
        "room_to_mic_lag_samples": int(lag),
        "told_ms_p50": med(told), "told_ms_min": _r(min(told), 1) if told else None,
        "told_ms_max": _r(max(told), 1) if told else None,
        "true_ms_p50": med(true_d),
        "true_ms_min": _r(min(true_d), 1) if true_d else None,
        "true_ms_max": _r(max(true_d), 1) if true_d else None,
        "render_stamp_error_ms_p50": med(ren_err),
        "capture_stamp_error_ms_p50": med(cap_err),
        "sink_latency_ms": _r(p["sink_latency_s"] * 1000.0, 1),
        "source_latency_ms": _r(p["source_latency_s"] * 1000.0, 1),
    }
    costs = p["costs"]
    return {
        "aec": p["aec"],
        "erle_db": _r(erle, 1),
        "erle_windows": windows,
        "converged_s": converged,
        "kept": _r(kept, 3),
        "kept_raw": _r(kept_raw, 3),
        "cost_ms": percentiles(costs) if p["aec"] else percentiles([]),
        "chunks": p["chunks"],
        "linear_resets": p["linear_resets"],  # (the far/mic alignment moved: it started over)
        "linear_replays": p["linear_replays"],
        "frames": len(costs),
        "far_only_s": [far_only[0], far_only[1]],
        "talk_s": [round(talk[0], 2), round(talk[1], 2)],
        "mic_far_only_dbfs": _dbfs(m(mic, *far_only)),
        "cleaned_far_only_dbfs": _dbfs(m(cleaned, *far_only)),
        "echo_talk_dbfs": _dbfs(echo_t),
        "near_talk_dbfs": _dbfs(near_t),
        "cleaned_talk_dbfs": _dbfs(m(cleaned, *talk)),
        "lag_samples": int(lag),
        "lag_ms": _r(lag * 1000.0 / SR, 1),
        "loopback_max_error": loop_err,
        "room_heard_far_max_error": heard_err,
        "room_seconds": round(n_room / SR, 2),
        "delays": delays,
        "underflows": p["underflows"],
        "overflows": p["overflows"],
        "xruns": p["xruns"],
        "attempt": p["attempt"],
    }


def missed_targets(on: dict, cost_target_ms: float = TARGET_COST_P50_MS) -> list[str]:
    """The targets the "AEC on" pass's figures (`measure`'s) miss, each as its figure against
    its target; [] when every one is met."""
    cost = on["cost_ms"]["p50"]
    checks = [
        (on["erle_db"] is not None and on["erle_db"] >= TARGET_ERLE_DB,
         f"echo reduction {on['erle_db']} dB < {TARGET_ERLE_DB:g} dB"),
        (on["converged_s"] is not None and on["converged_s"] <= TARGET_CONVERGED_S,
         f"converged from {on['converged_s']} s, not by {TARGET_CONVERGED_S:g} s"),
        (on["kept"] is not None and on["kept"] >= TARGET_KEPT,
         f"near speech kept {on['kept']} < {TARGET_KEPT:g}"),
        (cost is not None and cost <= cost_target_ms,
         f"aec ms per frame p50 {fmt(cost, 3)} > {cost_target_ms:g} ms"),
    ]
    return [what for ok, what in checks if not ok]


def report(opts: dict, res: list[dict], setup: dict) -> str:
    """The passes side by side (PASSES' order); targets are checked on the last, "AEC on"."""
    on = res[-1]
    c_on = on["cost_ms"]
    cost_target = opts.get("cost_target_ms", TARGET_COST_P50_MS)

    def mark(ok):
        return "ok" if ok else "MISSED"

    def each(f):
        return [f(r) for r in res]

    rows = [
        ["echo reduction ERLE (dB)", *each(lambda r: r["erle_db"]),
         f">= {TARGET_ERLE_DB:g}  {mark(on['erle_db'] >= TARGET_ERLE_DB)}"],
        [f"  stays >= {TARGET_ERLE_DB:g} dB from (s)", *each(lambda r: r["converged_s"]),
         f"<= {TARGET_CONVERGED_S:g}  "
         + mark(on["converged_s"] is not None and on["converged_s"] <= TARGET_CONVERGED_S)],
        ["near speech kept (cleaned)", *each(lambda r: f"{r['kept']:.3f}"),
         f">= {TARGET_KEPT:g}  {mark(on['kept'] >= TARGET_KEPT)}"],
        ["near speech kept (raw mic)", *each(lambda r: f"{r['kept_raw']:.3f}"), ""],
        ["aec ms per frame p50", *each(lambda r: fmt(r["cost_ms"]["p50"], 2)),
         f"<= {cost_target:g}  "
         + mark(c_on["p50"] is not None and c_on["p50"] <= cost_target)],
        ["aec ms per frame p95 / max",
         *each(lambda r: "-" if r["cost_ms"]["p95"] is None
               else f"{fmt(r['cost_ms']['p95'], 2)} / {fmt(r['cost_ms']['max'], 2)}"), ""],
        ["mic far-only (dBFS)", *each(lambda r: r["mic_far_only_dbfs"]), ""],
        ["cleaned far-only (dBFS)", *each(lambda r: r["cleaned_far_only_dbfs"]), ""],
        ["double talk: echo / near (dBFS)",
         *each(lambda r: f"{r['echo_talk_dbfs']} / {r['near_talk_dbfs']}"), ""],
        ["double talk: cleaned (dBFS)", *each(lambda r: r["cleaned_talk_dbfs"]), ""],
        ["mic lag behind the room (ms)", *each(lambda r: r["lag_ms"]),
         "from the mic's first frame"],
        ["loopback max |mic - room|", *each(lambda r: f"{r['loopback_max_error']:.1e}"),
         "0: sample-exact"],
        ["xruns / underflows / overflows",
         *each(lambda r: f"{r['xruns']} / {r['underflows']} / {r['overflows']}"),
         "0: kept passes (glitched ones are rerun)"],
    ]
    d_off = res[0]["delays"]
    drows = [
        ["stream delay told to AEC3 (ms)", "-", *(
            f"{fmt(r['delays']['told_ms_p50'])} ({fmt(r['delays']['told_ms_min'], 0)}.."
            f"{fmt(r['delays']['told_ms_max'], 0)})" for r in res[1:])],
        ["reference ahead of its echo (ms)", f"{fmt(d_off['true_ms_p50'])}", *(
            f"{fmt(r['delays']['true_ms_p50'])} ({fmt(r['delays']['true_ms_min'], 0)}.."
            f"{fmt(r['delays']['true_ms_max'], 0)})" for r in res[1:])],
        ["sink: t_play + latency - played (ms)",
         *each(lambda r: r["delays"]["render_stamp_error_ms_p50"])],
        ["source: stamp - size - latency - emitted (ms)",
         *each(lambda r: r["delays"]["capture_stamp_error_ms_p50"])],
        ["sink / source latency_s (ms)",
         *each(lambda r: f"{r['delays']['sink_latency_ms']} / {r['delays']['source_latency_ms']}")],
    ]
    labels = [label for _, label in PASSES][:len(res)]
    win = "  ".join(f"{w['t_s']:.1f}:{fmt(w['erle_db'])}" + ("q" if w["quiet"] else "")
                    for w in on["erle_windows"])
    head = (f"bench aec: JACK dummy {SR} Hz, {opts['period']}-sample periods "
            f"({opts['period'] * 1000 / SR:g} ms; jackd up in {setup['jack_setup_s']:.2f} s), "
            f"room {opts['room']} ({opts['delay_ms']:g} ms direct path"
            + (", 50 ms decay" if opts["room"] == "living" else "") + f", gain {opts['gain']:g}), "
            f"{on['room_seconds']:g} s per pass; far {Path(opts['far']).name}, near talker "
            f"{Path(opts['near']).name} from {opts['near_at']:g} s; ERLE over "
            f"{on['far_only_s'][0]:g}-{on['far_only_s'][1]:g} s, kept over "
            f"{on['talk_s'][0]:g}-{on['talk_s'][1]:g} s")
    return "\n".join([
        head, "",
        table(["", *labels, "target"], rows), "",
        f"ERLE per {WINDOW_S:g} s window, AEC on (start s: dB; q: a pause in the far speech, "
        f"the mic > {QUIET_DB:g} dB below the echo's level, not counted for convergence):",
        "  " + win, "",
        table(["delays (p50)", *labels], drows),
        f"(room xruns: {setup['xruns']}; AEC3 chunks processed: {on['chunks']}"
        + "".join(f"; {d['pass']} attempt {d['attempt']} discarded: "
                  + ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("pass", "attempt"))
                  for d in setup["discarded"]) + ")",
    ])


# ---------------------------------------------------------------------------------- main
def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        far = load_wav(args.far)
        voice = load_wav(args.near)
    except Usage as e:
        print(f"bench_aec.py: error: {e}", file=sys.stderr)
        return 2
    far = far[int(np.flatnonzero(far)[0]):]  # room index 0 = far sample 0 = its first sound
    cap = int(args.seconds * SR)
    far = np.tile(far, int(np.ceil((cap + 10 * SR) / len(far)))).astype(np.float32)
    near = np.zeros(cap, np.float32)
    a = int(args.near_at * SR)
    k = min(len(voice), cap - a)
    near[a:a + k] = args.near_gain * voice[:k] / np.abs(voice).max()
    h = impulse_response(args.room, args.delay_ms / 1000.0, args.gain)
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def _terminate(signum, frame):  # a SIGTERM stops the run like Ctrl+C: streams, room, jackd
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    saved = {k: os.environ.get(k) for k in jackdummy.ENV_KEYS}
    quiet = []  # libjack's messages (it prints "cannot connect" while the server boots)
    try:
        import jack

        jack.set_error_function(quiet.append)
        jack.set_info_function(quiet.append)
    except Exception:
        jack = None
    server = room = None
    passes = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-aec-") as tmp:
            try:
                server = jackdummy.start(Path(tmp), period=args.period)
            except jackdummy.JackUnavailable as e:  # missing here: jackd, libjack, PortAudio's JACK
                print(f"bench_aec.py: JACK cannot start (unavailable here): {_one_line(e)}",
                      file=sys.stderr)
                return 1
            except (RuntimeError, OSError) as e:  # jackd itself failed
                print(f"bench_aec.py: JACK cannot start: {_one_line(e)}", file=sys.stderr)
                return 1
            try:
                devices = (jackdummy.device_index("input"), jackdummy.device_index("output"))
                if None in devices:
                    raise RuntimeError(f"no JACK devices in PortAudio (input, output: {devices})")
                room = Room(server.name, h, near)
                setup = {"jack_setup_s": round(server.setup_s, 2), "period": room.period,
                         "discarded": []}
                for mode, label in PASSES:
                    passes.append(_clean_pass(server, room, devices, far, mode, label,
                                              args.seconds, len(passes) + 1, setup["discarded"]))
                setup["xruns"] = room.xruns
            except Exception as e:
                print(f"bench_aec.py: the loopback failed: {type(e).__name__}: {_one_line(e)}",
                      file=sys.stderr)
                return 1
            finally:
                if room is not None:
                    room.close()
                jackdummy.shutdown(server)
    finally:
        for key, v in saved.items():
            if v is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = v
        if jack is not None:
            jack.set_error_function(None)
            jack.set_info_function(None)

    res = [measure(p, far, near, args.near_at) for p in passes]
    print(report(opts, res, setup), flush=True)
    if args.json:
        from engine.files.outputs import write_json_atomic
        from engine.telemetry.stats import machine_info

        write_json_atomic(args.json, {
            "kind": "bench_aec", "options": opts, "setup": setup, "machine": machine_info(),
            "targets": {"erle_db": TARGET_ERLE_DB, "converged_s": TARGET_CONVERGED_S,
                        "kept": TARGET_KEPT, "cost_p50_ms": args.cost_target_ms},
            **{mode: r for (mode, _), r in zip(PASSES, res)}})
    missed = missed_targets(res[-1], args.cost_target_ms)
    if missed:
        print(f"bench_aec.py: target missed: {'; '.join(missed)}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_aec.py: interrupted", file=sys.stderr)
        sys.exit(130)
