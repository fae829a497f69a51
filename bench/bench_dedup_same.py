"""Same near-duplicate verdicts as the in-driver filter the build had before the on-disk index and the
off-driver writers, on a real text-only build (by default bench_text.py's 200 dialogues).

The build's LLM answers are in its request cache (`cache/llm.sqlite`), so the same dialogues can be
replayed without the LLM into fresh folders. For each threshold, this script:
- replays the build with today's code (Ray writer tasks, on-disk index) and reads the kept ids;
- takes every dialogue that passed the text gates (the replay with `near_duplicate_jaccard: 1.0`, where
  only identical shingle sets are duplicates), and runs the filter of commit 139e65e^ (datasketch
  `MinHashLSH` in the driver's memory, loaded from git) over them in index order;
and prints both kept counts and whether the kept ids are identical. The recipe's own threshold (0.5)
rejects nothing on 200 dialogues (the largest pair is far below it), so lower thresholds, where the
filter fires, are compared too. It also checks that the replay at the recipe's threshold keeps the
same ids as the original build and that no replay sent a request to the LLM.

    python bench/bench_dedup_same.py [--build out/bench-text] [--thresholds 0.5 0.1 0.07 0.05 0.03]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from _common import REPO, run_build

OLD_FILTER_COMMIT = "139e65e^"  # the last commit whose filter kept every kept dialogue in the driver's memory


def kept(out: Path) -> list[dict]:
    """Kept rows of a build, in index order."""
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["index"])


def requests(out: Path) -> int:
    """Finished LLM requests in a build's request cache."""
    with sqlite3.connect(out / "cache" / "llm.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


def replay(build: Path, folder: Path, threshold: float) -> Path:
    """Rebuild `build`'s recipe at `threshold` in a fresh folder from its request cache; returns the folder."""
    from pipeline.recipe import load_recipe

    manifest = json.loads((build / "manifest.json").read_text())
    recipe = manifest["recipe"]
    recipe["text_gates"]["near_duplicate_jaccard"] = threshold
    path = folder / f"replay-{threshold}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = folder / f"replay-{threshold}"
    (out / "cache").mkdir(parents=True)
    shutil.copy(build / "cache" / "llm.sqlite", out / "cache" / "llm.sqlite")
    # a manifest of this recipe with no shard written: the build resumes into it and keeps the cache
    (out / "manifest.json").write_text(json.dumps({"recipe_hash": load_recipe(path).fingerprint()}))
    run_build(path, out)
    return out


def old_filter(threshold: float) -> object:
    """The near-duplicate filter of OLD_FILTER_COMMIT, loaded from git."""
    source = subprocess.run(
        ["git", "show", f"{OLD_FILTER_COMMIT}:pipeline/stages/s6_dedup.py"], cwd=REPO, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    module = types.ModuleType("old_s6_dedup")
    exec(compile(source, "old_s6_dedup.py", "exec"), module.__dict__)  # noqa: S102 - our own code, from git
    return module.NearDuplicateFilter(threshold)


def old_kept(rows: list[dict], threshold: float) -> list[str]:
    """Ids the old in-memory filter keeps of `rows` (fed in index order, as the old writer did)."""
    from pipeline.records import Dialogue, Scenario, Turn

    dedup = old_filter(threshold)
    ids = []
    for r in rows:
        d = Dialogue(r["id"], r["index"], 0, r["seed"], Scenario(**r["scenario"]))
        d.turns = [Turn(t["turn_id"], t["role"], t["text"], t["emotion"], t["intensity"], t["speaker_id"])
                   for t in r["turns"]]  # fmt: skip
        if dedup.apply(d).kept:  # type: ignore[attr-defined]
            ids.append(d.id)
    return ids


def main() -> None:
    """Print, per threshold, the kept counts of both filters and whether their kept ids are identical."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=REPO / "out" / "bench-text")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.1, 0.07, 0.05, 0.03])
    args = parser.parse_args()
    if not (args.build / "cache" / "llm.sqlite").exists():
        sys.exit(f"{args.build} has no request cache: run bench/bench_text.py first")
    before = requests(args.build)
    recipe_threshold = json.loads((args.build / "manifest.json").read_text())["recipe"]["text_gates"][
        "near_duplicate_jaccard"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        every = replay(args.build, folder, 1.0)
        candidates = kept(every)
        print(f"{args.build}: {len(kept(args.build))} kept; {len(candidates)} passed the text gates "
              f"(replay at 1.0); {requests(every) - before} new LLM requests in the replay")  # fmt: skip
        print("threshold  kept (today's build)  kept (in-memory filter of 139e65e^)  same kept ids")
        for threshold in args.thresholds:
            out = replay(args.build, folder, threshold)
            new = [r["id"] for r in kept(out)]
            old = old_kept(candidates, threshold)
            print(f"{threshold:<10} {len(new):>21} {len(old):>36}  {new == old}", flush=True)
            if threshold == recipe_threshold:
                print(f"  the replay at the recipe's threshold keeps the original build's ids: "
                      f"{new == [r['id'] for r in kept(args.build)]}")  # fmt: skip
            assert requests(out) == before, "a replay sent a request to the LLM"


if __name__ == "__main__":
    main()
