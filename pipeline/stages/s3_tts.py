"""Stage 3: speech synthesis. User turns in the scenario's speaker with the target emotion;
assistant turns in the assistant voice with its (low-intensity) style.

Backends: embedded eSpeak NG (emotion as prosody) or CosyVoice2 (emotion as instruct text,
speakers as zero-shot prompts), chosen by `tts.backend`; with eSpeak, the assistant may speak in the
embedded neural Piper voice instead (`tts.assistant_backend: piper`, its style as rate and noise scales).
"""

from __future__ import annotations

from pipeline.adapters.base import Audio
from pipeline.catalogs import Catalogs, PiperSpeaker, PromptSpeaker, Speaker
from pipeline.io.audio import resample, to_flac
from pipeline.records import Dialogue, Turn
from pipeline.stages.base import Stage

_INTENSITY_WORDS = {"low": "slightly", "medium": "clearly", "high": "very strongly"}


def render_embedded(
    catalogs: Catalogs, speaker: Speaker | PiperSpeaker, text: str, emotion: str, intensity: str
) -> Audio:
    """`text` in an embedded voice: an eSpeak speaker with the emotion's prosody, or the Piper voice in
    the style named `emotion` (an assistant style)."""
    if isinstance(speaker, PiperSpeaker):
        from pipeline.adapters.tts_piper import PiperVoice

        return PiperVoice.instance().synthesize(text, speaker.style(emotion))
    from pipeline.adapters.tts_espeak import EspeakEngine

    return EspeakEngine.instance().synthesize(text, speaker.voice, catalogs.prosody(emotion, intensity))


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

            self.backend = f"espeak-ng {EspeakEngine.instance().version}"
            if any(isinstance(s, PiperSpeaker) for s in self.ctx.catalogs.assistants):
                from pipeline.adapters.tts_piper import PiperVoice

                self.backend += f" + {PiperVoice.instance().name}"

    def render(self, turn: Turn) -> Audio:
        """The audio of one turn in its speaker's voice and emotion."""
        catalogs = self.ctx.catalogs
        speaker = catalogs.speaker(turn.speaker_id)
        if isinstance(speaker, PromptSpeaker):
            from pipeline.adapters.tts_cosyvoice import emotion_instruction

            instruct = emotion_instruction(turn.emotion, turn.intensity)  # upstream's wording (issue 12)
            return self.cosyvoice.synthesize(turn.text, instruct, speaker.prompt_wav)
        assert isinstance(speaker, Speaker | PiperSpeaker)
        return render_embedded(catalogs, speaker, turn.text, turn.emotion, turn.intensity)

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Attach audio, sampling rate, duration and the speaker's catalog labels to each turn."""
        rate = self.ctx.recipe.tts.sample_rate
        for turn in dialogue.turns:
            speaker = self.ctx.catalogs.speaker(turn.speaker_id)
            turn.gender, turn.age_group, turn.accent = speaker.gender, speaker.age_group, speaker.accent
            audio = resample(self.render(turn), rate)
            turn.audio, turn.sampling_rate, turn.duration_s = to_flac(audio), rate, audio.duration_s
        dialogue.tts_backend = self.backend
        return dialogue
