"""Peak memory of a build at 100 vs 1,000 dialogues (streaming execution: it must not grow with the count).

Builds the same recipe twice into fresh folders, N1 and N2 dialogues, and samples every 0.5 s the
proportional set size (PSS) of the CLI process alone (the driver: writer buffers, dedup index) and
of its whole process tree (driver, Ray's GCS and raylet, stage actors, the llama.cpp server). PSS
counts shared pages, Ray's object store among them, once. To keep the 1,000-dialogue run near half
an hour on 2 cores, the recipe is the demo with one exchange per dialogue, turns of at most 32 tokens
and no text emotion check; both runs use that same recipe.

    python bench/bench_memory.py [--small 100] [--large 1000]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import REPO, demo_variant, run_build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-memory")
    args = parser.parse_args()
    results = {}
    for n in (args.small, args.large):
        out = args.out / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)
        recipe = demo_variant(args.out / f"memory-{n}.yaml", name=f"memory-{n}", num_dialogues=n, shard_size=25,
                              scenarios={"min_exchanges": 1, "max_exchanges": 1},
                              llm={"max_tokens": 32}, text_gates={"emotion_check": False})  # fmt: skip
        results[n] = run_build(recipe, out)
        r = results[n]
        line = f"{n:>5} dialogues: wall {r['wall_s']:.0f} s, kept {r['counts']['kept']}, "
        print(line + f"peak PSS driver {r['peak_driver_mb']:.0f} MB, whole tree {r['peak_tree_mb']:.0f} MB", flush=True)
    small, large = results[args.small], results[args.large]
    for key, label in (("peak_driver_mb", "driver"), ("peak_tree_mb", "whole tree")):
        print(f"{label}: peak at {args.large} / peak at {args.small} = {large[key] / small[key]:.3f} "
              f"({(large[key] / small[key] - 1) * 100:+.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
