"""FunASR's own Emotion2vec class with tiny random weights, loaded and called through our adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from funasr_tiny import PLUS_LABELS, emotion2vec_folder

from pipeline.adapters.base import Audio
from pipeline.records import EMOTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def funasr_module() -> Iterator[object]:
    """`import funasr` once per module (it imports every model class: 16-28 s)."""
    yield pytest.importorskip("funasr", reason="the test extra installs funasr")


def _speech_like(seconds: float = 1.5, rate: int = 24000) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    return Audio(samples=samples.astype(np.float32), sample_rate=rate)


def test_emotion2vec_labels_map_to_our_emotions(funasr_module: object, tmp_path: Path) -> None:
    from pipeline.adapters.funasr_models import Emotion2Vec

    model = Emotion2Vec(str(emotion2vec_folder(tmp_path / "plus", favour="难过/sad")), device="cpu")
    assert set(model.labels.values()) == {*EMOTIONS, "unknown"}  # other and <unk> are not ours
    prediction = model.classify(_speech_like())
    assert prediction.emotion == "sad" and prediction.score > 0.99
    other = Emotion2Vec(str(emotion2vec_folder(tmp_path / "other", favour="其他/other")), device="cpu")
    assert other.classify(_speech_like()).emotion == "unknown"


def test_random_weights_still_give_a_distribution(funasr_module: object, tmp_path: Path) -> None:
    from pipeline.adapters.funasr_models import Emotion2Vec

    prediction = Emotion2Vec(str(emotion2vec_folder(tmp_path / "rand")), device="cpu").classify(_speech_like(0.7))
    assert prediction.emotion in (*EMOTIONS, "unknown") and 1 / len(PLUS_LABELS) <= prediction.score <= 1


def test_snapshot_with_five_usable_labels_is_refused(funasr_module: object, tmp_path: Path) -> None:
    """FunASR masks `unuse*` lines; a snapshot whose usable labels lack 3 of our emotions is refused at load."""
    from pipeline.adapters.funasr_models import Emotion2Vec

    labels = (
        "生气/angry",
        "unuse_1",
        "unuse_2",
        "开心/happy",
        "中立/neutral",
        "其他/other",
        "难过/sad",
        "unuse_3",
        "<unk>",
    )
    folder = emotion2vec_folder(tmp_path / "five", labels=labels)
    with pytest.raises(
        FileNotFoundError, match=r"gates.emotion_model_dir: .* no label for fearful, surprised, disgusted"
    ):
        Emotion2Vec(str(folder), device="cpu")
