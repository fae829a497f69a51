"""Upstream contracts checked at load: CosyVoice2's two instruct2 signatures, its folders, GLM-4-Voice's
CUDA-only tokenizer, and every missing production input listed at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from pipeline.adapters.tts_cosyvoice import (
    check_cosyvoice_paths,
    emotion_instruction,
    instruct2_contract,
)
from pipeline.adapters.units_glm4voice import check_glm4voice_device
from pipeline.build import input_problems
from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe

# The two upstream shapes (FunAudioLLM/CosyVoice cosyvoice/cli/{cosyvoice,frontend}.py):
# before 2025-12-08 (dc96e4c) the prompt is a 16 kHz tensor and the frontend appends <|endofprompt|>;
# today (ace7c47) the prompt is a path and the caller appends it.
OLD = (
    "def inference_instruct2(self, tts_text, instruct_text, prompt_speech_16k, zero_shot_spk_id='', stream=False):\n"
    "    pass\n",
    "def frontend_instruct2(self, tts_text, instruct_text, prompt_speech_16k, resample_rate, zero_shot_spk_id):\n"
    "    model_input = self.frontend_zero_shot(tts_text, instruct_text + '<|endofprompt|>', prompt_speech_16k)\n",
)
NEW = (
    "def inference_instruct2(self, tts_text, instruct_text, prompt_wav, zero_shot_spk_id='', stream=False):\n"
    "    pass\n",
    "def frontend_instruct2(self, tts_text, instruct_text, prompt_wav, resample_rate, zero_shot_spk_id):\n"
    "    model_input = self.frontend_zero_shot(tts_text, instruct_text, prompt_wav, resample_rate, zero_shot_spk_id)\n",
)


def _checkout(root: Path, sources: tuple[str, str]) -> Path:
    cli = root / "cosyvoice" / "cli"
    cli.mkdir(parents=True)
    (cli / "cosyvoice.py").write_text("class CosyVoice2:\n    " + sources[0].replace("\n", "\n    "))
    (cli / "frontend.py").write_text("class CosyVoiceFrontEnd:\n    " + sources[1].replace("\n", "\n    "))
    (root / "third_party" / "Matcha-TTS" / "matcha").mkdir(parents=True)
    return root


def test_both_instruct2_signatures_are_recognised(tmp_path: Path) -> None:
    assert instruct2_contract(_checkout(tmp_path / "old", OLD)) == ("tensor16k", True)
    assert instruct2_contract(_checkout(tmp_path / "new", NEW)) == ("path", False)
    odd = (OLD[0].replace("prompt_speech_16k", "speech"), OLD[1])
    with pytest.raises(ValueError, match="tts.cosyvoice_repo: unknown inference_instruct2 parameters"):
        instruct2_contract(_checkout(tmp_path / "odd", odd))


def test_cosyvoice_folders_are_all_named(tmp_path: Path) -> None:
    repo = _checkout(tmp_path / "repo", NEW)
    (repo / "third_party" / "Matcha-TTS" / "matcha").rmdir()
    model = tmp_path / "CosyVoice2-0.5B"
    model.mkdir()
    (model / "llm.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        check_cosyvoice_paths(str(repo), str(model))
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "third_party/Matcha-TTS" in lines[0] and "git submodule update" in lines[0]
    assert "tts.cosyvoice_model_dir" in lines[1] and "CosyVoice-BlankEN/" in lines[1] and "flow.pt" in lines[1]
    assert "llm.pt" not in lines[1]


def test_emotion_instructions_use_upstream_wording() -> None:
    assert emotion_instruction("sad") == "用伤心的语气说这句话"
    assert emotion_instruction("angry", "high") == "用非常生气的语气说这句话"
    assert emotion_instruction("neutral", "high") == "用平静的语气说这句话"


def test_glm4voice_is_cuda_only_said_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="units.device: 'cpu', but the GLM-4-Voice tokenizer runs on CUDA only"):
        check_glm4voice_device("cpu")
    check_glm4voice_device("cuda:1")
    recipe = load_recipe(write_recipe(tmp_path, units={"backend": "glm4voice", "device": "cpu"}))
    problems = input_problems(recipe, load_catalogs(recipe))
    assert any(p.startswith("units.device") for p in problems)
    assert any(p.startswith("units.glm4voice_repo") for p in problems)
    assert any(p.startswith("units.glm4voice_tokenizer_dir") for p in problems)


def test_production_recipe_without_weights_lists_every_missing_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    result = run_cli("check", "manifests/production-gpu.yaml", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr[result.stderr.index("error:") :]
    assert result.stderr.count("error:") == 1
    for field in ("tts.speakers", "llm.api_key_env", "asr.model_path", "gates.emotion_model_dir",
                  "tts.cosyvoice_repo", "tts.cosyvoice_model_dir", "units.glm4voice_repo",
                  "units.glm4voice_tokenizer_dir"):  # fmt: skip
        assert f"  - {field}" in message, (field, message)
