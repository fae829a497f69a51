"""Stage 4: audio gates. Each turn is checked in order: duration, silence, clipping and loudness,
then the ASR word error rate against its text, then (user turns) the measured emotion against the
target. The dialogue keeps the exchanges
before the first failing turn; with none left it is rejected with that turn's reason."""

from __future__ import annotations

import numpy as np

from pipeline.adapters.asr_whisper import WhisperASR
from pipeline.adapters.base import Audio
from pipeline.adapters.emotion_prosody import ProsodyEmotionClassifier, measure, relative_features
from pipeline.adapters.tts_espeak import EspeakEngine
from pipeline.catalogs import Catalogs, Speaker
from pipeline.io import cache as start_cache
from pipeline.io.audio import from_bytes, to_flac
from pipeline.recipe import AugmentConfig, GatesConfig
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


def level_stats(
    audio: Audio, frame_s: float = 0.02, floor_db: float = -60.0, range_db: float = 40.0
) -> dict[str, float]:
    """Edge silence, clipping and loudness of a clip.

    Active frames are those within `range_db` of the loudest frame and above `floor_db`; loudness is
    the RMS level of the active frames in dBFS (-inf for a silent clip).
    """
    frame = max(1, int(frame_s * audio.sample_rate))
    x = audio.samples[: len(audio.samples) // frame * frame].reshape(-1, frame)
    db = 20.0 * np.log10(np.sqrt(np.mean(np.square(x), axis=1)) + 1e-10) if len(x) else np.zeros(0)
    active = (db > db.max() - range_db) & (db > floor_db) if len(db) else np.zeros(0, dtype=bool)
    clipped = float(np.mean(np.abs(audio.samples) >= 0.999)) if len(audio.samples) else 0.0
    if not active.any():
        return {"lead_silence_s": audio.duration_s, "trail_silence_s": audio.duration_s,
                "clipped_fraction": clipped, "loudness_db": float("-inf")}  # fmt: skip
    first, last = int(np.argmax(active)), len(active) - 1 - int(np.argmax(active[::-1]))
    loudness = 20.0 * np.log10(np.sqrt(np.mean(np.square(x[active]))))
    return {
        "lead_silence_s": round(first * frame_s, 3),
        "trail_silence_s": round(audio.duration_s - (last + 1) * frame_s, 3),
        "clipped_fraction": round(clipped, 5),
        "loudness_db": round(float(loudness), 2),
    }


def signal_failure(stats: dict[str, float], duration_s: float, cfg: GatesConfig) -> tuple[str, str] | None:
    """The (reason, detail) of the first signal-level gate a clip fails, or None."""
    if duration_s < cfg.min_duration_s:
        return "too_short", f"{duration_s:.2f} s < {cfg.min_duration_s} s"
    if duration_s > cfg.max_duration_s:
        return "too_long", f"{duration_s:.2f} s > {cfg.max_duration_s} s"
    if stats["loudness_db"] == float("-inf"):
        return "silent", "no frame above the noise floor"
    edge = max(stats["lead_silence_s"], stats["trail_silence_s"])
    if edge > cfg.max_edge_silence_s:
        return "edge_silence", f"{edge:.2f} s of silence at an edge > {cfg.max_edge_silence_s} s"
    if stats["clipped_fraction"] > cfg.max_clipped_fraction:
        return "clipping", f"{stats['clipped_fraction']:.2%} of samples at full scale"
    if not cfg.min_loudness_db <= stats["loudness_db"] <= cfg.max_loudness_db:
        return "loudness_out_of_range", f"{stats['loudness_db']:.1f} dBFS"
    return None


def calibration_speakers(catalogs: Catalogs, count: int = 4) -> list[Speaker]:
    """The catalog speakers whose renderings calibrate the prosody emotion check (evenly spaced)."""
    step = max(1, len(catalogs.speakers) // count)
    return list(catalogs.speakers[::step][:count])


def calibrate_emotion_check(catalogs: Catalogs, speakers: list[Speaker]) -> tuple[ProsodyEmotionClassifier, bool]:
    """Fit the prosody classifier on calibration renderings, or load it from the user's start-up cache
    (keyed by the sentences, voices, prosody table, engine versions and this code). Returns (classifier, hit)."""
    styles = [(emotion, intensity) for emotion in EMOTIONS for intensity in INTENSITIES]
    inputs = {
        "sentences": CALIBRATION_SENTENCES,
        "voices": [repr(speaker.voice) for speaker in speakers],
        "prosody": [repr(catalogs.prosody(emotion, intensity)) for emotion, intensity in styles],
        "versions": start_cache.versions("espeakng-loader", "praat-parselmouth", "numpy"),
        "code": start_cache.source_digest(
            "pipeline.stages.s4_gates", "pipeline.adapters.emotion_prosody", "pipeline.adapters.tts_espeak"
        ),
    }

    def fit() -> bytes:
        engine = EspeakEngine.instance()
        feats, labels, groups = [], [], []
        for speaker in speakers:
            for sentence in CALIBRATION_SENTENCES:
                neutral = measure(engine.synthesize(sentence, speaker.voice))
                for emotion, intensity in styles:
                    clip = engine.synthesize(sentence, speaker.voice, catalogs.prosody(emotion, intensity))
                    feats.append(relative_features(measure(clip), neutral))
                    labels.append(emotion)
                    groups.append(f"{emotion}/{intensity}")
        return ProsodyEmotionClassifier.fit(feats, labels, groups).to_bytes()

    data, hit = start_cache.cached_bytes("emotion-prosody", inputs, fit)
    return ProsodyEmotionClassifier.from_bytes(data), hit


class EmotionCheck:
    """Embedded emotion check: prosody of a clip against the same speaker's neutral rendering."""

    def __init__(self, catalogs: Catalogs, calibration_count: int = 4) -> None:
        self.catalogs = catalogs
        self.engine = EspeakEngine.instance()
        chosen = calibration_speakers(catalogs, calibration_count)
        for speaker in chosen:
            assert isinstance(speaker, Speaker)
        self.calibration_speakers = [speaker.id for speaker in chosen]
        self.classifier, _ = calibrate_emotion_check(catalogs, chosen)

    def check(self, clip: Audio, text: str, speaker_id: str) -> tuple[str, float]:
        """Predicted emotion and score of `clip`, a rendering of `text` by `speaker_id`."""
        speaker = self.catalogs.speaker(speaker_id)
        assert isinstance(speaker, Speaker), "the prosody check needs eSpeak speakers"
        neutral = self.engine.synthesize(text, speaker.voice)
        prediction = self.classifier.classify(clip, neutral)
        return prediction.emotion, prediction.score


class Emotion2VecCheck:
    """Production emotion check: emotion2vec+ on the clip alone (no neutral reference needed)."""

    def __init__(self, model_dir: str | None, device: str) -> None:
        from pipeline.adapters.funasr_models import Emotion2Vec

        self.model = Emotion2Vec(model_dir, device)

    def check(self, clip: Audio, text: str, speaker_id: str) -> tuple[str, float]:
        """Predicted emotion and score of `clip`."""
        prediction = self.model.classify(clip)
        return prediction.emotion, prediction.score


def add_conditions(turn: Turn, cfg: AugmentConfig, rng: np.random.Generator) -> None:
    """Give a gated user clip sampled acoustic conditions (noise at an SNR, maybe reverberation) and
    record them on the turn; the labels and gate measurements stay those of the clean clip."""
    from pipeline.adapters.augment_acoustic import Conditions, apply

    if rng.random() >= cfg.share:
        return
    rt60 = round(float(rng.uniform(*cfg.rt60_s)), 3) if rng.random() < cfg.reverb_share else None
    conditions = Conditions(str(rng.choice(cfg.noise)), round(float(rng.uniform(*cfg.snr_db)), 2), rt60)
    audio = apply(from_bytes(turn.audio), conditions, rng)
    turn.audio = to_flac(audio)
    turn.aug_noise, turn.aug_snr_db, turn.aug_rt60_s = conditions.noise, conditions.snr_db, conditions.rt60_s


class AudioGates(Stage):
    """Runs ASR and the emotion check and drops turns that fail a gate."""

    name = "gates"

    def setup(self) -> None:
        """Load Whisper and calibrate the emotion check."""
        asr, gates = self.ctx.recipe.asr, self.ctx.recipe.gates
        if asr.backend == "funasr":
            from pipeline.adapters.funasr_models import FunASRTranscriber

            self.asr: WhisperASR | FunASRTranscriber = FunASRTranscriber(asr.model_path, asr.device)
        else:
            self.asr = WhisperASR(
                asr.model_path, device=asr.device, compute_type=asr.compute_type, cpu_threads=asr.cpu_threads
            )
        self.emotion: EmotionCheck | Emotion2VecCheck | None = None
        if gates.emotion_check and gates.emotion_backend == "emotion2vec":
            self.emotion = Emotion2VecCheck(gates.emotion_model_dir, asr.device)
        elif gates.emotion_check:
            self.emotion = EmotionCheck(self.ctx.catalogs)

    def gate(self, turn: Turn) -> Reject | None:
        """Measure one turn (fills f0_median_hz, speaking_rate_wps, asr_text, wer, emotion_measured/score);
        a Reject if it fails."""
        cfg = self.ctx.recipe.gates
        audio = from_bytes(turn.audio)
        stats = level_stats(audio)
        measured: dict[str, float | str] = {"duration_s": turn.duration_s, **stats}
        failure = signal_failure(stats, turn.duration_s, cfg)
        if failure is not None:
            return Reject(self.name, failure[0], failure[1], turn.turn_id, measured)
        f0 = measure(audio).f0_median_hz  # paralinguistic labels of the clean clip
        turn.f0_median_hz = None if np.isnan(f0) else round(f0, 1)
        turn.speaking_rate_wps = round(len(turn.text.split()) / turn.duration_s, 3) if turn.duration_s else None
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
            failure.measured.setdefault("emotion_target", turn.emotion)
            dialogue.dropped_turns.append(failure)
            dialogue.dropped_turns.extend(
                Reject(self.name, "follows_rejected_turn", failure.turn_id, t.turn_id, {"emotion_target": t.emotion})
                for t in dialogue.turns[keep:]
                if t is not turn
            )
            dialogue.turns = dialogue.turns[:keep]
            if not dialogue.turns:
                dialogue.reject = failure
            break
        augment = self.ctx.recipe.augment
        if augment.enabled:
            rng = np.random.default_rng([dialogue.seed, dialogue.index, 9])
            for turn in dialogue.turns:
                if turn.role == "user":
                    add_conditions(turn, augment, rng)
        return dialogue
