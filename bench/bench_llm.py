"""Dialogue-writer throughput at max_concurrency 1, 4 and 8: the embedded llama.cpp server (xllamacpp,
parallel slots, continuous batching) side by side with the previous one (llama-cpp-python's server,
one request at a time), in one run, on the same GGUF, prompts and scenarios: both servers run at
once and each concurrency level is measured on one right after the other.

Runs the real DialogueWriter (turns mode, the demo's prompts, request cache off) over a fresh set of
dialogues at each concurrency and prints requests/s and completion tokens/s. The old server needs the
`bench` extra (`make install-bench`); without it only the new one is measured (and the script says so).

    python bench/bench_llm.py [--dialogues 16] [--levels 1 4 8] [--threads 1] [--slots 8]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import yaml
from _common import LlamaCppPythonServer, old_server_available

from pipeline.adapters.llm_server import EmbeddedLLMServer
from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe
from pipeline.stages.base import BuildContext
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import DialogueWriter

REPO = Path(__file__).resolve().parents[1]
Row = tuple[int, int, int, float]


def context(folder: Path, url: str, concurrency: int) -> BuildContext:
    demo = yaml.safe_load((REPO / "manifests" / "demo.yaml").read_text())
    recipe = {key: demo[key] for key in ("name", "seed", "llm", "text_gates") if key in demo}  # the writer's part
    recipe["llm"].update(max_concurrency=concurrency, cache_requests=False, max_retries=0)
    recipe["scenarios"] = {"min_exchanges": 1, "max_exchanges": 1}
    path = folder / f"bench-llm-{concurrency}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    return BuildContext(recipe=loaded, catalogs=load_catalogs(loaded), out_dir=folder, llm_base_url=url)


def measure(servers: dict[str, EmbeddedLLMServer], levels: list[int], dialogues: int) -> dict[str, list[Row]]:
    """(level, requests, completion tokens, wall s) per server and concurrency level. Both servers run at
    once and each level is measured on one, then the other, so a change in the machine's load between
    levels hits both alike."""
    rows: dict[str, list[Row]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        urls = {name: stack.enter_context(server) for name, server in servers.items()}
        for url in urls.values():
            warm = DialogueWriter(context(folder, url, 2))
            warm.setup()
            warm.run_batch([ScenarioSampler(warm.ctx).new(10_000 + i) for i in range(2)])  # fill the prompt caches
        for n, level in enumerate(levels):
            for name, url in urls.items():
                writer = DialogueWriter(context(folder, url, level))
                writer.setup()
                sampler = ScenarioSampler(writer.ctx)
                batch = [sampler.new(n * 1000 + i) for i in range(dialogues)]  # same scenarios for both servers
                started = time.perf_counter()
                writer.run_batch(batch)
                wall = time.perf_counter() - started
                rows[name].append((level, writer.client.requests_sent, writer.client.completion_tokens, wall))
                print(f"  {name} concurrency {level}: {rows[name][-1][1]} requests, {rows[name][-1][2]} tokens "
                      f"in {wall:.1f} s", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=16, help="dialogues per level (2 requests each)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=1, help="server threads (both servers)")
    parser.add_argument("--slots", type=int, default=8, help="parallel slots of the llama.cpp server")
    args = parser.parse_args()
    servers: list[tuple[str, EmbeddedLLMServer]] = [
        (f"llama.cpp server (xllamacpp), {args.slots} slots", EmbeddedLLMServer(threads=args.threads, slots=args.slots))
    ]
    if old_server_available():
        servers.insert(0, ("llama-cpp-python server (before)", LlamaCppPythonServer(threads=args.threads)))
    else:
        print("llama-cpp-python is not installed (`make install-bench`): measuring the new server only")
    results = measure(dict(servers), args.levels, args.dialogues)
    print(f"\n{args.dialogues} dialogues (1 exchange) per level, {args.threads} server thread(s)")
    print(f"{'server':<40} {'concurrency':>11} {'requests':>8} {'tokens':>7} {'wall s':>7} {'requests/s':>10} "
          f"{'tokens/s':>8}")  # fmt: skip
    for name, rows in results.items():
        for level, requests, tokens, wall in rows:
            print(f"{name:<40} {level:>11} {requests:>8} {tokens:>7} {wall:>7.1f} {requests / wall:>10.3f} "
                  f"{tokens / wall:>8.1f}")  # fmt: skip
    if len(results) == 2:
        (old_name, old), (new_name, new) = results.items()
        print("requests/s, new / old: " + ", ".join(
            f"concurrency {o[0]}: {(n[1] / n[3]) / (o[1] / o[3]):.2f}x" for o, n in zip(old, new, strict=True)
        ))  # fmt: skip


if __name__ == "__main__":
    main()
