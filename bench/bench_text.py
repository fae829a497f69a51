"""Text-only build at scale: near-duplicates and emotion x topic balance of the kept dialogues.

Builds N dialogues (default 200) with the demo's LLM settings and `text_only: true` (dialogue writer
and text gates only), then measures on the output:
- the largest exact word 3-gram Jaccard similarity between any two kept dialogues, against the
  recipe's `near_duplicate_jaccard` (the stated near-duplicate measure);
- the balance report (largest emotion / topic share difference, kept vs requested) against
  `scenarios.balance_tolerance`;
- reject reasons, wall time and dialogues per minute.

    python bench/bench_text.py [--dialogues 200] [--out out/bench-text]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from pipeline.stages.s6_dedup import jaccard, shingles

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-text")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()

    recipe = yaml.safe_load((REPO / "manifests" / "demo.yaml").read_text())
    recipe.update(name="bench-text", seed=args.seed, num_dialogues=args.dialogues, shard_size=25, text_only=True)
    args.out.mkdir(parents=True, exist_ok=True)
    recipe_path = args.out.parent / f"{args.out.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pipeline", "build", str(recipe_path), "--out", str(args.out)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - started
    if build.returncode != 0:
        sys.exit(f"build failed ({build.returncode}):\n{build.stderr[-3000:]}")

    manifest = json.loads((args.out / "manifest.json").read_text())
    counts = manifest["counts"]
    threshold = manifest["recipe"]["text_gates"]["near_duplicate_jaccard"]
    rows = [r for f in sorted((args.out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    sets = {r["id"]: shingles(t["text"] for t in r["turns"]) for r in rows}
    worst = max(((jaccard(sets[a], sets[b]), a, b) for a, b in itertools.combinations(sets, 2)), default=(0.0, "", ""))
    balance = counts["balance"]
    print(f"text-only build: {args.dialogues} dialogues requested, seed {args.seed}, wall {wall:.0f} s "
          f"({args.dialogues / wall * 60:.1f} dialogues/min)")  # fmt: skip
    print(f"kept {counts['kept']}, rejected {counts['rejected']}: {dict(counts['rejected_by_reason'])}")
    print(f"turns kept {counts['turns_kept']}; emotions kept {Counter(r['scenario']['emotion'] for r in rows)}")
    print(f"near-duplicates: largest exact word 3-gram Jaccard between two kept dialogues {worst[0]:.3f} "
          f"({worst[1]}, {worst[2]}); threshold {threshold}: {'OK' if worst[0] < threshold else 'FAIL'}")  # fmt: skip
    print(f"balance: largest share difference kept vs requested: emotion {balance['emotion_max_share_diff']}, "
          f"topic {balance['topic_max_share_diff']}; tolerance {balance['tolerance']}: "
          f"{'OK' if balance['within_tolerance'] else 'FAIL'}; cells requested {balance['cells_requested']}, "
          f"kept {balance['cells_kept']}")  # fmt: skip
    print(f"stage seconds: {counts['stage_seconds']}")


if __name__ == "__main__":
    main()
