"""The numbers of a build (and of its review): shared by `opens2s-data stats` and the HTML report."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.records import EMOTIONS
from pipeline.review.dataset import BuildOutput, Sample
from pipeline.review.db import JudgementStore

STAGE_ORDER = ("scenarios", "dialogue", "tts", "gates", "units")
DURATION_BINS = [0.0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30]
WER_BINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0]


def histogram(values: Sequence[float], edges: Sequence[float]) -> dict[str, Any]:
    """Counts of `values` in the bins `edges` (the last bin also takes everything above it)."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min(max(bisect_right(edges, v) - 1, 0), len(counts) - 1)] += 1
    return {"edges": list(edges), "counts": counts}


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, median, 90th percentile and max of `values` (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))], 4)

    return {"n": len(values), "mean": round(sum(values) / len(values), 4), "p50": q(0.5), "p90": q(0.9),
            "max": round(ordered[-1], 4)}  # fmt: skip


def _stage_key(name: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER), name)


def _throughput(shards: list[dict[str, Any]]) -> dict[str, Any]:
    seconds: Counter[str] = Counter()
    for s in shards:
        seconds.update(s.get("stage_seconds", {}))
    requested = sum(s.get("requested", 0) for s in shards)
    wall = sum(s.get("wall_s", 0.0) for s in shards)
    stages = {
        name: {
            "seconds": round(sec, 3),
            "seconds_per_dialogue": round(sec / requested, 3) if requested else None,
            "dialogues_per_second": round(requested / sec, 4) if sec else None,
        }
        for name, sec in sorted(seconds.items(), key=lambda kv: _stage_key(kv[0]))
    }
    per_shard = [{"shard": s.get("shard"), "wall_s": s.get("wall_s"), **s.get("stage_seconds", {})} for s in shards]
    return {
        "stages": stages,
        "wall_s": round(wall, 3),
        "dialogues_per_wall_second": round(requested / wall, 4) if wall else None,
        "per_shard": per_shard,
    }


def _confusion(samples: Sequence[Sample]) -> dict[str, Any]:
    """Target vs measured emotion over user turns: kept turns and gate rejects that measured one."""
    pairs = [(t["emotion"], t["emotion_measured"]) for s in samples for t in s.turns if t["role"] == "user"]
    pairs += [(r["emotion_target"], r["emotion_measured"]) for s in samples for r in s.rejects if r["emotion_measured"]]
    pairs = [(a, b) for a, b in pairs if a and b]
    labels = list(EMOTIONS) + sorted({x for p in pairs for x in p} - set(EMOTIONS))
    matrix = [[0] * len(labels) for _ in labels]
    for target, measured in pairs:
        matrix[labels.index(target)][labels.index(measured)] += 1
    agree = sum(1 for a, b in pairs if a == b)
    return {
        "labels": labels,
        "matrix": matrix,
        "n": len(pairs),
        "agreement": round(agree / len(pairs), 4) if pairs else None,
    }


def review_stats(store: JudgementStore, samples: Sequence[Sample]) -> dict[str, Any]:
    """Acceptance rate per stratum (emotion x speaker), per emotion, per annotator and overall."""
    judgements = store.all()
    by: dict[str, dict[str, Counter[str]]] = {k: defaultdict(Counter) for k in ("stratum", "emotion", "annotator")}
    reasons: Counter[str] = Counter()
    for j in judgements:
        accepted = j["decision"] == "accept"
        keys = {"stratum": f"{j['emotion']} / {j['speaker_id']}", "emotion": j["emotion"], "annotator": j["annotator"]}
        for kind, key in keys.items():
            by[kind][key]["judged"] += 1
            by[kind][key]["accepted"] += accepted
        reasons.update(j["reasons"])

    def rates(table: dict[str, Counter[str]]) -> dict[str, dict[str, Any]]:
        return {
            k: {
                "judged": c["judged"],
                "accepted": c["accepted"],
                "acceptance_rate": round(c["accepted"] / c["judged"], 4),
            }
            for k, c in sorted(table.items())
        }

    accepted = sum(j["decision"] == "accept" for j in judgements)
    judged_samples = {j["sample_id"] for j in judgements}
    return {
        "judgements": len(judgements),
        "samples_judged": len(judged_samples),
        "samples_total": len(samples),
        "acceptance_rate": round(accepted / len(judgements), 4) if judgements else None,
        "per_stratum": rates(by["stratum"]),
        "per_emotion": rates(by["emotion"]),
        "per_annotator": rates(by["annotator"]),
        "reject_reasons": dict(reasons.most_common()),
    }


def compute_stats(build: BuildOutput, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Every number of the build: totals, coverage, durations, WER, emotion confusion, rejections,
    throughput per stage and (when judgements exist) review acceptance."""
    samples = build.samples(on_progress)
    shards = build.shard_stats()
    kept = [s for s in samples if s.status == "kept"]
    turns = [t for s in kept for t in s.turns]
    coverage: dict[str, dict[str, int]] = defaultdict(dict)
    for s in kept:
        coverage[s.emotion][s.speaker_id] = coverage[s.emotion].get(s.speaker_id, 0) + 1
    durations = [t["duration_s"] for t in turns if t["duration_s"] is not None]
    wers = [t["wer"] for t in turns if t["wer"] is not None]
    wers += [r["wer"] for s in samples for r in s.rejects if r["wer"] is not None]
    dialogue_reasons = Counter(r["reason"] for s in samples for r in s.rejects if r["level"] == "dialogue")
    turn_reasons = Counter(r["reason"] for s in samples for r in s.rejects if r["level"] == "turn")
    store = JudgementStore(build.root, create=False)
    m = build.manifest
    return {
        "dataset": {
            "path": str(build.root),
            "name": m.get("recipe", {}).get("name"),
            "seed": m.get("seed"),
            "status": m.get("status"),
            "shards": len(shards),
            "num_shards": m.get("num_shards"),
        },
        "totals": {
            "requested": sum(s.get("requested", 0) for s in shards),
            "kept": len(kept),
            "rejected": len(samples) - len(kept),
            "turns_kept": len(turns),
            "audio_hours": round(sum(durations) / 3600.0, 4),
            "speakers": len({s.speaker_id for s in kept}),
            "emotions": len({s.emotion for s in kept}),
        },
        "coverage": {e: dict(sorted(v.items())) for e, v in sorted(coverage.items())},
        "duration_s": {**summary(durations), "histogram": histogram(durations, DURATION_BINS)},
        "wer": {**summary(wers), "histogram": histogram(wers, WER_BINS)},
        "emotion_confusion": _confusion(samples),
        "rejections": {"dialogues": dict(dialogue_reasons.most_common()), "turns": dict(turn_reasons.most_common())},
        "throughput": _throughput(shards),
        "review": review_stats(store, samples) if store.exists else None,
    }


def stats_tables(stats: dict[str, Any]) -> list[Any]:
    """The stats as rich tables, for the terminal."""
    from rich.table import Table

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == 0 else "right")
        return t

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    d, tot = stats["dataset"], stats["totals"]
    overview = table(f"{d['name']} ({d['path']}, {d['status']}, {d['shards']} shard(s))", "measure", "value")
    for key, value in tot.items():
        overview.add_row(key.replace("_", " "), fmt(value))
    for key in ("duration_s", "wer"):
        s = stats[key]
        overview.add_row(f"{key} mean / p50 / p90 / max", " / ".join(fmt(s[k]) for k in ("mean", "p50", "p90", "max")))
    overview.add_row("emotion agreement (target = measured)", fmt(stats["emotion_confusion"]["agreement"]))
    tables = [overview]
    coverage = table("coverage: kept dialogues per emotion", "emotion", "dialogues", "speakers")
    for emotion, speakers in stats["coverage"].items():
        coverage.add_row(emotion, str(sum(speakers.values())), str(len(speakers)))
    tables.append(coverage)
    rejections = table("rejections by reason", "reason", "dialogues", "turns")
    rej = stats["rejections"]
    for reason in sorted(set(rej["dialogues"]) | set(rej["turns"])):
        rejections.add_row(reason, str(rej["dialogues"].get(reason, 0)), str(rej["turns"].get(reason, 0)))
    tables.append(rejections)
    throughput = table("throughput per stage", "stage", "seconds", "s / dialogue", "dialogues / s")
    for stage, v in stats["throughput"]["stages"].items():
        throughput.add_row(stage, fmt(v["seconds"]), fmt(v["seconds_per_dialogue"]), fmt(v["dialogues_per_second"]))
    throughput.add_row("wall (all shards)", fmt(stats["throughput"]["wall_s"]), "", "")
    tables.append(throughput)
    review = stats["review"]
    if review:
        acceptance = table(
            f"review: {review['judgements']} judgement(s) on {review['samples_judged']} of {review['samples_total']} "
            f"samples, acceptance {fmt(review['acceptance_rate'])}",
            "stratum (emotion / speaker)", "judged", "accepted", "rate",
        )  # fmt: skip
        for kind in ("per_stratum", "per_emotion", "per_annotator"):
            for key, v in review[kind].items():
                label = key if kind == "per_stratum" else f"{kind.removeprefix('per_')}: {key}"
                acceptance.add_row(label, str(v["judged"]), str(v["accepted"]), fmt(v["acceptance_rate"]))
        tables.append(acceptance)
    return tables
