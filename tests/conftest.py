"""Shared fixtures: a private JACK dummy server for device tests, and the bundled speech WAV.

Other fixtures belong in their own modules (tests/fixtures_*.py or per-test-file), not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEECH_WAV = ROOT / "engine" / "audio" / "data" / "speech.wav"

from scripts import jackdummy

# The tests never read the developer's own ~/.config/moshi-tui/config.toml.
os.environ["MOSHI_TUI_CONFIG"] = os.devnull


def require(what: str) -> None:
    """A component the suite needs is missing: skip here, but fail under CI=true (CI installs
    everything; a test skipped there would hide a broken install)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {what}", pytrace=False)
    pytest.skip(what)


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

    Skips when jackd, the JACK-Client package or PortAudio's JACK host API is missing.  The
    server name is unique to this run and exported as JACK_DEFAULT_SERVER, so PortAudio's JACK
    host API talks to this server and never to another jackd on the machine.  It keeps running
    for the next test that wants the same card.
    """
    return jack_cards.use(jackdummy.JACK_RATE, jackdummy.JACK_PERIOD)


@pytest.fixture
def jack_card_20ms(jack_cards):
    """Like jack_server, with 20 ms (480-sample) periods: most real devices', and the card
    behind the README's latency figures."""
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
