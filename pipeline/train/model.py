"""The OpenS2S-style model: audio encoder -> conv adapter -> decoder LLM -> (projection) -> streaming TTS LM.

Built from `transformers` classes: `Qwen2AudioEncoder` (Whisper-style), `Qwen3ForCausalLM` as the LLM,
and a second `Qwen3ForCausalLM` over the speech-unit vocabulary as the TTS LM. The TTS LM reads, per
assistant turn, `[speaker] + interleave(LLM hidden states of the TTS span, unit embeddings)` in chunks of
`text_span` hidden states and `speech_span` units (OpenS2S: 1:2 default, 4:8 released) and predicts the
units (then EOS). The text loss (LLM) and the unit loss (TTS LM) are returned separately.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.train.config import ConfigError, ModelConfig
from pipeline.train.tokens import AUDIO_TOKEN_INDEX, IGNORE_INDEX

TRAINABLE = ("adapters", "adapters-llm-tts")


class ConvAdapter(nn.Module):
    """Stride-2 Conv1d + GLU layers (OpenS2S: two, kernel 5), then a residual MLP and LayerNorm."""

    def __init__(self, in_dim: int, inner_dim: int, out_dim: int, kernel_sizes: list[int]) -> None:
        super().__init__()
        layers = []
        for i, k in enumerate(kernel_sizes):
            last = i == len(kernel_sizes) - 1
            layers.append(nn.Conv1d(in_dim, 2 * (out_dim if last else in_dim), k, stride=2, padding=k // 2))
        self.convs = nn.ModuleList(layers)
        self.fc1 = nn.Linear(out_dim, inner_dim, bias=False)
        self.fc2 = nn.Linear(inner_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output lengths for input lengths (each layer: (L - 1) // 2 + 1)."""
        for _ in self.convs:
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, in_dim] -> [B, T / 2^layers, out_dim].

        With `lengths`, positions past each sequence's end are zeroed between the layers, so a padded
        sequence gives the same output as on its own (upstream's Subsampler lets the padding's conv
        outputs leak into the next layer's last valid positions; the weights are the same either way).
        """
        x = x.transpose(1, 2)
        for conv in self.convs:
            x = nn.functional.glu(conv(x), dim=1)
            if lengths is not None:
                lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
                x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None])[:, None, :]
        x = x.transpose(1, 2)
        return self.norm(x + self.fc2(nn.functional.gelu(self.fc1(x))))


class Projection(nn.Module):
    """Linear (no bias) + LayerNorm: the LLM->TTS and speaker->TTS projections of OpenS2S."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and normalise."""
        return self.norm(self.linear(x))


@dataclass
class Losses:
    """Summed token losses of one batch and their token counts (text: LLM labels; units: TTS LM labels).

    Sums, not means, so that a step made of several micro-batches, ranks or both can divide by the
    step's global token counts and so equal the loss of one big batch exactly (up to float rounding).
    """

    text_sum: torch.Tensor
    text_count: int
    unit_sum: torch.Tensor
    unit_count: int

    @property
    def text(self) -> torch.Tensor:
        """Mean text loss per label token of this batch."""
        return self.text_sum / max(self.text_count, 1)

    @property
    def units(self) -> torch.Tensor:
        """Mean unit loss per unit label of this batch (0 when it has no units)."""
        return self.unit_sum / max(self.unit_count, 1)

    @property
    def total(self) -> torch.Tensor:
        """text + units (the per-batch objective)."""
        return self.text + self.units


def token_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over the labelled positions (fp32), and their count.

    The output head runs only at the positions that have a label (the assistant's text, the units), so
    the [tokens x vocab] logits of the whole sequence (about 150k values per token for Qwen3) never exist.
    """
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])
    loss = nn.functional.cross_entropy(logits.float(), shifted[keep], reduction="sum")
    return loss, int(keep.sum())


def interleave_plan(text_len: int, unit_len: int, text_span: int, speech_span: int) -> list[tuple[str, int, int]]:
    """The TTS LM input order: ("text", a, b) and ("units", a, b) slices, `text_span` then `speech_span`."""
    plan: list[tuple[str, int, int]] = []
    t = u = 0
    while t < text_len or u < unit_len:
        if t < text_len:
            plan.append(("text", t, min(t + text_span, text_len)))
            t = plan[-1][2]
        if u < unit_len:
            plan.append(("units", u, min(u + speech_span, unit_len)))
            u = plan[-1][2]
    return plan


def _span_bounds(token_types: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of each run of token_types == 1, in row-major order."""
    spans = []
    for row in range(token_types.shape[0]):
        flags = (token_types[row] == 1).to(torch.int8).tolist()
        start = None
        for i, flag in enumerate([*flags, 0]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                spans.append((row, start, i))
                start = None
    return spans


class S2SModel(nn.Module):
    """Audio encoder, adapter, LLM, LLM->TTS projection, speaker projection and TTS LM."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig, Qwen3Config, Qwen3ForCausalLM

        self.config = config
        enc_cfg = Qwen2AudioEncoderConfig(**{k: v for k, v in config.encoder.items() if k != "model_type"})
        llm_cfg = Qwen3Config(**{k: v for k, v in config.llm.items() if k != "model_type"})
        tts_cfg = Qwen3Config(**{k: v for k, v in config.tts.items() if k != "model_type"})
        self.audio_encoder = Qwen2AudioEncoder(enc_cfg)
        self.adapter = ConvAdapter(
            enc_cfg.d_model, config.adapter_inner_dim, llm_cfg.hidden_size, config.adapter_kernel_sizes
        )
        self.llm = Qwen3ForCausalLM(llm_cfg)
        self.tts = Qwen3ForCausalLM(tts_cfg)
        self.llm2tts = Projection(llm_cfg.hidden_size, tts_cfg.hidden_size)
        self.spk2tts = Projection(config.spk_dim, tts_cfg.hidden_size)

    # --- audio -------------------------------------------------------------------------------------
    def encode_audio(self, features: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        """Log-mel [N, mels, C*W] with valid frame counts [N] -> one [tokens_i, llm_hidden] tensor per clip.

        Each clip is cut into encoder windows of W frames (Qwen2-Audio: 3000); empty windows are skipped,
        padded frames are masked in attention, and the valid outputs are concatenated before the adapter.
        """
        n, mels, total = features.shape
        window = self.config.chunk_frames
        chunks = features.view(n, mels, total // window, window).permute(0, 2, 1, 3).reshape(-1, mels, window)
        starts = torch.arange(total // window, device=frames.device) * window
        chunk_frames = (frames[:, None] - starts[None, :]).clamp(0, window).reshape(-1)
        keep = chunk_frames > 0
        after_conv = (chunk_frames[keep] - 1) // 2 + 1
        out_len = (after_conv - 2) // 2 + 1
        positions = window // 2
        pad = torch.arange(positions, device=frames.device)[None, :] >= after_conv[:, None]
        mask = torch.zeros(len(after_conv), 1, positions, positions, dtype=features.dtype, device=features.device)
        mask.masked_fill_(pad[:, None, None, :], torch.finfo(features.dtype).min)
        hidden = self.audio_encoder(chunks[keep], attention_mask=mask).last_hidden_state
        per_clip: list[list[torch.Tensor]] = [[] for _ in range(n)]
        owners = torch.arange(n, device=frames.device).repeat_interleave(total // window)[keep].tolist()
        for owner, h, length in zip(owners, hidden, out_len.tolist(), strict=True):
            per_clip[owner].append(h[:length])
        seqs = [torch.cat(parts) for parts in per_clip]
        lengths = torch.tensor([len(s) for s in seqs], device=features.device)
        padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        adapted = self.adapter(padded, lengths)
        return [adapted[i, :length] for i, length in enumerate(self.adapter.out_lengths(lengths).tolist())]

    def embed_inputs(
        self, input_ids: torch.Tensor, features: torch.Tensor | None, frames: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with each `AUDIO_TOKEN_INDEX` span replaced by its clip's adapted encoder output."""
        slots = input_ids == AUDIO_TOKEN_INDEX
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        if features is None or frames is None:
            if slots.any():
                raise ValueError("input has audio placeholders but no audio features")
            return embeds
        audio = torch.cat(self.encode_audio(features, frames))
        if audio.shape[0] != int(slots.sum()):
            raise ValueError(f"{int(slots.sum())} audio placeholder positions but {audio.shape[0]} audio embeddings")
        embeds = embeds.clone()
        embeds[slots] = audio.to(embeds.dtype)
        return embeds

    # --- speech units ------------------------------------------------------------------------------
    def tts_inputs(
        self,
        hidden: torch.Tensor,
        token_types: torch.Tensor,
        units: torch.Tensor,
        units_mask: torch.Tensor,
        spk: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Interleave the TTS-span hidden states with unit embeddings per assistant turn (after the speaker).

        Returns inputs_embeds [S, L, H], attention_mask [S, L] and labels [S, L] (units at unit positions).
        """
        spans = _span_bounds(token_types)
        if len(spans) != units.shape[0]:
            raise ValueError(f"{len(spans)} TTS spans but {units.shape[0]} speech-unit sequences")
        projected = self.llm2tts(hidden)
        unit_embeds = self.tts.get_input_embeddings()(units)
        speakers = self.spk2tts(spk)
        rows, labels = [], []
        for i, (row, start, end) in enumerate(spans):
            n_units = int(units_mask[i].sum())
            parts, part_labels = [speakers[i : i + 1]], [torch.full((1,), IGNORE_INDEX, device=units.device)]
            for kind, a, b in interleave_plan(end - start, n_units, self.config.text_span, self.config.speech_span):
                if kind == "text":
                    parts.append(projected[row, start + a : start + b])
                    part_labels.append(torch.full((b - a,), IGNORE_INDEX, device=units.device))
                else:
                    parts.append(unit_embeds[i, a:b])
                    part_labels.append(units[i, a:b])
            rows.append(torch.cat(parts))
            labels.append(torch.cat(part_labels))
        lengths = torch.tensor([len(r) for r in rows], device=units.device)
        embeds = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        label_tensor = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        mask = (torch.arange(embeds.shape[1], device=units.device)[None, :] < lengths[:, None]).long()
        return embeds, mask, label_tensor

    def forward(self, batch: dict[str, Any]) -> Losses:
        """Summed text loss of the LLM and unit loss of the TTS LM (with token counts) for a collated batch."""
        embeds = self.embed_inputs(batch["input_ids"], batch.get("features"), batch.get("frames"))
        llm_kwargs = {"attention_mask": batch["attention_mask"], "output_hidden_states": True, "logits_to_keep": 1}
        out = self.llm(inputs_embeds=embeds, **llm_kwargs)
        text_sum, text_count = token_loss(out.hidden_states[-1], self.llm.lm_head, batch["labels"])
        if batch.get("units") is None:
            return Losses(text_sum, text_count, text_sum.new_zeros(()), 0)
        tts_embeds, tts_mask, tts_labels = self.tts_inputs(
            out.hidden_states[-1], batch["token_types"], batch["units"], batch["units_mask"], batch["spk"]
        )
        tts_out = self.tts(inputs_embeds=tts_embeds, **{**llm_kwargs, "attention_mask": tts_mask})
        unit_sum, unit_count = token_loss(tts_out.hidden_states[-1], self.tts.lm_head, tts_labels)
        return Losses(text_sum, text_count, unit_sum, unit_count)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LLM's and the TTS LM's decoder layers in the backward pass (activation memory)."""
        for lm in (self.llm, self.tts):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            lm.config.use_cache = False  # training never uses the KV cache


def set_trainable(model: S2SModel, regime: str) -> list[str]:
    """Apply an OpenS2S freezing regime; returns the names of the trainable top-level modules.

    `adapters`: only the audio adapter and the LLM->TTS and speaker projections train (stage 1);
    `adapters-llm-tts`: those plus the LLM and the TTS LM. The audio encoder stays frozen in both.
    """
    if regime not in TRAINABLE:
        raise ConfigError(f"--trainable {regime!r}: choose one of {', '.join(TRAINABLE)}")
    names = ["adapter", "llm2tts", "spk2tts"] + (["llm", "tts"] if regime == "adapters-llm-tts" else [])
    for name, module in model.named_children():
        module.requires_grad_(name in names)
    return names


def _state_from(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of the safetensors shards (or pytorch_model.bin) in `folder`, with `prefix` stripped."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    files = sorted(glob.glob(str(folder / "*.safetensors")))
    if files:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        state[key[len(prefix) :]] = f.get_tensor(key)
    else:
        raw = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        state = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    return state


def load_pretrained_parts(model: S2SModel) -> None:
    """Load the `opens2s` config's checkpoints into `model`: Qwen2-Audio's audio tower, the Qwen3 LLM, the TTS LM.

    The audio folder may be a full Qwen2-Audio checkpoint (keys `audio_tower.*`) or an encoder-only one.
    The adapter and the two projections start from random initialisation (they are what stage 1 trains).
    """
    paths = {k: Path(v) for k, v in model.config.paths.items()}
    if set(paths) != {"audio", "llm", "tts"}:
        raise ConfigError("the opens2s config needs --audio-model, --llm-model and --tts-model")
    audio = _state_from(paths["audio"], "audio_tower.") or _state_from(paths["audio"])
    missing, _ = model.audio_encoder.load_state_dict(audio, strict=False)
    if [m for m in missing if not m.startswith("embed_positions")]:
        raise ConfigError(f"--audio-model: {paths['audio']} lacks audio encoder weights such as {missing[0]}")
    for name, module in (("llm", model.llm), ("tts", model.tts)):
        state = _state_from(paths[name])
        rows = module.config.vocab_size
        for key, target in (("model.embed_tokens.weight", module.get_input_embeddings()),
                            ("lm_head.weight", module.get_output_embeddings())):  # fmt: skip
            tensor = state.get(key)
            if tensor is not None and tensor.shape[0] != rows:  # as upstream's resize to the tokenizer's length
                resized = target.weight.detach().clone()
                keep = min(rows, tensor.shape[0])
                resized[:keep] = tensor[:keep]
                state[key] = resized
        if name == "tts":  # a TTS LM saved by upstream carries the speaker projection (spk2tts, spk_ln)
            speaker = {"spk2tts.weight": "linear.weight", "spk_ln.weight": "norm.weight", "spk_ln.bias": "norm.bias"}
            moved = {ours: state.pop(theirs) for theirs, ours in speaker.items() if theirs in state}
            if moved:
                model.spk2tts.load_state_dict(moved)
        missing, unexpected = module.load_state_dict(state, strict=False)
        missing = [m for m in missing if not (m == "lm_head.weight" and module.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ConfigError(
                f"--{name}-model: {paths[name]} does not match its config.json (missing: "
                f"{', '.join(missing[:10]) or 'none'}; unexpected: {', '.join(unexpected[:10]) or 'none'})"
            )


def build_model(config: ModelConfig, seed: int = 0, pretrained: bool = False) -> S2SModel:
    """The model for `config`, randomly initialised from `seed`; `pretrained` loads the opens2s checkpoints."""
    torch.manual_seed(seed)
    model = S2SModel(config)
    if pretrained:
        load_pretrained_parts(model)
    return model
