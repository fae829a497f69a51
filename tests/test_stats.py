"""`opens2s-data stats` on a real build: the numbers agree with the shards, the stats files and the judgements."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
from conftest import run_cli
from test_review import one_error

from pipeline.review.db import JudgementStore


def test_stats_json_agrees_with_the_build_and_the_review(
    built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [r for path in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(path).to_pylist()]
    turns = [t for r in rows for t in r["turns"]]

    result = run_cli("stats", str(out), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["totals"]["kept"] == manifest["counts"]["kept"] == len(rows)
    assert stats["totals"]["rejected"] == manifest["counts"]["rejected"]
    assert stats["totals"]["turns_kept"] == len(turns)
    assert sum(n for speakers in stats["coverage"].values() for n in speakers.values()) == len(rows)
    assert sum(stats["duration_s"]["histogram"]["counts"]) == len(turns)
    assert sum(stats["rejections"]["dialogues"].values()) == manifest["counts"]["rejected"]
    assert set(stats["throughput"]["stages"]) == set(manifest["counts"]["stage_seconds"])
    assert stats["review"] is None

    if rows:
        scenario = rows[0]["scenario"]
        store = JudgementStore(out)
        store.upsert("alice", rows[0]["id"], "accept", [], "", "kept", scenario["emotion"], scenario["speaker_id"])
        store.upsert("bob", rows[0]["id"], "reject", ["other"], "", "kept", scenario["emotion"], scenario["speaker_id"])
        review = json.loads(run_cli("stats", str(out), "--json").stdout)["review"]
        stratum = f"{scenario['emotion']} / {scenario['speaker_id']}"
        assert review["per_stratum"] == {stratum: {"judged": 2, "accepted": 1, "acceptance_rate": 0.5}}
        assert review["reject_reasons"] == {"other": 1}

    table = run_cli("stats", str(out))
    assert table.returncode == 0, table.stderr
    for title in ("coverage", "rejections by reason", "throughput per stage"):
        assert title in table.stdout
    if rows:
        assert "acceptance" in table.stdout


def test_stats_refuses_a_folder_that_is_not_a_build(tmp_path: Path) -> None:
    result = run_cli("stats", str(tmp_path), "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert one_error(result.stderr) and "manifest.json" in result.stderr, result.stderr
