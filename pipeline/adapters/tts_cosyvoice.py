"""Production TTS: CosyVoice2 from a local checkout and model directory (GPU).

Instruct2 mode renders a zero-shot speaker (prompt recording + transcript) with an emotion given
as instruct text. Facts this follows (FunAudioLLM/CosyVoice, read at ace7c47 of 2026-03-16 and at
dc96e4c of 2025-08-21): the checkout root and `third_party/Matcha-TTS` go on sys.path (`example.py`);
a model_dir that does not exist triggers a hub download, so it is checked first, including its
`CosyVoice-BlankEN/` Qwen tokenizer folder; each yield is {'tts_speech': [1, T]} at `sample_rate`
(24 kHz). The contract changed twice in December 2025, so both versions are supported, detected from
the installed source:
- `inference_instruct2(tts_text, instruct_text, prompt_speech_16k, ...)` took a 16 kHz tensor before
  2025-12-08 (commit 622a3a1 "use wav file rather than tensor"); since then `prompt_wav` is a path;
- `frontend_instruct2` appended `<|endofprompt|>` to the instruction itself until 2025-12-09; since
  then the caller does (example.py: `'用四川话说这句话<|endofprompt|>'`).
Emotion instructions follow the wording of upstream's own instruct examples (`emotion_instruction`;
CosyVoice3's `cosyvoice/utils/common.py` instruct_list words emotions the same way, "请非常开心地说一句话");
free-form English instructions are followed less reliably and are sometimes spoken aloud (the WER
gate rejects such a turn, since the transcript then carries the instruction's words).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np

from pipeline.adapters.base import Audio, quiet_third_party

MODEL_FILES = ("cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx")
END_OF_PROMPT = "<|endofprompt|>"
# "Say this sentence in a <emotion> tone", worded like CosyVoice2's own instruct example
# (README / example.py: "用四川话说这句话", say this sentence in Sichuan dialect); 非常 = "very".
EMOTION_WORDS = {"neutral": "平静", "happy": "开心", "sad": "伤心", "angry": "生气", "fearful": "害怕",
                 "surprised": "惊讶", "disgusted": "厌恶"}  # fmt: skip


def emotion_instruction(emotion: str, intensity: str = "medium") -> str:
    """The instruct text for `emotion` (one of our 7) at `intensity`, e.g. 用非常伤心的语气说这句话."""
    very = "非常" if intensity == "high" and emotion != "neutral" else ""
    return f"用{very}{EMOTION_WORDS[emotion]}的语气说这句话"


def check_cosyvoice_paths(repo: str | None, model_dir: str | None) -> tuple[Path, Path]:
    """Raise FileNotFoundError naming the recipe field of every problem (one per line) unless the
    checkout and the model folder are complete."""
    problems = []
    if not repo or not (Path(repo) / "cosyvoice" / "cli" / "cosyvoice.py").is_file():
        problems.append(
            f"tts.cosyvoice_repo: {repo!r} is not a CosyVoice checkout (cosyvoice/cli/cosyvoice.py missing); "
            "clone FunAudioLLM/CosyVoice with its submodules and name the folder"
        )
    elif not (Path(repo) / "third_party" / "Matcha-TTS" / "matcha").is_dir():
        problems.append(
            f"tts.cosyvoice_repo: {repo}/third_party/Matcha-TTS is empty; run `git submodule update --init --recursive`"
        )
    missing = [f for f in MODEL_FILES if not model_dir or not (Path(model_dir) / f).is_file()]
    if model_dir and not (Path(model_dir) / "CosyVoice-BlankEN").is_dir():
        missing.append("CosyVoice-BlankEN/")
    if missing:
        problems.append(
            f"tts.cosyvoice_model_dir: {model_dir!r} lacks {', '.join(missing)}; "
            "download CosyVoice2-0.5B there first (a missing folder would trigger a hub download)"
        )
    if problems:
        raise FileNotFoundError("\n".join(problems))
    return Path(repo), Path(model_dir)  # type: ignore[arg-type]


def _function(source: Path, name: str) -> ast.FunctionDef | None:
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def instruct2_contract(repo: Path) -> tuple[str, bool]:
    """How the installed checkout's `inference_instruct2` takes its prompt ("path" or "tensor16k") and
    whether its frontend appends `<|endofprompt|>` itself, read from the source (no import)."""
    method = _function(repo / "cosyvoice" / "cli" / "cosyvoice.py", "inference_instruct2")
    frontend = _function(repo / "cosyvoice" / "cli" / "frontend.py", "frontend_instruct2")
    if method is None or frontend is None:
        raise ValueError(
            f"tts.cosyvoice_repo: {repo} has no inference_instruct2; CosyVoice2 needs a 2024-12 or later checkout"
        )
    params = [a.arg for a in method.args.args]
    if "prompt_wav" in params:
        prompt = "path"
    elif "prompt_speech_16k" in params:
        prompt = "tensor16k"
    else:
        raise ValueError(
            f"tts.cosyvoice_repo: unknown inference_instruct2 parameters {params}; supported: "
            "prompt_wav (path, since 2025-12-08) or prompt_speech_16k (16 kHz tensor, before)"
        )
    appends = END_OF_PROMPT in ast.unparse(frontend)
    return prompt, appends


class CosyVoiceTTS:
    """CosyVoice2 in instruct2 mode; loads the model once per instance (one per GPU actor)."""

    def __init__(self, repo: str | None, model_dir: str | None, fp16: bool = True) -> None:
        repo_path, model_path = check_cosyvoice_paths(repo, model_dir)
        self.prompt_kind, self.frontend_appends = instruct2_contract(repo_path)
        for entry in (repo_path, repo_path / "third_party" / "Matcha-TTS"):
            if str(entry) not in sys.path:
                sys.path.insert(0, str(entry))
        from cosyvoice.cli.cosyvoice import CosyVoice2  # sets the root logger to DEBUG on import

        quiet_third_party()
        self._model = CosyVoice2(str(model_path), load_jit=False, load_trt=False, load_vllm=False, fp16=fp16)
        quiet_third_party()
        self._load_wav = None
        if self.prompt_kind == "tensor16k":
            from cosyvoice.utils.file_utils import load_wav

            self._load_wav = load_wav
        self.sample_rate = int(self._model.sample_rate)
        self.name = f"cosyvoice2:{model_path.name}"

    def instruction(self, instruct: str) -> str:
        """The instruct text as this checkout wants it (with `<|endofprompt|>` unless its frontend adds it)."""
        instruct = instruct.removesuffix(END_OF_PROMPT)
        return instruct if self.frontend_appends else instruct + END_OF_PROMPT

    def synthesize(self, text: str, instruct: str, prompt_wav: Path) -> Audio:
        """Render `text` in the voice of `prompt_wav`, styled by `instruct` (e.g. emotion_instruction("sad"))."""
        prompt: object = str(prompt_wav)
        if self._load_wav is not None:  # older checkouts take the prompt as a 16 kHz tensor
            prompt = self._load_wav(str(prompt_wav), 16000)
        chunks = self._model.inference_instruct2(
            text, self.instruction(instruct), prompt, stream=False, text_frontend=False
        )
        pieces = [chunk["tts_speech"].squeeze(0).float().cpu().numpy() for chunk in chunks]
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return Audio(samples=samples.astype(np.float32), sample_rate=self.sample_rate)
