"""The embedded backends really synthesize, recognise and measure (small inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.adapters.asr_whisper import WhisperASR, check_model_dir
from pipeline.adapters.base import Audio
from pipeline.adapters.emotion_prosody import measure
from pipeline.adapters.tts_espeak import EspeakEngine, Prosody, Voice
from pipeline.adapters.units_kmeans import FRAME_RATE_HZ, Codebook, fit_codebook, frame_features
from pipeline.io.audio import from_bytes, resample, to_flac
from pipeline.textnorm import word_error_rate

SENTENCE = "I lost my job this morning and I do not know what to tell my family."


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine.instance()


@pytest.fixture(scope="module")
def asr() -> WhisperASR:
    return WhisperASR(cpu_threads=1)


def test_espeak_renders_speech(engine: EspeakEngine) -> None:
    audio = engine.synthesize(SENTENCE, Voice("en-us+m3"))
    assert audio.sample_rate == 22050
    assert 2.0 < audio.duration_s < 8.0
    assert np.sqrt(np.mean(audio.samples**2)) > 0.01


def test_prosody_controls_change_the_audio(engine: EspeakEngine) -> None:
    voice = Voice("en-us+m3", pitch=40)
    base = measure(engine.synthesize(SENTENCE, voice))
    higher = measure(engine.synthesize(SENTENCE, voice, Prosody(pitch_delta=30)))
    slower = measure(engine.synthesize(SENTENCE, voice, Prosody(rate_factor=0.7)))
    louder = measure(engine.synthesize(SENTENCE, voice, Prosody(volume_factor=1.8)))
    assert higher.f0_median_hz > base.f0_median_hz * 1.15
    assert slower.duration_s > base.duration_s * 1.25
    assert louder.intensity_db > base.intensity_db + 3


def test_unknown_voice_is_a_clear_error(engine: EspeakEngine) -> None:
    with pytest.raises(ValueError, match="no voice 'zz-nowhere'"):
        engine.synthesize("hello", Voice("zz-nowhere"))


def test_whisper_transcribes_espeak(engine: EspeakEngine, asr: WhisperASR) -> None:
    audio = engine.synthesize(SENTENCE, Voice("en-us+m3"))
    heard = asr.transcribe(audio).text
    assert word_error_rate(SENTENCE, heard) <= 0.15, heard
    assert word_error_rate("The weather is lovely by the sea today.", heard) > 0.8


def test_missing_asr_model_dir_names_the_field(tmp_path: object) -> None:
    with pytest.raises(FileNotFoundError, match=r"asr.model_path: .* not a CTranslate2 Whisper model folder"):
        check_model_dir(tmp_path)  # type: ignore[arg-type]


def test_flac_round_trip_and_resampling(engine: EspeakEngine) -> None:
    audio = resample(engine.synthesize("Hello there.", Voice("en-us")), 16000)
    back = from_bytes(to_flac(audio))
    assert back.sample_rate == 16000
    assert len(back.samples) == len(audio.samples)
    assert np.max(np.abs(back.samples - audio.samples)) < 1e-3


def test_units_codebook_is_deterministic_and_at_12_5_hz(engine: EspeakEngine, tmp_path: object) -> None:
    clips = [
        engine.synthesize(s, Voice("en-us")) for s in (SENTENCE, "How are you feeling today?", "That sounds hard.")
    ]
    feats = np.concatenate([frame_features(c) for c in clips])
    book = fit_codebook(feats, 8, seed=1)
    assert book.version == fit_codebook(feats, 8, seed=1).version
    units = book.encode(clips[0])
    assert len(units) == pytest.approx(clips[0].duration_s * FRAME_RATE_HZ, abs=1.5)
    assert set(units) <= set(range(8)) and len(set(units)) > 2
    path = tmp_path / "codebook.npz"  # type: ignore[operator]
    book.save(path)
    assert Codebook.load(path).encode(clips[0]) == units


def test_codebook_needs_enough_frames() -> None:
    with pytest.raises(ValueError, match="lower units.codebook_size"):
        fit_codebook(np.zeros((4, 40)), 8, seed=0)


def test_silence_has_no_pitch() -> None:
    silent = measure(Audio(np.zeros(16000, dtype=np.float32), 16000))
    assert np.isnan(silent.f0_median_hz)
