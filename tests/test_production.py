"""Production backends: clear errors for missing paths here; real runs where the weights are (gpu)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_recipe

from pipeline.catalogs import load_catalogs
from pipeline.recipe import RecipeError, load_recipe


def _gpu_path(var: str) -> str:
    value = os.environ.get(var, "")
    if not value or not Path(value).exists():
        pytest.skip(f"set {var} to a local model folder to run this production test")
    return value


def test_cosyvoice_recipe_needs_emotion2vec(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="set gates.emotion_backend emotion2vec"):
        load_recipe(write_recipe(tmp_path, tts={"backend": "cosyvoice2"}))


def test_missing_production_paths_name_the_recipe_field() -> None:
    from pipeline.adapters.funasr_models import check_funasr_dir
    from pipeline.adapters.tts_cosyvoice import check_cosyvoice_paths

    with pytest.raises(FileNotFoundError, match="tts.cosyvoice_repo"):
        check_cosyvoice_paths("/nowhere/CosyVoice", "/nowhere/model")
    with pytest.raises(FileNotFoundError, match="asr.model_path: '/nowhere' is not a local FunASR model folder"):
        check_funasr_dir("/nowhere", "asr.model_path")
    with pytest.raises(FileNotFoundError, match="gates.emotion_model_dir"):
        check_funasr_dir(None, "gates.emotion_model_dir")


def test_build_with_missing_funasr_dir_fails_before_writing(tmp_path: Path) -> None:
    from pipeline.build import build

    recipe = write_recipe(tmp_path, asr={"backend": "funasr", "model_path": str(tmp_path / "nope")})
    with pytest.raises(RecipeError, match="asr.model_path"):
        build(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _catalog_with_prompt(tmp_path: Path, prompt: str) -> Path:
    speakers = tmp_path / "speakers.yaml"
    speakers.write_text(
        "speakers:\n  - {id: a, espeak: {voice: en-us}}\nassistants:\n  - {id: b, espeak: {voice: en-us}}\n"
        f"production:\n  - {{id: p1, prompt_wav: {prompt}, prompt_text: Hello there, how are you today}}\n"
    )
    return speakers


def test_production_speakers_are_checked_on_load(tmp_path: Path) -> None:
    sr = 16000
    sf.write(tmp_path / "good.wav", 0.1 * np.sin(np.arange(3 * sr) * 0.05).astype(np.float32), sr)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio at all")
    sf.write(tmp_path / "short.wav", np.zeros(sr // 4, dtype=np.float32), sr)
    ok = load_catalogs(
        load_recipe(write_recipe(tmp_path, tts={"speakers": str(_catalog_with_prompt(tmp_path, "good.wav"))}))
    )
    assert ok.production_speakers[0].prompt_wav == tmp_path / "good.wav"
    for name, message in [
        ("missing.wav", "does not exist"),
        ("empty.wav", "not readable audio"),
        ("text.wav", "not readable audio"),
        ("short.wav", "must hold 1-30 s"),
    ]:
        recipe = load_recipe(write_recipe(tmp_path, tts={"speakers": str(_catalog_with_prompt(tmp_path, name))}))
        with pytest.raises(RecipeError, match=message):
            load_catalogs(recipe)


@pytest.mark.gpu
def test_cosyvoice2_renders_with_instruct() -> None:
    from pipeline.adapters.tts_cosyvoice import CosyVoiceTTS, emotion_instruction

    tts = CosyVoiceTTS(_gpu_path("COSYVOICE_REPO"), _gpu_path("COSYVOICE_MODEL_DIR"))
    assert tts.prompt_kind in ("path", "tensor16k")  # the installed checkout's contract was recognised
    prompt = Path(_gpu_path("COSYVOICE_PROMPT_WAV"))
    audio = tts.synthesize("I cannot believe this happened today.", emotion_instruction("sad", "high"), prompt)
    assert audio.sample_rate == 24000 and 1.0 < audio.duration_s < 8.0  # the instruction was not read out too
    assert float(abs(audio.samples).max()) > 0.05


@pytest.mark.gpu
def test_funasr_transcribes_and_emotion2vec_classifies() -> None:
    from pipeline.adapters.funasr_models import Emotion2Vec, FunASRTranscriber
    from pipeline.adapters.tts_espeak import EspeakEngine, Voice

    audio = EspeakEngine.instance().synthesize("Hello there, how are you today?", Voice("en-us"))
    text = FunASRTranscriber(_gpu_path("FUNASR_ASR_DIR")).transcribe(audio).text
    assert "how are you" in text.lower()
    model = Emotion2Vec(_gpu_path("EMOTION2VEC_DIR"))
    assert set(model.labels.values()) >= {"neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted"}
    prediction = model.classify(audio)
    assert prediction.emotion in model.labels.values() and 0.0 < prediction.score <= 1.0


@pytest.mark.gpu
def test_glm4voice_units_come_at_12_5_per_second() -> None:
    from pipeline.adapters.tts_espeak import EspeakEngine, Voice
    from pipeline.adapters.units_glm4voice import CODEBOOK_SIZE, GLM4VoiceUnits

    units = GLM4VoiceUnits(_gpu_path("GLM4VOICE_REPO"), _gpu_path("GLM4VOICE_TOKENIZER_DIR"))
    audio = EspeakEngine.instance().synthesize(
        "I am so sorry to hear that, let us sort it out together.", Voice("en-us")
    )
    codes = units.encode(audio)
    assert abs(len(codes) / audio.duration_s - 12.5) < 1.0 and all(0 <= c < CODEBOOK_SIZE for c in codes)
    assert len(set(codes)) > 5  # real speech gives varied units, not one code


def _ray_vllm_ctx(tmp_path: Path, **llm: object) -> object:
    from pipeline.stages.base import BuildContext

    settings = {"backend": "ray-vllm", "mode": "dialogue", "model_path": str(tmp_path), **llm}
    recipe = load_recipe(write_recipe(tmp_path, llm=settings))
    return BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=tmp_path)


def test_ray_vllm_rows_are_requested_parsed_and_gated(tmp_path: Path) -> None:
    """The ray.data.llm pre/postprocess on real rows (the vLLM engine itself needs a GPU)."""
    import json
    import pickle

    from pipeline.adapters.llm_ray_vllm import DialogueRequests, DialogueResults
    from pipeline.stages.base import to_batch
    from pipeline.stages.s1_scenarios import ScenarioSampler

    ctx = _ray_vllm_ctx(tmp_path, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    dialogue = ScenarioSampler(ctx).new(0)  # type: ignore[arg-type]
    batch = to_batch([dialogue])
    row = {key: batch[key][0] for key in batch}
    request = DialogueRequests(ctx)(row)  # type: ignore[arg-type]
    assert (
        request["messages"][0]["role"] == "system" and dialogue.scenario.situation in request["messages"][1]["content"]
    )
    assert request["sampling_params"]["structured_outputs"]["json"]["properties"]["turns"]
    turns = [{"role": "user", "emotion": dialogue.scenario.emotion,
              "text": "I lost my wallet on the bus today and I feel awful about it."},
             {"role": "assistant", "strategy": "ask",
              "text": "Oh no, losing your wallet is so stressful. Did you call the bus company yet?"}]  # fmt: skip
    good = DialogueResults(ctx)({**request, "generated_text": json.dumps({"turns": turns})})  # type: ignore[arg-type]
    kept = pickle.loads(good["record"])
    assert (
        kept.kept and [t.role for t in kept.turns] == ["user", "assistant"] and set(good) == {"id", "shard", "record"}
    )
    bad = pickle.loads(DialogueResults(ctx)({**request, "generated_text": "{oops"})["record"])  # type: ignore[arg-type]
    assert bad.reject.reason == "llm_invalid_json"
    failed = DialogueResults(ctx)({**request, "__inference_error__": "CUDA out of memory"})  # type: ignore[arg-type]
    assert pickle.loads(failed["record"]).reject.reason == "llm_request_failed"


def test_ray_vllm_needs_a_model_folder_and_ray_llm(tmp_path: Path) -> None:
    from pipeline.build import BuildError, build

    recipe = write_recipe(tmp_path, llm={"backend": "ray-vllm", "mode": "dialogue", "model_path": "/nonexistent/qwen3"})
    with pytest.raises((RecipeError, BuildError), match="llm.model_path"):
        build(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RecipeError, match="mode: dialogue"):
        load_recipe(write_recipe(tmp_path, llm={"backend": "ray-vllm", "model_path": str(tmp_path)}))


@pytest.mark.gpu
def test_ray_vllm_build_writes_dialogues(tmp_path: Path) -> None:
    """A text-only build with vLLM engines inside Ray Data (needs a GPU, ray[llm] and VLLM_MODEL_DIR)."""
    pytest.importorskip("vllm", reason='`pip install "ray[llm]==2.60.0"` to run the ray-vllm test')
    from conftest import run_cli

    llm = {"backend": "ray-vllm", "mode": "dialogue", "model_path": _gpu_path("VLLM_MODEL_DIR")}
    recipe = write_recipe(tmp_path, num_dialogues=4, shard_size=2, text_only=True, llm=llm,
                          resources={"dialogue": {"num_gpus": 1, "num_cpus": 1, "batch_size": 4}})  # fmt: skip
    result = run_cli("build", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_cli("verify", str(tmp_path / "out")).returncode == 0


def test_cosyvoice2_build_needs_glm4voice_units_and_its_paths(tmp_path: Path) -> None:
    from pipeline.build import _check_inputs

    recipe = load_recipe(write_recipe(tmp_path, units={"backend": "glm4voice", "glm4voice_repo": "/nope"}))
    with pytest.raises(RecipeError, match="units.glm4voice_repo"):
        _check_inputs(recipe, load_catalogs(recipe))
