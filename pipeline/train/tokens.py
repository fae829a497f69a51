"""Special tokens and the chat layout shared by the trainer, generation and the OpenS2S export (no torch).

The names follow upstream OpenS2S (`src/constants.py`): the user's audio sits between
`<|im_audio_start|>` and `<|im_audio_end|>`, and the assistant's spoken text between
`<|im_tts_start|>` and `<|im_tts_end|>`; those TTS-span positions are the ones whose LLM hidden
states feed the TTS language model. Speech units are written `<|audio_N|>` in the JSONL export.

Ids match upstream: a pretrained tokenizer gets exactly upstream's four added tokens, in upstream's
order (`train.py`: audio start, audio end, TTS start, TTS end), and the audio placeholder is not a
token at all but `AUDIO_TOKEN_INDEX` (-200) in `input_ids`, replaced by the adapted encoder output.
`<|im_audio|>` is only the text marker upstream's inference splits its prompt on.
"""

from __future__ import annotations

import re

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_START = "<|im_audio_start|>"
AUDIO = "<|im_audio|>"
AUDIO_END = "<|im_audio_end|>"
TTS_START = "<|im_tts_start|>"
TTS_END = "<|im_tts_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
# Added to a pretrained LLM tokenizer, in upstream's order (Qwen3 already has the others).
ADDED_SPECIALS = (AUDIO_START, AUDIO_END, TTS_START, TTS_END)
SPECIALS = (PAD, IM_START, IM_END, *ADDED_SPECIALS, THINK_START, THINK_END)

IGNORE_INDEX = -100
AUDIO_TOKEN_INDEX = -200  # upstream `src/constants.py`: the audio placeholder id in input_ids
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

_UNIT = re.compile(r"<\|audio_(\d+)\|>")


def units_to_string(units: list[int]) -> str:
    """Speech units as the `<|audio_N|>` run upstream OpenS2S reads."""
    return "".join(f"<|audio_{int(u)}|>" for u in units)


def string_to_units(text: str) -> list[int]:
    """Parse a `<|audio_N|>` run back to ints; raises ValueError on anything else in the string."""
    units = [int(m) for m in _UNIT.findall(text)]
    if units_to_string(units) != text:
        raise ValueError(f"not a pure <|audio_N|> run: {text[:60]!r}")
    return units
