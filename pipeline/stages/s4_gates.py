"""Stage 4: audio gates. Each turn is checked in order: duration, ASR word error rate against its
text, and (user turns) the measured emotion against the target. The dialogue keeps the exchanges
before the first failing turn; with none left it is rejected with that turn's reason."""

from __future__ import annotations

from pipeline.adapters.asr_whisper import WhisperASR
from pipeline.adapters.base import Audio
from pipeline.adapters.emotion_prosody import ProsodyEmotionClassifier, measure, relative_features
from pipeline.adapters.tts_espeak import EspeakEngine
from pipeline.catalogs import Catalogs
from pipeline.io.audio import from_bytes
from pipeline.records import EMOTIONS, INTENSITIES, Dialogue, Reject, Turn
from pipeline.stages.base import Stage
from pipeline.textnorm import word_error_rate

CALIBRATION_SENTENCES = (
    "I really did not expect this to happen to me today.",
    "Could you tell me what you think I should do next?",
    "We talked about it for a long time last night.",
    "My whole family is coming over for dinner this weekend.",
    "I keep thinking about what she said to me at work.",
    "The letter arrived this morning and I opened it right away.",
)


class EmotionCheck:
    """Embedded emotion check: prosody of a clip against the same speaker's neutral rendering."""

    def __init__(self, catalogs: Catalogs, calibration_speakers: int = 4) -> None:
        self.catalogs = catalogs
        self.engine = EspeakEngine.instance()
        feats, labels, groups = [], [], []
        step = max(1, len(catalogs.speakers) // calibration_speakers)
        for speaker in catalogs.speakers[::step][:calibration_speakers]:
            for sentence in CALIBRATION_SENTENCES:
                neutral = measure(self.engine.synthesize(sentence, speaker.voice))
                for emotion in EMOTIONS:
                    for intensity in INTENSITIES:
                        clip = self.engine.synthesize(sentence, speaker.voice, catalogs.prosody(emotion, intensity))
                        feats.append(relative_features(measure(clip), neutral))
                        labels.append(emotion)
                        groups.append(f"{emotion}/{intensity}")
        self.classifier = ProsodyEmotionClassifier.fit(feats, labels, groups)

    def check(self, clip: Audio, text: str, speaker_id: str) -> tuple[str, float]:
        """Predicted emotion and score of `clip`, a rendering of `text` by `speaker_id`."""
        neutral = self.engine.synthesize(text, self.catalogs.speaker(speaker_id).voice)
        prediction = self.classifier.classify(clip, neutral)
        return prediction.emotion, prediction.score


class AudioGates(Stage):
    """Runs ASR and the emotion check and drops turns that fail a gate."""

    name = "gates"

    def setup(self) -> None:
        """Load Whisper and calibrate the emotion check."""
        asr = self.ctx.recipe.asr
        self.asr = WhisperASR(asr.model_path, compute_type=asr.compute_type, cpu_threads=asr.cpu_threads)
        self.emotion = EmotionCheck(self.ctx.catalogs) if self.ctx.recipe.gates.emotion_check else None

    def gate(self, turn: Turn) -> Reject | None:
        """Measure one turn (fills asr_text, wer, emotion_measured/score); a Reject if it fails."""
        cfg = self.ctx.recipe.gates
        audio = from_bytes(turn.audio)
        measured: dict[str, float | str] = {"duration_s": turn.duration_s}
        if not cfg.min_duration_s <= turn.duration_s <= cfg.max_duration_s:
            return Reject(self.name, "duration_out_of_range", f"{turn.duration_s:.2f} s", turn.turn_id, measured)
        turn.asr_text = self.asr.transcribe(audio).text
        turn.wer = round(word_error_rate(turn.text, turn.asr_text), 4)
        measured.update(wer=turn.wer, asr_text=turn.asr_text)
        if self.emotion is not None and turn.role == "user":
            turn.emotion_measured, score = self.emotion.check(audio, turn.text, turn.speaker_id)
            turn.emotion_score = round(score, 4)
            measured.update(emotion_measured=turn.emotion_measured, emotion_score=turn.emotion_score)
        if turn.wer > cfg.max_wer:
            return Reject(self.name, "wer_too_high", f"WER {turn.wer:.2f} > {cfg.max_wer}", turn.turn_id, measured)
        if turn.emotion_measured and turn.emotion_measured != turn.emotion:
            detail = f"target {turn.emotion}, measured {turn.emotion_measured}"
            return Reject(self.name, "emotion_mismatch", detail, turn.turn_id, measured)
        return None

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Gate turns in order; keep the exchanges before the first failure."""
        dialogue.asr_backend = self.asr.name
        for position, turn in enumerate(dialogue.turns):
            failure = self.gate(turn)
            if failure is None:
                continue
            keep = position - position % 2  # whole exchanges only
            dialogue.dropped_turns.append(failure)
            dialogue.dropped_turns.extend(
                Reject(self.name, "follows_rejected_turn", failure.turn_id, t.turn_id)
                for t in dialogue.turns[keep:]
                if t is not turn
            )
            dialogue.turns = dialogue.turns[:keep]
            if not dialogue.turns:
                dialogue.reject = failure
            break
        return dialogue
