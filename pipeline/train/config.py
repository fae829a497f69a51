"""Model configurations: `tiny` (random init, CPU, tests) and `opens2s` (real checkpoints from local paths).

A `ModelConfig` holds the three Hugging Face sub-configs as plain dicts (Qwen2-Audio encoder, Qwen3
LLM, Qwen3-style TTS LM), so a checkpoint can rebuild the exact architecture without any files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.train.speaker import SPK_DIM
from pipeline.train.tokens import DEFAULT_SYSTEM_PROMPT

HOP = 160  # Whisper log-mel: 10 ms at 16 kHz
SAMPLE_RATE = 16000
CONFIG_NAMES = ("tiny", "opens2s")


class ConfigError(ValueError):
    """A configuration or checkpoint path problem, with the fix in the message."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model (and to lay out its inputs)."""

    name: str
    encoder: dict[str, Any]
    llm: dict[str, Any]
    tts: dict[str, Any]
    n_units: int
    unit_offset: int = 0
    unit_eos: int = -1
    unit_pad: int = -1
    adapter_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    adapter_inner_dim: int = 128
    spk_dim: int = SPK_DIM
    text_span: int = 1
    speech_span: int = 2
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 2048
    tokenizer: str = "bytes"
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def n_mels(self) -> int:
        """Log-mel bins the audio encoder takes."""
        return int(self.encoder["num_mel_bins"])

    @property
    def chunk_frames(self) -> int:
        """Mel frames per encoder window (Qwen2-Audio: 3000 = 30 s); longer audio is cut into windows."""
        return int(self.encoder["max_source_positions"]) * 2

    def audio_tokens(self, num_samples: int) -> int:
        """LLM positions a clip of `num_samples` (16 kHz) occupies after the encoder and the adapter."""
        frames = math.ceil(num_samples / HOP)
        length = 0
        for start in range(0, frames, self.chunk_frames):
            chunk = min(self.chunk_frames, frames - start)
            length += ((chunk - 1) // 2 + 1 - 2) // 2 + 1  # conv2 stride 2, then the encoder's 2x average pool
        for _ in self.adapter_kernel_sizes:
            length = (length - 1) // 2 + 1
        return max(length, 1)

    def to_json(self) -> str:
        """The config as JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from `asdict` output."""
        return cls(**data)


def tiny_config(n_units: int = 64, text_span: int = 1, speech_span: int = 2) -> ModelConfig:
    """A few-hundred-thousand-parameter model with the full architecture; trains on a laptop CPU."""
    from pipeline.train.tokenizer import ByteTokenizer

    vocab = ByteTokenizer().vocab_size
    decoder = {
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-6,
    }
    return ModelConfig(
        name="tiny",
        encoder={
            "num_mel_bins": 80,
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "max_source_positions": 500,
            "dropout": 0.0,
        },
        llm={**decoder, "vocab_size": vocab, "hidden_size": 96, "intermediate_size": 192, "head_dim": 24},
        tts={**decoder, "vocab_size": n_units + 2, "hidden_size": 64, "intermediate_size": 128, "head_dim": 16},
        n_units=n_units,
        unit_offset=0,
        unit_eos=n_units,
        unit_pad=n_units + 1,
        adapter_inner_dim=128,
        text_span=text_span,
        speech_span=speech_span,
        max_tokens=2048,
        tokenizer="bytes",
    )


def _need_dir(path: str | None, option: str, files: tuple[str, ...], what: str) -> Path:
    if not path:
        raise ConfigError(f"{option} is required with --config opens2s: give the local {what} folder")
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{option}: {path} is not a folder; give the local {what} folder (nothing is downloaded)")
    for name in files:
        if not (folder / name).is_file():
            raise ConfigError(f"{option}: {path} has no {name}; is it the {what} folder?")
    if not (any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()):
        raise ConfigError(f"{option}: {path} has no *.safetensors or pytorch_model.bin weights")
    return folder


def check_opens2s_paths(audio_model: str | None, llm_model: str | None, tts_model: str | None) -> dict[str, Path]:
    """Check the three checkpoint folders of the `opens2s` config; ConfigError names the bad option."""
    return {
        "audio": _need_dir(
            audio_model,
            "--audio-model",
            ("config.json", "preprocessor_config.json"),
            "Qwen2-Audio (or Qwen2-Audio encoder)",
        ),
        "llm": _need_dir(llm_model, "--llm-model", ("config.json", "tokenizer_config.json"), "Qwen3 LLM"),
        "tts": _need_dir(
            tts_model,
            "--tts-model",
            ("config.json", "tokenizer_config.json"),
            "Qwen3-style TTS LM (tokenizer with <|audio_N|> tokens)",
        ),
    }


def opens2s_config(audio_model: str | None, llm_model: str | None, tts_model: str | None) -> ModelConfig:
    """The OpenS2S layout from local checkpoints: Qwen2-Audio encoder, Qwen3 LLM, Qwen3 TTS LM, 4:8 interleave.

    Reads only the folders' config and tokenizer files (weights load in `model.load_pretrained_parts`).
    """
    paths = check_opens2s_paths(audio_model, llm_model, tts_model)
    from transformers import AutoConfig

    audio_cfg = json.loads((paths["audio"] / "config.json").read_text())
    encoder = audio_cfg.get("audio_config", audio_cfg)
    encoder = {k: v for k, v in encoder.items() if not k.startswith("_") and k != "architectures"}
    encoder["model_type"] = "qwen2_audio_encoder"
    llm = AutoConfig.from_pretrained(str(paths["llm"]), local_files_only=True).to_dict()
    tts = AutoConfig.from_pretrained(str(paths["tts"]), local_files_only=True).to_dict()
    n_units, first, eos, pad = unit_vocab(paths["tts"], "--tts-model")
    from pipeline.train.tokenizer import HFTokenizer

    llm["vocab_size"] = HFTokenizer(paths["llm"]).vocab_size  # as upstream's train.py: resized to the tokenizer
    return ModelConfig(
        name="opens2s",
        encoder=encoder,
        llm=llm,
        tts=tts,
        n_units=n_units,
        unit_offset=first,
        unit_eos=eos,
        unit_pad=pad,
        adapter_inner_dim=512,
        text_span=4,
        speech_span=8,
        max_tokens=4096,
        tokenizer="hf",
        paths={k: str(v) for k, v in paths.items()},
    )


def unit_vocab(folder: Path, option: str) -> tuple[int, int, int, int]:
    """(units, id of <|audio_0|>, EOS id, pad id) of the TTS LM tokenizer in `folder`.

    The pad id is the folder's generation_config.json `pad_token_id` when there is one (what upstream's
    collator pads units with), else the tokenizer's pad token, else EOS.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    first, eos = tok.convert_tokens_to_ids("<|audio_0|>"), tok.eos_token_id
    if first is None or first == tok.unk_token_id or eos is None:
        raise ConfigError(f"{option}: the tokenizer in {folder} has no <|audio_0|> token or no EOS token")
    n_units = sum(1 for t in tok.get_vocab() if t.startswith("<|audio_") and t.endswith("|>"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    generation = folder / "generation_config.json"
    if generation.is_file():
        pad = json.loads(generation.read_text()).get("pad_token_id", pad)
    return n_units, int(first), int(eos), int(pad)
