"""End-to-end throughput of the demo recipe, each stage's standalone throughput, and pipeline efficiency.

0. With --before: first builds the demo end to end against the previous embedded server
   (llama-cpp-python's, one request at a time, max_concurrency 1; needs the `bench` extra), so that
   the run prints the demo's dialogues/min before and after the batching llama.cpp server.
1. Builds the demo recipe end to end (fresh folder) and reads dialogues/min and audio-seconds/min
   over the Ray Data pipeline's own time (`last_run.pipeline_s`: from starting the stream to its
   last dialogue, actor start-up included; LLM server start and codebook fit excluded).
2. Runs each stage alone, in one process on the same 2 cores with nothing else running, over the
   same scenarios: the dialogue writer against the same embedded LLM server (request cache off),
   then TTS, the audio gates and the speech units on what it wrote.
3. Pipeline efficiency = end-to-end dialogues/s divided by the dialogues/s of the slowest stage
   alone (the bottleneck); 1.0 means the pipeline adds nothing to its bottleneck.

    python bench/bench_pipeline.py [--out out/bench-pipeline] [--before] [--dialogues N] [--e2e-only]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import REPO, LlamaCppPythonServer, demo_variant, run_build

from pipeline.adapters.llm_server import EmbeddedLLMServer
from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe
from pipeline.stages.base import BuildContext
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import DialogueWriter
from pipeline.stages.s3_tts import Synthesizer
from pipeline.stages.s4_gates import AudioGates
from pipeline.stages.s5_units import SpeechUnits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-pipeline")
    parser.add_argument("--before", action="store_true", help="also build against the previous embedded server")
    parser.add_argument("--dialogues", type=int, default=None, help="override the demo's dialogue count")
    parser.add_argument("--e2e-only", action="store_true", help="skip the standalone stage runs")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    extra = ("--num-dialogues", str(args.dialogues)) if args.dialogues else ()
    recipe_path = REPO / "manifests" / "demo.yaml"
    before = None
    if args.before:
        base = load_recipe(recipe_path).llm
        with LlamaCppPythonServer(base.model_path, threads=base.server_threads) as url:
            old = demo_variant(
                args.out / "before.yaml", llm={"backend": "openai", "base_url": url, "max_concurrency": 1}
            )
            before = run_build(old, args.out / "before", *extra)
    e2e = run_build(recipe_path, args.out / "after", *extra)
    counts, run = e2e["counts"], e2e["last_run"]
    n = counts["requested"]
    e2e_rate = n / run["pipeline_s"]
    audio_min = counts["audio_hours"] * 3600 / run["pipeline_s"] * 60
    if before is not None:
        for name, done in (("before: llama-cpp-python server, max_concurrency 1", before), ("after: demo recipe", e2e)):
            c, r = done["counts"], done["last_run"]
            print(f"{name}: {c['requested']} dialogues, {c['kept']} kept, build wall {done['wall_s']:.0f} s, "
                  f"pipeline {r['pipeline_s']:.0f} s -> {c['requested'] / r['pipeline_s'] * 60:.2f} dialogues/min, "
                  f"{c['requested'] / done['wall_s'] * 60:.2f} per minute of build wall time")  # fmt: skip
    if args.e2e_only:
        return

    recipe = load_recipe(recipe_path)
    recipe = recipe.model_copy(update={"llm": recipe.llm.model_copy(update={"cache_requests": False})})
    catalogs = load_catalogs(recipe)
    alone: dict[str, float] = {}
    llm = recipe.llm
    with EmbeddedLLMServer(llm.model_path, threads=llm.server_threads, slots=llm.server_slots) as url:
        ctx = BuildContext(recipe=recipe, catalogs=catalogs, out_dir=(args.out / "after").resolve(), llm_base_url=url)
        writer = DialogueWriter(ctx)
        writer.setup()
        scenarios = [ScenarioSampler(ctx).new(i) for i in range(n)]
        started = time.perf_counter()
        dialogues = writer.run_batch(scenarios)
        alone["dialogue"] = time.perf_counter() - started
    for stage in (Synthesizer(ctx), AudioGates(ctx), SpeechUnits(ctx)):  # units read the e2e run's codebook
        stage.setup()
        started = time.perf_counter()
        dialogues = stage.run_batch(dialogues)
        alone[stage.name] = time.perf_counter() - started

    print(f"demo recipe, {n} dialogues, {counts['kept']} kept, {counts['audio_hours'] * 3600:.0f} audio-seconds kept")
    print(f"end to end: build wall {e2e['wall_s']:.0f} s, pipeline {run['pipeline_s']:.0f} s -> "
          f"{e2e_rate * 60:.2f} dialogues/min, {audio_min:.1f} audio-seconds/min")  # fmt: skip
    print(f"stage seconds inside the pipeline (summed over dialogues): {counts['stage_seconds']}")
    print("standalone, same cores, same scenarios:")
    for name, seconds in alone.items():
        print(f"  {name:<9} {seconds:7.1f} s  {n / seconds * 60:8.2f} dialogues/min")
    bottleneck = max(alone, key=alone.__getitem__)
    rate = n / alone[bottleneck]
    print(f"bottleneck stage: {bottleneck} ({rate * 60:.2f} dialogues/min alone)")
    print(f"pipeline efficiency = {e2e_rate * 60:.2f} / {rate * 60:.2f} = {e2e_rate / rate:.2f}")


if __name__ == "__main__":
    main()
