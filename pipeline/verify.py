"""`opens2s-data verify`: check a finished output folder against the data contract."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.io.audio import from_bytes
from pipeline.io.shards import REJECT_ROW, ROW
from pipeline.records import dialogue_id, turn_id


def _read_table(path: Path, problems: list[str]) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a finding, not a crash
        problems.append(f"{path.name}: unreadable Parquet ({type(err).__name__}: {str(err)[:120]})")
        return None


def _check_row(row: dict[str, Any], sample_rate: int, text_only: bool, problems: list[str]) -> float:
    """Check one kept dialogue; returns its audio seconds."""
    seconds = 0.0
    if not row["turns"]:
        problems.append(f"{row['id']}: kept with no turns")
    for n, turn in enumerate(row["turns"], start=1):
        where = f"{row['id']} turn {n}"
        if turn["turn_id"] != turn_id(row["id"], n):
            problems.append(f"{where}: turn id {turn['turn_id']!r}, expected {turn_id(row['id'], n)!r}")
        if turn["role"] != ("user" if n % 2 else "assistant"):
            problems.append(f"{where}: role {turn['role']!r} breaks the user/assistant alternation")
        if text_only:
            if turn["audio"] is not None:
                problems.append(f"{where}: a text-only build carries audio")
            continue
        try:
            audio = from_bytes(turn["audio"]["bytes"])
        except Exception as err:  # noqa: BLE001
            problems.append(f"{where}: audio does not decode ({type(err).__name__})")
            continue
        if audio.sample_rate != sample_rate or turn["sampling_rate"] != sample_rate:
            problems.append(f"{where}: audio at {audio.sample_rate} Hz, expected {sample_rate}")
        if abs(audio.duration_s - turn["duration_s"]) > 0.05:
            problems.append(f"{where}: audio lasts {audio.duration_s:.2f} s but duration_s says {turn['duration_s']}")
        if turn["role"] == "assistant" and not turn["speech_units"]:
            problems.append(f"{where}: assistant turn without speech units")
        seconds += audio.duration_s
    return seconds


def verify(out_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Check `out_dir`; returns (problems, counts). An empty problem list means the folder is sound."""
    problems: list[str] = []
    manifest_path = out_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        return [f"manifest.json missing or unreadable ({err})"], {}
    if manifest.get("status") != "complete":
        problems.append(f"manifest status is {manifest.get('status')!r}, not 'complete': resume the build")
    seed, total, shards = manifest["seed"], manifest["num_dialogues"], manifest["num_shards"]
    sample_rate = manifest["recipe"]["tts"]["sample_rate"]
    text_only = bool(manifest["recipe"].get("text_only"))
    kept_ids: list[str] = []
    rejected_ids: list[str] = []
    transient_ids: list[str] = []  # dialogues an outage dropped, awaiting a retry by a resumed build
    stats_sum: Counter[str] = Counter()
    for k in range(shards):
        name = f"{k:05d}-of-{shards:05d}"
        files = {
            "marker": out_dir / "completions" / f"shard-{k:05d}.done",
            "stats": out_dir / "stats" / f"shard-{k:05d}.json",
            "data": out_dir / "data" / f"train-{name}.parquet",
            "rejects": out_dir / "rejects" / f"rejects-{name}.parquet",
        }
        missing = [what for what, path in files.items() if not path.exists()]
        if missing:
            problems.append(f"shard {k}: missing {', '.join(missing)}")
            continue
        stats = json.loads(files["stats"].read_text())
        stats_sum.update({key: stats[key] for key in ("requested", "kept", "rejected")})
        data = _read_table(files["data"], problems)
        rejects = _read_table(files["rejects"], problems)
        if data is None or rejects is None:
            continue
        if data.schema.names != list(ROW) or b"huggingface" not in (data.schema.metadata or {}):
            problems.append(f"{files['data'].name}: columns or feature metadata differ from the data contract")
        if rejects.schema.names != list(REJECT_ROW):
            problems.append(f"{files['rejects'].name}: columns differ from the rejects contract")
        rows = data.to_pylist()
        if len(rows) != stats["kept"]:
            problems.append(f"{files['data'].name}: {len(rows)} rows but its stats say {stats['kept']} kept")
        for row in rows:
            _check_row(row, sample_rate, text_only, problems)
        kept_ids += [row["id"] for row in rows]
        rejected_ids += [r["id"] for r in rejects.to_pylist() if r["level"] == "dialogue"]
        transient = {r["id"] for r in rejects.to_pylist() if r["level"] == "dialogue" and r.get("kind") == "transient"}
        marked = {dialogue_id(seed, i) for i in json.loads(files["marker"].read_text()).get("transient", [])}
        if transient != marked:
            problems.append(
                f"shard {k}: its marker lists {len(marked)} transient failure(s), the rejects {len(transient)}"
            )
        transient_ids += sorted(transient)
    for kind, ids in (("kept", kept_ids), ("rejected", rejected_ids), ("kept and rejected", kept_ids + rejected_ids)):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dupes:
            problems.append(f"duplicate {kind} ids: {', '.join(dupes[:5])}")
    if transient_ids:
        problems.append(
            f"{len(transient_ids)} dialogue(s) failed transiently (an outage, not a gate) and await a retry: "
            f"re-run the same build command to retry them ({', '.join(transient_ids[:5])})"
        )
    expected = {dialogue_id(seed, i) for i in range(total)}
    lost = sorted(expected - set(kept_ids) - set(rejected_ids))
    if lost:
        problems.append(f"{len(lost)} requested dialogue(s) neither kept nor rejected: {', '.join(lost[:5])}")
    strangers = sorted(set(kept_ids + rejected_ids) - expected)
    if strangers:
        problems.append(f"ids not produced by this recipe: {', '.join(strangers[:5])}")
    counts = manifest.get("counts", {})
    for key in ("requested", "kept", "rejected"):
        if counts.get(key) != stats_sum[key]:
            problems.append(f"manifest counts {key}={counts.get(key)} but the shard stats add up to {stats_sum[key]}")
    if len(kept_ids) != stats_sum["kept"] or len(rejected_ids) != stats_sum["rejected"]:
        problems.append("the shards' rows do not add up to their stats")
    if total and not kept_ids and not lost:
        reasons = Counter(counts.get("rejected_by_reason", {})).most_common(1)
        why = f" (most common reason: {reasons[0][0]})" if reasons else ""
        problems.append(f"no dialogue was kept: all {len(rejected_ids)} were rejected{why}; the dataset is empty")
    leftovers = [p.name for p in out_dir.rglob("*.tmp")]
    if leftovers:
        problems.append(f"temp files left behind: {', '.join(leftovers[:5])}")
    return problems, {"requested": total, "kept": len(kept_ids), "rejected": len(rejected_ids)}


def dominant_reject_warnings(out_dir: Path, share: float = 0.8, min_rejected: float = 0.2) -> list[str]:
    """Warnings for a build where one reject reason makes up at least `share` of the rejects while
    rejects are at least `min_rejected` of the requested dialogues (a stage or gate that is likely misset)."""
    try:
        counts = json.loads((out_dir / "manifest.json").read_text()).get("counts", {})
    except (OSError, ValueError):
        return []
    reasons = Counter(counts.get("rejected_by_reason", {}))
    rejected, requested = sum(reasons.values()), counts.get("requested", 0)
    if not reasons or not requested or rejected < min_rejected * requested:
        return []
    reason, n = reasons.most_common(1)[0]
    if n < share * rejected:
        return []
    return [
        f"{n} of {requested} requested dialogues were rejected for {reason} ({n / rejected:.0%} of the rejects): "
        "check the stage or gate setting behind it (`opens2s-data stats` breaks it down)"
    ]
