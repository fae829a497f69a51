"""Memory plan per GPU for a training configuration, computed from architecture dims alone (no torch, nothing loaded).

The model: a Qwen2-Audio encoder (frozen), the conv adapter, a Qwen3 LLM, the LLM->TTS and speaker
projections and a Qwen3-shaped TTS LM. The plan counts, per GPU, for FSDP2 full sharding over G GPUs
(G = 1 means one unsharded process with bf16 autocast):

- weights: fp32 master copy of every parameter, sharded (4 bytes x P / G);
- gradients: fp32, trainable parameters only, sharded (4 x P_train / G);
- AdamW: two fp32 moments per trainable parameter, sharded (8 x P_train / G);
- working copies: bf16 weights gathered for compute. Under FSDP2 the root unit (embeddings, output
  heads, adapter, projections) stays gathered for the whole step and two decoder layers are gathered
  at a time (the current one and the prefetched next), plus one layer's fp32 gradient before its
  reduce-scatter; with one process, autocast caches bf16 copies of the trainable weights;
- activations (bf16): with gradient checkpointing each decoder layer keeps only its input
  (S x H x 2 bytes per sequence) and one layer is recomputed at a time; without it every layer keeps
  about (6H + 4I) values per token (norm outputs, q/k/v, attention and projection outputs, the SwiGLU
  gate/up/activation/product). The encoder runs without gradients (it is frozen and before the
  adapter), so only one window's activations live at a time;
- logits: computed only at labelled positions (the assistant's text for the LLM, the units for the TTS
  LM), 12 bytes per value (bf16 logits, fp32 upcast for the loss, its gradient);
- a fixed 2 GiB for the CUDA context, NCCL buffers and allocator fragmentation.

These are estimates (the allocator, kernels' workspaces and uneven sequence lengths move them by a few
GiB); the point is to refuse a run that cannot fit before a GPU-day is spent loading an 8B model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30
OVERHEAD_GIB = 2.0
REGIMES = ("adapters", "adapters-llm-tts")

# Qwen3-8B (its config.json): hidden 4096, 36 layers, intermediate 12288, 32 query / 8 KV heads of 128,
# vocab 151936 (upstream's train.py resizes it to the tokenizer: 151669 + its 4 added tokens), untied head.
QWEN3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "intermediate_size": 12288,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151673,
    "tie_word_embeddings": False,
}
# Qwen3-0.6B (the GPU benchmark's shape): hidden 1024, 28 layers, intermediate 3072, 16 / 8 heads of 128.
QWEN3_06B = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "intermediate_size": 3072,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
# The TTS LM: upstream's repository does not state its dims (they are in the released config.json, which
# --init-from reads). The preset assumes a Qwen3-1.7B shape (hidden 2048, 28 layers, intermediate 6144,
# 16 / 8 heads of 128, tied) over Qwen3's vocab plus 16384 GLM-4-Voice unit tokens.
QWEN3_17B_TTS = {
    "hidden_size": 2048,
    "num_hidden_layers": 28,
    "intermediate_size": 6144,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936 + 16384,
    "tie_word_embeddings": True,
}
# Qwen2-Audio's encoder, as upstream's OmniSpeechConfig default states it.
QWEN2_AUDIO_ENCODER = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
}
PRESETS = {
    "opens2s-qwen3-8b": {
        "encoder": QWEN2_AUDIO_ENCODER,
        "llm": QWEN3_8B,
        "tts": QWEN3_17B_TTS,
        "adapter_inner_dim": 512,
        "spk_dim": 512,
    },
}


class PlanError(ValueError):
    """A plan that cannot run (does not fit, or bad arguments); the message says what to change."""


def decoder_params(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(total, per decoder layer, embeddings + head) parameters of a Qwen3 causal LM config."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    layer = h * q + 2 * h * kv + q * h + 2 * head_dim + 3 * h * inter + 2 * h
    embed = cfg["vocab_size"] * h * (1 if cfg.get("tie_word_embeddings") else 2) + h
    return layers * layer + embed, layer, embed


def encoder_params(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(total, per layer, outside the layers) parameters of a Qwen2-Audio (Whisper-style) encoder."""
    d, ffn, mels = cfg["d_model"], cfg["encoder_ffn_dim"], cfg["num_mel_bins"]
    layer = 4 * d * d + 3 * d + 2 * d * ffn + ffn + d + 4 * d
    outside = mels * d * 3 + d + d * d * 3 + d + cfg["max_source_positions"] * d + 2 * d
    return cfg["encoder_layers"] * layer + outside, layer, outside


def adapter_params(enc_dim: int, inner: int, llm_dim: int, tts_dim: int, spk_dim: int, kernel: int = 5) -> int:
    """Conv adapter (two stride-2 GLU convs, residual MLP, LayerNorm) plus the LLM->TTS and speaker projections."""
    convs = enc_dim * 2 * enc_dim * kernel + 2 * enc_dim + enc_dim * 2 * llm_dim * kernel + 2 * llm_dim
    mlp = 2 * llm_dim * inner + 2 * llm_dim
    projections = llm_dim * tts_dim + 2 * tts_dim + spk_dim * tts_dim + 2 * tts_dim
    return convs + mlp + projections


@dataclass
class Plan:
    """The estimate for one configuration (bytes are per GPU)."""

    preset: str
    regime: str
    gpus: int
    batch: int
    seq_len: int
    tts_len: int
    grad_checkpointing: bool
    params: dict[str, int]
    trainable: int
    parts: dict[str, float]
    gpu_memory_gib: float

    @property
    def total_gib(self) -> float:
        """Estimated peak per GPU, GiB."""
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        """Whether the estimate is within the GPU's memory."""
        return self.total_gib <= self.gpu_memory_gib

    def render(self) -> str:
        """A readable table of the parameter counts and the per-GPU parts."""
        lines = [
            f"plan: {self.preset}, --trainable {self.regime}, {self.gpus} GPU(s), per-GPU batch {self.batch} x "
            f"{self.seq_len} LLM tokens (TTS LM {self.tts_len}), gradient checkpointing "
            f"{'on' if self.grad_checkpointing else 'off'}, bf16",
            "parameters: "
            + ", ".join(f"{k} {v / 1e9:.3f} B" for k, v in self.params.items())
            + f"; trainable {self.trainable / 1e9:.3f} B",
        ]
        lines += [f"  {name:<42} {gib:8.2f} GiB" for name, gib in self.parts.items()]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"  {'total per GPU':<42} {self.total_gib:8.2f} GiB  ({verdict} in {self.gpu_memory_gib:g} GiB)")
        return "\n".join(lines)


def load_dims(init_from: Path | None, preset: str) -> dict[str, Any]:
    """Architecture dims from an OpenS2S checkpoint's config.json (`init_from`) or a named preset."""
    if init_from is None:
        if preset not in PRESETS:
            raise PlanError(f"--plan-preset {preset!r}: choose one of {', '.join(PRESETS)} or give --init-from")
        return PRESETS[preset]
    path = init_from / "config.json"
    if not path.is_file():
        raise PlanError(f"--init-from: {init_from} has no config.json")
    raw = json.loads(path.read_text())
    return {
        "encoder": {**QWEN2_AUDIO_ENCODER, **raw["audio_encoder_config"]},
        "llm": raw["llm_config"],
        "tts": raw["tts_lm_config"],
        "adapter_inner_dim": int(raw.get("adapter_inner_dim", 512)),
        "spk_dim": 512,
    }


def _folder_dims(paths: dict[str, str | None]) -> dict[str, Any]:
    """Dims from the three checkpoint folders of the `opens2s` config (their config.json files only)."""
    found = {}
    for part in ("audio", "llm", "tts"):
        folder = paths.get(part)
        if not folder or not (Path(folder) / "config.json").is_file():
            raise PlanError(f"--{part}-model: give a folder with config.json (or --init-from, or no folders)")
        found[part] = json.loads((Path(folder) / "config.json").read_text())
    audio = found["audio"].get("audio_config", found["audio"])
    return {
        "encoder": {**QWEN2_AUDIO_ENCODER, **audio},
        "llm": found["llm"],
        "tts": found["tts"],
        "adapter_inner_dim": 512,
        "spk_dim": 512,
    }


def plan_for_cli(
    config: str,
    init_from: Path | None,
    paths: dict[str, str | None],
    regime: str,
    gpus: int,
    batch: int,
    seq_len: int,
    grad_checkpointing: bool,
    gpu_memory_gib: float,
) -> Plan:
    """The plan `train --plan` prints: dims from --init-from, the three folders, the tiny config or the preset."""
    if init_from is not None:
        dims, name = load_dims(init_from, ""), str(init_from)
    elif config == "tiny":
        from dataclasses import asdict

        from pipeline.train.config import tiny_config

        tiny = asdict(tiny_config())
        dims = {k: tiny[k] for k in ("encoder", "llm", "tts", "adapter_inner_dim", "spk_dim")}
        name = "tiny"
    elif config == "opens2s":
        given = any(paths.values())
        dims = _folder_dims(paths) if given else PRESETS["opens2s-qwen3-8b"]
        name = "opens2s (local folders)" if given else "opens2s-qwen3-8b (Qwen2-Audio encoder, Qwen3-8B LLM)"
    else:
        raise PlanError(f"--config {config!r}: choose one of tiny, opens2s")
    return make_plan(dims, regime, gpus, batch, seq_len, grad_checkpointing=grad_checkpointing,
                     gpu_memory_gib=gpu_memory_gib, preset=name)  # fmt: skip


def make_plan(
    dims: dict[str, Any],
    regime: str,
    gpus: int,
    batch: int,
    seq_len: int,
    tts_len: int = 0,
    grad_checkpointing: bool = True,
    label_fraction: float = 0.25,
    gpu_memory_gib: float = 80.0,
    preset: str = "opens2s-qwen3-8b",
) -> Plan:
    """Estimate the per-GPU memory of training `dims` in `regime` on `gpus` GPUs (see the module docstring)."""
    if regime not in REGIMES:
        raise PlanError(f"--trainable {regime!r}: choose one of {', '.join(REGIMES)}")
    if gpus < 1 or batch < 1 or seq_len < 1:
        raise PlanError("--gpus, --batch-size and --seq-len must be at least 1")
    tts_len = tts_len or seq_len // 2
    llm, tts, enc = dims["llm"], dims["tts"], dims["encoder"]
    p_llm, layer_llm, embed_llm = decoder_params(llm)
    p_tts, layer_tts, embed_tts = decoder_params(tts)
    p_enc, layer_enc, outside_enc = encoder_params(enc)
    p_adapt = adapter_params(
        enc["d_model"], dims["adapter_inner_dim"], llm["hidden_size"], tts["hidden_size"], dims["spk_dim"]
    )
    total = p_llm + p_tts + p_enc + p_adapt
    trainable = p_adapt + (p_llm + p_tts if regime == "adapters-llm-tts" else 0)
    gib = 1 / GIB
    parts = {
        f"fp32 weights (/ {gpus} GPUs)": 4 * total / gpus * gib,
        f"fp32 gradients of trainables (/ {gpus})": 4 * trainable / gpus * gib,
        f"AdamW moments (/ {gpus})": 8 * trainable / gpus * gib,
    }
    if gpus > 1:
        root = embed_llm + embed_tts + outside_enc + p_adapt
        biggest = max(layer_llm, layer_tts, layer_enc)
        grad_layer = 4 * biggest if regime == "adapters-llm-tts" else 0
        parts["bf16 gathered weights (root + 2 layers)"] = (2 * root + 2 * 2 * biggest + grad_layer) * gib
    else:
        parts["bf16 autocast copies of trainables"] = 2 * trainable * gib
    tokens, tts_tokens = batch * seq_len, batch * tts_len

    def acts(cfg: dict[str, Any], n: int) -> float:
        h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
        per_layer = (6 * h + 4 * inter) * 2 * n
        return (layers * h * 2 * n + per_layer) if grad_checkpointing else layers * per_layer

    parts["activations LLM"] = acts(llm, tokens) * gib
    parts["activations TTS LM"] = acts(tts, tts_tokens) * gib
    windows = batch * max(1, seq_len // 750)  # about one 30 s window per 750 LLM tokens of a dialogue
    per_window = 1500 * (6 * enc["d_model"] + enc["encoder_ffn_dim"]) * 2
    parts["audio encoder (no grad, one window)"] = windows * per_window * gib
    parts["logits at labelled positions"] = (
        12 * (tokens * label_fraction * llm["vocab_size"] + tts_tokens * 0.75 * tts["vocab_size"]) * gib
    )
    parts["CUDA context, NCCL, fragmentation"] = OVERHEAD_GIB
    params = {"audio encoder": p_enc, "adapter+projections": p_adapt, "LLM": p_llm, "TTS LM": p_tts}
    return Plan(
        preset, regime, gpus, batch, seq_len, tts_len, grad_checkpointing, params, trainable, parts, gpu_memory_gib
    )


def check_plan(plan: Plan) -> None:
    """PlanError when the plan does not fit, naming what to change."""
    if not plan.fits:
        raise PlanError(
            f"the plan needs about {plan.total_gib:.1f} GiB per GPU but --gpu-memory-gb is {plan.gpu_memory_gib:g}: "
            "use more GPUs (--gpus), a smaller --batch-size (raise --grad-accum instead), gradient checkpointing, "
            "or --trainable adapters"
        )
