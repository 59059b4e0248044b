"""Shared fixtures: a private JACK dummy server for device tests, and the bundled speech WAV.

Other fixtures belong in their own modules (tests/fixtures_*.py or per-test-file), not here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEECH_WAV = ROOT / "engine" / "data" / "speech.wav"

# Test the work tree even when the package is not installed (or installed elsewhere).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

JACK_RATE = 24000
JACK_PERIOD = 1920


class JackServer:
    """A running `jackd -d dummy` with a server name private to this test run."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path, setup_s: float):
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.setup_s = setup_s  # jackd start -> server ready -> PortAudio re-initialised
        self._client = None

    def client(self):
        """A JACK-Client connection to this server (kept open, closed at teardown)."""
        if self._client is None:
            import jack

            self._client = jack.Client(
                f"pytest-{os.getpid()}", no_start_server=True, servername=self.name
            )
            self._client.activate()
        return self._client

    def portaudio_ports(self, *, is_input: bool) -> list[str]:
        c = self.client()
        ports = c.get_ports(is_audio=True, is_input=is_input, is_output=not is_input)
        return [p.name for p in ports if not p.name.startswith(("system:", f"pytest-{os.getpid()}:"))]

    def connect_loopback(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Connect every PortAudio output port to every PortAudio input port.

        Call after the streams have started (their ports exist from then on).  Returns the
        (source, destination) pairs that are connected.
        """
        c = self.client()
        deadline = time.monotonic() + timeout
        while True:
            outs = self.portaudio_ports(is_input=False)
            ins = self.portaudio_ports(is_input=True)
            if outs and ins:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no PortAudio ports to loop back (out={outs}, in={ins})")
            time.sleep(0.01)
        pairs = []
        for o in outs:
            for i in ins:
                already = {p.name for p in c.get_all_connections(o)}
                if i not in already:
                    c.connect(o, i)
                pairs.append((o, i))
        return pairs

    def stop(self) -> None:
        if self._client is not None:
            try:
                self._client.deactivate()
                self._client.close()
            except Exception:
                pass
            self._client = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _jack_ready(name: str) -> bool:
    import jack

    try:
        c = jack.Client("pytest-probe", no_start_server=True, servername=name)
    except jack.JackError:
        return False
    ok = c.samplerate == JACK_RATE
    c.close()
    return ok


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory):
    """A private JACK dummy server (24 kHz, 1920-frame periods) with PortAudio re-initialised.

    Skips when jackd or the JACK-Client package is missing.  The server name is unique to this
    run and exported as JACK_DEFAULT_SERVER, so PortAudio's JACK host API talks to this server
    and never to another jackd on the machine.
    """
    jackd = shutil.which("jackd")
    if jackd is None:
        pytest.skip("jackd is not installed (apt-get install jackd2): device tests need it")
    try:
        import jack  # noqa: F401
    except Exception as e:  # OSError when libjack is missing
        pytest.skip(f"JACK-Client is not usable: {e}")

    name = f"moshi-tui-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER",
                                             "JACK_NO_AUDIO_RESERVATION")}
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_START_SERVER"] = "1"  # libjack must never spawn a server of its own
    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"  # no D-Bus device reservation
    cmd = [jackd, "-n", name]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        cmd.append("--no-realtime")
    cmd += ["-d", "dummy", "-r", str(JACK_RATE), "-p", str(JACK_PERIOD)]
    log_path = tmp_path_factory.mktemp("jack") / "jackd.log"
    t0 = time.monotonic()
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = None
    try:
        deadline = t0 + 10.0
        time.sleep(0.1)  # fewer "cannot connect" lines from libjack while the server boots
        while not _jack_ready(name):
            if proc.poll() is not None:
                pytest.fail(f"jackd exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"jackd not ready after 10 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        sd = sys.modules.get("sounddevice")
        if sd is None:
            import sounddevice as sd
        else:  # imported before the server existed: re-enumerate the host APIs
            sd._terminate()
            sd._initialize()
        if not any("JACK" in h["name"] for h in sd.query_hostapis()):
            # PortAudio was initialised before the server started in this process
            sd._terminate()
            sd._initialize()
        if not any("JACK" in h["name"] for h in sd.query_hostapis()):
            # e.g. the PortAudio bundled in the macOS sounddevice wheel has no JACK host API
            pytest.skip("this PortAudio has no JACK host API: device tests need one")
        server = JackServer(name, proc, log_path, time.monotonic() - t0)
        server.client()  # connect now, so connect_loopback() costs only the connections
        yield server
    finally:
        # PortAudio must let go of the server BEFORE it dies: Pa_Terminate asserts (aborting
        # the whole test run) when its JACK client's server has already gone.
        sd = sys.modules.get("sounddevice")
        if sd is not None:
            try:
                sd._terminate()
            except Exception:
                pass
        if server is not None:
            server.stop()
        elif proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        if sd is not None:  # re-enumerate without the JACK host API
            try:
                sd._initialize()
            except Exception:
                pass
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
