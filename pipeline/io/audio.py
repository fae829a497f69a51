"""Audio conversions: resampling and FLAC bytes (the form audio takes inside the shards)."""

from __future__ import annotations

import io

import numpy as np

from pipeline.adapters.base import Audio


def resample(audio: Audio, sample_rate: int) -> Audio:
    """Return `audio` at `sample_rate` (soxr, high quality)."""
    if audio.sample_rate == sample_rate:
        return audio
    import soxr

    samples = soxr.resample(audio.samples, audio.sample_rate, sample_rate).astype(np.float32)
    return Audio(samples=samples, sample_rate=sample_rate)


def to_flac(audio: Audio) -> bytes:
    """Encode as 16-bit FLAC bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.samples, -1.0, 1.0), audio.sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def from_bytes(data: bytes) -> Audio:
    """Decode FLAC or WAV bytes to mono float32."""
    import soundfile as sf

    samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return Audio(samples=samples.mean(axis=1), sample_rate=int(sample_rate))
