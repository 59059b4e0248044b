"""`open_session`: the local or the remote session a `SessionConfig` asks for."""

from __future__ import annotations

from engine.session.config import SessionConfig
from engine.telemetry.collect import Telemetry


def open_session(cfg: SessionConfig, telemetry: Telemetry | None = None):
    """A local `Session`, or a `RemoteSession` (same interface) with cfg.remote."""
    from engine.session.local import Session

    if cfg.remote:
        from engine.session.remote.session import RemoteSession

        return RemoteSession(cfg, cfg.remote, telemetry)
    return Session(cfg, telemetry)
