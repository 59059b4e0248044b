"""A private `jackd -d dummy` sound card: used by the device tests (tests/conftest.py), by
scripts.compare_official and scripts.bench_aec (all need real PortAudio callbacks on a machine
without audio)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

JACK_RATE = 24000
JACK_PERIOD = 1920
ENV_KEYS = ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER", "JACK_NO_AUDIO_RESERVATION")


class JackUnavailable(RuntimeError):
    """jackd, libjack/JACK-Client, PortAudio or its JACK host API is missing."""


class JackServer:
    """A running `jackd -d dummy` with a server name private to this run."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path, setup_s: float,
                 rate: int = JACK_RATE, period: int = JACK_PERIOD):
        self.name = name
        self.rate, self.period = rate, period
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.setup_s = setup_s  # jackd start -> server ready -> PortAudio re-initialised
        self._client = None

    def client(self):
        """A JACK-Client connection to this server (kept open, closed by stop())."""
        if self._client is None:
            import jack

            self._client = jack.Client(
                f"jackdummy-{os.getpid()}", no_start_server=True, servername=self.name
            )
            self._client.activate()
        return self._client

    def portaudio_ports(self, *, is_input: bool) -> list[str]:
        c = self.client()
        ports = c.get_ports(is_audio=True, is_input=is_input, is_output=not is_input)
        return [p.name for p in ports if not p.name.startswith(("system:", f"jackdummy-{os.getpid()}:"))]

    def wait_ports(self, timeout: float = 5.0) -> tuple[list[str], list[str]]:
        """(output ports, input ports) of PortAudio's streams, once both exist (sorted)."""
        deadline = time.monotonic() + timeout
        while True:
            outs = sorted(self.portaudio_ports(is_input=False))
            ins = sorted(self.portaudio_ports(is_input=True))
            if outs and ins:
                return outs, ins
            if time.monotonic() > deadline:
                raise RuntimeError(f"no PortAudio ports to loop back (out={outs}, in={ins})")
            time.sleep(0.01)

    def connect_loopback(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Connect every PortAudio output port to every PortAudio input port.

        Call after the streams have started (their ports exist from then on).  Returns the
        (source, destination) pairs that are connected.
        """
        c = self.client()
        outs, ins = self.wait_ports(timeout)
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


def _jack_ready(name: str, rate: int) -> bool:
    import jack

    try:
        c = jack.Client("jackdummy-probe", no_start_server=True, servername=name)
    except jack.JackError:
        return False
    ok = c.samplerate == rate
    c.close()
    return ok


def _reinit_portaudio() -> None:
    sd = sys.modules.get("sounddevice")
    if sd is None:
        import sounddevice as sd
    else:  # imported before the server existed: re-enumerate the host APIs
        sd._terminate()
        sd._initialize()
    if not any("JACK" in h["name"] for h in sd.query_hostapis()):
        sd._terminate()
        sd._initialize()
    if not any("JACK" in h["name"] for h in sd.query_hostapis()):
        # e.g. the PortAudio bundled in the macOS sounddevice wheel has no JACK host API
        raise JackUnavailable("this PortAudio has no JACK host API")


def _realtime_allowed() -> bool:
    """Whether this process may schedule a thread in real time (SCHED_RR), as jackd's
    realtime mode needs: root usually may, but not in a container without CAP_SYS_NICE, where
    a realtime jackd starts and its clients then abort.  Tried on a throwaway thread."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    ok = []

    def attempt():
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))  # this thread only
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join()
    return bool(ok)


def start(log_dir: Path, period: int = JACK_PERIOD, rate: int = JACK_RATE) -> JackServer:
    """Start a private JACK dummy server (`rate` Hz, `period`-frame periods: 24 kHz and 80 ms
    unless told otherwise), export its name in
    JACK_DEFAULT_SERVER (so PortAudio here and in child processes talks to it and never to
    another jackd on the machine) and re-initialise PortAudio.  Raises JackUnavailable when
    this machine cannot, RuntimeError when jackd fails."""
    jackd = shutil.which("jackd")
    if jackd is None:
        raise JackUnavailable("jackd is not installed (apt-get install jackd2)")
    try:
        import jack  # noqa: F401
    except Exception as e:  # OSError when libjack is missing
        raise JackUnavailable(f"JACK-Client is not usable: {e}") from None
    try:
        import sounddevice  # noqa: F401
    except OSError as e:  # sounddevice raises OSError when the PortAudio library is missing
        why = f"PortAudio is not usable: {e} (apt-get install libportaudio2)"
        raise JackUnavailable(why) from None

    name = f"moshi-tui-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_START_SERVER"] = "1"  # libjack must never spawn a server of its own
    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"  # no D-Bus device reservation
    cmd = [jackd, "-n", name]
    if not _realtime_allowed():
        cmd.append("--no-realtime")
    cmd += ["-d", "dummy", "-r", str(rate), "-p", str(period)]
    log_path = Path(log_dir) / "jackd.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = t0 + 10.0
        time.sleep(0.1)  # fewer "cannot connect" lines from libjack while the server boots
        while not _jack_ready(name, rate):
            if proc.poll() is not None:
                raise RuntimeError(f"jackd exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"jackd not ready after 10 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        _reinit_portaudio()
        server = JackServer(name, proc, log_path, time.monotonic() - t0, rate, period)
        server.client()  # connect now, so connect_loopback() costs only the connections
        return server
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        raise


def shutdown(server: JackServer | None, env: dict[str, str | None] | None = None) -> None:
    """Stop the server; PortAudio lets go of it first (Pa_Terminate aborts the process when
    its JACK client's server has already gone), then re-enumerates without it, after `env`
    (values of ENV_KEYS, None: unset) is restored."""
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        try:
            sd._terminate()
        except Exception:
            pass
    if server is not None:
        server.stop()
    for k, v in (env or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if sd is not None:
        try:
            sd._initialize()
        except Exception:
            pass


def device_index(kind: str) -> int | None:
    """The PortAudio index of the JACK input or output device, or None."""
    import sounddevice as sd

    key = "max_input_channels" if kind == "input" else "max_output_channels"
    for d in sd.query_devices():
        if "JACK" in sd.query_hostapis(d["hostapi"])["name"] and d[key] > 0:
            return d["index"]
    return None
