"""How well echo cancellation works, in two figures (scripts/bench_aec.py measures them through
real sound devices; tests/test_aec.py through a simulated room):

* echo reduction (ERLE, dB): the microphone's power over the cleaned signal's, while only the
  speaker plays (after the canceller has converged);
* near speech kept: while both talk, how much the cleaned signal still looks like the user's
  clean voice -- the correlation of their short-time magnitude spectra (20 ms frames, up to
  8 kHz), aligned by cross-correlation.  Magnitudes, not waveforms: the canceller's band
  filters shift the phase (its output lags its input by ~9 ms and the waveform correlation of
  untouched speech drops to ~0.6), which a listener does not hear.
"""

from __future__ import annotations

import numpy as np

from engine.audio import SAMPLE_RATE


def erle_db(mic: np.ndarray, cleaned: np.ndarray) -> float:
    """Echo return loss enhancement: 10 log10(power of mic / power of cleaned)."""
    num = float(np.mean(np.square(mic, dtype=np.float64)))
    den = float(np.mean(np.square(cleaned, dtype=np.float64)))
    return 10.0 * np.log10((num + 1e-20) / (den + 1e-20))


def _spectra(x: np.ndarray, n: int = 512, hop: int = 256, max_hz: float = 8000.0) -> np.ndarray:
    w = np.hanning(n)
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), n)[::hop]
    bins = int(max_hz * n / SAMPLE_RATE) + 1
    return np.abs(np.fft.rfft(frames * w, axis=1))[:, :bins]


def align(a: np.ndarray, b: np.ndarray, max_lag: int = SAMPLE_RATE // 20) -> int:
    """The lag (samples, >= 0) by which `a` trails `b`: the peak of their cross-correlation."""
    n = min(len(a), len(b)) - max_lag
    if n <= 0:
        return 0
    scores = [float(np.dot(a[lag:lag + n], b[:n])) for lag in range(0, max_lag)]
    return int(np.argmax(scores))


def speech_kept(cleaned: np.ndarray, near: np.ndarray) -> float:
    """Correlation of the magnitude spectra of `cleaned` and of the clean near speech (1.0: the
    same sound), after aligning them."""
    lag = align(cleaned, near)
    n = min(len(cleaned) - lag, len(near))
    a, b = _spectra(cleaned[lag:lag + n]).ravel(), _spectra(near[:n]).ravel()
    return float(np.corrcoef(a, b)[0, 1])
