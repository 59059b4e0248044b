"""Perfetto / Chrome trace (JSON) of a session: open it in ui.perfetto.dev.

Slices are placed at the stamps taken at the event source (callback, codec result, server step),
one track per stage and process; queue depths are counter tracks.

The JSON trace format requires the duration ("X") events of one thread track to nest, and
Perfetto drops those that overlap (stat `slice_drop_overlapping_complete_event`).  Per-frame
stages of consecutive frames overlap whenever a stage takes longer than a frame (a loaded
machine: frame n+1 waits while frame n encodes), so each stage gets as many lanes as it needs:
"encode", "encode #2", ... -- every frame stays visible.
"""

from __future__ import annotations

import os

from engine.telemetry.collect import Telemetry

CLIENT_PID, SERVER_PID = 1, 2


LANE_STRIDE = 100  # lane k of a track with tid t is tid t + k * LANE_STRIDE
TRACKS = {
    "early encode (first 40 ms)": (CLIENT_PID, 7, "t_head", "t_cap"),
    "input wait": (CLIENT_PID, 1, "t_cap", "t_enc0"),
    "encode": (CLIENT_PID, 2, "t_enc0", "t_enc"),
    "uplink": (CLIENT_PID, 3, "t_enc", "t_srv_in"),
    "server queue": (SERVER_PID, 1, "t_srv_in", "t_step0"),
    "model step": (SERVER_PID, 2, "t_step0", "t_step1"),
    "downlink": (CLIENT_PID, 4, "t_step1", "t_dec0"),
    "decode": (CLIENT_PID, 5, "t_dec0", "t_dec"),
    "output wait": (CLIENT_PID, 6, "t_dec", "t_play"),
}


def build_trace(tel: Telemetry) -> dict:
    t0 = tel.t_launch
    us = lambda t: (t - t0) / 1000.0  # noqa: E731
    ev: list[dict] = []
    client_os_pid = os.getpid()
    server_os_pid = tel.info.server.get("pid")
    names = {
        CLIENT_PID: f"client (pid {client_os_pid})",
        SERVER_PID: f"server (MLX{f', pid {server_os_pid}' if server_os_pid else ''})",
    }
    for pid, name in names.items():
        ev.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
    # Finished frames and those still in flight when the session stopped.
    records = sorted(list(tel.done_frames) + list(tel.frames.values()), key=lambda r: r.frame)
    tracks_used: set[tuple[int, int, str, int]] = set()
    for name, (pid, tid, a, b) in TRACKS.items():
        spans = []
        for rec in records:
            ta, tb = getattr(rec, a), getattr(rec, b)
            if ta and tb and tb >= ta:
                spans.append((ta, tb, rec))
        spans.sort(key=lambda s: s[0])
        lane_end: list[int] = []  # per lane: end stamp of its last slice
        for ta, tb, rec in spans:
            lane = next((i for i, end in enumerate(lane_end) if end <= ta), len(lane_end))
            if lane == len(lane_end):
                lane_end.append(tb)
            else:
                lane_end[lane] = tb
            track = tid + lane * LANE_STRIDE
            tracks_used.add((pid, track, name, lane))
            ev.append({"ph": "X", "name": name, "cat": "frame", "pid": pid, "tid": track,
                       "ts": us(ta), "dur": (tb - ta) / 1000.0,
                       "args": {"frame": rec.frame, "step": rec.step}})
    for pid, track, name, lane in sorted(tracks_used):
        label = name if lane == 0 else f"{name} #{lane + 1}"
        ev.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": track,
                   "args": {"name": label}})
        order = list(TRACKS).index(name) * LANE_STRIDE + lane  # tracks in TRACKS order
        ev.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": track,
                   "args": {"sort_index": order}})
    for rec in records:
        if rec.t_cap:
            ev.append({"ph": "i", "name": "capture", "s": "t", "pid": CLIENT_PID, "tid": 1,
                       "ts": us(rec.t_cap), "args": {"frame": rec.frame, "step": rec.step}})
    ev += _voice_tracks(tel, us)
    for t, depths in tel.queue_samples:
        ev.append({"ph": "C", "name": "queue depth", "pid": CLIENT_PID, "ts": us(t),
                   "args": dict(depths)})
    return {"traceEvents": ev, "displayTimeUnit": "ms"}


VOICE_TIDS = {"user": 8, "moshi": 9}  # the client's voice-activity tracks, after its stages


def _voice_tracks(tel: Telemetry, us) -> list[dict]:
    """One track per side: a slice per stretch of speech its voice activity found."""
    if tel.voice is None or tel.voice.detector.t0_ms is None:
        return []
    det = tel.voice.detector
    end_ms = det.now or 0.0
    ev = []
    for side, tid in VOICE_TIDS.items():
        label = f"{side} speaking"
        ev.append({"ph": "M", "name": "thread_name", "pid": CLIENT_PID, "tid": tid,
                   "args": {"name": label}})
        ev.append({"ph": "M", "name": "thread_sort_index", "pid": CLIENT_PID, "tid": tid,
                   "args": {"sort_index": len(TRACKS) * LANE_STRIDE + tid}})
        for on, off in list(det.segments[side]):
            off = end_ms if off is None else off
            t_ns = int((det.t0_ms + on) * 1e6)
            ev.append({"ph": "X", "name": label, "cat": "voice", "pid": CLIENT_PID, "tid": tid,
                       "ts": us(t_ns), "dur": max(0.0, off - on) * 1000.0})
    return ev
