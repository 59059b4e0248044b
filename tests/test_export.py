"""engine.files.export: transcript Markdown/JSON from a session summary, and atomic writes;
engine.telemetry.transcript: its paragraphs and time markers."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from engine.files import export as ex
from engine.telemetry import transcript as layout


def _tok(text, t_ms, segment=0, step=0):
    return {"text": text, "id": 7, "step": step, "t_ms": t_ms, "segment": segment}


@pytest.fixture
def stats() -> dict:
    tokens = [
        _tok(" Hello", 800.0), _tok(",", 880.0), _tok(" I'm", 960.0), _tok(" Moshi.", 1040.0),
        # 2 s of silence -> a new paragraph
        _tok(" How", 3100.0), _tok(" are", 3180.0), _tok(" you?", 3260.0),
        # context reset -> new segment, new paragraph even without a pause
        _tok(" Fine", 3400.0, segment=1), _tok(" thanks.", 3480.0, segment=1),
        # past a minute, to check mm:ss
        _tok(" Bye.", 75_500.0, segment=1),
    ]
    return {
        "version": 1,
        "started_at": "2025-11-25T12:34:56",
        "end_reason": "end of input",
        "error": None,
        "model": {"model": "demo (bf16)", "server_dtype": "bf16"},
        "audio": {"input": "speech.wav", "output": "null", "output_latency_ms": 0.0},
        "duration_s": 76.2,
        "frames": {"captured": 950, "processed": 948, "played": 946, "steps": 950, "delay_steps": 2},
        "startup": {"first_capture_to_first_output_ms": 231.4},
        "stages_ms": {
            "encode": {"p50": 27.1, "p95": 31.5, "p99": 40.2, "max": 52.0, "mean": 27.9, "n": 948},
            "model": {"p50": 14.3, "p95": 16.6, "p99": 17.3, "max": 18.0, "mean": 14.2, "n": 948},
            "processing": {"p50": 73.1, "p95": 81.6, "p99": 99.0, "max": 120.0, "mean": 74.0, "n": 948},
            "playback": {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "n": 0},
        },
        "counters": {"underruns": 2, "drops_input": 1, "segments": 1, "custom_counter": 5},
        "queues_max": {"input": 2, "c2s": 1, "s2c": 1, "output": 2},
        "warnings": ["input dropped: pipeline behind real time"],
        "diagnosis": [{"level": "warn", "rule": "jitter",
                       "text": "processing p99 99 ms is 26 ms above its p50: some frames are late"}],
        "processes": {"client": {"cpu_percent": 80.0, "rss_mb": 900.0}},
        "machine": {"platform": "test"},
        "transcript": {"text": "".join(t["text"] for t in tokens), "tokens": tokens},
    }


def test_paragraphs_break_on_silence_and_segment(stats):
    paras = layout.paragraphs(stats["transcript"]["tokens"])
    assert [p.text for p in paras] == ["Hello, I'm Moshi.", "How are you?", "Fine thanks.", "Bye."]
    assert [layout.mmss(p.t_ms) for p in paras] == ["00:00", "00:03", "00:03", "01:15"]
    assert [p.new_segment for p in paras] == [False, False, True, False]


def test_markdown_reads_well(stats):
    md = ex.transcript_markdown(stats)
    assert md.startswith("# Moshi conversation\n")
    assert "- **Model:** demo (bf16)" in md
    assert "- **Date:** 2025-11-25 12:34:56" in md
    assert "- **Duration:** 01:16" in md
    assert "- **Audio:** speech.wav → null" in md
    assert "**[00:00]** Hello, I'm Moshi.\n\n**[00:03]** How are you?" in md
    assert "segment 2 starts" in md
    assert "**[01:15]** Bye." in md
    # the latency table: p50/p95/p99 per stage, missing values as a dash
    assert "| stage | p50 | p95 | p99 | max | frames |" in md
    assert "| model step | 14.3 | 16.6 | 17.3 | 18.0 | 948 |" in md
    assert "| playback (mic → speaker) | – | – | – | – | 0 |" in md
    assert "| output underruns | 2 |" in md
    assert "| custom_counter | 5 |" in md  # unknown counters still appear
    assert "- input dropped: pipeline behind real time" in md
    assert "- **warn**: processing p99 99 ms is 26 ms above its p50: some frames are late" in md
    assert md.index("## Transcript") < md.index("## Diagnosis") < md.index("## Latency") < md.index("## Counters")


def test_markdown_without_tokens_or_date():
    md = ex.transcript_markdown({"model": {}, "transcript": {"tokens": []}, "error": "server died"})
    assert "*(Moshi said nothing.)*" in md
    assert "- **Date:** unknown" in md
    assert "- **Error:** server died" in md


def test_json_has_tokens_percentiles_counters_and_info(stats):
    doc = json.loads(ex.transcript_json(stats))
    assert doc["format"] == "moshi-tui transcript" and doc["version"] == 1
    assert doc["started_at"] == "2025-11-25T12:34:56"
    assert doc["model"]["model"] == "demo (bf16)"
    assert doc["audio"]["input"] == "speech.wav"
    assert doc["stages_ms"]["processing"]["p95"] == 81.6
    assert doc["counters"]["underruns"] == 2
    assert doc["transcript"]["tokens"] == stats["transcript"]["tokens"]
    assert doc["transcript"]["paragraphs"][1] == {"t_ms": 3100.0, "at": "00:03", "segment": 0,
                                                  "text": "How are you?"}


def test_export_picks_format_and_writes(tmp_path, stats):
    md = ex.export(stats, tmp_path / "t.md")
    js = ex.export(stats, tmp_path / "t.json")
    forced = ex.export(stats, tmp_path / "t.txt", "json")
    assert md.read_text().startswith("# Moshi conversation")
    assert json.loads(js.read_text())["format"] == "moshi-tui transcript"
    assert json.loads(forced.read_text())["format"] == "moshi-tui transcript"
    with pytest.raises(ValueError):
        ex.export(stats, tmp_path / "t.pdf", "pdf")
    assert not (tmp_path / "t.pdf").exists()


def test_exported_files_get_the_usual_permissions(tmp_path, stats):
    """A transcript is for sharing: umask-based mode, not the private mode of a temp file; a
    file written over keeps its own mode."""
    old = os.umask(0o022)
    try:
        new = ex.export(stats, tmp_path / "t.md")
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "k.md"
        kept.write_text("old")
        kept.chmod(0o640)
        ex.export(stats, kept)
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() != "old"
    finally:
        os.umask(old)


def test_failed_export_keeps_the_previous_file(tmp_path, stats, monkeypatch):
    target = tmp_path / "transcript.md"
    target.write_text("previous export\n")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        ex.export(stats, target, "markdown")
    assert target.read_text() == "previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["transcript.md"]  # no temp file left behind


def test_failed_render_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "transcript.json"
    target.write_text("{}\n")
    with pytest.raises(KeyError):
        ex.export({"transcript": {"tokens": [{"text": "x"}]}}, target, "json")  # no t_ms
    assert target.read_text() == "{}\n"


def test_write_session_files(tmp_path, stats):
    folder = tmp_path / "a" / "b"
    files = ex.write_session_files(folder, stats)
    assert sorted(p.name for p in files) == ["stats.json", "transcript.json", "transcript.md"]
    assert json.loads((folder / "stats.json").read_text())["end_reason"] == "end of input"


def test_default_session_dir():
    d = ex.default_session_dir(dt.datetime(2025, 1, 2, 3, 4, 5))
    assert d.name == "20250102-030405"
    assert d.parent.name == "sessions"
    assert "moshi-tui" in str(d)
    assert not d.exists() or d.is_dir()


def test_format_for():
    assert ex.format_for(Path("x.JSON")) == "json"
    assert ex.format_for("x.md") == "markdown"


def test_long_monologue_is_split_at_a_word():
    words = [_tok(f" word{i}", 100.0 * i) for i in range(200)]  # no pause at all
    paras = layout.paragraphs(words)
    assert len(paras) > 1
    assert all(len(p.text) <= layout.PARAGRAPH_MAX_CHARS + 10 for p in paras)
    assert " ".join(p.text for p in paras) == " ".join(w["text"].strip() for w in words)
    assert [p.new_segment for p in paras] == [False] * len(paras)


def test_a_restart_is_named_as_a_restart(stats):
    """A segment begun by restarting a dead model server is not a full context."""
    toks = stats["transcript"]["tokens"]
    for t in toks:
        if t["segment"] == 1:
            t["segment_reason"] = "restart"
    md = ex.transcript_markdown(stats)
    assert "*— model restarted: segment 2 starts —*" in md and "context full" not in md
    for t in toks:
        t["segment_reason"] = "context" if t["segment"] else ""
    assert "*— context full: segment 2 starts —*" in ex.transcript_markdown(stats)
