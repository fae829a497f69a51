"""Speakers, emotion prosody and the emotion check, measured on the embedded TTS.

Prints, in one run:
1. per speaker: median F0 and speaking rate of neutral renderings (the catalog's spread);
2. per emotion: the prosody shift against neutral for every speaker, and how many speakers
   shift in the intended direction on each feature;
3. the emotion check's confusion matrix and accuracy on held-out renderings (speakers and
   sentences not used to calibrate it), per intensity.

Usage: python bench/bench_voices.py [--speakers N] [--sentences N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.adapters.emotion_prosody import measure, relative_features
from pipeline.adapters.tts_espeak import EspeakEngine
from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe
from pipeline.records import EMOTIONS, INTENSITIES
from pipeline.stages.s4_gates import CALIBRATION_SENTENCES, EmotionCheck

HELD_OUT = (
    "My landlord said the heater will not be fixed until next week.",
    "I just heard that the whole team is getting a surprise bonus.",
    "Someone left rotten food in the office fridge again.",
    "The doctor wants to see me tomorrow about the test results.",
    "My best friend is moving to another city next month.",
    "I found out my car was towed while I was at dinner.",
    "We are finally going on the trip we planned for years.",
    "There was a strange noise downstairs in the middle of the night.",
)
# feature index, and which recipe parameter decides the intended sign of the shift
DIRECTIONS = {"f0": (0, "pitch_delta"), "range": (1, "range_delta"), "intensity": (2, "volume_factor"),
              "rate": (3, "rate_factor")}  # fmt: skip


def intended_sign(prosody: object, param: str) -> int:
    """+1, -1 or 0: the direction the emotion table asks for on one parameter."""
    value = getattr(prosody, param)
    centre = 1.0 if param.endswith("factor") else 0.0
    return int(np.sign(round(value - centre, 6)))


def main() -> None:
    """Run the three measurements and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=0, help="Held-out speakers to test (0 = all).")
    parser.add_argument("--sentences", type=int, default=len(HELD_OUT), help="Held-out sentences per speaker.")
    args = parser.parse_args()
    catalogs = load_catalogs(load_recipe("demo"))
    engine = EspeakEngine.instance()
    started = time.perf_counter()
    check = EmotionCheck(catalogs)
    calib_ids = set(check.calibration_speakers)
    print(f"emotion check calibrated on {sorted(calib_ids)} x {len(CALIBRATION_SENTENCES)} sentences "
          f"in {time.perf_counter() - started:.1f} s")  # fmt: skip

    print("\n1. speakers (neutral, held-out sentences)")
    print(f"{'speaker':8} {'voice':16} {'gender':7} {'accent':12} {'F0 Hz':>7} {'words/s':>8}")
    f0s, rates = [], []
    for s in catalogs.speakers:
        clips = [engine.synthesize(t, s.voice) for t in HELD_OUT[:4]]
        f0 = float(np.median([measure(c).f0_median_hz for c in clips]))
        rate = sum(len(t.split()) for t in HELD_OUT[:4]) / sum(c.duration_s for c in clips)
        f0s.append(f0)
        rates.append(rate)
        print(f"{s.id:8} {s.voice.name:16} {s.gender:7} {s.accent:12} {f0:7.1f} {rate:8.2f}")
    print(f"F0 spread {min(f0s):.0f}-{max(f0s):.0f} Hz; rate spread {min(rates):.2f}-{max(rates):.2f} words/s")

    print("\n2. prosody shift against the same speaker's neutral (high intensity, mean over speakers)")
    print(
        f"{'emotion':10} {'F0 st':>7} {'range st':>9} {'int dB':>7} {'log rate':>9}   "
        "speakers in the intended direction"
    )
    for emotion in EMOTIONS[1:]:
        prosody = catalogs.prosody(emotion, "high")
        shifts = []
        for s in catalogs.speakers:
            text = HELD_OUT[0]
            shifts.append(relative_features(measure(engine.synthesize(text, s.voice, prosody)),
                                            measure(engine.synthesize(text, s.voice))))  # fmt: skip
        shifts_arr = np.array(shifts)
        verdicts = []
        for name, (col, param) in DIRECTIONS.items():
            sign = intended_sign(catalogs.emotions[emotion].prosody, param)
            if sign == 0:
                continue
            right = np.sign(shifts_arr[:, col]) == sign
            wrong = [catalogs.speakers[i].id for i in np.flatnonzero(~right)]
            verdicts.append(
                f"{name} {int(right.sum())}/{len(shifts_arr)}" + (f" (not: {', '.join(wrong)})" if wrong else "")
            )
        mean = shifts_arr.mean(axis=0)
        print(f"{emotion:10} {mean[0]:7.2f} {mean[1]:9.2f} {mean[2]:7.2f} {mean[3]:9.3f}   " + ", ".join(verdicts))

    print("\n3. emotion check on held-out renderings (speakers and sentences not used to calibrate it)")
    held_out = [s for s in catalogs.speakers if s.id not in calib_ids]
    if args.speakers:
        held_out = held_out[:: max(1, len(held_out) // args.speakers)][: args.speakers]
    sentences = HELD_OUT[: args.sentences]
    index = {e: i for i, e in enumerate(EMOTIONS)}
    confusion = {i: np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=int) for i in INTENSITIES}
    started = time.perf_counter()
    for s in held_out:
        for text in sentences:
            for emotion in EMOTIONS:
                for intensity in INTENSITIES:
                    clip = engine.synthesize(text, s.voice, catalogs.prosody(emotion, intensity))
                    predicted, _score = check.check(clip, text, s.id)
                    confusion[intensity][index[emotion], index.get(predicted, index["neutral"])] += 1
    n = len(held_out) * len(sentences) * len(EMOTIONS)
    print(f"{len(held_out)} speakers x {len(sentences)} sentences x 7 emotions per intensity "
          f"({n} clips each, {time.perf_counter() - started:.0f} s)")  # fmt: skip
    for intensity in INTENSITIES:
        m = confusion[intensity]
        print(f"\n[{intensity}] accuracy {np.trace(m) / m.sum():.3f}   rows: target, columns: predicted")
        print(" " * 10 + "".join(f"{e[:6]:>8}" for e in EMOTIONS))
        for e in EMOTIONS:
            print(f"{e:10}" + "".join(f"{v:8d}" for v in m[index[e]]))
    both = confusion["medium"] + confusion["high"]
    print(f"\naccuracy at medium+high: {np.trace(both) / both.sum():.3f}; "
          f"at low: {np.trace(confusion['low']) / confusion['low'].sum():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
