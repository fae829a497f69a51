"""The Piper assistant voice against the eSpeak assistant voice, on the same assistant texts.

Texts: the assistant turns of a build (default out/demo), else the few-shot replies of
prompts/turns.yaml. Each text is rendered in its assistant style (neutral: calm and warm; happy:
brighter) by Piper (voice `asst-joe`) and by the eSpeak assistant `asst-1`, resampled to 16 kHz as
the pipeline stores it, and transcribed by Whisper tiny.en. Prints per voice: median and mean WER,
seconds of synthesis per turn, real-time factor, median F0 and words per second per style; then
speech units per second of audio and the encoder's throughput with the build's codebook (or one
fitted here on the demo's Piper voice).

    python bench/bench_piper.py [--build out/demo] [--max-turns 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.adapters.asr_whisper import WhisperASR
from pipeline.adapters.emotion_prosody import measure
from pipeline.adapters.units_kmeans import Codebook
from pipeline.catalogs import load_catalogs
from pipeline.io.audio import resample
from pipeline.recipe import load_recipe
from pipeline.stages.s3_tts import render_embedded
from pipeline.stages.s5_units import CODEBOOK_PATH, fit_dataset_codebook
from pipeline.textnorm import word_error_rate

REPO = Path(__file__).resolve().parents[1]


def assistant_texts(build: Path, limit: int, fallback: list[str]) -> list[tuple[str, str]]:
    """(text, style) of up to `limit` assistant turns of `build`, or the fallback replies in neutral style."""
    files = sorted((build / "data").glob("*.parquet")) if build.is_dir() else []
    rows = [r for f in files for r in pq.read_table(f, columns=["turns"]).to_pylist()]
    found = [(t["text"], t["emotion"]) for r in rows for t in r["turns"] if t["role"] == "assistant"]
    return found[:limit] if found else [(text, "neutral") for text in fallback]


def main() -> None:
    """Render, transcribe and encode; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=REPO / "out" / "demo")
    parser.add_argument("--max-turns", type=int, default=40)
    args = parser.parse_args()
    recipe = load_recipe("demo")
    catalogs = load_catalogs(recipe)
    espeak_recipe = recipe.model_copy(update={"tts": recipe.tts.model_copy(update={"assistant_backend": "espeak"})})
    voices = {"piper asst-joe": catalogs.assistants[0], "espeak asst-1": load_catalogs(espeak_recipe).assistants[0]}
    texts = assistant_texts(args.build, args.max_turns, [e["reply"] for e in catalogs.prompts["assistant"]["examples"]])
    asr = WhisperASR(None)
    print(f"{len(texts)} assistant texts from {args.build if args.build.is_dir() else 'prompts/turns.yaml'}")
    print(f"{'voice':16} {'median WER':>10} {'mean WER':>9} {'s / turn':>9} {'RTF':>6}   per style: F0 Hz, words/s")
    clips: dict[str, list] = {}
    for name, voice in voices.items():
        wers, seconds, audio_s, per_style = [], 0.0, 0.0, {}
        clips[name] = []
        for text, style in texts:
            started = time.perf_counter()
            audio = resample(render_embedded(catalogs, voice, text, style, "low"), recipe.tts.sample_rate)
            seconds += time.perf_counter() - started
            audio_s += audio.duration_s
            clips[name].append(audio)
            wers.append(word_error_rate(text, asr.transcribe(audio).text))
            per_style.setdefault(style, []).append((measure(audio).f0_median_hz, len(text.split()) / audio.duration_s))
        styles = ", ".join(
            f"{s} {np.nanmedian([f for f, _ in v]):.0f} Hz {np.mean([r for _, r in v]):.2f} w/s"
            for s, v in sorted(per_style.items())
        )
        print(f"{name:16} {np.median(wers):10.3f} {np.mean(wers):9.3f} {seconds / len(texts):9.2f} "
              f"{seconds / audio_s:6.2f}   {styles}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        book_path = args.build / CODEBOOK_PATH
        if book_path.exists():
            codebook, source = Codebook.load(book_path), str(book_path)
        else:
            codebook, source = fit_dataset_codebook(recipe, catalogs, Path(tmp)), "fitted here on the Piper voice"
        audio = clips["piper asst-joe"]
        started = time.perf_counter()
        units = [codebook.encode(a) for a in audio]
        took = time.perf_counter() - started
    total_s = sum(a.duration_s for a in audio)
    print(f"\nunits ({source}): {sum(map(len, units)) / total_s:.2f} units per audio second, "
          f"{len({u for us in units for u in us})} of {len(codebook.centroids)} units used, "
          f"encoding {total_s / took:.0f} audio seconds per second")  # fmt: skip


if __name__ == "__main__":
    main()
