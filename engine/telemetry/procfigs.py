"""CPU % and RSS of the session's processes, shared by local and remote sessions."""

from __future__ import annotations

import os
import sys
import threading
import time


class ProcessFigures:
    """Mixin: `process_figures()` gives CPU % since `_cpu_start()` and RSS, per process
    ("client", and "server" while a local server process runs); `_cpu_end()` keeps the last
    figures in `self.cpu`.  For this process it also splits the CPU by thread:
    `python_cpu_percent` is what the Python threads took (the four loops with their polling,
    the file pacers, the recorder, the UI); the rest is native threads (rustymimi's codec and
    its worker pool, the audio host's callback threads)."""

    _cpu0 = None
    tel = None  # a session's Telemetry: the model process reports its MLX memory there
    cpu: dict | None = None  # figures at the end of the session

    def _procs(self):
        import psutil

        out = {"client": psutil.Process(os.getpid())}
        server = getattr(self, "server", None)  # a remote session has no local server
        if server is not None and server.pid and server.alive():
            try:
                out["server"] = psutil.Process(server.pid)
            except psutil.Error:
                pass
        return out

    def _cpu_start(self) -> None:
        try:
            self._cpu0 = (time.monotonic(), {k: p.cpu_times() for k, p in self._procs().items()})
            self._threads0 = _thread_times()
        except Exception:
            self._cpu0 = None

    def process_figures(self) -> dict:
        """CPU % (since live) and RSS of each process, now."""
        import psutil

        out = {}
        if self._cpu0 is None:
            return out
        t0, times0 = self._cpu0
        wall = time.monotonic() - t0
        for k, p in self._procs().items():
            try:
                ct = p.cpu_times()
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            c0 = times0.get(k)
            cpu = None
            if c0 is not None and wall > 0:
                cpu = 100.0 * ((ct.user + ct.system) - (c0.user + c0.system)) / wall
            out[k] = {"cpu_percent": None if cpu is None else round(cpu, 1), "rss_mb": round(rss / 2**20, 1)}
            if p.pid == os.getpid() and wall > 0 and getattr(self, "_threads0", None) is not None:
                now = _thread_times()
                py = {t.native_id for t in threading.enumerate()}
                used = sum(v - self._threads0.get(tid, 0.0) for tid, v in now.items() if tid in py)
                out[k]["python_cpu_percent"] = round(100.0 * used / wall, 1)
        # What MLX holds (GPU memory on a GPU): the MLX codec here, the LM in the server.
        if "client" in out and "mlx.core" in sys.modules:
            mx = sys.modules["mlx.core"]
            get = getattr(mx, "get_active_memory", None)
            if get is not None:
                out["client"]["mlx_active_mb"] = round(get() / 2**20, 1)
        if "server" in out and self.tel is not None \
                and self.tel.info.server.get("mlx_active_mb") is not None:
            out["server"]["mlx_active_mb"] = self.tel.info.server["mlx_active_mb"]
        return out

    def _cpu_end(self) -> None:
        try:
            self.cpu = self.process_figures()
        except Exception:
            self.cpu = {}


def _thread_times() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, by native thread id."""
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
