"""Where the packaged catalogs live: `prompts/`, `voices/` and `manifests/`.

In a source checkout they are the top-level folders; an installed wheel carries them as
`pipeline/_data/<name>` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
DATA_FOLDERS = ("prompts", "voices", "manifests")


def data_dir(name: str) -> Path:
    """Return the folder of packaged data `name` (one of DATA_FOLDERS)."""
    if name not in DATA_FOLDERS:
        raise ValueError(f"unknown data folder {name!r}")
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"packaged data folder {name!r} is missing; reinstall opens2s-data")


def resolve(path: str | Path, default_folder: str, base: Path | None = None) -> Path:
    """Resolve a catalog path: absolute, relative to `base` (the recipe's folder), or packaged."""
    path = Path(path)
    if path.is_absolute():
        return path
    if base is not None and (base / path).exists():
        return base / path
    return data_dir(default_folder) / path
