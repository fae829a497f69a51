"""Read and write the OpenS2S checkpoint layout (CASIA-LM/OpenS2S `OmniSpeechModel.save_pretrained` + `train.py`).

An OpenS2S folder holds:

    config.json                      OmniSpeechConfig: audio_encoder_config, llm_config, tts_lm_config,
                                     lora_config (null), conv_kernel_sizes ("5,5"), adapter_inner_dim,
                                     interleave_strategy ("text:speech", e.g. "1:2")
    model.safetensors                or model-0000i-of-0000n.safetensors + model.safetensors.index.json
    tokenizer files                  the Qwen3 tokenizer with upstream's four added tokens
    generation_config.json
    audio/preprocessor_config.json   the Whisper feature extractor
    tts/                             the TTS LM tokenizer (<|audio_N|> tokens) and its generation_config.json

Weights are renamed through one explicit table (`KEY_MAP`) and loaded strictly: a key the config's
model does not have, a key it needs that the file lacks, or a shape that differs is an error listing
them. The only tolerated difference is a tied `lm_head.weight` (the embeddings are the same tensor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.train.config import ConfigError, ModelConfig, unit_vocab
from pipeline.train.model import S2SModel, build_model
from pipeline.train.tokenizer import HFTokenizer

# (our prefix, upstream prefix); a key takes the longest prefix it starts with.
KEY_MAP = (
    ("audio_encoder.", "audio_encoder_model."),
    ("adapter.convs.", "audio_adapter.subsampler.conv_layers."),
    ("adapter.fc1.", "audio_adapter.fc1."),
    ("adapter.fc2.", "audio_adapter.fc2."),
    ("adapter.norm.", "audio_adapter.ln."),
    ("llm.", "llm_model."),
    ("llm2tts.linear.", "llm2tts."),
    ("llm2tts.norm.", "llm_ln."),
    ("tts.", "tts_lm_model."),
    ("spk2tts.linear.", "tts_lm_model.spk2tts."),
    ("spk2tts.norm.", "tts_lm_model.spk_ln."),
)
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
ENCODER_TYPES = ("qwen2_audio_encoder", "qwen2_audio")


def _rename(key: str, direction: int) -> str | None:
    matches = [pair for pair in KEY_MAP if key.startswith(pair[direction])]
    if not matches:
        return None
    pair = max(matches, key=lambda p: len(p[direction]))
    return pair[1 - direction] + key[len(pair[direction]) :]


def to_upstream(key: str) -> str:
    """Our state-dict key as upstream names it (ValueError for a key outside the table)."""
    name = _rename(key, 0)
    if name is None:
        raise ValueError(f"no upstream name for {key!r}")
    return name


def from_upstream(key: str) -> str | None:
    """Upstream's state-dict key as we name it, or None for a key outside the table."""
    return _rename(key, 1)


def _tied(config: ModelConfig) -> set[str]:
    """Our keys that are the same tensor as another (tied output embeddings) and so are not stored."""
    return {f"{part}.lm_head.weight" for part in ("llm", "tts") if getattr(config, part).get("tie_word_embeddings")}


def expected_keys(model: S2SModel) -> dict[str, str]:
    """upstream key -> our key, for every tensor an OpenS2S file of this model holds."""
    tied = _tied(model.config)
    return {to_upstream(k): k for k in model.state_dict() if k not in tied}


# --- reading -----------------------------------------------------------------------------------------
def _clean(sub: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sub.items() if not k.startswith("_") and k != "architectures"}


def read_config(folder: Path) -> ModelConfig:
    """Our `ModelConfig` from an OpenS2S folder's config.json and tts/ tokenizer (nothing else is read)."""
    if not folder.is_dir():
        raise ConfigError(f"--init-from: {folder} is not a folder; give a local OpenS2S checkpoint folder")
    for name in ("config.json", "tokenizer_config.json", "tts/tokenizer_config.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"--init-from: {folder} has no {name}; is it an OpenS2S checkpoint folder?")
    raw = json.loads((folder / "config.json").read_text())
    lacking = [k for k in ("audio_encoder_config", "llm_config", "tts_lm_config") if k not in raw]
    if lacking:
        raise ConfigError(f"--init-from: {folder}/config.json has no {', '.join(lacking)} (not an OmniSpeechConfig)")
    if raw.get("lora_config"):
        raise ConfigError(f"--init-from: {folder} holds unmerged LoRA weights; save it after upstream's merge_lora()")
    encoder, llm, tts = (_clean(raw[k]) for k in ("audio_encoder_config", "llm_config", "tts_lm_config"))
    if encoder.get("model_type", "qwen2_audio_encoder") not in ENCODER_TYPES:
        raise ConfigError(f"--init-from: audio encoder {encoder.get('model_type')!r} is unsupported (Qwen2-Audio only)")
    for name, sub in (("llm_config", llm), ("tts_lm_config", tts)):
        if sub.get("model_type", "qwen3") != "qwen3":
            raise ConfigError(f"--init-from: {name} is {sub.get('model_type')!r}; only qwen3 is supported")
    encoder["model_type"] = "qwen2_audio_encoder"
    text_span, speech_span = (int(x) for x in str(raw.get("interleave_strategy", "1:2")).split(":"))
    n_units, first, eos, pad = unit_vocab(folder / "tts", "--init-from")
    return ModelConfig(
        name="opens2s",
        encoder=encoder,
        llm=llm,
        tts=tts,
        n_units=n_units,
        unit_offset=first,
        unit_eos=eos,
        unit_pad=pad,
        adapter_kernel_sizes=[int(k) for k in str(raw.get("conv_kernel_sizes", "5,5")).split(",")],
        adapter_inner_dim=int(raw.get("adapter_inner_dim", 512)),
        text_span=text_span,
        speech_span=speech_span,
        max_tokens=4096,
        tokenizer="hf",
        paths={"opens2s": str(folder)},
    )


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), by upstream name (a sharded index is followed)."""
    from safetensors import safe_open

    if (folder / INDEX).is_file():
        weight_map: dict[str, str] = json.loads((folder / INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE).is_file():
        weight_map, files = {}, [SINGLE]
    else:
        raise ConfigError(f"--init-from: {folder} has neither {SINGLE} nor {INDEX}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (folder / name).is_file():
            raise ConfigError(f"--init-from: {folder}/{INDEX} names {name}, which is missing")
        with safe_open(str(folder / name), framework="pt", device="cpu") as f:
            for key in f.keys():
                if weight_map and weight_map.get(key) != name:
                    raise ConfigError(f"--init-from: {name} holds {key}, which {INDEX} places elsewhere")
                state[key] = f.get_tensor(key)
    if weight_map and set(weight_map) != set(state):
        absent = sorted(set(weight_map) - set(state))
        raise ConfigError(f"--init-from: {INDEX} lists tensors its files lack: {', '.join(absent[:10])}")
    return state


def _listed(keys: list[str], limit: int = 20) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_upstream_state(model: S2SModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load upstream-named `state` into `model` strictly: missing, unexpected or misshapen keys are one error."""
    expected = expected_keys(model)
    ours = model.state_dict()
    tied_upstream = {to_upstream(k) for k in _tied(model.config)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - tied_upstream)
    shapes = [
        f"{k} {tuple(state[k].shape)} (the config needs {tuple(ours[expected[k]].shape)})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(ours[expected[k]].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listed(shapes)}")
    if problems:
        raise ConfigError(f"{source} does not match its config.json ({'; '.join(problems)})")
    renamed = {ours_key: state[up_key] for up_key, ours_key in expected.items()}
    result = model.load_state_dict(renamed, strict=False)
    left = [k for k in result.missing_keys if k not in _tied(model.config)]
    if left or result.unexpected_keys:  # cannot happen after the checks above; kept as a guard
        raise ConfigError(f"{source}: internal key map error ({left or result.unexpected_keys})")


def load_opens2s(folder: Path, seed: int = 0) -> tuple[S2SModel, HFTokenizer]:
    """Our model and tokenizer from an upstream OpenS2S checkpoint folder (config, tokenizers, weights)."""
    config = read_config(folder)
    tokenizer = HFTokenizer(folder, require_specials=True)
    if tokenizer.vocab_size > int(config.llm["vocab_size"]):
        raise ConfigError(
            f"--init-from: the tokenizer in {folder} has {tokenizer.vocab_size} tokens but llm_config.vocab_size "
            f"is {config.llm['vocab_size']}"
        )
    model = build_model(config, seed)
    load_upstream_state(model, read_weights(folder), f"--init-from {folder}")
    return model, tokenizer


# --- writing -----------------------------------------------------------------------------------------
def upstream_config(config: ModelConfig) -> dict[str, Any]:
    """The OmniSpeechConfig fields of `config` (what upstream's `OmniSpeechConfig.from_pretrained` reads)."""
    import transformers

    return {
        "architectures": ["OmniSpeechModel"],
        "audio_encoder_config": {**config.encoder, "model_type": "qwen2_audio_encoder"},
        "llm_config": {**config.llm, "model_type": "qwen3"},
        "tts_lm_config": {**config.tts, "model_type": "qwen3"},
        "lora_config": None,
        "conv_kernel_sizes": ",".join(str(k) for k in config.adapter_kernel_sizes),
        "adapter_inner_dim": config.adapter_inner_dim,
        "interleave_strategy": f"{config.text_span}:{config.speech_span}",
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }


def _tts_folder(config: ModelConfig) -> Path:
    if "opens2s" in config.paths:
        return Path(config.paths["opens2s"]) / "tts"
    if "tts" in config.paths:
        return Path(config.paths["tts"])
    raise ConfigError("the OpenS2S layout needs a TTS LM tokenizer: train with --init-from or --config opens2s")


def _write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE), metadata={"format": "pt"})
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names


def save_opens2s(
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    tokenizer: HFTokenizer,
    folder: Path,
    max_shard_bytes: int = 5 << 30,
) -> list[str]:
    """Write our model's full `state` (our names) in upstream's layout into `folder`; returns the weight files.

    `folder` then loads with upstream's `OmniSpeechModel.from_pretrained`, `AutoTokenizer.from_pretrained`
    (root and tts/), `GenerationConfig.from_pretrained` (root and tts/) and `WhisperFeatureExtractor`
    (audio/), which is what its `model_worker.py` does.
    """
    from transformers import AutoTokenizer, GenerationConfig, WhisperFeatureExtractor

    from pipeline.train.config import HOP, SAMPLE_RATE
    from pipeline.train.tokens import IM_END, PAD

    if config.tokenizer != "hf":
        raise ConfigError("the OpenS2S layout needs a Hugging Face tokenizer: use --init-from or --config opens2s")
    tts_source = _tts_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    tied = _tied(config)
    upstream = {to_upstream(k): v for k, v in state.items() if k not in tied}
    files = _write_weights(upstream, folder, max_shard_bytes)
    (folder / "config.json").write_text(json.dumps(upstream_config(config), indent=2, sort_keys=True))
    tokenizer.save(folder)
    stop = [tokenizer.token_id(IM_END), tokenizer.token_id(PAD)]
    GenerationConfig(eos_token_id=stop, pad_token_id=tokenizer.pad_id, do_sample=False).save_pretrained(str(folder))
    WhisperFeatureExtractor(
        feature_size=config.n_mels,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP,
        chunk_length=config.chunk_frames * HOP // SAMPLE_RATE,
        n_fft=400,
    ).save_pretrained(str(folder / "audio"))
    AutoTokenizer.from_pretrained(str(tts_source), local_files_only=True).save_pretrained(str(folder / "tts"))
    GenerationConfig(eos_token_id=config.unit_eos, pad_token_id=config.unit_pad, do_sample=False).save_pretrained(
        str(folder / "tts")
    )
    return files
