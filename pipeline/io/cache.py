"""The user's start-up cache: results that do not depend on the run, reused across builds.

What goes here is computed from fixed inputs only (calibration sentences, voice parameters, package
versions, the code that computes it), so a build on the same machine with the same inputs loads it
instead of recomputing it. Each entry is one file named by a hash of everything that produced it
(`key`), written atomically; a changed input is a new key, never a stale hit. The folder is
`$OPENS2S_CACHE_DIR`, else `$XDG_CACHE_HOME/opens2s-data`, else `~/.cache/opens2s-data`;
`OPENS2S_CACHE_DIR=off` disables it. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.io.files import atomic_write_bytes

CACHE_ENV = "OPENS2S_CACHE_DIR"


def cache_dir() -> Path | None:
    """The cache folder, or None when the cache is switched off."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured.lower() == "off" else Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "opens2s-data"


def versions(*packages: str, missing: str = "-") -> dict[str, str]:
    """Installed versions of `packages` (`missing` for one that is not installed)."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = missing
    return found


def source_digest(*modules: str) -> str:
    """A hash of the source files of `modules` (dotted names), so that changed code misses the cache."""
    import importlib.util

    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def key(kind: str, inputs: Any) -> str:
    """The entry name for `inputs` (any JSON-able value; other objects count by their repr)."""
    blob = json.dumps(inputs, sort_keys=True, default=repr).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:20]}"


def cached_bytes(kind: str, inputs: Any, compute: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached bytes for (`kind`, `inputs`), computing and storing them on a miss.

    Returns (data, hit). A cache that cannot be written (read-only home, full disk) only costs the reuse.
    """
    folder = cache_dir()
    path = folder / kind / f"{key(kind, inputs)}.bin" if folder is not None else None
    if path is not None:
        try:
            return path.read_bytes(), True
        except OSError:
            pass
    data = compute()
    if path is not None:
        try:
            atomic_write_bytes(path, data)
        except OSError:
            pass
    return data, False
