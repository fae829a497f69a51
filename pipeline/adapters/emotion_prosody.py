"""Embedded emotion check: measure prosody (Praat via parselmouth) relative to the speaker's neutral.

Features of a rendering, each relative to a neutral rendering of the same text by the same
speaker: F0 level shift (semitones), F0 range change (semitones), intensity change (dB) and
speaking-rate ratio (log of neutral duration / duration). An emotion is predicted by the nearest
prototype in that space; prototypes are the mean features of calibration renderings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.adapters.base import Audio, EmotionPrediction

FEATURES = ("f0_shift_st", "f0_range_st", "intensity_db", "log_rate")


@dataclass(frozen=True)
class Prosodic:
    """Absolute prosodic measurements of one clip."""

    f0_median_hz: float
    f0_range_st: float
    intensity_db: float
    duration_s: float


def measure(audio: Audio) -> Prosodic:
    """Measure F0 level and range, energy-averaged intensity and duration of a clip."""
    import parselmouth

    sound = parselmouth.Sound(audio.samples.astype(np.float64), sampling_frequency=audio.sample_rate)
    f0 = sound.to_pitch(time_step=0.01, pitch_floor=40.0, pitch_ceiling=500.0).selected_array["frequency"]
    voiced = f0[f0 > 0]
    if len(voiced) < 5:
        f0_median, f0_range = float("nan"), float("nan")
    else:
        f0_median = float(np.median(voiced))
        p20, p80 = np.percentile(voiced, [20, 80])
        f0_range = float(12.0 * np.log2(p80 / p20))
    rms = float(np.sqrt(np.mean(np.square(audio.samples)))) if len(audio.samples) else 0.0
    intensity = 20.0 * np.log10(max(rms, 1e-6))
    return Prosodic(f0_median, f0_range, float(intensity), audio.duration_s)


def relative_features(clip: Prosodic, neutral: Prosodic) -> np.ndarray:
    """Features of `clip` relative to the same speaker's neutral rendering (order: FEATURES)."""
    return np.array(
        [
            12.0 * np.log2(clip.f0_median_hz / neutral.f0_median_hz),
            clip.f0_range_st - neutral.f0_range_st,
            clip.intensity_db - neutral.intensity_db,
            np.log(neutral.duration_s / max(clip.duration_s, 1e-3)),
        ],
        dtype=np.float64,
    )


@dataclass
class ProsodyEmotionClassifier:
    """Nearest-prototype emotion classifier over relative prosodic features."""

    labels: list[str] = field(default_factory=list)  # one per prototype (emotions may repeat)
    prototypes: np.ndarray = field(default_factory=lambda: np.zeros((0, len(FEATURES))))
    scale: np.ndarray = field(default_factory=lambda: np.ones(len(FEATURES)))

    @classmethod
    def fit(cls, features: np.ndarray, labels: list[str], groups: list[str]) -> ProsodyEmotionClassifier:
        """Fit prototypes as the mean feature vector of each group (e.g. emotion x intensity)."""
        features = np.asarray(features, dtype=np.float64)
        keys = sorted(set(groups))
        protos, proto_labels = [], []
        for key in keys:
            rows = [i for i, g in enumerate(groups) if g == key]
            protos.append(features[rows].mean(axis=0))
            proto_labels.append(labels[rows[0]])
        residual = features - np.array([protos[keys.index(g)] for g in groups])
        scale = np.maximum(residual.std(axis=0), 0.25)
        return cls(labels=proto_labels, prototypes=np.array(protos), scale=scale)

    def to_bytes(self) -> bytes:
        """The fitted classifier as .npz bytes (for the start-up cache)."""
        import io

        buf = io.BytesIO()
        np.savez(buf, labels=np.array(self.labels), prototypes=self.prototypes, scale=self.scale)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProsodyEmotionClassifier:
        """Read a classifier written by `to_bytes`."""
        import io

        with np.load(io.BytesIO(data)) as arrays:
            return cls(labels=arrays["labels"].tolist(), prototypes=arrays["prototypes"], scale=arrays["scale"])

    def predict(self, features: np.ndarray) -> tuple[str, float]:
        """Return (emotion, score in [0, 1]) for one relative feature vector."""
        if not np.all(np.isfinite(features)):
            return "unknown", 0.0
        dist2 = (((self.prototypes - features) / self.scale) ** 2).sum(axis=1)
        weights = np.exp(-0.5 * (dist2 - dist2.min()))
        per_label: dict[str, float] = {}
        for label, weight in zip(self.labels, weights, strict=True):
            per_label[label] = per_label.get(label, 0.0) + float(weight)
        total = sum(per_label.values())
        best = max(per_label, key=per_label.__getitem__)
        return best, per_label[best] / total

    def classify(self, clip: Audio, neutral: Audio) -> EmotionPrediction:
        """Predict the emotion of `clip` against the speaker's `neutral` rendering of the same text."""
        feats = relative_features(measure(clip), measure(neutral))
        emotion, score = self.predict(feats)
        return EmotionPrediction(
            emotion=emotion, score=score, features=dict(zip(FEATURES, feats.tolist(), strict=True))
        )
