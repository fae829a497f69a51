"""The 512-dim speaker vector given to the TTS LM (and exported as OpenS2S `spk_emb`), without torch.

What it is, honestly: a deterministic *identity code* per voice id (a unit-norm Gaussian vector
seeded by a hash of the id), not an acoustic speaker embedding. Upstream OpenS2S feeds a
[1, 1, 512] vector through a linear layer into the TTS LM; its own inference always passes zeros,
and the model that produced its 512-dim training embeddings is not named anywhere. Our datasets
have a small closed set of assistant voices, so a per-voice code lets the TTS LM learn each voice's
unit statistics and is reproducible at inference by naming the voice. `zeros` matches upstream
inference exactly; a real speaker-verification embedding can replace the code without changing shapes.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPK_DIM = 512
SPK_MODES = ("code", "zeros", "none")


def speaker_code(voice_id: str, dim: int = SPK_DIM) -> np.ndarray:
    """The identity code of `voice_id`: float32, shape (dim,), unit L2 norm, stable across runs."""
    seed = int.from_bytes(hashlib.sha256(voice_id.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def speaker_vector(voice_id: str, mode: str, dim: int = SPK_DIM) -> np.ndarray:
    """The vector for `mode`: `code` (identity code) or `zeros`/`none` (upstream inference's zeros)."""
    if mode not in SPK_MODES:
        raise ValueError(f"speaker embedding mode {mode!r}: choose one of {', '.join(SPK_MODES)}")
    return speaker_code(voice_id, dim) if mode == "code" else np.zeros(dim, dtype=np.float32)
