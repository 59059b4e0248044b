"""Shared fixtures: the sandbox for the user's folders, the gate for missing components, a
private JACK dummy server for device tests, and the bundled speech WAV.

Other fixtures belong in their own modules (tests/fixtures_*.py or per-test-file), not here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEECH_WAV = ROOT / "engine" / "audio" / "data" / "speech.wav"

from scripts import jackdummy

APP = "moshi-tui"
XDG = {"data": "XDG_DATA_HOME", "cache": "XDG_CACHE_HOME", "config": "XDG_CONFIG_HOME",
       "state": "XDG_STATE_HOME"}


def _user_folders() -> dict[str, Path]:
    """moshi-tui's data, cache and config folders as the environment names them now
    (platformdirs, and $MOSHI_TUI_CACHE for the cache)."""
    cache = os.environ.get("MOSHI_TUI_CACHE")
    return {"data": Path(platformdirs.user_data_dir(APP)),
            "cache": Path(cache).expanduser() if cache else Path(platformdirs.user_cache_dir(APP)),
            "config": Path(platformdirs.user_config_dir(APP))}


def _listing(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Every file and folder under `folder` with its size and modification time (None: absent)."""
    if not folder.exists():
        return None
    out = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return out


# The tests never touch the user's own folders.  Their data, cache, config and state folders
# go to a sandbox for the whole run, in this process and in every process it starts
# (platformdirs reads XDG_* on Linux and macOS), and the config file is none at all.  The demo
# model is generated once per run into the cache tests/conftest_models.py makes.
USER_FOLDERS = _user_folders()
_BEFORE = {kind: _listing(path) for kind, path in USER_FOLDERS.items()}
SANDBOX = Path(tempfile.mkdtemp(prefix="moshi-tui-tests-")).resolve()
atexit.register(shutil.rmtree, SANDBOX, ignore_errors=True)
for _kind, _var in XDG.items():
    os.environ[_var] = str(SANDBOX / _kind)
os.environ["MOSHI_TUI_CACHE"] = str(SANDBOX / "cache" / APP)
os.environ["MOSHI_TUI_CONFIG"] = os.devnull


@pytest.fixture(scope="session", autouse=True)
def users_folders_untouched():
    """After the last test: the user's own moshi-tui folders are as they were before the
    first (an error at that test's teardown names what changed)."""
    yield
    changed = [f"{path} ({kind})" for kind, path in USER_FOLDERS.items()
               if _listing(path) != _BEFORE[kind]]
    if changed:
        pytest.fail("the tests wrote into the user's own folders (or moshi-tui ran beside "
                    f"them): {', '.join(changed)}", pytrace=False)


def require(what: str) -> None:
    """A component the suite needs is missing: skip here, but fail under CI=true (CI installs
    everything; a test skipped there would hide a broken install)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {what}", pytrace=False)
    pytest.skip(what)


def require_portaudio():
    """sounddevice with the PortAudio library loaded, or require() saying why not (on Linux:
    libportaudio2 is not installed)."""
    from engine.audio.portaudio import load_sounddevice
    from engine.errors import AudioError

    try:
        return load_sounddevice()
    except AudioError as e:
        require(f"needs PortAudio: {e}")


class JackCards:
    """Private JACK dummy servers ("sound cards"), one at a time: asking for another card stops
    the running one first, so PortAudio (which talks to the server named in
    JACK_DEFAULT_SERVER) never has two to choose from, whatever order the tests run in.  The
    environment is restored when the last one stops."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._saved = {k: os.environ.get(k) for k in jackdummy.ENV_KEYS}
        self._unavailable: str | None = None
        self.server: jackdummy.JackServer | None = None

    def use(self, rate: int, period: int) -> jackdummy.JackServer:
        s = self.server
        if s is not None and (s.rate, s.period) == (rate, period) and s.proc.poll() is None:
            return s
        self.close()
        if self._unavailable:
            require(self._unavailable)
        try:
            self.server = jackdummy.start(self._tmp.mktemp("jack"), period, rate=rate)
        except jackdummy.JackUnavailable as e:
            self._unavailable = f"device tests need JACK: {e}"
            require(self._unavailable)
        except RuntimeError as e:
            pytest.fail(str(e))
        return self.server

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            jackdummy.shutdown(server, env=self._saved)


@pytest.fixture(scope="session")
def jack_cards(tmp_path_factory):
    cards = JackCards(tmp_path_factory)
    try:
        yield cards
    finally:
        cards.close()


@pytest.fixture
def jack_server(jack_cards):
    """A private JACK dummy server (24 kHz, 1920-frame periods) with PortAudio re-initialised.

    Skips (fails under CI) when jackd, the JACK-Client package, PortAudio or its JACK host API
    is missing.  The server name is unique to this run and exported as JACK_DEFAULT_SERVER, so
    PortAudio's JACK host API talks to this server and never to another jackd on the machine.
    It keeps running for the next test that wants the same card.
    """
    return jack_cards.use(jackdummy.JACK_RATE, jackdummy.JACK_PERIOD)


@pytest.fixture
def jack_card_20ms(jack_cards):
    """Like jack_server, with 20 ms (480-sample) periods: most real devices', and the card
    behind the latency figures in docs/benchmarks.md."""
    return jack_cards.use(jackdummy.JACK_RATE, 480)


@pytest.fixture
def jack_card_48k(jack_cards):
    """Like jack_server, at 48 kHz (80 ms periods): every device stream is resampled."""
    return jack_cards.use(48000, 3840)


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    """The bundled ~13.5 s English speech fixture (24 kHz mono 16-bit PCM)."""
    if not SPEECH_WAV.is_file():
        pytest.fail(f"missing {SPEECH_WAV}: run scripts/make_speech_wav.sh")
    return SPEECH_WAV


def mlx_gpu() -> str | None:
    """Why MLX cannot compute on a GPU here (None when it can)."""
    try:
        import mlx.core as mx
    except Exception as e:  # noqa: BLE001
        return f"MLX does not load here: {e}"
    available = getattr(mx, "is_available", None)
    if available is not None and not available(mx.gpu):
        return "MLX has no GPU here"
    if mx.default_device().type != mx.DeviceType.gpu:
        return "MLX computes on the CPU here"
    return None


def pytest_runtest_setup(item):
    """`gpu` tests (full size, the MLX codec at speed) run only where MLX has a GPU; elsewhere,
    CI included, they skip with the reason."""
    if item.get_closest_marker("gpu") is not None:
        why = mlx_gpu()
        if why is not None:
            pytest.skip(f"gpu test: {why}")
