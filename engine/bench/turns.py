"""`moshi-tui bench turns`: how Moshi takes turns, on scripted conversations played in real time.

Each scenario is a microphone script made offline, played through the real pipeline (a `Session`
with its model process, the four client loops, paced source and sink) `repeats` times in one
session, a few seconds of silence after each; the turns come from the session's own voice
activity (engine.telemetry.voice) and definitions (engine.telemetry.turns):

    question     a question, then silence: the response latency
    pause        a sentence with a pause shorter than the end-of-turn pause: does Moshi take over?
    interrupt    a question, Moshi's answer, then the user cuts in: the stop latency
    backchannel  a long telling: does Moshi backchannel?

The speech is made by espeak-ng (with sox) when both are installed, else cut from the bundled
recording (said in the result).  With real weights this is a user's own evaluation of their
setup; the demo model babbles random audio, so its figures exercise the machinery only.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from engine.audio import BUNDLED_SPEECH, SAMPLE_RATE
from engine.audio.wavio import WavWriter, read_wav
from engine.errors import UsageError
from engine.model.source import ModelOptions
from engine.telemetry.stages import percentiles

Progress = Callable[[str], None]
SR = SAMPLE_RATE
AFTER_S = 3.0  # silence after each repetition: room for Moshi's answer and the turn's end
PAUSE_S = 0.35  # the mid-sentence pause (shorter than the end-of-turn pause)
ANSWER_ROOM_S = 2.5  # between the question and the interruption in `interrupt`

# scenario -> its script: ("say", text, bundled (start, end) s) or ("gap", seconds)
SCENARIOS: dict[str, list[tuple]] = {
    "question": [("say", "Can you tell me what time the museum opens tomorrow?", (4.12, 4.96))],
    "pause": [("say", "I was thinking that maybe", (4.12, 4.96)), ("gap", PAUSE_S),
              ("say", "we could go to the beach this weekend.", (9.28, 10.02))],
    "interrupt": [("say", "Tell me a story about a dragon.", (4.12, 4.96)), ("gap", ANSWER_ROOM_S),
                  ("say", "Wait, stop, I have a question.", (8.00, 8.58))],
    "backchannel": [("say", "So yesterday I went to the market, and I bought some apples, and "
                     "then I met an old friend, and we talked for a long while about work.",
                     (9.28, 12.70))],
}


def _espeak(text: str) -> np.ndarray | None:
    """`text` spoken by espeak-ng at 24 kHz, trimmed to its speech; None when it cannot."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return None
    with tempfile.TemporaryDirectory() as d:
        raw, wav = Path(d) / "raw.wav", Path(d) / "out.wav"
        try:
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), text],
                           check=True, capture_output=True, timeout=30)
            subprocess.run(["sox", str(raw), "-r", str(SR), "-c", "1", "-b", "16", str(wav)],
                           check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        x = read_wav(wav)
    loud = np.flatnonzero(np.abs(x) > 0.01)
    return x[loud[0]:loud[-1] + 1] * 0.6 if loud.size else None


def make_script(name: str, repeats: int, path: Path, use_espeak: bool = True) -> dict:
    """Write scenario `name`'s microphone WAV (`repeats` times) to `path`; what it holds: the
    user's speech as (start, end) s, and the speech's source."""
    bundled = read_wav(BUNDLED_SPEECH)
    parts, spans, t, source = [np.zeros(int(SR * 1.0), np.float32)], [], 1.0, "espeak-ng"
    for _ in range(repeats):
        for item in SCENARIOS[name]:
            if item[0] == "gap":
                pcm = np.zeros(int(item[1] * SR), np.float32)
            else:
                pcm = _espeak(item[1]) if use_espeak else None
                if pcm is None:
                    source = "bundled speech (espeak-ng or sox missing)"
                    a, b = item[2]
                    pcm = bundled[int(a * SR):int(b * SR)]
                spans.append((round(t, 3), round(t + pcm.size / SR, 3)))
            parts.append(pcm.astype(np.float32))
            t += pcm.size / SR
        parts.append(np.zeros(int(AFTER_S * SR), np.float32))
        t += AFTER_S
    w = WavWriter(path)
    w.write(np.concatenate(parts))
    w.close()
    return {"user_speech_s": spans, "speech": source, "seconds": round(t, 2)}


def summarise(turns: list[dict], repeats: int) -> dict:
    """The figures of one scenario from its turns (stats.json's "turns" list)."""
    def p(kind):
        q = percentiles([t["latency_ms"] for t in turns if t["kind"] == kind], qs=(50, 90))
        return {"p50": q["p50"], "p90": q["p90"], "n": q["n"]}

    counts = {k: sum(t["kind"] == k for t in turns)
              for k in ("response", "stop", "kept_floor", "takeover", "backchannel", "unanswered")}
    return {"repeats": repeats, "takeover_rate": round(counts["takeover"] / repeats, 3),
            "response_ms": p("response"), "stop_ms": p("stop"), "counts": counts}


def run_turns(mopts: ModelOptions, *, scenarios: list[str], repeats: int, output_spec: str = "null",
              progress: Progress | None = None) -> dict:
    """Each scenario in its own session; returns the JSON-ready result."""
    from engine.audio.devices import open_sink
    from engine.audio.paced import WavFileSource
    from engine.session.config import SessionConfig
    from engine.session.local import Session
    from engine.session.runner import SessionRunner

    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    if repeats < 1:
        raise UsageError("--repeats must be at least 1")
    out: dict = {"scenarios": {}, "error": None, "exit_code": 0}
    with tempfile.TemporaryDirectory(prefix="moshi-tui-turns-") as d:
        for name in scenarios:
            wav = Path(d) / f"{name}.wav"
            script = make_script(name, repeats, wav)
            if progress:
                progress(f"{name}: {repeats} x, {script['seconds']:.0f} s of {script['speech']}")
            cfg = SessionConfig(model=mopts, input=str(wav), output=output_spec, save=False,
                                aec="off")
            session = Session(cfg)
            session.prepare((WavFileSource(wav), open_sink(output_spec, input_spec=str(wav))))
            runner = SessionRunner(session)
            runner.run(signals=("SIGINT", "SIGTERM"))
            stats = session.stats(options={"scenario": name})
            rec = stats.get("turns") or {}
            turns = rec.get("turns") or []
            out["scenarios"][name] = {**summarise(turns, repeats), **script, "turns": turns,
                                      "user_heard_s": (rec.get("speech_s") or {}).get("user"),
                                      "moshi_speech_s": (rec.get("speech_s") or {}).get("moshi")}
            out["lag_ms"] = rec.get("lag_ms")
            out["turn_options"] = rec.get("options")
            if stats.get("error"):
                out["error"], out["exit_code"] = stats["error"], session.exit_code or 1
                break
            if runner.interrupted.is_set():
                out["interrupted"] = True
                break
    return out


def format_turns(r: dict) -> str:
    def f(p):
        if not p or not p.get("n"):
            return "–"
        return f"{p['p50']:.0f} / {p['p90']:.0f} ({p['n']})"

    rows = [("scenario", "runs", "takeover", "response p50/p90 ms (n)", "stop p50/p90 ms (n)",
             "backch.", "kept floor")]
    for name, s in r["scenarios"].items():
        c = s["counts"]
        rows.append((name, str(s["repeats"]), f"{100 * s['takeover_rate']:.0f}%",
                     f(s["response_ms"]), f(s["stop_ms"]), str(c["backchannel"]),
                     str(c["kept_floor"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lag = r.get("lag_ms") or {}
    speech = sorted({s["speech"] for s in r["scenarios"].values()})
    lines += ["", f"speech: {', '.join(speech)}; the VAD's lag taken out: onset "
              f"{lag.get('onset', 0):.0f} ms, offset {lag.get('offset', 0):.0f} ms"]
    return "\n".join(lines)
