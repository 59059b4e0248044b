"""CPU % and RSS of the session's processes, shared by local and remote sessions."""

from __future__ import annotations

import os
import time


class ProcessFigures:
    """Mixin: `process_figures()` gives CPU % since `_cpu_start()` and RSS, per process
    ("client", and "server" while a local server process runs); `_cpu_end()` keeps the last
    figures in `self.cpu`."""

    _cpu0 = None
    cpu: dict | None = None  # figures at the end of the session

    def _procs(self):
        import psutil

        out = {"client": psutil.Process(os.getpid())}
        server = getattr(self, "server", None)  # a remote session has no local server
        if server is not None and server.pid and server.is_alive():
            try:
                out["server"] = psutil.Process(server.pid)
            except psutil.Error:
                pass
        return out

    def _cpu_start(self) -> None:
        try:
            self._cpu0 = (time.monotonic(), {k: p.cpu_times() for k, p in self._procs().items()})
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
        return out

    def _cpu_end(self) -> None:
        try:
            self.cpu = self.process_figures()
        except Exception:
            self.cpu = {}
