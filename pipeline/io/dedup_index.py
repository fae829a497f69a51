"""The near-duplicate index on disk: kept dialogues' shingles and LSH band keys in SQLite.

The writer's near-duplicate filter (`stages/s6_dedup.py`) keeps nothing per dialogue in memory: every
kept dialogue's sorted shingle hashes and its MinHash LSH band keys live in `dedup/index.sqlite` in
the output folder, and a query reads only the candidates that share a band key. The driver's memory
is SQLite's page cache (bounded) whatever the dataset's size, and a resumed build opens the index
instead of re-reading the completed shards.

Consistency with the shards: the writer commits a shard's index rows before it writes that shard's
completion marker, and a run first forgets every dialogue index it is about to process (those of
unfinished shards and of transient failures awaiting a retry). So after any crash, the index holds
exactly the kept dialogues of the work that will not be redone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

INDEX_PATH = Path("dedup") / "index.sqlite"


class DedupStore:
    """Kept dialogues (index, id, shingles) and their band keys; `path=None` keeps it in memory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.is_new = path is None or not path.exists()
        self._db = sqlite3.connect(":memory:" if path is None else str(path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cache_size=-65536")  # at most 64 MiB of pages in the driver
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dialogues"
            " (idx INTEGER PRIMARY KEY, id TEXT NOT NULL, shingles BLOB NOT NULL, keys BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS bands (key INTEGER NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (key, idx))"
            " WITHOUT ROWID"
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM dialogues").fetchone()[0]

    def contains(self, idx: int) -> bool:
        """Whether dialogue index `idx` is indexed."""
        return self._db.execute("SELECT 1 FROM dialogues WHERE idx = ?", (idx,)).fetchone() is not None

    def add(self, idx: int, dialogue_id: str, shingles: np.ndarray, keys: list[int]) -> None:
        """Index one kept dialogue (uncommitted until `commit`); one already indexed is left as it is."""
        packed = np.array(keys, dtype=np.int64).tobytes()
        row = (idx, dialogue_id, shingles.tobytes(), packed)
        if self._db.execute("INSERT OR IGNORE INTO dialogues VALUES (?, ?, ?, ?)", row).rowcount == 0:
            return
        self._db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?)", [(k, idx) for k in keys])

    def candidates(self, keys: list[int]) -> list[tuple[str, np.ndarray]]:
        """(id, shingles) of every indexed dialogue that shares at least one band key, in index order."""
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT id, shingles FROM dialogues WHERE idx IN (SELECT idx FROM bands WHERE key IN ({marks}))"
            " ORDER BY idx",
            keys,
        ).fetchall()
        return [(dialogue_id, np.frombuffer(blob, dtype=np.uint64)) for dialogue_id, blob in rows]

    def forget(self, indices: Iterable[int] | range) -> None:
        """Drop the given dialogue indices (work that this run redoes) and commit. A `range` is looked up
        as one range query, so forgetting the unwritten shards of a large build reads only what is there."""
        if isinstance(indices, range) and indices.step == 1:
            query = "SELECT idx, keys FROM dialogues WHERE idx >= ? AND idx < ?"
            rows = self._db.execute(query, (indices.start, indices.stop)).fetchall()
        else:
            rows = [
                (i, *r) for i in indices for r in self._db.execute("SELECT keys FROM dialogues WHERE idx = ?", (i,))
            ]
        for idx, blob in rows:
            keys = np.frombuffer(blob, dtype=np.int64).tolist()
            self._db.executemany("DELETE FROM bands WHERE key = ? AND idx = ?", [(k, idx) for k in keys])
            self._db.execute("DELETE FROM dialogues WHERE idx = ?", (idx,))
        self._db.commit()

    def commit(self) -> None:
        """Make every `add` since the last commit durable."""
        self._db.commit()

    def close(self) -> None:
        """Commit and close the database."""
        self._db.commit()
        self._db.close()
