"""Audio endpoint selection: `moshi-tui devices`, and --input / --output specs.

A spec is one of:
    None / "default"        the system's default device
    "silence", "silence:S"  (input) zeros, endless or S seconds      "null" is accepted too
    "null"                  (output) discard                         "silence" is accepted too
    PATH.wav                a WAV file (input: paced in real time; output: written)
    an integer              a device index (as listed by `moshi-tui devices`)
    an existing file        a WAV file too (read_wav then says if it is not one)
    anything else           a case-insensitive substring of a device name

sounddevice (and so PortAudio) is imported only when a device is listed or used, so file and
silence sessions work on machines without PortAudio.
"""

from __future__ import annotations

import os

from engine.audio import BUNDLED_SPEECH
from engine.audio.paced import NullSink, SilenceSource, WavFileSink, WavFileSource
from engine.audio.portaudio import DeviceSink, DeviceSource, load_sounddevice
from engine.errors import AudioError

_FLAG = {"input": "--input", "output": "--output"}


def list_devices() -> list[dict]:
    """Every PortAudio device: index, name, hostapi, channels, default rate, default flags."""
    sd = load_sounddevice()
    try:
        devs = sd.query_devices()
        apis = sd.query_hostapis()
    except Exception as e:
        raise AudioError(f"cannot list audio devices: {e}") from None
    default_in = _default_index(sd, "input")
    default_out = _default_index(sd, "output")
    out = []
    for d in devs:
        i = int(d["index"])
        try:
            api = str(apis[d["hostapi"]]["name"])
        except (IndexError, KeyError, TypeError):
            api = "?"
        out.append(
            {
                "index": i,
                "name": str(d["name"]),
                "hostapi": api,
                "max_input_channels": int(d["max_input_channels"]),
                "max_output_channels": int(d["max_output_channels"]),
                "default_samplerate": float(d["default_samplerate"] or 0.0),
                "default_input": i == default_in,
                "default_output": i == default_out,
            }
        )
    return out


def _default_index(sd, kind: str) -> int | None:
    try:
        return int(sd.query_devices(kind=kind)["index"])
    except Exception:
        return None


def format_devices(devices: list[dict]) -> str:
    """A table for `moshi-tui devices` (> default input, < default output, * both)."""
    if not devices:
        return (
            "no audio devices found\n"
            "  use --input FILE.wav or --input silence, and --output FILE.wav or --output null"
        )
    rows = []
    for d in devices:
        mark = " "
        if d["default_input"] and d["default_output"]:
            mark = "*"
        elif d["default_input"]:
            mark = ">"
        elif d["default_output"]:
            mark = "<"
        rate = d["default_samplerate"]
        rows.append(
            (
                mark,
                str(d["index"]),
                str(d["max_input_channels"]),
                str(d["max_output_channels"]),
                f"{rate:g}" if rate else "-",
                d["hostapi"],
                d["name"],
            )
        )
    head = ("", "#", "in", "out", "rate", "host API", "name")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = {1, 2, 3, 4}

    def fmt(r):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return " ".join(cells).rstrip()

    lines = [fmt(head)] + [fmt(r) for r in rows]
    lines.append("> default input, < default output, * both; pass the index or part of the name")
    return "\n".join(lines)


def resolve_device(spec, kind: str) -> int | None:
    """Device index for an index or a case-insensitive name substring; None for the default.

    Raises AudioError for no device at all, an unknown spec, or an ambiguous name.
    """
    if kind not in ("input", "output"):
        raise ValueError("kind must be 'input' or 'output'")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default")):
        return None
    devs = list_devices()
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    usable = [d for d in devs if d[key] > 0]
    if not usable:
        alt = "--input FILE.wav" if kind == "input" else "--output FILE.wav"
        raise AudioError(
            f"no audio {kind} device found: use {alt} (see `moshi-tui devices`)", exit_code=2
        )
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        idx = int(text)
        for d in devs:
            if d["index"] == idx:
                if d[key] <= 0:
                    raise AudioError(
                        f"device {idx} ({d['name']}) has no {kind} channels "
                        "(see `moshi-tui devices`)",
                        exit_code=2,
                    )
                return idx
        raise AudioError(f"unknown {kind} device '{text}' (see `moshi-tui devices`)", exit_code=2)
    low = text.lower()
    matches = [d for d in usable if low in d["name"].lower()]
    if not matches:
        raise AudioError(f"unknown {kind} device '{text}' (see `moshi-tui devices`)", exit_code=2)
    if len(matches) > 1:
        exact = [d for d in matches if d["name"].lower() == low]
        if len(exact) >= 1:
            matches = exact
    if len(matches) > 1:
        # The same device is often listed once per host API (Windows: MME, DirectSound,
        # WASAPI...): if all matches share one name, take the one on the default host API.
        names = {d["name"] for d in matches}
        if len(names) == 1:
            pick = _on_default_hostapi(matches, kind)
            if pick is not None:
                return pick
    if len(matches) > 1:
        listed = ", ".join(f"{d['index']}: {d['name']} ({d['hostapi']})" for d in matches)
        raise AudioError(
            f"ambiguous {kind} device '{text}' matches {listed}: pass the index", exit_code=2
        )
    return matches[0]["index"]


def _on_default_hostapi(matches: list[dict], kind: str) -> int | None:
    try:
        sd = load_sounddevice()
        default = sd.query_devices(kind=kind)
        api = sd.query_hostapis(default["hostapi"])["name"]
    except Exception:
        return None
    on = [d for d in matches if d["hostapi"] == api]
    return on[0]["index"] if len(on) == 1 else None


def _is_file_spec(spec: str) -> bool:
    """PATH.wav always; another existing file unless the spec is a device index.  A path to a
    folder is refused (a bare word is a device name, even if a folder has that name)."""
    looks_like_path = os.sep in spec or spec.startswith(("~", "."))
    if looks_like_path and os.path.isdir(os.path.expanduser(spec)):
        raise AudioError(f"{spec} is a folder: give a WAV file (or a device, see `moshi-tui devices`)",
                         exit_code=2)
    if spec.lower().endswith(".wav"):
        return True
    return not spec.strip().lstrip("-").isdigit() and os.path.isfile(spec)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:  # (b does not exist yet)
        return False


def _silence_seconds(spec: str) -> float | None | bool:
    """None for endless silence, seconds for "silence:S", False when spec is not silence."""
    low = spec.strip().lower()
    if low in ("silence", "null"):
        return None
    for prefix in ("silence:", "null:"):
        if low.startswith(prefix):
            try:
                return float(low[len(prefix) :])
            except ValueError:
                raise AudioError(f"invalid silence duration in '{spec}'", exit_code=2) from None
    return False


def open_source(spec: str | None, *, loop: bool = False):
    """The AudioSource a --input spec names (see the module docstring)."""
    if spec is not None:
        secs = _silence_seconds(spec)
        if secs is not False:
            return SilenceSource(secs)
        if _is_file_spec(spec):
            return WavFileSource(spec, loop=loop)
    index = resolve_device(spec, "input")
    if index is None:
        _require_default("input")
    return DeviceSource(index)


def open_sink(spec: str | None, *, input_spec: str | None = None):
    """The AudioSink an --output spec names (see the module docstring); a WAV file that is the
    input (`input_spec`) is refused rather than overwritten."""
    if spec is not None:
        if _silence_seconds(spec) is not False:
            return NullSink()
        if _is_file_spec(spec):
            if input_spec is not None and _same_file(spec, input_spec):
                raise AudioError(f"--output {spec} is the input file: it would be overwritten",
                                 exit_code=2)
            return WavFileSink(spec)
    index = resolve_device(spec, "output")
    if index is None:
        _require_default("output")
    return DeviceSink(index)


def open_endpoints(input_spec: str | None, output_spec: str | None, *, demo: bool, warn):
    """(source, sink) for a session's --input/--output.  The demo must run anywhere: with no
    microphone the bundled speech recording stands in for the user, then silence (the
    conversation goes on until the user quits), with no speaker the audio goes nowhere (each
    said through `warn`); an explicit --input/--output never falls back."""
    try:
        source = open_source(input_spec)
    except AudioError:
        if input_spec is not None or not demo:
            raise
        source = bundled_speech_source()
        warn("no input device: playing the bundled speech recording as the microphone, "
             "then silence")
    try:
        sink = open_sink(output_spec, input_spec=input_spec)
    except AudioError:
        if output_spec is not None or not demo:
            raise
        sink = open_sink("null")
        warn("no output device: Moshi's audio is not played")
    return source, sink


def bundled_speech_source() -> WavFileSource:
    """The demo's stand-in for a user: the bundled speech once, then silence, never finishing
    (a WAV given with --input ends the session at its end instead)."""
    source = WavFileSource(BUNDLED_SPEECH, then_silence=True)
    source.label = f"{os.path.basename(BUNDLED_SPEECH)} (bundled), then silence"
    return source


def _require_default(kind: str) -> None:
    sd = load_sounddevice()
    if _default_index(sd, kind) is None:
        raise AudioError(
            f"no audio {kind} device found: use {_FLAG[kind]} FILE.wav (see `moshi-tui devices`)",
            exit_code=2,
        )
