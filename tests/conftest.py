"""Shared fixtures: a private JACK dummy server for device tests, and the bundled speech WAV.

Other fixtures belong in their own modules (tests/fixtures_*.py or per-test-file), not here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEECH_WAV = ROOT / "engine" / "audio" / "data" / "speech.wav"

# Test the work tree even when the package is not installed (or installed elsewhere).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import jackdummy  # noqa: E402


def require(what: str) -> None:
    """A component the suite needs is missing: skip here, but fail under CI=true (CI installs
    everything; a test skipped there would hide a broken install)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory):
    """A private JACK dummy server (24 kHz, 1920-frame periods) with PortAudio re-initialised.

    Skips when jackd, the JACK-Client package or PortAudio's JACK host API is missing.  The
    server name is unique to this run and exported as JACK_DEFAULT_SERVER, so PortAudio's JACK
    host API talks to this server and never to another jackd on the machine.
    """
    saved = {k: os.environ.get(k) for k in jackdummy.ENV_KEYS}
    server = None
    try:
        try:
            server = jackdummy.start(tmp_path_factory.mktemp("jack"))
        except jackdummy.JackUnavailable as e:
            require(f"device tests need JACK: {e}")
        except RuntimeError as e:
            pytest.fail(str(e))
        yield server
    finally:
        jackdummy.shutdown(server)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    """The bundled ~13.5 s English speech fixture (24 kHz mono 16-bit PCM)."""
    if not SPEECH_WAV.is_file():
        pytest.fail(f"missing {SPEECH_WAV}: run scripts/make_speech_wav.sh")
    return SPEECH_WAV
