"""Dialogue-writer throughput against the local llama.cpp server at max_concurrency 1, 8 and 32.

Runs the real DialogueWriter (turns mode, the demo's prompts, request cache off) over a fresh set of
dialogues at each concurrency, in one run and on the same server, and prints requests/s and
completion tokens/s side by side. The embedded llama-cpp-python server answers one request at a
time (a single slot on 1 thread), so here concurrency can only hide client and HTTP latency; against
vLLM, which batches requests in flight, the same setting is what scales.

    python bench/bench_llm.py [--dialogues 32] [--levels 1 8 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.adapters.llm_server import EmbeddedLLMServer
from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe
from pipeline.stages.base import BuildContext
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import DialogueWriter

REPO = Path(__file__).resolve().parents[1]


def context(folder: Path, url: str, concurrency: int) -> BuildContext:
    recipe = yaml.safe_load((REPO / "manifests" / "demo.yaml").read_text())
    recipe["llm"].update(max_concurrency=concurrency, cache_requests=False, max_retries=0)
    recipe["scenarios"] = {"min_exchanges": 1, "max_exchanges": 1}
    path = folder / f"bench-llm-{concurrency}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    return BuildContext(recipe=loaded, catalogs=load_catalogs(loaded), out_dir=folder, llm_base_url=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=32, help="dialogues per level (2 requests each)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedLLMServer() as url:
        folder = Path(tmp)
        warm = DialogueWriter(context(folder, url, 1))
        warm.setup()
        warm.run_batch([ScenarioSampler(warm.ctx).new(10_000 + i) for i in range(2)])  # fill the prompt cache
        for n, level in enumerate(args.levels):
            writer = DialogueWriter(context(folder, url, level))
            writer.setup()
            sampler = ScenarioSampler(writer.ctx)
            dialogues = [sampler.new(n * 1000 + i) for i in range(args.dialogues)]
            started = time.perf_counter()
            done = writer.run_batch(dialogues)
            wall = time.perf_counter() - started
            client = writer.client
            rows.append((level, len(done), client.requests_sent, client.completion_tokens, wall))
    print(f"{'max_concurrency':>15} {'dialogues':>9} {'requests':>8} {'tokens':>7} {'wall s':>7} "
          f"{'requests/s':>10} {'tokens/s':>8}")  # fmt: skip
    for level, dialogues, requests, tokens, wall in rows:
        print(f"{level:>15} {dialogues:>9} {requests:>8} {tokens:>7} {wall:>7.1f} "
              f"{requests / wall:>10.3f} {tokens / wall:>8.1f}")  # fmt: skip
    base = rows[0][2] / rows[0][4]
    print("requests/s relative to max_concurrency 1: "
          + ", ".join(f"{lvl}: {req / wall / base:.2f}x" for lvl, _, req, _, wall in rows))  # fmt: skip


if __name__ == "__main__":
    main()
