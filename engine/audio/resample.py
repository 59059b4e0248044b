"""Streaming polyphase resampling between a device's rate and Mimi's 24 kHz."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from engine.audio import SAMPLE_RATE

_STOPBAND_DB = 80.0
_PASSBAND = 0.90  # passband edge, as a fraction of the lower Nyquist frequency
_MAX_TABLE = 1 << 22  # entries in the block filter matrix before the ratio is approximated


def _ratio(sr_in: int, sr_out: int) -> tuple[int, int]:
    """Reduced up/down factors L/M = sr_out/sr_in; approximated if the exact one is unwieldy."""
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    limit = up
    while _table_entries(up, down) > _MAX_TABLE:
        limit = max(1, limit // 2)
        fr = Fraction(sr_out, sr_in).limit_denominator(limit)
        # limit_denominator bounds M; bound L too by approximating the inverse when upsampling
        up, down = fr.numerator, fr.denominator
        if limit == 1:
            break
    return up, down


def _half_taps(up: int, down: int) -> tuple[int, float, float]:
    r = min(1.0, up / down)
    tw = (1.0 - _PASSBAND) * 0.5 * r  # transition width, cycles per input sample
    n_taps = (_STOPBAND_DB - 7.95) / (14.36 * tw)
    hw = n_taps / 2.0
    fc = 0.5 * r * (1.0 + _PASSBAND) / 2.0  # cutoff in the middle of the transition band
    return int(math.ceil(hw)) + 1, hw, fc


def _block_shape(up: int, down: int) -> tuple[int, int, int]:
    """Choose G ratio periods per block: returns (G, Q, K).

    Each block of G*down inputs gives G*up outputs through Q matrix products over consecutive
    blocks.  Small G wastes fewer multiply-adds on the banded matrix's zeros, but thin matrices
    run BLAS badly: at most 3 products per block is the balance this picks.
    """
    k, _, _ = _half_taps(up, down)
    best = None
    for g in range(1, 1025):
        b = g * down
        q = -(-(b + 2 * k - 1) // b)
        if q > 3:
            continue
        cost = q * b  # multiply-adds per output sample
        if best is None or cost < best[0]:
            best = (cost, g, q)
        if q <= 2:
            break
    return best[1], best[2], k


def _table_entries(up: int, down: int) -> int:
    g, q, _ = _block_shape(up, down)
    return q * g * down * g * up


class Resampler:
    """Streaming polyphase resampler.

    `process(x)` returns the output samples that the input so far determines; `flush()` returns
    the rest (the input's tail followed by zeros), so that in total ceil(n_in * sr_out / sr_in)
    samples come out.  Latency: about the filter half-length plus one block (a few ms).
    """

    def __init__(self, sr_in: int, sr_out: int = SAMPLE_RATE):
        if sr_in <= 0 or sr_out <= 0:
            raise ValueError("sample rates must be positive")
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        self.up, self.down = _ratio(self.sr_in, self.sr_out)
        self.exact = Fraction(self.up, self.down) == Fraction(self.sr_out, self.sr_in)
        g, q, k = _block_shape(self.up, self.down)
        self.block_in = g * self.down  # input samples per block
        self.block_out = g * self.up  # output samples per block
        self.q = q
        self.delay_in = k - 1  # look-ahead in input samples
        self._w = _block_matrix(self.up, self.down, g, q).reshape(q, self.block_in, self.block_out)
        self._buf = np.zeros(self.delay_in, dtype=np.float32)  # left zero padding (zero phase)
        self.n_in = 0
        self.n_out = 0
        self._identity = self.up == self.down  # equal rates (or a ratio within ~1e-4 of 1)

    @property
    def latency_s(self) -> float:
        return (self.delay_in + self.block_in) / float(self.sr_in)

    def process(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        self.n_in += len(x)
        if self._identity:
            self.n_out += len(x)
            return x.copy()
        if len(x):
            self._buf = np.concatenate([self._buf, x])
        return self._run()

    def flush(self) -> np.ndarray:
        """The remaining output; the resampler is then reset to a fresh state."""
        if self._identity:
            self.n_in = self.n_out = 0
            return np.zeros(0, np.float32)
        total = (self.n_in * self.up + self.down - 1) // self.down
        if not self.exact:
            total = int(round(self.n_in * self.sr_out / self.sr_in))
        need = total - self.n_out
        out = [np.zeros(0, np.float32)]
        if need > 0:
            blocks = -(-need // self.block_out)
            pad = (blocks + self.q) * self.block_in - len(self._buf)
            if pad > 0:
                self._buf = np.concatenate([self._buf, np.zeros(pad, np.float32)])
            out.append(self._run()[:need])
        y = np.concatenate(out)
        if len(y) < need:
            y = np.concatenate([y, np.zeros(need - len(y), np.float32)])
        self._buf = np.zeros(self.delay_in, dtype=np.float32)
        self.n_in = self.n_out = 0
        return y

    def _run(self) -> np.ndarray:
        bi, bo, q = self.block_in, self.block_out, self.q
        nb = len(self._buf) // bi - (q - 1)  # blocks whose whole input window is present
        if nb <= 0:
            return np.zeros(0, np.float32)
        out = np.empty(nb * bo, dtype=np.float32)
        step = max(1, (1 << 18) // bo)  # rows per chunk: bounds the temporaries
        for r0 in range(0, nb, step):
            r1 = min(nb, r0 + step)
            frames = self._buf[r0 * bi : (r1 + q - 1) * bi].reshape(-1, bi)
            acc = frames[0 : r1 - r0] @ self._w[0]
            for j in range(1, q):
                acc += frames[j : j + r1 - r0] @ self._w[j]
            out[r0 * bo : r1 * bo] = acc.reshape(-1)
        self._buf = self._buf[nb * bi :].copy()
        self.n_out += len(out)
        return out


_matrix_cache: dict[tuple[int, int, int, int], np.ndarray] = {}


def _block_matrix(up: int, down: int, g: int, q: int) -> np.ndarray:
    """(q*g*down, g*up) matrix W: a block of g*down inputs (plus look-ahead) times W = outputs."""
    key = (up, down, g, q)
    w = _matrix_cache.get(key)
    if w is not None:
        return w
    k, hw, fc = _half_taps(up, down)
    beta = 0.1102 * (_STOPBAND_DB - 8.7)
    n_taps = 2 * k
    bo = g * up
    i = np.arange(bo)
    base, p = np.divmod(i * down, up)  # output i sits at input time base + p/up (in the block)
    t = np.arange(n_taps)
    u = (p / up)[:, None] + (k - 1) - t[None, :]  # output time minus tap time, input samples
    xw = np.clip(u / hw, -1.0, 1.0)
    win = np.i0(beta * np.sqrt(1.0 - xw * xw)) / np.i0(beta)
    win[np.abs(u) > hw] = 0.0
    h = 2.0 * fc * np.sinc(2.0 * fc * u) * win
    h /= h.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
    rows = base[:, None] + t[None, :]  # tap row in the padded block window (offset k-1 folded in)
    w = np.zeros((q * g * down, bo), dtype=np.float64)
    w[rows, np.broadcast_to(i[:, None], rows.shape)] = h
    w = w.astype(np.float32)
    if len(_matrix_cache) > 16:
        _matrix_cache.clear()
    _matrix_cache[key] = w
    return w


def resample(x, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole signal; returns ceil(len(x) * sr_out / sr_in) float32 samples."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if sr_in == sr_out:
        return x.copy()
    r = Resampler(sr_in, sr_out)
    y = np.concatenate([r.process(x), r.flush()])
    total = (len(x) * sr_out + sr_in - 1) // sr_in
    if len(y) != total:  # an approximated ratio: make the length exact
        y = np.concatenate([y, np.zeros(max(0, total - len(y)), np.float32)])[:total]
    return y
