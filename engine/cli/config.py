"""The options people set every time, in a file: ~/.config/moshi-tui/config.toml.

    # ~/.config/moshi-tui/config.toml (platformdirs' user config folder; $MOSHI_TUI_CONFIG
    # names another file)
    voice = "moshika"
    quantized = 4
    input = "USB Microphone"
    output = "MacBook Pro Speakers"
    aec = "on"
    text_temperature = 0.7
    seed = 1234
    [panels]
    log = true
    queues = false

Every key is a command-line option of `moshi-tui` (its long name, with `_` or `-`); options
given on the command line override the file.  The file's values go through the same parser
as the command line, so a bad key or value is one line naming the file, and exit 2.
`moshi-tui --print-config` shows the merged result.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.cli.options import PANELS, sampling
from engine.errors import UsageError

CONFIG_ENV = "MOSHI_TUI_CONFIG"
NOT_IN_FILE = ("help", "print_config", "headless")  # one-off switches, not preferences


def config_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("moshi-tui")) / "config.toml"


def _read(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"config file {path}: cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path}: not valid TOML: {e}") from None


def config_argv(parser: argparse.ArgumentParser, path: Path | None = None) -> tuple[list[str], Path]:
    """The config file as command-line tokens for `parser` (to go before the real ones)."""
    path = path or config_path()
    data = _read(path)
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in data.items():
        if key == "panels":
            tokens += _panels(value, path)
            continue
        dest = key.replace("-", "_")
        if dest == "demo":  # demo = true, or the demo's kind: "moshi", "hibiki"
            dest, value = "demo_model", ("moshi" if value is True else value)
            if value is False:
                continue
        action = actions.get(dest)
        if action is None or dest in NOT_IN_FILE or dest.startswith("panel_"):
            raise UsageError(f"config file {path}: unknown key {key!r} (keys are the long "
                             "options of `moshi-tui --help`, and [panels])")
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise UsageError(f"config file {path}: {key} must be true or false, not {value!r}")
            tokens += [flag] if value else []
        elif isinstance(value, (dict, list)) or isinstance(value, bool) and not action.type:
            raise UsageError(f"config file {path}: {key} = {value!r} is not a single value")
        else:
            tokens += [flag, str(value)]
    try:  # the same checks as the command line, named after the file
        sampling(parser.parse_args(tokens))
    except UsageError as e:
        text = str(e)
        raise UsageError(f"config file {path}: {text.removeprefix('moshi-tui: ')}") from None
    return tokens, path


def _panels(value, path: Path) -> list[str]:
    if not isinstance(value, dict):
        raise UsageError(f"config file {path}: [panels] must be a table ({', '.join(PANELS)})")
    tokens = []
    for name, shown in value.items():
        if name not in PANELS or not isinstance(shown, bool):
            raise UsageError(f"config file {path}: [panels] {name} = {shown!r}: use "
                             f"{', '.join(PANELS)} = true or false")
        tokens += [f"--panel-{name}", "on" if shown else "off"]
    return tokens


def describe(args, path: Path) -> str:
    """The merged options, as TOML a user could paste into the file."""
    lines = [f"# options in effect (config file: {path}{'' if path.exists() else ', absent'})"]
    for key, value in sorted(vars(args).items()):
        if key.startswith("_") or key in NOT_IN_FILE or value is None:
            continue
        if isinstance(value, str):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        else:
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines)
