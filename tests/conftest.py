"""Shared fixtures: small recipes, the embedded LLM server, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pipeline"]
# The tests' builds share one start-up cache (codebooks, emotion calibration; pipeline/io/cache.py),
# not the user's own; entries are keyed by their exact inputs, so sharing it across sessions is safe.
os.environ.setdefault("OPENS2S_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"opens2s-test-cache-{os.getuid()}"))


def write_recipe(folder: Path, name: str = "tiny", **overrides: object) -> Path:
    """A small embedded recipe (few dialogues, small codebook) with `overrides` merged in."""
    recipe: dict[str, object] = {
        "name": name,
        "seed": 3,
        "num_dialogues": 2,
        "shard_size": 1,
        "scenarios": {"min_exchanges": 1, "max_exchanges": 1},
        "units": {"codebook_size": 16, "calibration_sentences": 8},
        # SmolLM2-135M expresses the target emotion in only 20-33% of its user turns (measured), so
        # small builds that other tests rely on skip the three embedding checks; test_text_gates.py
        # runs them on real text and test_build.py runs them in a real text-only build.
        "text_gates": {"emotion_check": False, "response_check": False, "situation_check": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}  # type: ignore[dict-item]
        else:
            recipe[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def processes_matching(fragment: bytes, not_children_of: int | None = None) -> list[int]:
    """Pids of running processes whose command line contains `fragment`, leaving out the children of
    `not_children_of` (e.g. the test session's own fixture servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if fragment in cmd and parent != not_children_of:
                found.append(int(entry.name))
    return found


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `opens2s-data ARGS` in a subprocess and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="session")
def llm_url() -> Iterator[str]:
    """The embedded llama.cpp server, started once for the session."""
    from pipeline.adapters.llm_server import EmbeddedLLMServer

    with EmbeddedLLMServer() as url:
        yield url


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("build")
    # A lenient WER gate: the tests built on this output need kept dialogues, and Whisper tiny.en
    # sometimes mishears a whole short eSpeak turn (measured: WER 0.44 on one run of this recipe).
    recipe = write_recipe(folder, name="two", num_dialogues=2, shard_size=1, gates={"max_wer": 0.6})
    out = folder / "out"
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
