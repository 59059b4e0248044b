"""The app's keys: each a `Binding`, shown in the footer (unless `show=False`) and in F1's list
with its tooltip."""

from __future__ import annotations

from textual.binding import Binding

KEYS = [
    Binding("l", "toggle('show_latency')", "Latency", tooltip="Show/hide the per-stage latency panel"),
    Binding("u", "toggle('show_queues')", "Queues", tooltip="Show/hide the queue depths panel"),
    Binding("t", "toggle('show_turns')", "Turns",
            tooltip="Show/hide the turns: who spoke when, how fast Moshi answers"),
    Binding("g", "toggle('show_log')", "Log", tooltip="Show/hide the log of state changes and warnings"),
    Binding("m", "toggle_mute", "Mute", tooltip="Mute/unmute the microphone (Moshi hears silence)"),
    Binding("a", "toggle_aec", "Echo", tooltip="Echo cancellation on/off: with speakers instead "
            "of headphones, it keeps Moshi from hearing itself"),
    Binding("p", "toggle('paused')", "Pause", tooltip="Freeze/resume the display; the audio keeps going"),
    Binding("e", "export", "Export", tooltip="Save the transcript as Markdown or JSON"),
    # (in F1's list, not the footer: 80 columns hold the other keys with q last)
    Binding("f8", "screenshot", "Shot", tooltip="Save an SVG screenshot in the session folder",
            show=False),
    Binding("f1", "help", "Help", tooltip="List every key"),
    Binding("q", "quit", "Quit", tooltip="Stop the session, save its files and quit"),
    Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
]
