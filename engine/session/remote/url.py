"""The --remote URL as a user types it, made into a websocket URL."""

from __future__ import annotations

import urllib.parse

from engine.errors import UsageError


def normalize_url(url: str) -> str:
    """ws://host:port/api/chat from what a user types (http(s) and bare host:port accepted)."""
    raw = (url or "").strip()
    if not raw:
        raise UsageError("--remote needs a URL, e.g. ws://HOST:8998/api/chat")
    if "://" not in raw:
        raw = "ws://" + raw
    scheme, rest = raw.split("://", 1)
    mapped = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}.get(scheme.lower())
    if mapped is None:
        raise UsageError(f"--remote: unsupported scheme {scheme!r} in {url!r} (use ws:// or wss://)")
    parts = urllib.parse.urlsplit(f"{mapped}://{rest}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--remote: invalid port in {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"--remote: no host in {url!r}")
    del port
    path = parts.path if parts.path not in ("", "/") else "/api/chat"
    return urllib.parse.urlunsplit((mapped, parts.netloc, path, parts.query, ""))


def with_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` added to its query string; a parameter already there stays."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    merged = {**params, **query}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(merged)))
