"""Acoustic conditions for user clips: room reverberation and background noise at a sampled SNR.

Written with NumPy/SciPy (no extra dependency), by documented textbook methods:
- reverberation: convolution with a synthetic room impulse response, a direct path followed by
  exponentially decaying Gaussian noise whose energy falls by 60 dB at the sampled RT60 (Schroeder's
  statistical model of a diffuse late reverberant tail), starting after a 2-8 ms pre-delay;
- noise: white, pink (1/f, shaped in the frequency domain) or brown (1/f^2) Gaussian noise scaled so
  that signal power / noise power over the whole clip equals the sampled SNR in dB.
The clip is then peak-limited to the input's peak so that the level gates' verdicts still describe it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.adapters.base import Audio

NOISE_KINDS = ("white", "pink", "brown")


@dataclass(frozen=True)
class Conditions:
    """The sampled acoustic conditions of one clip (stored with the turn)."""

    noise: str  # one of NOISE_KINDS, or "" for none
    snr_db: float | None
    rt60_s: float | None  # None: no reverberation


def room_impulse_response(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic RIR: unit direct path, pre-delay, then noise decaying by 60 dB over `rt60_s`."""
    pre = int(rng.uniform(0.002, 0.008) * sample_rate)
    n = int(rt60_s * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 6.9078: -60 dB at rt60
    tail *= 0.3 / max(float(np.sqrt(np.sum(tail**2))), 1e-9)  # direct-to-reverberant energy about 10 dB
    h = np.zeros(pre + n)
    h[0] = 1.0
    h[pre:] += tail
    return h


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power Gaussian noise with a white, pink (1/f) or brown (1/f^2) power spectrum."""
    white = rng.standard_normal(length)
    if kind != "white":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        spectrum /= f ** (0.5 if kind == "pink" else 1.0)
        white = np.fft.irfft(spectrum, n=length)
    return white / max(float(np.sqrt(np.mean(white**2))), 1e-12)


def apply(audio: Audio, conditions: Conditions, rng: np.random.Generator) -> Audio:
    """`audio` heard in `conditions`: reverberated, then noise added at the SNR, same length and peak."""
    from scipy.signal import fftconvolve

    x = audio.samples.astype(np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    y = x
    if conditions.rt60_s:
        y = fftconvolve(x, room_impulse_response(conditions.rt60_s, audio.sample_rate, rng))[: len(x)]
    if conditions.noise and conditions.snr_db is not None and y.size:
        power = float(np.mean(y**2))
        y = y + colored_noise(conditions.noise, len(y), rng) * np.sqrt(power / 10 ** (conditions.snr_db / 10))
    top = float(np.max(np.abs(y))) if y.size else 0.0
    if top > 0 and peak > 0:
        y *= peak / top
    return Audio(samples=y.astype(np.float32), sample_rate=audio.sample_rate)
