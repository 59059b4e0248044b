"""What a session is and runs with: the model, the audio endpoints, the options in force, as
the status bar, stats.json and the session files show them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class SessionInfo:
    """Filled in by the session as it learns each item; None is not known (yet).

    `to_dict()` is its flat form, the one stats.json and the exports are built from: the known
    items by name, and each of `server` as `server_<key>`."""

    model: str | None = None  # the model, in words: "kyutai/moshiko-mlx-q4 (q4)", "remote URL"
    mode: str | None = None  # what the model does: "conversation" or "translation"
    codec: str | None = None  # the client's Mimi codec: "rustymimi" or "mlx"
    input: str | None = None  # the audio source, in words
    output: str | None = None  # the audio sink, in words
    output_latency_ms: float | None = None  # the output device's own latency, as it measures it
    aec: str | None = None  # echo cancellation: "off", "on", "on + noise suppression", ...
    early_encode: bool | None = None  # each frame's first half encoded before it is complete
    codec_warmup_ms: float | None = None  # the codec's warm-up before the session went live
    session_dir: str | None = None  # the session folder, when the session is saved
    remote_url: str | None = None  # the remote server's websocket URL, query included
    close_code: int | None = None  # how the last websocket connection closed (remote)
    playout_ms: float | None = None  # the jitter buffer's recent median aim (snapshots only)
    # What the model process or the remote server says about itself, by its own keys ("pid",
    # "mlx_device", "max_steps", "lm_mode", "sampling_text", "protocol_version", ...)
    server: dict[str, object] = field(default_factory=dict)

    def copy(self, **changes) -> SessionInfo:
        """A copy a reader can keep (its own `server`), with `changes` made."""
        return dataclasses.replace(self, server=dict(self.server), **changes)

    def to_dict(self) -> dict:
        """The known items by name, then `server_<key>` for each of `server`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "server" and getattr(self, f.name) is not None}
        out.update({f"server_{k}": v for k, v in self.server.items()})
        return out
