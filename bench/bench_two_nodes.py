"""The same build on one node and on a two-node Ray cluster started on this machine.

Node setup: `ray start --head --num-cpus 1` plus a second `ray start --address=HEAD --num-cpus 1`
(its own raylet and object store), then `opens2s-data build --ray-address HEAD`. With 1 CPU per
node, the stage actors (1.9 CPUs reserved in all) cannot fit on one node, so Ray spreads them.
Prints each run's wall time, the Ray node ids the per-shard stats name, and whether the two runs
produced the same dialogue ids and the same turn texts.

    python bench/bench_two_nodes.py [--dialogues 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from _common import REPO, demo_variant, run_build

RAY = str(Path(sys.executable).with_name("ray"))


def texts(out: Path) -> dict[str, list[str]]:
    """Dialogue id -> turn texts of a build's kept dialogues."""
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {r["id"]: [t["text"] for t in r["turns"]] for r in rows}


def nodes(out: Path) -> dict[str, int]:
    """Stage executions per Ray node id, summed over the shard stats."""
    total: dict[str, int] = {}
    for path in sorted((out / "stats").glob("*.json")):
        for node, n in json.loads(path.read_text()).get("nodes", {}).items():
            total[node] = total.get(node, 0) + n
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=8)
    parser.add_argument("--port", type=int, default=26379)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-two-nodes")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    recipe = demo_variant(args.out / "two-nodes.yaml", name="two-nodes", num_dialogues=args.dialogues, shard_size=4,
                          ray_cpus=2)  # fmt: skip
    one = run_build(recipe, args.out / "one-node")
    head = f"127.0.0.1:{args.port}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    # Ray 2.60 authenticates cluster RPCs with a token; every process of the cluster (both nodes and
    # the driver) must use the same one: ~/.ray/auth_token, created here if missing.
    auth = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=auth)
    with tempfile.TemporaryDirectory(prefix="ray-two-nodes-") as tmp:
        try:
            head_args = [f"--port={args.port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"]
            subprocess.run([RAY, "start", "--head", *head_args, f"--temp-dir={tmp}", *common], check=True, env=auth)
            subprocess.run([RAY, "start", f"--address={head}", "--node-ip-address=127.0.0.1", *common],
                           check=True, env=auth)  # fmt: skip
            two = run_build(recipe, args.out / "two-nodes", "--ray-address", head, env={"RAY_AUTH_MODE": "token"})
        finally:
            subprocess.run([RAY, "stop", "--force"], check=False, env=auth)
    for label, run, out in (("one node ", one, args.out / "one-node"), ("two nodes", two, args.out / "two-nodes")):
        counts = run["counts"]
        print(f"{label}: wall {run['wall_s']:.0f} s, pipeline {run['last_run']['pipeline_s']:.0f} s, "
              f"kept {counts['kept']}/{counts['requested']}, stage executions per node {nodes(out)}")  # fmt: skip
    a, b = texts(args.out / "one-node"), texts(args.out / "two-nodes")
    print(f"nodes used by the two-node run: {len(nodes(args.out / 'two-nodes'))}")
    print(
        f"same kept ids: {sorted(a) == sorted(b)} ({len(a)} vs {len(b)}); "
        f"same texts: {a == b} ({sum(a.get(k) == v for k, v in b.items())} of {len(b)} dialogues identical)"
    )


if __name__ == "__main__":
    main()
