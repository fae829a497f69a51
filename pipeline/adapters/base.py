"""Canonical result types shared by the adapters of every role."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Audio:
    """Mono float32 samples in [-1, 1] at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / float(self.sample_rate)


@dataclass(frozen=True)
class Transcript:
    """What an ASR backend heard."""

    text: str
    backend: str


@dataclass(frozen=True)
class EmotionPrediction:
    """An emotion check's verdict: the predicted label, its score and the measured features."""

    emotion: str
    score: float
    features: dict[str, float]


def quiet_third_party(level: int = 30) -> None:
    """Silence what upstream model code prints inside our actors: CosyVoice sets the root logger to
    DEBUG and FunASR calls logging.basicConfig(INFO) and shows tqdm bars; warnings and errors stay."""
    import logging
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger().setLevel(level)
    for name in ("funasr", "modelscope", "matplotlib", "numba", "jieba", "cosyvoice"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
