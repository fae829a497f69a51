"""Production speech units: the GLM-4-Voice speech tokenizer (12.5 units/s, 16384 codes), from local folders.

Facts this follows (THUDM/GLM-4-Voice, `speech_tokenizer/utils.py` and `web_demo.py`): the tokenizer is
`WhisperVQEncoder.from_pretrained(dir)` with `WhisperFeatureExtractor.from_pretrained(dir)`, both from the
`glm-4-voice-tokenizer` folder (`config.json`, `preprocessor_config.json`, `*.safetensors`); the model
classes live in the repository's `speech_tokenizer` package, not on PyPI, so the checkout must be on
`sys.path`; `extract_speech_token(model, feature_extractor, [(audio [1, T] tensor, sample_rate)])`
returns one list of ints per utterance, cutting audio into 30 s pieces; it hard-codes CUDA (`.cuda()`)
and torchaudio for resampling; the repository pins transformers 4.44 (its Whisper subclass may not
import under transformers 5.x: use a separate environment if so). These units are what upstream OpenS2S
trains on (`<|audio_N|>` in its JSONL); the embedded k-means units are not interchangeable with them.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from pipeline.adapters.base import Audio
from pipeline.io.audio import resample

GLM4VOICE_RATE = 16000
FRAME_RATE_HZ = 12.5
CODEBOOK_SIZE = 16384
_TOKENIZER_FILES = ("config.json", "preprocessor_config.json")


def check_glm4voice_paths(repo: str | None, tokenizer_dir: str | None) -> tuple[Path, Path]:
    """Raise FileNotFoundError naming the recipe fields of every problem unless both local folders look right."""
    problems = []
    if not repo or not (Path(repo) / "speech_tokenizer" / "modeling_whisper.py").is_file():
        problems.append(
            f"units.glm4voice_repo: {repo!r} has no speech_tokenizer/modeling_whisper.py; "
            "give a local checkout of github.com/THUDM/GLM-4-Voice"
        )
    folder = Path(tokenizer_dir) if tokenizer_dir else None
    if folder is None or not folder.is_dir():
        problems.append(
            f"units.glm4voice_tokenizer_dir: {tokenizer_dir!r} does not exist; "
            "give a local copy of glm-4-voice-tokenizer (nothing is downloaded)"
        )
    else:
        missing = [name for name in _TOKENIZER_FILES if not (folder / name).is_file()]
        if not any(folder.glob("*.safetensors")):
            missing.append("*.safetensors")
        if missing:
            problems.append(
                f"units.glm4voice_tokenizer_dir: {folder} lacks {', '.join(missing)}; "
                "is it the glm-4-voice-tokenizer folder?"
            )
    if problems:
        raise FileNotFoundError("\n".join(problems))
    return Path(repo), folder  # type: ignore[arg-type]


def check_glm4voice_device(device: str) -> None:
    """Raise ValueError unless `device` is CUDA: GLM-4-Voice's `extract_speech_token` calls `.cuda()` itself."""
    if not device.startswith("cuda"):
        raise ValueError(
            f"units.device: {device!r}, but the GLM-4-Voice tokenizer runs on CUDA only "
            "(speech_tokenizer/utils.py moves every batch with .cuda()); set units.device cuda on GPU nodes"
        )


def glm4voice_version(tokenizer_dir: Path) -> str:
    """Version id of a GLM-4-Voice tokenizer folder (a hash of its config), stored in every row."""
    return "glm4voice-" + hashlib.sha256((Path(tokenizer_dir) / "config.json").read_bytes()).hexdigest()[:12]


class GLM4VoiceUnits:
    """Speech units of a clip with the GLM-4-Voice tokenizer (CUDA)."""

    def __init__(self, repo: str | None, tokenizer_dir: str | None, device: str = "cuda") -> None:
        check_glm4voice_device(device)
        repo_path, folder = check_glm4voice_paths(repo, tokenizer_dir)
        if str(repo_path) not in sys.path:
            sys.path.insert(0, str(repo_path))
        from speech_tokenizer.modeling_whisper import WhisperVQEncoder
        from speech_tokenizer.utils import extract_speech_token
        from transformers import WhisperFeatureExtractor

        self._extract = extract_speech_token
        self._model = WhisperVQEncoder.from_pretrained(str(folder)).eval().to(device)
        self._features = WhisperFeatureExtractor.from_pretrained(str(folder))
        self.version = glm4voice_version(folder)

    def encode(self, audio: Audio) -> list[int]:
        """Units of `audio` (resampled to 16 kHz): about 12.5 per second, values < 16384."""
        import torch

        samples = torch.from_numpy(resample(audio, GLM4VOICE_RATE).samples.copy())[None, :]
        return [int(u) for u in self._extract(self._model, self._features, [(samples, GLM4VOICE_RATE)])[0]]
