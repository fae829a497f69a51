"""LLM request cache: finished requests keyed by a hash of the exact payload.

A resumed build replays every request it already paid for from `cache/llm.sqlite` in the output
folder and sends none of them again. Because a replayed answer is byte-identical, the prompts that
follow it are identical too, so a resumed dialogue continues exactly where the killed run was.
SQLite in WAL mode lets several actor processes on one machine read and write it at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

CACHE_PATH = Path("cache") / "llm.sqlite"


def payload_key(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request payload."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RequestCache:
    """A persistent map from request payload to response text."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Ray calls an actor's methods from another thread than its constructor: allow that, and
        # serialise this connection's use with a lock.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, response TEXT, created REAL)")

    def get(self, payload: dict[str, Any]) -> str | None:
        """The stored response of this exact payload, or None."""
        with self._lock:
            row = self._db.execute("SELECT response FROM requests WHERE key = ?", (payload_key(payload),)).fetchone()
        return None if row is None else str(row[0])

    def put(self, payload: dict[str, Any], response: str) -> None:
        """Store the response of a finished request."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO requests (key, response, created) VALUES (?, ?, ?)",
                (payload_key(payload), response, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
