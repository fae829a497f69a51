"""The audio gates on the demo recipe, measured before any gate cuts a dialogue.

Writes the demo's dialogues with the embedded LLM, renders every turn, then runs every gate on
every turn independently and prints: the WER distribution of user and assistant turns, the share
of user turns each gate would reject, the emotion check's agreement with the target, and the
seconds each stage spends per turn (standalone, one process).

Usage: python bench/bench_gates.py [--recipe demo] [--dialogues 48]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.adapters.llm_server import EmbeddedLLMServer
from pipeline.catalogs import load_catalogs
from pipeline.io.audio import from_bytes
from pipeline.recipe import load_recipe
from pipeline.stages.base import BuildContext
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import DialogueWriter
from pipeline.stages.s3_tts import Synthesizer
from pipeline.stages.s4_gates import AudioGates
from pipeline.textnorm import word_error_rate


def main() -> None:
    """Run the demo's first N dialogues through writer, TTS and every gate; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--dialogues", type=int, default=48)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    catalogs = load_catalogs(recipe)
    seconds: Counter[str] = Counter()
    with EmbeddedLLMServer(recipe.llm.model_path, threads=recipe.llm.server_threads) as url:
        ctx = BuildContext(recipe=recipe, catalogs=catalogs, out_dir=Path("."), llm_base_url=url)
        sampler, writer, tts, gates = ScenarioSampler(ctx), DialogueWriter(ctx), Synthesizer(ctx), AudioGates(ctx)
        for stage in (writer, tts, gates):
            stage.setup()
        dialogues, llm_rejects = [], Counter()
        for index in range(args.dialogues):
            dialogue = tts.run(writer.run(sampler.new(index)))
            seconds.update(dialogue.timings)
            if dialogue.reject:
                llm_rejects[dialogue.reject.reason] += 1
            else:
                dialogues.append(dialogue)
    turns = [t for d in dialogues for t in d.turns]
    reasons: dict[str, Counter[str]] = {"user": Counter(), "assistant": Counter()}
    wers: dict[str, list[float]] = {"user": [], "assistant": []}
    agree = Counter()
    started = time.perf_counter()
    for turn in turns:
        failure = gates.gate(turn)
        reasons[turn.role][failure.reason if failure else "kept"] += 1
        if turn.wer is None:  # a signal gate stopped it before ASR: measure WER anyway
            turn.wer = word_error_rate(turn.text, gates.asr.transcribe(from_bytes(turn.audio)).text)
        wers[turn.role].append(turn.wer)
        if turn.role == "user":
            agree[(turn.emotion, turn.emotion_measured == turn.emotion)] += 1
    seconds["gates"] = time.perf_counter() - started
    audio_s = sum(t.duration_s for t in turns)
    print(f"{args.dialogues} dialogues requested; {len(dialogues)} written, LLM rejects {dict(llm_rejects)}")
    print(f"{len(turns)} turns, {audio_s:.0f} s of audio\n")
    for role in ("user", "assistant"):
        w = np.array(wers[role])
        n = len(w)
        over = np.mean(w > recipe.gates.max_wer)
        print(f"{role:9} turns {n:4d}  WER median {np.median(w):.3f}  mean {w.mean():.3f}  "
              f"p90 {np.percentile(w, 90):.3f}  > max_wer ({recipe.gates.max_wer}): {over:.1%}")  # fmt: skip
        print("          gate verdicts: " + ", ".join(f"{k} {v} ({v / n:.1%})" for k, v in reasons[role].most_common()))
    print("\nemotion check on user turns (measured == target), per target emotion:")
    for emotion in sorted({e for e, _ in agree}):
        ok, bad = agree[(emotion, True)], agree[(emotion, False)]
        print(f"  {emotion:10} {ok}/{ok + bad}")
    n_turns = max(len(turns), 1)
    print("\nseconds per turn, standalone: " + ", ".join(f"{k} {v / n_turns:.3f}" for k, v in seconds.items()))
    print("stage throughput, turns/s: " + ", ".join(f"{k} {n_turns / v:.2f}" for k, v in seconds.items() if v))


if __name__ == "__main__":
    main()
