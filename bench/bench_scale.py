"""The build's dataset-sized parts at 10k .. 1M dialogues on Ray, no models: near-duplicate removal and
shard writing.

Synthetic dialogues (4 turns of 12-30 words drawn from a 6,000-word vocabulary, 2% of them one-word edits
of an earlier dialogue, so the filter really fires; optionally `--audio-kb` of random bytes per turn,
about a 4 s FLAC clip at 64) are made by Ray tasks and go through the build's own code from the last
pipeline task on: `todo_dataset` -> synthetic dialogues -> `with_summaries` (sketches and audio-free
summaries on the workers) -> `write_dataset` (the driver reads summaries and decides near-duplicates
with the on-disk index; writer tasks write the Parquet shards, stats and completion markers).

Each size runs in its own driver process. Per size it prints the driver's peak RSS, the peak PSS of
the driver and every Ray process it started (PSS counts the shared object store once), dialogues/s,
MB/s of shards written and the shards written per Ray node; from RSS samples taken every 5% of the
largest run, the fitted driver growth per 100k dialogues. Then it SIGKILLs a run at two points,
resumes each, and prints the resume's start-up (index open and start -> first shard dispatched),
duplicate ids and leftover temp files. `--nodes 2` runs everything on a local two-node Ray cluster
(`ray.cluster_utils.Cluster`, 1 CPU per node, its own raylet and object store each).

    .venv/bin/python bench/bench_scale.py [--sizes 10000 100000 1000000] [--kill-at 10000 80000]
        [--kill-size 100000] [--audio-kb 0] [--nodes 1]
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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _common import tree_pss_mb

SHARD_SIZE = 1000
BLOCK = 1000  # dialogues per Ray block (the recipe's last-task batch size)
VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ve", "ro") for b in range(750)]


def recipe_file(folder: Path, n: int) -> Path:
    """A text-only recipe of `n` dialogues (this part of the build needs no models)."""
    path = folder / "scale.yaml"
    recipe = {
        "name": "scale", "seed": 5, "num_dialogues": n, "shard_size": SHARD_SIZE, "text_only": True,
        "resources": {"scenarios": {"batch_size": BLOCK, "num_cpus": 0.5}, "writer": {"concurrency": 2}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return path


def texts_of(index: int) -> list[str]:
    """The four turn texts of synthetic dialogue `index` (12-30 words each)."""
    rng = random.Random(-index - 1)
    return [" ".join(rng.choices(VOCAB, k=rng.randint(12, 30))) for _ in range(4)]


def sample_scenarios(recipe_path: Path) -> list[Any]:
    """1,000 scenarios of the recipe, reused by every synthetic dialogue (sampling is not what is measured)."""
    from pipeline.catalogs import load_catalogs
    from pipeline.recipe import load_recipe
    from pipeline.stages.base import BuildContext
    from pipeline.stages.s1_scenarios import ScenarioSampler

    recipe = load_recipe(recipe_path)
    ctx = BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=recipe_path.parent)
    return [ScenarioSampler(ctx).scenario(i) for i in range(1000)]


def synthetic_batch(batch: dict[str, Any], scenarios: list[Any], seed: int, audio_kb: int) -> dict[str, Any]:
    """Ray Data task: the finished dialogues of `batch["index"]`, as the pipeline's stages would leave them."""
    from pipeline.records import Dialogue, Turn, dialogue_id
    from pipeline.stages.base import to_batch

    dialogues = []
    for index in batch["index"].tolist():
        rng = random.Random(index)
        texts = texts_of(index)
        if index > 100 and rng.random() < 0.02:  # a near-copy of an earlier dialogue: one word changed
            texts = texts_of(index - 1 - rng.randrange(100))
            words = texts[0].split()
            words[rng.randrange(len(words))] = rng.choice(VOCAB)
            texts = [" ".join(words), *texts[1:]]
        d = Dialogue(dialogue_id(seed, index), index, index // SHARD_SIZE, seed, scenarios[index % 1000])
        d.turns = [
            Turn(f"{d.id}-t{n:02d}", "user" if n % 2 else "assistant", t, "sad", "low", "spk-01",
                 audio=rng.randbytes(audio_kb * 1024), sampling_rate=16000, duration_s=4.0)
            for n, t in enumerate(texts, start=1)
        ]  # fmt: skip
        dialogues.append(d)
    return to_batch(dialogues)


def run(recipe_path: Path, out_dir: Path, sample_every: int, audio_kb: int, nodes: int) -> dict[str, Any]:
    """One run over the recipe's pending shards on a fresh Ray; returns its figures."""
    import ray

    from pipeline.build import todo_dataset, with_summaries, write_dataset
    from pipeline.io.shards import OutputFolder
    from pipeline.recipe import load_recipe

    started = time.monotonic()
    recipe = load_recipe(recipe_path)
    out = OutputFolder(out_dir, recipe)
    resumed = out.prepare(False)
    run_id = os.urandom(8).hex()
    out.write_manifest({"recipe_hash": recipe.fingerprint(), "status": "running", "run_id": run_id})
    pending = out.pending_shards() if resumed else list(range(recipe.num_shards))
    todo = [out.todo(k) for k in pending]
    total = sum(map(len, todo))
    cluster = None
    if nodes > 1:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="ERROR")
    else:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_s = time.monotonic() - started
    peak_tree = [0.0]
    stop = threading.Event()

    def sample_tree() -> None:
        while not stop.is_set():
            peak_tree[0] = max(peak_tree[0], tree_pss_mb(os.getpid())[1])
            stop.wait(1.0)

    threading.Thread(target=sample_tree, daemon=True).start()
    samples: list[tuple[int, float]] = []
    first_shard: list[float] = []

    def progress(done: int, _total: int, _d: object) -> None:
        if done and done % SHARD_SIZE == 0:
            if not first_shard:
                first_shard.append(time.monotonic() - started)
                print(json.dumps({"first_shard_s": first_shard[0]}), flush=True)
            if done % sample_every == 0:
                samples.append((done, *rss_mb()))
                print(json.dumps({"progress": done}), flush=True)

    made = {"scenarios": sample_scenarios(recipe_path), "seed": recipe.seed, "audio_kb": audio_kb}
    ds = todo_dataset(todo, block_rows=BLOCK).map_batches(
        synthetic_batch, fn_kwargs=made, batch_format="numpy", batch_size=None, num_cpus=0.5
    )
    t0 = time.monotonic()
    writer_nodes = write_dataset(out, with_summaries(ds, recipe), pending, run_id, progress)
    seconds = time.monotonic() - t0
    stop.set()
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    written = sum(p.stat().st_size for p in out_dir.glob("*/*.parquet"))
    totals = out.totals()
    return {
        "dialogues": total, "seconds": round(seconds, 1), "dialogues_s": round(total / seconds),
        "mb_s": round(written / 1e6 / seconds, 2), "shards_mb": round(written / 1e6),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3),
        "total_peak_pss_mb": round(peak_tree[0]), "writer_nodes": sorted(writer_nodes.values(), reverse=True),
        "kept": totals["kept"], "near_duplicates": totals["rejected_by_reason"].get("near_duplicate", 0),
        "samples": samples, "ray_start_s": round(ray_s, 2),
        "startup_to_first_shard_s": round(first_shard[0], 2) if first_shard else None,
        "index_mb": round(sum(p.stat().st_size for p in (out_dir / "dedup").glob("index.sqlite*")) / 1e6),
    }  # fmt: skip


def rss_mb() -> tuple[float, float]:
    """This process's resident set size and its private part (RssAnon: without the pages of Ray's
    shared-memory object store it has mapped), in MB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1e3, int(status["RssAnon"].split()[0]) / 1e3


def child_cmd(n: int, out_dir: Path, sample_every: int, args: argparse.Namespace) -> list[str]:
    """The command line of one run in its own driver process."""
    return [sys.executable, __file__, "--child", str(n), str(out_dir), str(sample_every),
            "--audio-kb", str(args.audio_kb), "--nodes", str(args.nodes)]  # fmt: skip


def child(n: int, out_dir: Path, sample_every: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run `n` dialogues in a fresh driver process; its last stdout line is the figures."""
    proc = subprocess.run(child_cmd(n, out_dir, sample_every, args), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run of {n} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kill_and_resume(n: int, kill_after: int, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start an `n`-dialogue run, SIGKILL its whole process group after `kill_after` dialogues, resume
    it; check the output."""
    import pyarrow.parquet as pq

    out_dir = folder / f"kill-{kill_after}"
    proc = subprocess.Popen(child_cmd(n, out_dir, SHARD_SIZE, args), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line).get("progress", 0) >= kill_after:  # Ray may print other lines
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray and every writer in flight
            break
    proc.wait()
    time.sleep(2)
    completed = len(list((out_dir / "completions").glob("*.done")))
    opened = time.monotonic()
    resumed = child(n, out_dir, SHARD_SIZE, args)
    ids = [i for p in sorted((out_dir / "data").glob("*.parquet")) for i in pq.read_table(p, columns=["id"])["id"]]
    rejected = [i for p in sorted((out_dir / "rejects").glob("*.parquet")) for i in pq.read_table(p)["id"]]
    temp = [p for p in out_dir.rglob("*") if p.name.startswith(".") and p.is_file()]
    return {
        "completed_shards_at_kill": completed, "resume_wall_s": round(time.monotonic() - opened, 1),
        "resume_ray_start_s": resumed["ray_start_s"],
        "resume_startup_to_first_shard_s": resumed["startup_to_first_shard_s"],
        "duplicate_ids": len(ids) - len({str(i) for i in ids}),
        "accounted": len({str(i) for i in ids} | {str(i) for i in rejected}) == n,
        "temp_files_left": len(temp),
    }  # fmt: skip


def main() -> None:
    """Print the figures of every size, the fitted growth, and the kill/resume checks."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kill-at", type=int, nargs="*", default=[10_000, 80_000])
    parser.add_argument("--kill-size", type=int, default=100_000)
    parser.add_argument("--audio-kb", type=int, default=0, help="random bytes per turn (about a 4 s FLAC at 64)")
    parser.add_argument("--nodes", type=int, default=1, help="local Ray nodes (ray.cluster_utils.Cluster)")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        n, out_dir, every = int(args.child[0]), Path(args.child[1]), int(args.child[2])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        figures = run(recipe_file(out_dir.parent, n), out_dir, every, args.audio_kb, args.nodes)
        print(json.dumps(figures), flush=True)
        return

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        print(f"{args.nodes} Ray node(s) on this machine, {args.audio_kb} KB of audio per turn, shards of {SHARD_SIZE}")
        print("size       seconds  dialogues/s  shards MB/s  driver peak RSS MB  total peak PSS MB  kept  "
              "near-dups  index MB  shards per writer node")  # fmt: skip
        largest: dict[str, Any] = {}
        for n in args.sizes:
            r = child(n, folder / f"size-{n}", max(n // 20, SHARD_SIZE), args)
            print(f"{n:<10} {r['seconds']:>7} {r['dialogues_s']:>12} {r['mb_s']:>12} {r['driver_peak_rss_mb']:>19} "
                  f"{r['total_peak_pss_mb']:>18} {r['kept']:>6} {r['near_duplicates']:>9} {r['index_mb']:>9}  "
                  f"{r['writer_nodes']}", flush=True)  # fmt: skip
            largest = r
        done, rss, anon = np.array(largest["samples"], dtype=float).T
        half = len(done) // 2  # past the start-up transient
        slope = np.polyfit(done[half:], rss[half:], 1)[0] * 100_000
        slope_anon = np.polyfit(done[half:], anon[half:], 1)[0] * 100_000
        print(f"driver RSS growth, fitted over the second half of the {args.sizes[-1]:,} run: {slope:.1f} MB per 100k "
              f"(private part: {slope_anon:.1f} MB per 100k)")  # fmt: skip
        points = ", ".join(f"{int(d)}: {m:.0f}/{a:.0f}" for d, m, a in zip(done, rss, anon, strict=True))
        print(f"  RSS/private samples (dialogues: MB): {points}")
        print(f"  extrapolated to 10M dialogues: {slope * 100:+.0f} MB over the driver's start", flush=True)
        for kill_after in args.kill_at:
            r = kill_and_resume(args.kill_size, kill_after, folder, args)
            print(f"SIGKILL after {kill_after:,} of {args.kill_size:,}: {json.dumps(r)}", flush=True)


if __name__ == "__main__":
    main()
