"""Streaming generation: user audio in, text and speech units out, interleaved for low latency.

The LLM decodes `text_span` tokens; their hidden states (projected) go to the TTS LM, which then
decodes `speech_span` units; repeat. Once the text ends (`<|im_end|>` or the token budget) the TTS LM
runs on to its EOS. A caller can synthesise audio from the first unit chunk while text is still
being written. Both models keep their KV caches across chunks (greedy decoding, batch of one).
This follows upstream OpenS2S's `generate(units_gen=True)`: the prompt ends with `<|im_tts_start|>`,
and the hidden states handed over are those of the inputs tts_start, t1, ..., i.e. the TTS span the
model was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.adapters.base import Audio
from pipeline.io.audio import resample
from pipeline.train.config import SAMPLE_RATE
from pipeline.train.data import Collator, assistant_head, prompt_prefix, user_audio_ids
from pipeline.train.model import S2SModel
from pipeline.train.speaker import speaker_vector
from pipeline.train.tokenizer import TextTokenizer
from pipeline.train.tokens import IM_END, PAD, TTS_START


@dataclass
class Chunk:
    """One streamed piece: `kind` "text" (token ids and their text) or "units" (speech unit values)."""

    kind: str
    ids: list[int]
    text: str = ""


@dataclass
class Generation:
    """Everything a `stream_generate` call produced, in order."""

    chunks: list[Chunk] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The spoken text (inside the TTS span), decoded."""
        return "".join(c.text for c in self.chunks if c.kind == "text")

    @property
    def units(self) -> list[int]:
        """All speech units, in order."""
        return [u for c in self.chunks if c.kind == "units" for u in c.ids]


class _Decoder:
    """One causal LM with a KV cache, fed embeddings a chunk at a time."""

    def __init__(self, lm: torch.nn.Module) -> None:
        from transformers import DynamicCache

        self.lm, self.cache = lm, DynamicCache()

    def feed(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed [1, n, H] embeddings; returns (last hidden states [1, n, H], logits of the last position [V])."""
        out = self.lm(inputs_embeds=embeds, past_key_values=self.cache, use_cache=True, output_hidden_states=True)
        self.cache = out.past_key_values
        return out.hidden_states[-1], out.logits[0, -1]


@torch.no_grad()
def stream_generate(
    model: S2SModel,
    tok: TextTokenizer,
    audio: Audio,
    voice: str = "",
    spk_mode: str = "code",
    max_text_tokens: int = 256,
    max_units: int = 1024,
) -> Iterator[Chunk]:
    """Yield text and unit chunks alternately (text_span tokens, then speech_span units, ...) for `audio`.

    `voice` names the assistant voice for the speaker vector (`spk_mode` as in training). Unit chunks are
    empty once the TTS LM has emitted EOS; the last unit chunk (after the text ends) runs to EOS.
    """
    cfg = model.config
    model.eval()
    device = next(model.parameters()).device
    clip = resample(audio, SAMPLE_RATE).samples
    ids = prompt_prefix(tok, cfg) + user_audio_ids(tok, cfg, len(clip)) + assistant_head(tok) + tok.encode(TTS_START)
    features, frames = Collator(cfg, tok.pad_id).features([clip])
    input_ids = torch.tensor([ids], device=device)
    embeds = model.embed_inputs(input_ids, features.to(device), frames.to(device))
    llm, tts = _Decoder(model.llm), _Decoder(model.tts)
    embed_tokens, embed_units = model.llm.get_input_embeddings(), model.tts.get_input_embeddings()
    hidden, logits = llm.feed(embeds)
    last_hidden = hidden[:, -1:]
    spk = torch.from_numpy(speaker_vector(voice, spk_mode, cfg.spk_dim)).to(device)
    pending = [model.spk2tts(spk)[None, None, :]]
    stop = {tok.token_id(IM_END), tok.token_id(PAD)}
    allowed = torch.full((cfg.tts["vocab_size"],), float("-inf"), device=device)
    allowed[cfg.unit_offset : cfg.unit_offset + cfg.n_units] = 0.0
    allowed[cfg.unit_eos] = 0.0
    produced = 0
    units_left = max_units
    text_done = speech_done = False
    while not text_done:
        states, new_ids = [], []
        for _ in range(cfg.text_span):
            token = int(logits.argmax())
            states.append(last_hidden)
            if token in stop or produced >= max_text_tokens:
                text_done = True
                break
            new_ids.append(token)
            produced += 1
            hidden, logits = llm.feed(embed_tokens(torch.tensor([[token]], device=device)))
            last_hidden = hidden[:, -1:]
        yield Chunk("text", new_ids, tok.decode(new_ids))
        pending.append(model.llm2tts(torch.cat(states, dim=1)))
        units: list[int] = []
        budget = units_left if text_done else min(cfg.speech_span, units_left)
        if not speech_done and budget > 0:
            _, unit_logits = tts.feed(torch.cat(pending, dim=1))
            pending = []
            for i in range(budget):
                unit = int((unit_logits + allowed).argmax())
                if unit == cfg.unit_eos:
                    speech_done = True
                    break
                units.append(unit - cfg.unit_offset)
                step = embed_units(torch.tensor([[unit]], device=device))
                if i < budget - 1:
                    _, unit_logits = tts.feed(step)
                else:
                    pending.append(step)
            units_left -= len(units)
            speech_done = speech_done or units_left <= 0
        yield Chunk("units", units)


def generate(model: S2SModel, tok: TextTokenizer, audio: Audio, **kwargs: object) -> Generation:
    """Run `stream_generate` to the end and collect the chunks."""
    return Generation(chunks=list(stream_generate(model, tok, audio, **kwargs)))  # type: ignore[arg-type]


def clip_from_array(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Audio:
    """Wrap a mono float array as an `Audio`."""
    return Audio(samples=np.asarray(samples, dtype=np.float32), sample_rate=sample_rate)
