"""Stage 3: speech synthesis. User turns in the scenario's speaker with the target emotion;
assistant turns in the assistant voice with its (low-intensity) style.

Backends: embedded eSpeak NG (emotion as prosody) or CosyVoice2 (emotion as instruct text,
speakers as zero-shot prompts), chosen by `tts.backend`.
"""

from __future__ import annotations

from pipeline.adapters.base import Audio
from pipeline.catalogs import PromptSpeaker, Speaker
from pipeline.io.audio import resample, to_flac
from pipeline.records import Dialogue, Turn
from pipeline.stages.base import Stage

_INTENSITY_WORDS = {"low": "slightly", "medium": "clearly", "high": "very strongly"}


class Synthesizer(Stage):
    """Renders every turn to FLAC at the recipe's sampling rate."""

    name = "tts"

    def setup(self) -> None:
        """Load the TTS backend named in the recipe."""
        cfg = self.ctx.recipe.tts
        if cfg.backend == "cosyvoice2":
            from pipeline.adapters.tts_cosyvoice import CosyVoiceTTS

            self.cosyvoice = CosyVoiceTTS(cfg.cosyvoice_repo, cfg.cosyvoice_model_dir)
            self.backend = self.cosyvoice.name
        else:
            from pipeline.adapters.tts_espeak import EspeakEngine

            self.engine = EspeakEngine.instance()
            self.backend = f"espeak-ng {self.engine.version}"

    def render(self, turn: Turn) -> Audio:
        """The audio of one turn in its speaker's voice and emotion."""
        catalogs = self.ctx.catalogs
        speaker = catalogs.speaker(turn.speaker_id)
        if isinstance(speaker, PromptSpeaker):
            instruct = catalogs.emotions[turn.emotion].instruct
            if turn.emotion != "neutral":
                instruct = f"{instruct} Express it {_INTENSITY_WORDS[turn.intensity]}."
            return self.cosyvoice.synthesize(turn.text, instruct, speaker.prompt_wav)
        assert isinstance(speaker, Speaker)
        return self.engine.synthesize(turn.text, speaker.voice, catalogs.prosody(turn.emotion, turn.intensity))

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Attach audio, sampling rate and duration to each turn."""
        rate = self.ctx.recipe.tts.sample_rate
        for turn in dialogue.turns:
            audio = resample(self.render(turn), rate)
            turn.audio, turn.sampling_rate, turn.duration_s = to_flac(audio), rate, audio.duration_s
        dialogue.tts_backend = self.backend
        return dialogue
