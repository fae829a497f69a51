"""The driver's part of a build at 10k .. 1M dialogues: near-duplicate removal and shard writing, no models.

Synthetic dialogues (4 turns of 12-30 words drawn from a 6,000-word vocabulary, 2% of them one-word edits
of an earlier dialogue, so the filter really fires), each with the near-duplicate sketch its Ray worker
would attach (`attach_sketch`; made outside the timed driver work), go through the real writer path of
`pipeline.build`:
`_open_dedup` (the on-disk index in `OUT/dedup/index.sqlite`) and `_write_in_order` (dedup in index order,
Parquet shards, stats, completion markers). Each size runs in its own process; the script prints per size
the driver's peak RSS, dialogues/s and MB/s of shards written, and, from RSS samples taken every 50k
dialogues of the largest run, the fitted memory growth per 100k dialogues. Then it kills a run with
SIGKILL at two sizes, resumes each, and prints the resume's start-up time (start -> first shard written),
duplicate ids and leftover temp files.

    .venv/bin/python bench/bench_scale.py [--sizes 10000 100000 1000000] [--kill-at 10000 80000] [--kill-size 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 1000


def recipe_file(folder: Path, n: int) -> Path:
    """A text-only recipe of `n` dialogues (the writer path needs no models)."""
    path = folder / "scale.yaml"
    path.write_text(
        yaml.safe_dump({"name": "scale", "seed": 5, "num_dialogues": n, "shard_size": SHARD_SIZE, "text_only": True})
    )
    return path


VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ve", "ro") for b in range(750)]


def texts_of(index: int) -> list[str]:
    """The four turn texts of synthetic dialogue `index` (12-30 words each)."""
    rng = random.Random(-index - 1)
    return [" ".join(rng.choices(VOCAB, k=rng.randint(12, 30))) for _ in range(4)]


def synthetic(recipe_path: Path, indices: list[int]) -> Iterator[object]:
    """Dialogues with realistic text lengths, in index order; 2% nearly copy an earlier one."""
    from pipeline.catalogs import load_catalogs
    from pipeline.recipe import load_recipe
    from pipeline.records import Dialogue, Turn, dialogue_id
    from pipeline.stages.base import BuildContext
    from pipeline.stages.s1_scenarios import ScenarioSampler
    from pipeline.stages.s6_dedup import attach_sketch

    recipe = load_recipe(recipe_path)
    sampler = ScenarioSampler(BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=recipe_path.parent))
    scenarios = [sampler.scenario(i) for i in range(1000)]  # reused: sampling is not the driver's work
    for index in indices:
        rng = random.Random(index)
        texts = texts_of(index)
        if index > 100 and rng.random() < 0.02:  # a near-copy of an earlier dialogue: one word changed
            texts = texts_of(index - 1 - rng.randrange(100))
            words = texts[0].split()
            words[rng.randrange(len(words))] = rng.choice(VOCAB)
            texts = [" ".join(words), *texts[1:]]
        d = Dialogue(dialogue_id(recipe.seed, index), index, index // SHARD_SIZE, recipe.seed, scenarios[index % 1000])
        d.turns = [
            Turn(f"{d.id}-t{n:02d}", "user" if n % 2 else "assistant", t, "sad", "low", "spk-01")
            for n, t in enumerate(texts, start=1)
        ]
        attach_sketch(d, recipe.text_gates.near_duplicate_jaccard)  # the workers' part (sketch_batch)
        yield d


def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def run_writer(recipe_path: Path, out_dir: Path, sample_every: int) -> dict[str, object]:
    """One build's writer path over the recipe's pending shards; returns its figures."""
    from pipeline.build import _open_dedup, _write_in_order
    from pipeline.io.shards import OutputFolder
    from pipeline.recipe import load_recipe

    started = time.monotonic()
    recipe = load_recipe(recipe_path)
    out = OutputFolder(out_dir, recipe)
    resumed = out.prepare(False)
    out.write_manifest({"recipe_hash": recipe.fingerprint(), "status": "running"})
    pending = out.pending_shards() if resumed else list(range(recipe.num_shards))
    indices = [i for k in pending for i in out.todo(k)]
    dedup = _open_dedup(out, recipe, indices)
    opened_s = time.monotonic() - started  # folder scan + index open + forgetting the redone indices
    samples: list[tuple[int, float]] = []
    first_shard: list[float] = []

    def progress(done: int, total: int, _d: object) -> None:
        if done % SHARD_SIZE == 0 and not first_shard:
            first_shard.append(time.monotonic() - started)
        if done % sample_every == 0:
            samples.append((done, rss_mb()))
            print(json.dumps({"progress": done}), flush=True)

    making = [0.0]  # seconds spent making the synthetic dialogues (not the driver's work)

    def timed(stream: Iterator[object]) -> Iterator[object]:
        while True:
            t = time.monotonic()
            d = next(stream, None)
            making[0] += time.monotonic() - t
            if d is None:
                return
            yield d

    t0 = time.monotonic()
    _write_in_order(out, timed(synthetic(recipe_path, indices)), pending, dedup, progress)
    seconds = time.monotonic() - t0 - making[0]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    written = sum(p.stat().st_size for p in out_dir.glob("*/*.parquet"))
    totals = out.totals()
    return {
        "dialogues": len(indices), "seconds": round(seconds, 1), "dialogues_s": round(len(indices) / seconds),
        "mb_s": round(written / 1e6 / seconds, 2), "peak_rss_mb": round(peak_kb / 1e3),
        "kept": totals["kept"], "near_duplicates": totals["rejected_by_reason"].get("near_duplicate", 0),
        "samples": samples, "startup_to_first_shard_s": round(first_shard[0], 2) if first_shard else None,
        "index_mb": round(sum(p.stat().st_size for p in (out_dir / "dedup").glob("index.sqlite*")) / 1e6),
        "open_s": round(opened_s, 3),
    }  # fmt: skip


def child(n: int, out_dir: Path, sample_every: int) -> dict[str, object]:
    """Run the writer for `n` dialogues in a fresh process; its last stdout line is the figures."""
    cmd = [sys.executable, __file__, "--child", str(n), str(out_dir), str(sample_every)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kill_and_resume(n: int, kill_after: int, folder: Path) -> dict[str, object]:
    """Start an `n`-dialogue run, SIGKILL it after `kill_after` dialogues, resume it; check the output."""
    import pyarrow.parquet as pq

    out_dir = folder / f"kill-{kill_after}"
    cmd = [sys.executable, __file__, "--child", str(n), str(out_dir), str(SHARD_SIZE)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("progress", 0) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    completed = len(list((out_dir / "completions").glob("*.done")))
    resumed = child(n, out_dir, SHARD_SIZE)
    ids = [
        i
        for p in sorted((out_dir / "data").glob("*.parquet"))
        for i in pq.read_table(p, columns=["id"])["id"].to_pylist()
    ]
    rejected = [
        i
        for p in sorted((out_dir / "rejects").glob("*.parquet"))
        for i in pq.read_table(p, columns=["id"])["id"].to_pylist()
    ]
    temp = [p for p in out_dir.rglob("*") if p.name.startswith(".") and p.is_file()]
    return {
        "completed_shards_at_kill": completed, "resume_open_s": resumed["open_s"],
        "resume_startup_to_first_shard_s": resumed["startup_to_first_shard_s"],
        "duplicate_ids": len(ids) - len(set(ids)), "accounted": len(set(ids) | set(rejected)) == n,
        "temp_files_left": len(temp),
    }  # fmt: skip


def main() -> None:
    """Print the figures of every size, the fitted growth, and the kill/resume checks."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kill-at", type=int, nargs="+", default=[10_000, 80_000])
    parser.add_argument("--kill-size", type=int, default=100_000)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        n, out_dir, every = int(args.child[0]), Path(args.child[1]), int(args.child[2])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run_writer(recipe_file(out_dir.parent, n), out_dir, every)), flush=True)
        return
    import numpy as np

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        print("size       seconds  dialogues/s  shards MB/s  driver peak RSS MB  kept  near-dups  index MB")
        largest: dict[str, object] = {}
        for n in args.sizes:
            r = child(n, folder / f"size-{n}", max(n // 20, SHARD_SIZE))
            print(f"{n:<10} {r['seconds']:>7} {r['dialogues_s']:>12} {r['mb_s']:>12} {r['peak_rss_mb']:>19} "
                  f"{r['kept']:>6} {r['near_duplicates']:>9} {r['index_mb']:>9}")  # fmt: skip
            largest = r
        done, rss = np.array(largest["samples"], dtype=float).T  # type: ignore[arg-type]
        half = len(done) // 2  # past the start-up transient
        slope = np.polyfit(done[half:], rss[half:], 1)[0] * 100_000
        print(f"driver RSS growth, fitted over the second half of the {args.sizes[-1]:,} run: {slope:.1f} MB per 100k")
        print(
            f"  RSS samples (dialogues: MB): {', '.join(f'{int(d)}: {m:.0f}' for d, m in zip(done, rss, strict=True))}"
        )
        print(f"  extrapolated to 10M dialogues: +{slope * 100:.0f} MB over the driver's start")
        for kill_after in args.kill_at:
            r = kill_and_resume(args.kill_size, kill_after, folder)
            print(f"SIGKILL after {kill_after:,} of {args.kill_size:,}: {json.dumps(r)}")


if __name__ == "__main__":
    main()
