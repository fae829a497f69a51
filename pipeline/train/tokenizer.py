"""Text tokenizers with one small interface: a byte-level one built in code (tiny config, no download)
and a wrapper over a local Hugging Face tokenizer (a Qwen3 checkpoint) with our special tokens added.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from pipeline.train.tokens import ADDED_SPECIALS, IM_END, PAD, SPECIALS


class TextTokenizer(Protocol):
    """What the data builder and generation need from a text tokenizer."""

    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special token strings become their single ids)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens dropped."""
        ...

    def token_id(self, token: str) -> int:
        """The id of one special token."""
        ...


class ByteTokenizer:
    """Bytes 0-255 plus the special tokens of `tokens.SPECIALS` (ids 256...). Needs no files."""

    def __init__(self) -> None:
        self._special = {tok: 256 + i for i, tok in enumerate(SPECIALS)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in SPECIALS) + ")")
        self.vocab_size = 256 + len(SPECIALS)
        self.pad_id = self._special[PAD]

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text`, with special token strings as single ids."""
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self._special:
                ids.append(self._special[piece])
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Decode byte ids (invalid UTF-8 replaced); special ids are dropped."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_id(self, token: str) -> int:
        """The id of a special token."""
        return self._special[token]


class HFTokenizer:
    """A local Hugging Face tokenizer (e.g. Qwen3's) with upstream's four audio and TTS markers as special tokens.

    A plain Qwen3 tokenizer gets them added in upstream's order; `require_specials` (an OpenS2S checkpoint's
    tokenizer) insists they are already there, so the ids are the checkpoint's own.
    """

    def __init__(self, path: Path, require_specials: bool = False) -> None:
        from transformers import AutoTokenizer

        self._tok: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        vocab = self._tok.get_vocab()
        missing = [t for t in ADDED_SPECIALS if t not in vocab]
        if missing and require_specials:
            from pipeline.train.config import ConfigError

            raise ConfigError(
                f"the tokenizer in {path} lacks {', '.join(missing)}; an OpenS2S checkpoint's tokenizer has "
                "upstream's four added tokens (is this an OpenS2S checkpoint folder?)"
            )
        if missing:
            self._tok.add_special_tokens({"additional_special_tokens": list(ADDED_SPECIALS)})
        self.vocab_size = len(self._tok)
        pad = self._tok.pad_token_id
        self.pad_id = int(pad if pad is not None else self._tok.convert_tokens_to_ids(IM_END))

    def encode(self, text: str) -> list[int]:
        """Token ids without BOS/EOS."""
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text with special tokens removed."""
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def token_id(self, token: str) -> int:
        """The id of a special token."""
        return int(self._tok.convert_tokens_to_ids(token))

    def save(self, folder: Path) -> None:
        """Write the tokenizer files (with the added tokens) to `folder`."""
        self._tok.save_pretrained(str(folder))
