"""Read a build's output folder for review, stats and the report.

Every reader in this package goes through `BuildOutput`: it checks that a folder is a build output,
loads the per-dialogue metadata of every shard without the audio bytes (only the leaf columns it
needs are read from Parquet), and fetches one turn's FLAC bytes on demand.

A *sample* is one dialogue id: a kept dialogue (a row in data/, plus any turn-level rejects of it)
or a rejected dialogue (a `level = dialogue` row in rejects/, with what the reject row measured).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TURN_ID = re.compile(r"^dlg-\d+-\d+-t\d{2,}$")
UNKNOWN_SPEAKER = "(unknown)"
_TURN_FIELDS = (
    "turn_id",
    "role",
    "text",
    "emotion",
    "intensity",
    "speaker_id",
    "duration_s",
    "asr_text",
    "wer",
    "emotion_measured",
    "emotion_score",
)
_META_COLUMNS = [
    "id",
    "index",
    "scenario",
    *(f"turns.list.element.{name}" for name in _TURN_FIELDS),
    "turns.list.element.audio.path",  # None in text-only builds: the turn has no audio
]
_AUDIO_COLUMNS = ["turns.list.element.turn_id", "turns.list.element.audio.bytes"]


class NotABuildOutputError(ValueError):
    """The folder is not (or not yet) a build output; the message names the problem and the fix."""


@dataclass
class Sample:
    """One dialogue as reviewers see it (no audio bytes; turns carry their audio URL)."""

    id: str
    status: str  # "kept" or "rejected"
    emotion: str
    speaker_id: str
    intensity: str = ""
    scenario: dict[str, Any] | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    shard: str = ""

    @property
    def stratum(self) -> str:
        """The sampling stratum: target emotion x user speaker."""
        return f"{self.emotion} / {self.speaker_id}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the review page receives)."""
        return {
            "id": self.id,
            "status": self.status,
            "emotion": self.emotion,
            "intensity": self.intensity,
            "speaker_id": self.speaker_id,
            "stratum": self.stratum,
            "scenario": self.scenario,
            "turns": [
                {k: v for k, v in t.items() if k != "audio"}
                | {"audio_url": f"/audio/{t['turn_id']}.flac" if t.get("audio") else None}
                for t in self.turns
            ],
            "rejects": self.rejects,
            "shard": self.shard,
        }


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


class BuildOutput:
    """A build's output folder, opened read-only for review, stats and the report."""

    def __init__(self, root: Path) -> None:
        """Open `root`; raises NotABuildOutputError when it is not a build output."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotABuildOutputError(
                f"{self.root} is not a folder; pass the output folder of `opens2s-data build RECIPE --out DIR`"
            )
        manifest_path = self.root / "manifest.json"
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise NotABuildOutputError(
                f"{self.root} is not a build output (no manifest.json); "
                "pass the folder given to `opens2s-data build --out`"
            ) from None
        except (OSError, ValueError) as err:
            raise NotABuildOutputError(
                f"{manifest_path} is unreadable ({err}); re-run the build into this folder to rewrite it"
            ) from None
        self.data_files = sorted((self.root / "data").glob("train-*.parquet"))
        self.reject_files = sorted((self.root / "rejects").glob("rejects-*.parquet"))
        self.stats_files = sorted((self.root / "stats").glob("shard-*.json"))
        if not self.data_files and not self.reject_files:
            raise NotABuildOutputError(
                f"{self.root} has no finished shard yet; let the build finish or resume it (same build command)"
            )
        self._samples: list[Sample] | None = None
        self._by_id: dict[str, Sample] = {}
        self._turn_file: dict[str, Path] = {}
        self._audio_cache: OrderedDict[Path, dict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        """True when the manifest says the build finished."""
        return self.manifest.get("status") == "complete"

    def shard_stats(self) -> list[dict[str, Any]]:
        """The per-shard stats JSON files, in shard order."""
        return [json.loads(path.read_text()) for path in self.stats_files]

    def samples(self, on_progress: Callable[[int, int], None] | None = None) -> list[Sample]:
        """Every sample (kept and rejected dialogues), in id order; read once, then cached."""
        with self._lock:
            if self._samples is None:
                self._samples = self._load(on_progress)
            return self._samples

    def sample(self, sample_id: str) -> Sample | None:
        """The sample with id `sample_id`, or None."""
        self.samples()
        return self._by_id.get(sample_id)

    def _load(self, on_progress: Callable[[int, int], None] | None) -> list[Sample]:
        import pyarrow.parquet as pq

        files = [*self.data_files, *self.reject_files]
        by_id: dict[str, Sample] = {}
        turn_rejects: dict[str, list[dict[str, Any]]] = {}
        for n, path in enumerate(files, start=1):
            if path.parent.name == "data":
                for row in pq.ParquetFile(path).read(columns=_META_COLUMNS).to_pylist():
                    scenario = row["scenario"]
                    turns = [{k: _round(v) for k, v in t.items()} for t in row["turns"]]
                    for t in turns:
                        if t.get("audio"):
                            self._turn_file[t["turn_id"]] = path
                    by_id[row["id"]] = Sample(
                        id=row["id"],
                        status="kept",
                        emotion=scenario["emotion"],
                        speaker_id=scenario["speaker_id"],
                        intensity=scenario["intensity"],
                        scenario=scenario,
                        turns=turns,
                        shard=path.name,
                    )
            else:
                for row in pq.read_table(path).to_pylist():
                    row = {k: _round(v) for k, v in row.items()}
                    measured = json.loads(row.pop("measured_json") or "{}")
                    row["asr_text"] = measured.get("asr_text")
                    turn_rejects.setdefault(row["id"], []).append(row)
                    if row["level"] == "dialogue":
                        by_id[row["id"]] = Sample(
                            id=row["id"],
                            status="rejected",
                            emotion=row["emotion_target"] or "",
                            speaker_id=UNKNOWN_SPEAKER,
                            shard=path.name,
                        )
            if on_progress:
                on_progress(n, len(files))
        for sample_id, rows in turn_rejects.items():
            if sample_id in by_id:
                by_id[sample_id].rejects = rows
        self._by_id = by_id
        return [by_id[k] for k in sorted(by_id)]

    def audio(self, turn_id: str) -> bytes | None:
        """The FLAC bytes of a kept turn, or None if `turn_id` is not a kept turn of this dataset."""
        if not TURN_ID.match(turn_id):
            return None
        self.samples()
        path = self._turn_file.get(turn_id)
        if path is None:
            return None
        with self._lock:
            clips = self._audio_cache.get(path)
            if clips is None:
                import pyarrow.parquet as pq

                table = pq.ParquetFile(path).read(columns=_AUDIO_COLUMNS)
                turns = [t for row in table.column("turns").to_pylist() for t in row]
                clips = {t["turn_id"]: t["audio"]["bytes"] for t in turns if t["audio"]}
                self._audio_cache[path] = clips
                while len(self._audio_cache) > 2:  # a shard's audio stays in memory while its samples are reviewed
                    self._audio_cache.popitem(last=False)
            self._audio_cache.move_to_end(path)
            return clips.get(turn_id)
