"""Production ASR and emotion recognition through FunASR with local model directories (GPU).

Facts this follows (modelscope/FunASR, Nov 2026): `AutoModel(model=LOCAL_DIR, disable_update=True,
device=...)`; a local dir is the innermost folder with `config.yaml` and `model.pt` (or
`configuration.json`), and a wrong path attempts a download, so it is checked first;
`generate(input=float32 array at 16 kHz)` returns [{"key", "text", ...}]; SenseVoice text carries
`<|lang|><|EMOTION|><|Event|><|itn|>` tags; emotion2vec+ returns {"labels", "scores"} with labels
such as "生气/angry".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.adapters.base import Audio, EmotionPrediction, Transcript
from pipeline.io.audio import resample

FUNASR_RATE = 16000
_TAG = re.compile(r"<\|[^|]*\|>")
_EMOTION2VEC = {"angry": "angry", "disgusted": "disgusted", "fearful": "fearful", "happy": "happy",
                "neutral": "neutral", "sad": "sad", "surprised": "surprised"}  # fmt: skip


def check_funasr_dir(path: str | None, field: str) -> Path:
    """Raise FileNotFoundError naming the recipe field unless `path` is a local FunASR model folder."""
    folder = Path(path) if path else None
    if folder is None or not (folder / "config.yaml").is_file():
        raise FileNotFoundError(f"{field}: {path!r} is not a local FunASR model folder (config.yaml missing)")
    if not ((folder / "model.pt").is_file() or (folder / "configuration.json").is_file()):
        raise FileNotFoundError(f"{field}: {path} has config.yaml but no model.pt or configuration.json")
    return folder


def _load(path: str | None, field: str, device: str) -> object:
    folder = check_funasr_dir(path, field)
    from funasr import AutoModel

    return AutoModel(model=str(folder), disable_update=True, device=device, hub="ms")


class FunASRTranscriber:
    """Paraformer or SenseVoice from a local folder; tags are stripped from the text."""

    def __init__(self, model_dir: str | None, device: str = "cuda:0") -> None:
        self._model = _load(model_dir, "asr.model_path", device)
        self.name = f"funasr:{Path(model_dir or '').name}"

    def transcribe(self, audio: Audio) -> Transcript:
        """Return the transcript of `audio` (resampled to 16 kHz)."""
        samples = resample(audio, FUNASR_RATE).samples.astype(np.float32)
        result = self._model.generate(input=samples)  # type: ignore[attr-defined]
        text = _TAG.sub("", result[0]["text"] if result else "").strip()
        return Transcript(text=text, backend=self.name)


class Emotion2Vec:
    """emotion2vec+ utterance-level emotion recognition from a local folder."""

    def __init__(self, model_dir: str | None, device: str = "cuda:0") -> None:
        self._model = _load(model_dir, "gates.emotion_model_dir", device)

    def classify(self, clip: Audio) -> EmotionPrediction:
        """Predicted emotion (mapped to our 7 labels, else 'unknown') and its score."""
        samples = resample(clip, FUNASR_RATE).samples.astype(np.float32)
        out = self._model.generate(input=samples, granularity="utterance", extract_embedding=False)  # type: ignore[attr-defined]
        labels, scores = out[0]["labels"], out[0]["scores"]
        best = int(np.argmax(scores))
        english = labels[best].split("/")[-1].strip().lower()
        return EmotionPrediction(emotion=_EMOTION2VEC.get(english, "unknown"), score=float(scores[best]), features={})
