"""Production TTS: CosyVoice2 from a local checkout and model directory (GPU).

Instruct2 mode renders a zero-shot speaker (prompt recording + transcript) with an emotion given
as instruct text. Facts this follows (FunAudioLLM/CosyVoice, Nov 2026): the checkout root and
`third_party/Matcha-TTS` go on sys.path; a model_dir that does not exist triggers a hub download,
so it is checked first; `prompt_wav` is a file path; each yield is {'tts_speech': [1, T]} at
`sample_rate` (24 kHz); the caller appends `<|endofprompt|>` to the instruction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.adapters.base import Audio

MODEL_FILES = ("cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx")


def check_cosyvoice_paths(repo: str | None, model_dir: str | None) -> tuple[Path, Path]:
    """Raise FileNotFoundError naming the recipe field unless checkout and model folder are complete."""
    if not repo or not (Path(repo) / "cosyvoice" / "cli" / "cosyvoice.py").is_file():
        raise FileNotFoundError(
            f"tts.cosyvoice_repo: {repo!r} is not a CosyVoice checkout (cosyvoice/cli/cosyvoice.py missing); "
            "clone FunAudioLLM/CosyVoice with its submodules and name the folder"
        )
    missing = [f for f in MODEL_FILES if not model_dir or not (Path(model_dir) / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"tts.cosyvoice_model_dir: {model_dir!r} lacks {', '.join(missing)}; "
            "download CosyVoice2-0.5B there first (a missing folder would trigger a hub download)"
        )
    return Path(repo), Path(model_dir)  # type: ignore[arg-type]


class CosyVoiceTTS:
    """CosyVoice2 in instruct2 mode; loads the model once per instance (one per GPU actor)."""

    def __init__(self, repo: str | None, model_dir: str | None, fp16: bool = True) -> None:
        repo_path, model_path = check_cosyvoice_paths(repo, model_dir)
        for entry in (repo_path, repo_path / "third_party" / "Matcha-TTS"):
            if str(entry) not in sys.path:
                sys.path.insert(0, str(entry))
        from cosyvoice.cli.cosyvoice import CosyVoice2

        self._model = CosyVoice2(str(model_path), load_jit=False, load_trt=False, load_vllm=False, fp16=fp16)
        self.sample_rate = int(self._model.sample_rate)
        self.name = f"cosyvoice2:{model_path.name}"

    def synthesize(self, text: str, instruct: str, prompt_wav: Path) -> Audio:
        """Render `text` in the voice of `prompt_wav`, styled by `instruct` (e.g. speak sadly)."""
        pieces = [
            chunk["tts_speech"].squeeze(0).float().cpu().numpy()
            for chunk in self._model.inference_instruct2(
                text, f"{instruct}<|endofprompt|>", str(prompt_wav), stream=False, text_frontend=False
            )
        ]
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return Audio(samples=samples.astype(np.float32), sample_rate=self.sample_rate)
