"""The output folder: Parquet shards (kept + rejects), per-shard stats, completion markers, manifest.

Layout (the data contract):
    data/train-XXXXX-of-YYYYY.parquet     kept dialogues, one row per dialogue
    rejects/rejects-XXXXX-of-YYYYY.parquet every dropped dialogue or turn, with reason and measurements
    stats/shard-XXXXX.json                 counts of one shard
    completions/shard-XXXXX.done           written last: the shard is done (see "transient" below)
    units/codebook.npz                     the dataset's speech-unit codebook
    cache/llm.sqlite                       finished LLM requests, replayed on resume
    manifest.json                          recipe, hash, seed, versions, counts

Shard k holds dialogues k*shard_size ... (k+1)*shard_size-1. Each file is written to a temp file and
renamed into place, and a shard's marker only after its files, so a killed build leaves no partial
file and resumes exactly at the first unfinished shard.

A shard whose dialogues include transient rejects (an outage, not a gate) is written all the same,
but its marker lists their indices (`transient`) with the shard's counts without them (`base`): it
is not final. A resumed build runs exactly those dialogues again and merges them in: the data and
rejects files keep every row of the other dialogues and take the new outcomes in place of the
transient rejects, the stats become `base` plus the new counts, and the marker is rewritten last.
Until the marker changes the old one still describes the merge to do, and the merge is idempotent
(rows of the retried ids are dropped before the new ones are added), so a crash anywhere in it loses
nothing and the next resume redoes it exactly.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from pipeline.io.files import atomic_write_bytes, atomic_write_json, remove_stale_temp_files
from pipeline.recipe import Recipe
from pipeline.records import Dialogue, Reject, dialogue_id

# One declarative table gives both the Arrow schema and the Hugging Face `datasets` features.
# A kind is a type name, ("list", kind) or a dict of field -> kind.
_PERSONA = {"name": "string", "age_group": "string", "gender": "string", "occupation": "string", "style": "string"}
_SCENARIO = {
    "topic": "string",
    "situation": "string",
    "persona": _PERSONA,
    "emotion": "string",
    "intensity": "string",
    "speaker_id": "string",
    "assistant_speaker_id": "string",
    "num_exchanges": "int32",
}
_TURN = {
    "turn_id": "string",
    "role": "string",
    "text": "string",
    "emotion": "string",
    "intensity": "string",
    "speaker_id": "string",
    "audio": "audio",
    "sampling_rate": "int32",
    "duration_s": "float32",
    "asr_text": "string",
    "wer": "float32",
    "emotion_measured": "string",
    "emotion_score": "float32",
    "speech_units": ("list", "int32"),
    "strategy": "string",
    "gender": "string",
    "age_group": "string",
    "accent": "string",
    "f0_median_hz": "float32",
    "speaking_rate_wps": "float32",
    "aug_noise": "string",
    "aug_snr_db": "float32",
    "aug_rt60_s": "float32",
}
ROW = {
    "id": "string",
    "index": "int64",
    "seed": "int64",
    "scenario": _SCENARIO,
    "turns": ("list", _TURN),
    "llm_model": "string",
    "tts_backend": "string",
    "asr_backend": "string",
    "units_codebook": "string",
}
REJECT_ROW = {
    "id": "string",
    "turn_id": "string",
    "level": "string",
    "stage": "string",
    "reason": "string",
    "detail": "string",
    "wer": "float32",
    "duration_s": "float32",
    "emotion_target": "string",
    "emotion_measured": "string",
    "emotion_score": "float32",
    "measured_json": "string",
    "kind": "string",  # permanent (a gate or the data decided) or transient (infrastructure; retried on resume)
}
STAGE_DIRS = ("data", "rejects", "stats", "completions", "units", "cache", "dedup")


def _arrow_type(kind: Any) -> Any:
    import pyarrow as pa

    if isinstance(kind, dict):
        return pa.struct([pa.field(name, _arrow_type(sub)) for name, sub in kind.items()])
    if isinstance(kind, tuple):
        return pa.list_(_arrow_type(kind[1]))
    if kind == "audio":
        return pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    return {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32()}[kind]


def _hf_feature(kind: Any, sample_rate: int) -> Any:
    """The `datasets` feature JSON (legacy list form, read by datasets 2.x to 5.x)."""
    if isinstance(kind, dict):
        return {name: _hf_feature(sub, sample_rate) for name, sub in kind.items()}
    if isinstance(kind, tuple):
        return [_hf_feature(kind[1], sample_rate)]
    if kind == "audio":
        return {"sampling_rate": sample_rate, "_type": "Audio"}
    return {"dtype": kind, "_type": "Value"}


def row_schema(sample_rate: int) -> Any:
    """Arrow schema of kept rows, with the `huggingface` metadata that makes audio decodable."""
    import pyarrow as pa

    features = {name: _hf_feature(kind, sample_rate) for name, kind in ROW.items()}
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind in ROW.items()], metadata=meta)


def reject_schema() -> Any:
    """Arrow schema of reject rows."""
    import pyarrow as pa

    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind in REJECT_ROW.items()])


def dialogue_row(d: Dialogue) -> dict[str, Any]:
    """The Parquet row of a kept dialogue."""
    turns = []
    for t in d.turns:
        turn = {f.name: getattr(t, f.name) for f in fields(t)}  # flat fields: no deep copy (asdict copies every unit)
        turn["audio"] = {"bytes": t.audio, "path": f"{t.turn_id}.flac"} if t.audio else None
        turns.append(turn)
    return {
        "id": d.id,
        "index": d.index,
        "seed": d.seed,
        "scenario": asdict(d.scenario),
        "turns": turns,
        "llm_model": d.llm_model,
        "tts_backend": d.tts_backend,
        "asr_backend": d.asr_backend,
        "units_codebook": d.units_codebook,
    }


def reject_rows(d: Dialogue) -> list[dict[str, Any]]:
    """Reject rows of a dialogue: the dialogue itself if dropped, plus every dropped turn."""
    items = [("dialogue", d.reject)] if d.reject else []
    items += [("turn", r) for r in d.dropped_turns if r is not d.reject]
    targets = {t.turn_id: t.emotion for t in d.turns}
    rows = []
    for level, r in items:
        assert r is not None
        m = r.measured
        rows.append(
            {
                "id": d.id,
                "turn_id": r.turn_id,
                "level": level,
                "stage": r.stage,
                "reason": r.reason,
                "detail": r.detail,
                "wer": m.get("wer"),
                "duration_s": m.get("duration_s"),
                "emotion_target": m.get("emotion_target") or targets.get(r.turn_id, d.scenario.emotion),
                "emotion_measured": m.get("emotion_measured"),
                "emotion_score": m.get("emotion_score"),
                "measured_json": json.dumps(m, sort_keys=True),
                "kind": r.kind,
            }
        )
    return rows


def _parquet_bytes(rows: list[dict[str, Any]], schema: Any) -> bytes:
    """Parquet file bytes of `rows` (zstd). No rows gives a file with the schema and no row group,
    which readers such as `datasets` skip (a zero-row group makes them fail)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    if rows:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    else:
        pq.ParquetWriter(buf, schema, compression="zstd").close()
    return buf.getvalue()


def _count_reasons(rejects: list[Reject | None]) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in rejects if r is not None).items()))


def _row_index(row: dict[str, Any]) -> int:
    """The dialogue index of a kept or reject row (from its id, `dlg-<seed>-<index>`)."""
    return int(row["id"].rsplit("-", 1)[1])


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _combine(a: dict[str, Any], b: dict[str, Any], sign: int = 1, nested: bool = False) -> dict[str, Any]:
    """a + sign * b for stats dicts: numbers add, counters add key by key (zeros dropped), lists unite."""
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if isinstance(value, dict):
            out[key] = _combine(mine or {}, value, sign, nested=True)
        elif isinstance(value, list):
            out[key] = sorted(set(mine or []) | set(value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total = (mine or 0) + sign * value
            out[key] = round(total, 3) if isinstance(total, float) else total
        else:
            out[key] = value
        if nested and out[key] in (0, {}):
            del out[key]
    return out


class OutputFolder:
    """Reads and writes one build's output folder."""

    def __init__(self, root: Path, recipe: Recipe) -> None:
        self.root = root
        self.recipe = recipe
        self.total = recipe.num_shards

    def shard_name(self, shard: int) -> str:
        """`XXXXX-of-YYYYY` for shard `shard`."""
        return f"{shard:05d}-of-{self.total:05d}"

    def marker(self, shard: int) -> Path:
        """The completion marker of a shard."""
        return self.root / "completions" / f"shard-{shard:05d}.done"

    def shard_indices(self, shard: int) -> range:
        """Dialogue indices that belong to `shard`."""
        size = self.recipe.shard_size
        return range(shard * size, min((shard + 1) * size, self.recipe.num_dialogues))

    def read_marker(self, shard: int) -> dict[str, Any] | None:
        """The completion marker's content, or None if the shard was never written."""
        try:
            return json.loads(self.marker(shard).read_text())
        except (FileNotFoundError, NotADirectoryError):  # not written (or the folder cannot exist: prepare says so)
            return None

    def transient_indices(self, shard: int) -> list[int]:
        """Indices of the shard's dialogues that failed transiently and await a retry (none if unwritten)."""
        marker = self.read_marker(shard)
        return list(marker.get("transient", [])) if marker else []

    def pending_shards(self, retry_transient: bool = True) -> list[int]:
        """Shards without a completion marker, plus (with `retry_transient`) those holding transient failures."""
        return [k for k in range(self.total) if not self.marker(k).exists() or (retry_transient and self.todo(k))]

    def todo(self, shard: int) -> range | list[int]:
        """Indices a run still has to produce for `shard`: all of them (a range) before it is written,
        afterwards its transient failures (none once the shard is final)."""
        marker = self.read_marker(shard)
        return self.shard_indices(shard) if marker is None else list(marker.get("transient", []))

    def check(self, overwrite: bool) -> bool:
        """Decide whether this folder can take the recipe's run, without writing anything.

        Returns True if it holds this recipe's earlier run (a resume). Raises FileExistsError if it
        holds another recipe's run (or other files) and `overwrite` is not set.
        """
        if not self.root.exists() or not any(self.root.iterdir()):
            return False
        previous = self.read_manifest()
        if previous is not None and previous.get("recipe_hash") == self.recipe.fingerprint():
            return True
        if not overwrite:
            what = "another recipe's run" if previous is not None else "files that are not a build output"
            raise FileExistsError(f"output folder {self.root} holds {what}; choose an empty folder or pass --overwrite")
        if previous is None and any(p.name not in (*STAGE_DIRS, "manifest.json") for p in self.root.iterdir()):
            raise FileExistsError(f"--overwrite refuses to delete {self.root}: it holds files that are not ours")
        return False

    def prepare(self, overwrite: bool) -> bool:
        """Make the folder ready (clearing another run if `overwrite`); returns True on a resume.

        Raises FileExistsError as `check` does, and PermissionError if the folder is not writable.
        """
        resumed = self.check(overwrite)
        try:
            if not resumed and self.root.is_dir():
                for name in STAGE_DIRS:
                    shutil.rmtree(self.root / name, ignore_errors=True)
                (self.root / "manifest.json").unlink(missing_ok=True)
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise PermissionError(f"output folder {self.root} is not writable ({err.strerror})") from None
        remove_stale_temp_files(self.root)
        return resumed

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest of the run in this folder, if any."""
        path = self.root / "manifest.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write manifest.json atomically."""
        atomic_write_json(self.root / "manifest.json", manifest)

    def write_shard(self, shard: int, dialogues: list[Dialogue], wall_s: float) -> dict[str, Any]:
        """Write one finished shard (data, rejects, stats, then the marker); returns its stats.

        For a shard already written with transient rejects, `dialogues` are the retried ones
        (exactly the marker's `transient` indices) and are merged into the shard's files.
        """
        dialogues = sorted(dialogues, key=lambda d: d.index)
        marker = self.read_marker(shard)
        merging = bool(marker and marker.get("transient"))
        expected = list(marker["transient"]) if marker and merging else list(self.shard_indices(shard))
        got = [d.index for d in dialogues]
        if got != expected:
            raise ValueError(f"shard {shard}: got dialogues {got[:5]}..., expected {expected[:5]}...")
        name = self.shard_name(shard)
        data_path = self.root / "data" / f"train-{name}.parquet"
        rejects_path = self.root / "rejects" / f"rejects-{name}.parquet"
        rows = [dialogue_row(d) for d in dialogues if d.kept]
        rejects = [row for d in dialogues for row in reject_rows(d)]
        stats = self._stats(shard, dialogues, wall_s)
        if marker and merging:
            retried = {d.id for d in dialogues}
            rows = sorted([r for r in _read_rows(data_path) if r["id"] not in retried] + rows, key=_row_index)
            rejects = [r for r in _read_rows(rejects_path) if r["id"] not in retried] + rejects
            rejects.sort(key=_row_index)  # stable: a dialogue's own rows keep their order
            stats = {**_combine(marker["base"], stats), "shard": shard}
        atomic_write_bytes(data_path, _parquet_bytes(rows, row_schema(self.recipe.tts.sample_rate)))
        atomic_write_bytes(rejects_path, _parquet_bytes(rejects, reject_schema()))
        atomic_write_json(self.root / "stats" / f"shard-{shard:05d}.json", stats)
        transient = [d for d in dialogues if d.transient]
        done: dict[str, Any] = {"shard": shard, "dialogues": len(self.shard_indices(shard)), "kept": stats["kept"]}
        if transient:  # what the next merge starts from: this shard's counts without its transient failures
            done["transient"] = [d.index for d in transient]
            done["base"] = _combine(stats, self._stats(shard, transient, 0.0), sign=-1)
        atomic_write_json(self.marker(shard), done)
        return stats

    def _stats(self, shard: int, dialogues: list[Dialogue], wall_s: float) -> dict[str, Any]:
        """The counts of `dialogues` (additive: a shard's stats are the sum over its dialogues)."""
        kept = [d for d in dialogues if d.kept]
        kept_turns = [t for d in kept for t in d.turns]
        stats = {
            "shard": shard,
            "requested": len(dialogues),
            "kept": len(kept),
            "rejected": len(dialogues) - len(kept),
            "rejected_by_reason": _count_reasons([d.reject for d in dialogues]),
            "turns_kept": len(kept_turns),
            "turns_dropped_by_reason": _count_reasons([r for d in dialogues for r in d.dropped_turns]),
            "audio_seconds": round(sum(t.duration_s for t in kept_turns), 3),
            "emotions": dict(Counter(t.emotion for t in kept_turns if t.role == "user")),
            "speakers": dict(Counter(t.speaker_id for t in kept_turns if t.role == "user")),
            "cells": dict(Counter(f"{d.scenario.emotion}|{d.scenario.topic}" for d in kept)),
            "cells_requested": dict(Counter(f"{d.scenario.emotion}|{d.scenario.topic}" for d in dialogues)),
            "nodes": dict(Counter(node for d in dialogues for node in d.nodes.values())),
            "interpreters": {
                stage: sorted({d.interpreters[stage] for d in dialogues if stage in d.interpreters})
                for stage in sorted({s for d in dialogues for s in d.interpreters})
            },
            "stage_seconds": {
                k: round(v, 3) for k, v in sum((Counter(d.timings) for d in dialogues), Counter()).items()
            },
            "wall_s": round(wall_s, 3),
        }
        stats["transient"] = sum(d.transient for d in dialogues)
        stats["rejected_by_kind"] = dict(Counter(d.reject.kind for d in dialogues if d.reject is not None))
        return stats

    def kept_texts(self) -> Iterator[tuple[str, list[str]]]:
        """(id, turn texts) of every kept dialogue in the completed shards, in shard order."""
        import pyarrow.parquet as pq

        for k in range(self.total):
            path = self.root / "data" / f"train-{self.shard_name(k)}.parquet"
            marker = self.read_marker(k)
            if marker is not None and path.exists():
                retry = {dialogue_id(self.recipe.seed, i) for i in marker.get("transient", [])}  # mid-merge rows
                for row in pq.read_table(path, columns=["id", "turns"]).to_pylist():
                    if row["id"] not in retry:
                        yield row["id"], [t["text"] for t in row["turns"]]

    def totals(self) -> dict[str, Any]:
        """Counts summed over every written shard (`transient`: failures that await a retry)."""
        total: dict[str, Any] = {"shards_done": 0, "requested": 0, "kept": 0, "rejected": 0, "turns_kept": 0}
        total["transient"] = 0
        summed = ("rejected_by_reason", "turns_dropped_by_reason", "emotions", "speakers")
        summed += ("cells", "cells_requested", "nodes", "rejected_by_kind")
        counters: dict[str, Counter[str]] = {k: Counter() for k in (*summed, "stage_seconds")}
        audio = 0.0
        for k in range(self.total):
            path = self.root / "stats" / f"shard-{k:05d}.json"
            if not self.marker(k).exists() or not path.exists():
                continue
            stats = json.loads(path.read_text())
            total["shards_done"] += 1
            for key in ("requested", "kept", "rejected", "turns_kept"):
                total[key] += stats[key]
            total["transient"] += stats.get("transient", 0)
            for key, counter in counters.items():
                counter.update(stats.get(key, {}))
            audio += stats["audio_seconds"]
        total.update({k: dict(sorted(v.items())) for k, v in counters.items()})
        total["stage_seconds"] = {k: round(v, 3) for k, v in total["stage_seconds"].items()}
        total["audio_hours"] = round(audio / 3600.0, 4)
        return total
