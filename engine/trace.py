"""Perfetto / Chrome trace (JSON) of a session: open it in ui.perfetto.dev.

Slices are placed at the stamps taken at the event source (callback, codec result, server step),
one track per stage and process; queue depths are counter tracks.
"""

from __future__ import annotations

from .stats import write_json_atomic
from .telemetry import Telemetry

CLIENT_PID, SERVER_PID = 1, 2
# slice name -> (pid, tid, start stamp, end stamp)
TRACKS = {
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
    for pid, name in ((CLIENT_PID, "client"), (SERVER_PID, "server (MLX)")):
        ev.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
    for name, (pid, tid, _, _) in TRACKS.items():
        ev.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
    for rec in tel.done_frames:
        args = {"frame": rec.frame, "step": rec.step}
        for name, (pid, tid, a, b) in TRACKS.items():
            ta, tb = getattr(rec, a), getattr(rec, b)
            if ta and tb and tb >= ta:
                ev.append({"ph": "X", "name": name, "cat": "frame", "pid": pid, "tid": tid,
                           "ts": us(ta), "dur": (tb - ta) / 1000.0, "args": args})
        if rec.t_cap:
            ev.append({"ph": "i", "name": "capture", "s": "t", "pid": CLIENT_PID, "tid": 1,
                       "ts": us(rec.t_cap), "args": args})
    for t, depths in tel.queue_samples:
        ev.append({"ph": "C", "name": "queue depth", "pid": CLIENT_PID, "ts": us(t),
                   "args": dict(depths)})
    return {"traceEvents": ev, "displayTimeUnit": "ms"}


def write_trace(path, tel: Telemetry) -> None:
    write_json_atomic(path, build_trace(tel))
