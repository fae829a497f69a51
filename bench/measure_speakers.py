"""Measure candidate eSpeak NG speakers with the speaker catalog's gates, and print catalog entries.

Each candidate renders the 8 held-out sentences of bench_voices.py neutrally and under the two
prosody extremes of voices/speakers.yaml's header; Whisper tiny.en transcribes them. A candidate
passes when its neutral mean WER is at most 0.12 and its mean WER under each extreme at most 0.20.
Median F0 (Praat) and speaking rate (words / clip seconds) come from the neutral renderings.

Usage: python bench/measure_speakers.py [--cell "female teen"] ... (default: the cells below)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_voices import HELD_OUT

from pipeline.adapters.asr_whisper import WhisperASR
from pipeline.adapters.emotion_prosody import measure
from pipeline.adapters.tts_espeak import EspeakEngine, Prosody, Voice
from pipeline.textnorm import word_error_rate

HI = Prosody(pitch_delta=25, range_delta=30, rate_factor=1.25, volume_factor=1.3)
LO = Prosody(pitch_delta=-15, range_delta=-25, rate_factor=0.8, volume_factor=0.75)
# (gender, age group) -> (accent, eSpeak voice, pitch, range, rate) candidates. In eSpeak, age is a
# convention of rate and base pitch: older adults <= 150 wpm, young adults >= 172 wpm (the catalog's
# rule); female voices at >= 172 wpm failed the WER gate under the high extreme (+25 pitch, x1.25
# rate) in every configuration tried, so younger female voices are higher-pitched variants of passing
# adult voices at 165-168 wpm (young adult: base pitch +5..10, teen: +10..20); male teens are
# higher-pitched variants of passing young-adult male voices.
CANDIDATES: dict[str, list[tuple[str, str, int, int, int]]] = {
    "female young adult": [
        ("american", "en-us+f2", 62, 50, 165),
        ("british", "en-gb-x-rp+f2", 52, 55, 165),
        ("british", "en-gb-x-rp+Nguyen", 90, 45, 165),
        ("british", "en-gb-x-rp+steph3", 66, 45, 168),
        ("american", "en-us+steph2", 70, 45, 165),
        ("british", "en-gb-x-rp+steph", 76, 60, 165),
    ],
    "female teen": [
        ("american", "en-us+f2", 70, 50, 168),
        ("british", "en-gb-x-rp+f2", 62, 55, 168),
        ("british", "en-gb-x-rp+Nguyen", 98, 45, 168),
        ("british", "en-gb-x-rp+steph3", 74, 45, 168),
        ("american", "en-us+steph2", 78, 45, 168),
        ("british", "en-gb-x-rp+steph", 84, 60, 168),
    ],
    "male teen": [
        ("british", "en+m2", 66, 55, 176),
        ("british", "en-gb-x-rp+rob", 74, 40, 176),
        ("american", "en-us+m8", 52, 55, 176),
        ("british", "en-gb-x-rp+m6", 68, 55, 174),
        ("american", "en-us-nyc+m2", 58, 40, 176),
        ("british", "en-gb-x-rp+edward", 52, 45, 178),
    ],
}


def main() -> None:
    """Measure every candidate of the chosen cells and print the passing ones as YAML entries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", action="append", help="Cells to measure (default: all).")
    args = parser.parse_args()
    engine, asr = EspeakEngine.instance(), WhisperASR(None)
    words = sum(len(t.split()) for t in HELD_OUT)
    for cell in args.cell or list(CANDIDATES):
        gender, age_group = cell.split(" ", 1)
        print(f"# {cell}")
        for accent, name, pitch, pitch_range, rate in CANDIDATES[cell]:
            if not engine.has_voice(name):
                print(f"#   {name}: no such eSpeak voice")
                continue
            voice = Voice(name, pitch, pitch_range, rate, 75)
            started = time.perf_counter()
            wers, f0s, seconds = {}, [], 0.0
            for label, prosody in (("wer", None), ("wer_hi", HI), ("wer_lo", LO)):
                scores = []
                for text in HELD_OUT:
                    clip = engine.synthesize(text, voice, prosody)
                    scores.append(word_error_rate(text, asr.transcribe(clip).text))
                    if prosody is None:
                        f0s.append(measure(clip).f0_median_hz)
                        seconds += clip.duration_s
                wers[label] = float(np.mean(scores))
            ok = wers["wer"] <= 0.12 and wers["wer_hi"] <= 0.20 and wers["wer_lo"] <= 0.20
            f0 = float(np.nanmedian(f0s))
            print(
                f"{'' if ok else '# FAIL '}  - {{gender: {gender}, age_group: {age_group}, accent: {accent}, "
                f'espeak: {{voice: "{name}", pitch: {pitch}, pitch_range: {pitch_range}, rate: {rate}}}, '
                f"measured: {{wer: {wers['wer']:.3f}, wer_hi: {wers['wer_hi']:.3f}, wer_lo: {wers['wer_lo']:.3f}, "
                f"f0_median_hz: {f0:.1f}, rate_wps: {words / seconds:.2f}}}}}"
                f"   # {time.perf_counter() - started:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
