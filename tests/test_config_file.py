"""~/.config/moshi-tui/config.toml: the options people set every time; the command line
overrides it; a bad key or value is one line naming the file, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def moshi(args, config, tmp_path):
    env = {"MOSHI_TUI_CONFIG": str(config), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_file_sets_options_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('voice = "moshika"\nquantized = 8\naec = "on"\ntext_temperature = 0.6\n'
                   'seed = 42\nnoise-suppression = true\n[panels]\nlog = true\nqueues = false\n')
    r = moshi(["--print-config", "--text-temperature", "0.9"], cfg, tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"config file: {cfg}" in out
    for line in ('voice = "moshika"', "quantized = 8", 'aec = "on"', "seed = 42",
                 "noise_suppression = true", 'panel_log = "on"', 'panel_queues = "off"',
                 "text_temperature = 0.9"):  # (0.9: the command line over the file's 0.6)
        assert line in out.splitlines(), (line, out)


def test_no_file_is_fine(tmp_path):
    r = moshi(["--print-config"], tmp_path / "absent.toml", tmp_path)
    assert r.returncode == 0 and "absent" in r.stdout and 'aec = "auto"' in r.stdout


@pytest.mark.parametrize("text, message", [
    ("volume = 11\n", "unknown key 'volume'"),
    ('aec = "sometimes"\n', "argument --aec: invalid choice: 'sometimes'"),
    ("text_temperature = 20\n", "text temperature must be between 0 and 10"),
    ("headless = true\n", "unknown key 'headless'"),
    ("[panels]\nchat = true\n", "[panels] chat = True"),
    ("voice = \n", "not valid TOML"),
])
def test_a_bad_file_is_one_line_and_exit_2(tmp_path, text, message):
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    r = moshi(["--demo", "--headless", "--seconds", "1"], cfg, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"moshi-tui: error: config file {cfg}: ") and message in lines[0]
