"""Transcript export: pure functions from a session summary (`engine.telemetry.stats.build_stats`)
to text, and the files they are written to.

The app's export modal only chooses a path and a format; everything about the files is here,
so the same code serves the app, the end-of-session files and the tests, without a UI.  The
paragraphs and time markers are engine.telemetry.transcript's.  Writes are atomic (temp file beside the target + `os.replace`): a failed export never
damages the file that was there before.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

from engine.audio import FRAME_MS
from engine.telemetry.transcript import FORMATS, mmss, paragraphs

SUMMARY_STAGES = ("encode", "uplink", "queue", "model", "decode", "processing", "playback")
STAGE_LABELS = {
    "encode": "encode",
    "uplink": "uplink (client → server)",
    "queue": "server queue",
    "model": "model step",
    "decode": "downlink + decode",
    "processing": "processing (capture → PCM ready)",
    "playback": "playback (mic → speaker)",
    "encode_work": "encode (codec work only)",
    "decode_work": "decode (codec work only)",
}


COUNTER_LABELS = {
    "underruns": "output underruns",
    "drops_input": "input frames dropped",
    "drops_output": "output frames dropped",
    "drops_decode": "frames not decoded (decoder behind)",
    "overruns": "input device overruns",
    "underflows": "output device underflows",
    "delay_steps": "steps without audio (codebook delays)",
    "segments": "context resets",
    "trims_output": "frames shortened to bring the playback delay down",
    "early_encodes": "frames encoded from their first 40 ms (early encode)",
}


def default_session_dir(now: _dt.datetime | None = None) -> Path:
    """`<user data dir>/moshi-tui/sessions/<YYYYmmdd-HHMMSS>` (not created)."""
    import platformdirs

    now = now or _dt.datetime.now()
    return Path(platformdirs.user_data_dir("moshi-tui")) / "sessions" / now.strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- formats
def _num(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _title_date(stats: dict) -> str:
    started = stats.get("started_at")
    if not started:
        return "unknown"
    try:
        return _dt.datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(started)


def transcript_markdown(stats: dict) -> str:
    """A readable transcript: header, [mm:ss] paragraphs, then the latency summary."""
    model = stats.get("model") or {}
    audio = stats.get("audio") or {}
    lines = ["# Moshi conversation", ""]
    lines.append(f"- **Model:** {model.get('model') or 'unknown'}")
    lines.append(f"- **Date:** {_title_date(stats)}")
    lines.append(f"- **Duration:** {mmss((stats.get('duration_s') or 0) * 1000)}")
    lines.append(f"- **Audio:** {audio.get('input') or '?'} → {audio.get('output') or '?'}")
    if model.get("server_sampling_text"):
        lines.append(f"- **Sampling:** {model['server_sampling_text']}")
    if stats.get("end_reason"):
        lines.append(f"- **Ended:** {stats['end_reason']}")
    if stats.get("error"):
        lines.append(f"- **Error:** {stats['error']}")
    lines += ["", "## Transcript", ""]
    paras = paragraphs((stats.get("transcript") or {}).get("tokens") or [])
    if not paras:
        lines += ["*(Moshi said nothing.)*", ""]
    for p in paras:
        if p.new_segment:
            lines += [f"*— {p.segment_label} starts —*", ""]
        lines += [f"**[{mmss(p.t_ms)}]** {p.text}", ""]

    lines += _turn_lines(stats.get("turns"))
    if stats.get("diagnosis"):
        lines += ["## Diagnosis", ""]
        lines += [f"- **{d.get('level', '?')}**: {d.get('text', '')}" for d in stats["diagnosis"]]
        lines.append("")
    lines += ["## Latency", "",
              f"Milliseconds per 80 ms frame (budget {FRAME_MS:.0f} ms), whole session.", "",
              "| stage | p50 | p95 | p99 | max | frames |", "|---|---:|---:|---:|---:|---:|"]
    stages = stats.get("stages_ms") or {}
    for name in SUMMARY_STAGES + ("encode_work", "decode_work"):
        st = stages.get(name)
        if not st:
            continue
        lines.append(f"| {STAGE_LABELS.get(name, name)} | {_num(st.get('p50'))} | {_num(st.get('p95'))} "
                     f"| {_num(st.get('p99'))} | {_num(st.get('max'))} | {st.get('n') or 0} |")
    lines += ["", "## Counters", "", "| counter | value |", "|---|---:|"]
    frames = stats.get("frames") or {}
    for key in ("captured", "processed", "played"):
        if key in frames:
            lines.append(f"| frames {key} | {frames[key]} |")
    for key, value in (stats.get("counters") or {}).items():
        lines.append(f"| {COUNTER_LABELS.get(key, key)} | {value} |")
    startup = stats.get("startup") or {}
    if startup.get("first_capture_to_first_output_ms") is not None:
        lines.append(f"| first capture → first output (ms) | "
                     f"{_num(startup['first_capture_to_first_output_ms'])} |")
    warnings = stats.get("warnings") or []
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines).rstrip() + "\n"


JSON_KEYS = ("model", "audio", "duration_s", "end_reason", "error", "frames", "startup", "stages_ms",
             "counters", "queues_max", "warnings", "processes", "machine", "options", "turns")

SPEAKERS = {"user": "You", "moshi": "Moshi"}


def _turn_lines(turns: dict | None) -> list[str]:
    """Who spoke when (each stretch of speech, both sides in time order) and the turn-taking
    summary, from stats.json's "turns"."""
    if not turns:
        return []
    spans = sorted((a, b, side) for side, v in (turns.get("speech_s") or {}).items()
                   for a, b in v if a is not None)
    lines = ["## Who spoke when", ""]
    if not spans:
        lines += ["*(no speech heard on either side)*", ""]
    for a, b, side in spans:
        length = "…" if b is None else f"{b - a:.1f} s"
        lines.append(f"- **[{mmss(a * 1000)}]** {SPEAKERS.get(side, side)}, {length}")
    summ = turns.get("summary") or {}
    resp, stop = summ.get("response_ms") or {}, summ.get("stop_ms") or {}
    counts = summ.get("counts") or {}
    lines += ["", "| turn-taking | p50 | p90 | n |", "|---|---:|---:|---:|",
              f"| response latency (ms) | {_num(resp.get('p50'), 0)} | {_num(resp.get('p90'), 0)} "
              f"| {resp.get('n') or 0} |",
              f"| stop latency (ms) | {_num(stop.get('p50'), 0)} | {_num(stop.get('p90'), 0)} "
              f"| {stop.get('n') or 0} |", ""]
    lines.append("Kept the floor {kept_floor}, takeovers {takeover}, backchannels {backchannel}, "
                 "unanswered {unanswered}; overlap {ov}.".format(
                     ov="–" if summ.get("overlap_share") is None
                     else f"{100 * summ['overlap_share']:.0f} %",
                     **{k: counts.get(k, 0) for k in ("kept_floor", "takeover", "backchannel",
                                                       "unanswered")}))
    lag = turns.get("lag_ms") or {}
    lines += ["", f"(The voice activity detector's lag is taken out: onset {_num(lag.get('onset'), 0)} ms, "
              f"offset {_num(lag.get('offset'), 0)} ms.)", ""]
    return lines


def transcript_json(stats: dict) -> str:
    """Tokens with timestamps, paragraphs, stage percentiles, counters, model and device info."""
    transcript = stats.get("transcript") or {}
    tokens = transcript.get("tokens") or []
    doc = {
        "format": "moshi-tui transcript",
        "version": 1,
        "started_at": stats.get("started_at"),
        **{k: stats.get(k) for k in JSON_KEYS if k in stats},
        "transcript": {
            "text": transcript.get("text", ""),
            "paragraphs": [
                {"t_ms": round(p.t_ms, 1), "at": mmss(p.t_ms), "segment": p.segment, "text": p.text}
                for p in paragraphs(tokens)
            ],
            "tokens": tokens,
        },
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


RENDERERS = {"markdown": transcript_markdown, "json": transcript_json}


def format_for(path: str | Path) -> str:
    """The format a file name implies (.json → json, anything else → markdown)."""
    return "json" if str(path).lower().endswith(".json") else "markdown"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write beside the target and rename over it; on any failure the old file is untouched."""
    path = Path(path).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        # (mkstemp makes the file private: give it the mode a plain open() would, or keep the
        # mode of the file it replaces)
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    """The process umask (read without changing it where the system tells it: setting it, even
    for an instant, would apply to files other threads create meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def export(stats: dict, path: str | Path, fmt: str | None = None) -> Path:
    """Render `stats` as `fmt` ("markdown"/"json"; default from the extension) into `path`."""
    fmt = fmt or format_for(path)
    if fmt not in RENDERERS:
        raise ValueError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")
    return write_text_atomic(path, RENDERERS[fmt](stats))


def write_session_files(session_dir: str | Path, stats: dict) -> list[Path]:
    """The files every session leaves behind: transcript.md, transcript.json and stats.json."""
    folder = Path(session_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return [
        export(stats, folder / "transcript.md", "markdown"),
        export(stats, folder / "transcript.json", "json"),
        write_text_atomic(folder / "stats.json", json.dumps(stats, indent=2, default=str) + "\n"),
    ]
