"""Embedded speech units: k-means over log-mel frame features at 12.5 frames per second.

The codebook is fitted per dataset, saved in the output folder with a version id (a hash of the
centroids), and every assistant clip is encoded with the nearest centroid per frame.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.adapters.base import Audio
from pipeline.io.audio import resample

UNIT_SAMPLE_RATE = 16000
_WIN = 400  # 25 ms
_HOP = 160  # 10 ms
_N_MELS = 40
_POOL = 8  # 8 x 10 ms = 80 ms -> 12.5 units per second
FRAME_RATE_HZ = UNIT_SAMPLE_RATE / (_HOP * _POOL)


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    mel_points = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    bins = np.floor((n_fft + 1) * hz_points / sample_rate).astype(int)
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(1, n_mels + 1):
        left, centre, right = bins[m - 1], bins[m], bins[m + 1]
        bank[m - 1, left:centre] = (np.arange(left, centre) - left) / max(centre - left, 1)
        bank[m - 1, centre:right] = (right - np.arange(centre, right)) / max(right - centre, 1)
    return bank


_FILTERBANK = _mel_filterbank(512, _N_MELS, UNIT_SAMPLE_RATE)


def frame_features(audio: Audio) -> np.ndarray:
    """Log-mel features pooled to 12.5 Hz: shape (frames, 40); at least one frame."""
    x = resample(audio, UNIT_SAMPLE_RATE).samples.astype(np.float64)
    if len(x) < _WIN:
        x = np.pad(x, (0, _WIN - len(x)))
    n_frames = 1 + (len(x) - _WIN) // _HOP
    idx = np.arange(_WIN)[None, :] + _HOP * np.arange(n_frames)[:, None]
    frames = x[idx] * np.hanning(_WIN)
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2
    logmel = np.log(power @ _FILTERBANK.T + 1e-8)
    n_pooled = max(1, n_frames // _POOL)
    usable = logmel[: n_pooled * _POOL] if n_frames >= _POOL else logmel
    return usable.reshape(n_pooled, -1, _N_MELS).mean(axis=1)


@dataclass
class Codebook:
    """K-means centroids over frame features, with the feature normalisation they were fitted in."""

    centroids: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def version(self) -> str:
        """A content hash identifying this codebook."""
        digest = hashlib.sha256()
        for array in (self.centroids, self.mean, self.std):
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return f"kmeans{len(self.centroids)}-{digest.hexdigest()[:12]}"

    def encode(self, audio: Audio) -> list[int]:
        """Speech units of a clip: the nearest centroid of each 80 ms frame."""
        feats = (frame_features(audio) - self.mean) / self.std
        dist = ((feats[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return dist.argmin(axis=1).astype(int).tolist()

    def to_bytes(self) -> bytes:
        """The codebook as .npz bytes."""
        buf = io.BytesIO()
        np.savez(buf, centroids=self.centroids, mean=self.mean, std=self.std)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Codebook:
        """Read a codebook from `to_bytes` output."""
        with np.load(io.BytesIO(blob)) as data:
            return cls(centroids=data["centroids"], mean=data["mean"], std=data["std"])

    def save(self, path: Path) -> None:
        """Write the codebook as .npz (atomically)."""
        from pipeline.io.files import atomic_write_bytes

        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> Codebook:
        """Read a codebook written by `save`."""
        return cls.from_bytes(path.read_bytes())


def fit_codebook(features: np.ndarray, size: int, seed: int, iterations: int = 25) -> Codebook:
    """Fit a k-means codebook (k-means++ init, Lloyd iterations) on stacked frame features."""
    rng = np.random.default_rng(seed)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = (features - mean) / std
    if len(x) < size:
        raise ValueError(f"units: {len(x)} frames cannot fit {size} centroids; lower units.codebook_size")
    centroids = [x[rng.integers(len(x))]]
    closest = ((x - centroids[0]) ** 2).sum(axis=1)
    for _ in range(1, size):
        nxt = x[rng.choice(len(x), p=closest / closest.sum())]
        centroids.append(nxt)
        closest = np.minimum(closest, ((x - nxt) ** 2).sum(axis=1))
    c = np.array(centroids)
    for _ in range(iterations):
        assign = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        for k in range(size):
            members = x[assign == k]
            if len(members):
                c[k] = members.mean(axis=0)
    return Codebook(centroids=c, mean=mean, std=std)
