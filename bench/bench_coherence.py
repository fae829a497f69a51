"""Coherence of the written dialogues before and after issue 14, on the same seed (text-only builds).

Three text-only builds of the demo recipe (same seed, same LLM settings):
  before   the catalog and turn prompts of commit BEFORE (emotion and situation drawn independently),
           the text gates of then: emotion margin -0.2, no role or situation gate;
  raw      the emotion-tagged catalog and the current prompts with the emotion, role and situation
           gates off: what the model writes, used to choose the emotion margin and situation threshold;
  after    the current demo recipe (all gates, its emotion margin and situation threshold).
For the kept user turns of each, it prints the text-emotion agreement (the MiniLM check at margin 0:
the target emotion is the closest prototype), the share that fails the role gate and the situation
gate (measured afterwards, whatever the build's gates were), and the yield. From `raw` it prints the
per-attempt pass share of each candidate emotion margin with the expected turn yield after the
demo's retries, and the similarity of turns to their own versus an unrelated situation.

    python bench/bench_coherence.py [--dialogues 48] [--seed 7] [--out out/bench-coherence] [--variants raw ...]

Builds run in parallel; a folder holding an unfinished build of the same recipe resumes, a finished
one is reused (`--variants` with no name only prints the tables).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from _common import REPO, demo_variant, run_build

from pipeline.catalogs import load_catalogs
from pipeline.recipe import load_recipe
from pipeline.stages.s2_text_gates import InvalidOutput, TextGates, check_role

BEFORE = "5bab978"  # the last commit before issue 14's catalog, prompts and gates
OFF = {"emotion_check": False, "role_check": False, "situation_check": False}


def user_turns(out: Path) -> list[dict[str, Any]]:
    """Kept user turns with their scenario's situation and emotion."""
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return [
        {
            "text": t["text"],
            "emotion": t["emotion"],
            "situation": r["scenario"]["situation"],
            "topic": r["scenario"]["topic"],
        }
        for r in rows
        for t in r["turns"]
        if t["role"] == "user"
    ]


def role_fails(text: str) -> bool:
    """True if the role gate rejects `text`."""
    try:
        check_role(text)
    except InvalidOutput:
        return True
    return False


def main() -> None:
    """Build the three variants (or reuse them) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-coherence")
    parser.add_argument("--variants", nargs="*", default=["before", "raw", "after"], help="Builds to run now.")
    args = parser.parse_args()
    old = args.out / "before-inputs"
    old.mkdir(parents=True, exist_ok=True)
    for name in ("catalog.yaml", "turns.yaml"):
        text = subprocess.run(["git", "show", f"{BEFORE}:prompts/{name}"], capture_output=True, text=True, cwd=REPO)
        if text.returncode != 0:
            raise SystemExit(f"needs a git checkout with commit {BEFORE} ({text.stderr.strip()})")
        (old / name).write_text(text.stdout)
    common = {"seed": args.seed, "num_dialogues": args.dialogues, "shard_size": 16, "text_only": True}
    demo_gates = load_recipe(REPO / "manifests" / "demo.yaml").text_gates
    variants = {
        "before": {"scenarios": {"catalog": str(old / "catalog.yaml")}, "llm": {"prompts": str(old / "turns.yaml")},
                   "text_gates": {"emotion_margin": -0.2, "role_check": False, "situation_check": False}},
        "raw": {"text_gates": OFF},
        "after": {},
    }  # fmt: skip

    def build(name: str) -> None:  # a folder with an unfinished run of the same recipe resumes
        recipe = demo_variant(args.out / f"{name}.yaml", name=f"coherence-{name}", **common, **variants[name])
        manifest = run_build(recipe, args.out / name)
        print(f"{name}: built in {manifest['wall_s']:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, len(args.variants))) as pool:  # in parallel: each is LLM-bound
        list(pool.map(build, args.variants))
    turns, counts = {}, {}
    for name in variants:
        manifest = args.out / name / "manifest.json"
        if not manifest.exists() or json.loads(manifest.read_text()).get("status") != "complete":
            print(f"{name}: no finished build in {args.out / name}; run it with --variants {name}")
            continue
        counts[name] = json.loads(manifest.read_text())["counts"]
        turns[name] = user_turns(args.out / name)

    recipe = load_recipe(REPO / "manifests" / "demo.yaml")
    gates = TextGates(recipe.text_gates, recipe.llm, load_catalogs(recipe).emotion_sentences)
    margins, sims = {}, {}
    for name, items in turns.items():
        margins[name] = np.array([gates.emotion_margin(t["text"], t["emotion"]) for t in items])
        sims[name] = np.array([gates.situation_similarity(t["text"], t["situation"]) for t in items])

    threshold = demo_gates.min_situation_similarity
    print(f"\nkept user turns, seed {args.seed}, {args.dialogues} dialogues requested per build "
          f"(situation gate threshold {threshold}, emotion agreement = margin >= 0)")  # fmt: skip
    print(f"{'build':8} {'kept dlg':>8} {'user turns':>10} {'emotion agree':>13} {'role fail':>9} "
          f"{'situation fail':>14} {'median sim':>10}")  # fmt: skip
    for name, items in turns.items():
        n = max(len(items), 1)
        print(
            f"{name:8} {counts[name]['kept']:8d} {len(items):10d} {np.mean(margins[name] >= 0):13.1%} "
            f"{sum(role_fails(t['text']) for t in items) / n:9.1%} {np.mean(sims[name] < threshold):14.1%} "
            f"{np.median(sims[name]) if len(items) else float('nan'):10.3f}"
        )
    for name in turns:
        reasons = {k: v for k, v in counts[name].get("rejected_by_reason", {}).items() if v}
        print(f"  {name} rejects: {reasons}")

    if "raw" not in turns:
        return
    raw = margins["raw"]
    retries = recipe.llm.max_retries
    print(f"\nemotion margin candidates, from the {len(raw)} ungated user turns of `raw` "
          f"(expected turn yield after {retries} retries = 1 - (1 - pass)^{retries + 1})")  # fmt: skip
    print(f"{'margin':>7} {'pass':>6} {'turn yield':>10} {'agreement of passing':>21}")
    for m in (-0.2, -0.15, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05):
        passing = raw >= m
        p = float(passing.mean()) if len(raw) else 0.0
        agree = float((raw[passing] >= 0).mean()) if passing.any() else float("nan")
        print(f"{m:7.2f} {p:6.1%} {1 - (1 - p) ** (retries + 1):10.1%} {agree:21.1%}")

    rng = np.random.default_rng(0)
    items = turns["raw"]
    unrelated = []
    for t in items:
        others = [o for o in items if o["topic"] != t["topic"]]
        if others:
            unrelated.append(gates.situation_similarity(t["text"], others[int(rng.integers(len(others)))]["situation"]))
    q = (5, 10, 25, 50)
    print("\nsimilarity of a user turn to its own situation vs to another topic's situation (raw build)")
    print("own       " + "  ".join(f"p{k}={np.percentile(sims['raw'], k):.3f}" for k in q))
    print("unrelated " + "  ".join(f"p{k}={np.percentile(unrelated, k):.3f}" for k in (50, 90, 95, 99)))


if __name__ == "__main__":
    main()
