"""Production ASR and emotion recognition through FunASR with local model directories (GPU).

Facts this follows (modelscope/FunASR, Nov 2026): `AutoModel(model=LOCAL_DIR, disable_update=True,
device=...)`; a local dir is the innermost folder with `config.yaml` and `model.pt` (or
`configuration.json`), and a wrong path attempts a download, so it is checked first;
`generate(input=float32 array at 16 kHz)` returns [{"key", "text", ...}]; SenseVoice text carries
`<|lang|><|EMOTION|><|Event|><|itn|>` tags; emotion2vec+ returns {"labels", "scores"} with labels
such as "生气/angry", taken verbatim from the folder's `tokens.txt` (funasr 1.4.x
`funasr/models/emotion2vec/model.py`: lines starting with `unuse` are masked and dropped; older
snapshots have only 4-5 usable labels, so the label set is checked against our 7 emotions at load);
`AutoModel(..., disable_pbar=True, log_level=...)` turns off the per-call tqdm bar (`funasr/auto/auto_model.py`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.adapters.base import Audio, EmotionPrediction, Transcript
from pipeline.io.audio import resample
from pipeline.records import EMOTIONS

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


def emotion2vec_labels(folder: Path) -> dict[str, str]:
    """The usable labels of an emotion2vec snapshot's `tokens.txt` ("生气/angry" -> "angry"), mapped to
    our emotions; lines starting with `unuse` are masked by FunASR and left out."""
    lines = (
        (folder / "tokens.txt").read_text(encoding="utf-8").splitlines() if (folder / "tokens.txt").is_file() else []
    )
    labels = [line.strip() for line in lines if line.strip() and not line.strip().startswith("unuse")]
    return {label: _EMOTION2VEC.get(_english(label), "unknown") for label in labels}


def check_emotion2vec_dir(path: str | None, field: str = "gates.emotion_model_dir") -> Path:
    """Raise FileNotFoundError unless `path` is an emotion2vec folder whose labels cover all 7 emotions."""
    folder = check_funasr_dir(path, field)
    found = set(emotion2vec_labels(folder).values())
    missing = [e for e in EMOTIONS if e not in found]
    if missing:
        raise FileNotFoundError(
            f"{field}: {path}/tokens.txt has no label for {', '.join(missing)} (an older 4/5-class snapshot?); "
            "use emotion2vec_plus_base or emotion2vec_plus_large, whose 9 labels cover all 7 emotions"
        )
    return folder


def _english(label: str) -> str:
    return label.split("/")[-1].strip().lower()


def _load(folder: Path, device: str) -> object:
    import contextlib
    import io

    from pipeline.adapters.base import quiet_third_party

    quiet_third_party()
    with contextlib.redirect_stdout(io.StringIO()):  # funasr prints its version and an ffmpeg notice
        from funasr import AutoModel

        model = AutoModel(
            model=str(folder), disable_update=True, device=device, hub="ms", disable_pbar=True, log_level="ERROR"
        )
    quiet_third_party()  # AutoModel calls logging.basicConfig(level=log_level) itself
    return model


class FunASRTranscriber:
    """Paraformer or SenseVoice from a local folder; tags are stripped from the text.

    SenseVoice is told the language (`language="en"`): with the default "auto" its language id can
    pick another language on short or accented clips and transcribe into it."""

    def __init__(self, model_dir: str | None, device: str = "cuda:0", language: str = "en") -> None:
        self._model = _load(check_funasr_dir(model_dir, "asr.model_path"), device)
        self.name = f"funasr:{Path(model_dir or '').name}"
        self.language = language

    def transcribe(self, audio: Audio) -> Transcript:
        """Return the transcript of `audio` (resampled to 16 kHz)."""
        samples = resample(audio, FUNASR_RATE).samples.astype(np.float32)
        result = self._model.generate(input=samples, language=self.language, use_itn=True)  # type: ignore[attr-defined]
        text = _TAG.sub("", result[0]["text"] if result else "").strip()
        return Transcript(text=text, backend=self.name)


class Emotion2Vec:
    """emotion2vec+ utterance-level emotion recognition from a local folder (labels checked at load)."""

    def __init__(self, model_dir: str | None, device: str = "cuda:0") -> None:
        folder = check_emotion2vec_dir(model_dir)
        self.labels = emotion2vec_labels(folder)
        self._model = _load(folder, device)
        self.name = f"emotion2vec:{folder.name}"

    def classify(self, clip: Audio) -> EmotionPrediction:
        """Predicted emotion (mapped to our 7 labels, else 'unknown') and its score."""
        samples = resample(clip, FUNASR_RATE).samples.astype(np.float32)
        out = self._model.generate(input=samples, granularity="utterance", extract_embedding=False)  # type: ignore[attr-defined]
        labels, scores = out[0]["labels"], out[0]["scores"]
        if not labels or len(labels) != len(scores):
            raise RuntimeError(f"emotion2vec returned {len(labels)} labels and {len(scores)} scores")
        best = int(np.argmax(scores))
        return EmotionPrediction(
            emotion=_EMOTION2VEC.get(_english(labels[best]), "unknown"), score=float(scores[best]), features={}
        )
