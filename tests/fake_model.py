"""A stand-in for the model process, on the other end of the pipeline's pipe."""

from __future__ import annotations

import threading
import time

import numpy as np

from engine.audio import FRAME, HEAD
from engine.model.messages import Frame, Reset, Result


class FakeServer(threading.Thread):
    """The model process's side of the pipe: records the codes, answers each frame after
    `delay_s` with a step that has no audio (so nothing is decoded), or with `audio` codes
    (or `audio(step)`: codes or None), and the text token `text_token(step)`; step `step`
    takes `step_s(step)` seconds of model time."""

    def __init__(self, conn, delay_s: float = 0.0, audio=None, text_token=lambda step: 0,
                 step_s=lambda step: 0.0):
        super().__init__(daemon=True)
        self.conn, self.delay_s, self.step_s = conn, delay_s, step_s
        self.audio, self.text_token = audio, text_token
        self.codes: dict[int, np.ndarray] = {}
        self.order: list[int] = []
        self.resets = 0
        self.segment_of: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self):
        step = 0
        while not self.stop.is_set():
            if not self.conn.poll(0.05):
                continue
            msg = self.conn.recv()
            if isinstance(msg, Reset):  # a new segment: fresh codec from the next frame on
                self.resets += 1
            if not isinstance(msg, Frame):
                continue
            fid = msg.frame_id
            self.codes[fid] = np.asarray(msg.codes).copy()
            self.order.append(fid)
            self.segment_of[fid] = self.resets
            time.sleep(self.delay_s)
            t = time.monotonic_ns()
            time.sleep(self.step_s(step))  # (stamped as the model step's own time)
            audio = self.audio(step) if callable(self.audio) else self.audio
            self.conn.send(Result(fid, step, self.text_token(step), audio, t, t,
                                  time.monotonic_ns()))
            step += 1


def offer_frame(pipe, pcm) -> int:
    """Hand `pcm` (one frame) to a client pipeline as a device source does: its first 40 ms
    early, then the whole frame; its capture time."""
    t_cap = time.monotonic_ns()
    pipe.on_head(pcm[:HEAD].copy(), t_cap - 40_000_000)
    pipe.on_frame(pcm.copy(), t_cap)
    return t_cap


def wait_handled(pipe, server: FakeServer, i: int, timeout_s: float = 20.0) -> None:
    """Until frame `i` went through the stand-in server and the pipeline holds nothing."""
    deadline = time.monotonic() + timeout_s
    while (len(server.order) <= i or not pipe.idle()) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(server.order) == i + 1 and pipe.idle(), f"frame {i} not handled"


class ScriptedCodec:
    """A stand-in codec backend (rustymimi's surface) for a model that speaks on a script: each
    frame encodes to zeros, and step k's codes (`step_codes(k)`) decode to `track`'s k-th 80 ms
    (silence past its end).  With `FakeServer(audio=step_codes)` Moshi says `track`, a frame
    per model step.  Whole frames only (early encode off)."""

    def __init__(self, track: np.ndarray):
        from collections import deque

        self.track = np.asarray(track, np.float32)
        self.enc: deque = deque()
        self.dec: deque = deque()

    @staticmethod
    def step_codes(step: int) -> np.ndarray:
        return np.full((1, 8), step, np.uint32)

    def encode(self, pcm) -> None:
        self.enc.append(np.zeros((1, 8), np.uint32))

    def get_encoded(self):
        return self.enc.popleft() if self.enc else None

    def decode(self, codes) -> None:
        k = int(np.asarray(codes).reshape(-1)[0])
        out = np.zeros(FRAME, np.float32)
        part = self.track[k * FRAME:(k + 1) * FRAME]
        out[:part.size] = part
        self.dec.append(out)

    def get_decoded(self):
        return self.dec.popleft() if self.dec else None
