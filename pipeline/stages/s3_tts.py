"""Stage 3: speech synthesis. User turns in the scenario's speaker with the target emotion's
prosody; assistant turns in the assistant voice with its (low-intensity) style."""

from __future__ import annotations

from pipeline.adapters.tts_espeak import EspeakEngine
from pipeline.io.audio import resample, to_flac
from pipeline.records import Dialogue
from pipeline.stages.base import Stage


class Synthesizer(Stage):
    """Renders every turn to FLAC at the recipe's sampling rate."""

    name = "tts"

    def setup(self) -> None:
        """Start the process-wide eSpeak engine."""
        self.engine = EspeakEngine.instance()
        self.backend = f"espeak-ng {self.engine.version}"

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Attach audio, sampling rate and duration to each turn."""
        catalogs, rate = self.ctx.catalogs, self.ctx.recipe.tts.sample_rate
        for turn in dialogue.turns:
            voice = catalogs.speaker(turn.speaker_id).voice
            audio = resample(
                self.engine.synthesize(turn.text, voice, catalogs.prosody(turn.emotion, turn.intensity)), rate
            )
            turn.audio, turn.sampling_rate, turn.duration_s = to_flac(audio), rate, round(audio.duration_s, 3)
        dialogue.tts_backend = self.backend
        return dialogue
