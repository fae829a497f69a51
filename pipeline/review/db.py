"""Annotators' judgements in SQLite (WAL): one row per annotator x sample, upserted with a timestamp."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DB_PATH = Path("review") / "judgements.sqlite"
DECISIONS = ("accept", "reject")
REASON_TAGS = (
    "wrong_emotion",
    "unnatural_prosody",
    "mispronounced",
    "audio_artifact",
    "text_mismatch",
    "incoherent_dialogue",
    "not_empathetic",
    "other",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    annotator TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject')),
    reasons TEXT NOT NULL,
    comment TEXT NOT NULL,
    status TEXT NOT NULL,
    emotion TEXT NOT NULL,
    speaker_id TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (annotator, sample_id)
)
"""
_COLUMNS = ("annotator", "sample_id", "decision", "reasons", "comment", "status", "emotion", "speaker_id", "updated_at")


class JudgementError(ValueError):
    """A judgement that cannot be stored (bad decision, reasons or annotator)."""


class JudgementStore:
    """The judgements database of one output folder; safe to share between threads and processes."""

    def __init__(self, out_dir: Path, create: bool = True) -> None:
        """Open (and with `create`, make) `out_dir/review/judgements.sqlite`."""
        self.path = Path(out_dir) / DB_PATH
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
                conn.execute(_SCHEMA)

    @property
    def exists(self) -> bool:
        """True when the database file exists."""
        return self.path.exists()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived autocommit connection (one per operation, so any thread or process may write)."""
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def upsert(
        self,
        annotator: str,
        sample_id: str,
        decision: str,
        reasons: list[str],
        comment: str,
        status: str,
        emotion: str,
        speaker_id: str,
    ) -> dict[str, Any]:
        """Store (or replace) `annotator`'s judgement of `sample_id`; returns the stored row."""
        annotator = annotator.strip()
        if not annotator or len(annotator) > 64:
            raise JudgementError("annotator name must be 1 to 64 characters")
        if decision not in DECISIONS:
            raise JudgementError(f"decision must be accept or reject, not {decision!r}")
        unknown = sorted(set(reasons) - set(REASON_TAGS))
        if unknown:
            raise JudgementError(f"unknown reason tag(s) {', '.join(unknown)}; use {', '.join(REASON_TAGS)}")
        if decision == "reject" and not reasons:
            raise JudgementError("a rejection needs at least one reason tag")
        if decision == "accept":
            reasons = []
        row = {
            "annotator": annotator,
            "sample_id": sample_id,
            "decision": decision,
            "reasons": json.dumps(sorted(set(reasons))),
            "comment": comment[:4000],
            "status": status,
            "emotion": emotion,
            "speaker_id": speaker_id,
            "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO judgements ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                f"ON CONFLICT (annotator, sample_id) DO UPDATE SET {updates}",
                [row[c] for c in _COLUMNS],
            )
        return {**row, "reasons": json.loads(row["reasons"])}

    def all(self, annotator: str | None = None) -> list[dict[str, Any]]:
        """Every judgement (of one annotator if given), ordered by annotator and sample."""
        if not self.exists:
            return []
        query = f"SELECT {', '.join(_COLUMNS)} FROM judgements"
        args: list[str] = []
        if annotator is not None:
            query += " WHERE annotator = ?"
            args.append(annotator)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY annotator, sample_id", args).fetchall()
        return [{**dict(zip(_COLUMNS, r, strict=True)), "reasons": json.loads(r[3])} for r in rows]

    def export_parquet(self, out: Path) -> int:
        """Write every judgement to a Parquet file at `out`; returns the number of rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipeline.io.files import atomic_write_bytes

        schema = pa.schema([pa.field(c, pa.list_(pa.string()) if c == "reasons" else pa.string()) for c in _COLUMNS])
        rows = self.all()
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        atomic_write_bytes(Path(out), sink.getvalue().to_pybytes())
        return len(rows)
