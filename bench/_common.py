"""Helpers shared by the benchmark scripts: recipes derived from the demo, CLI builds, process memory,
the previous embedded LLM server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.adapters.llm_server import EmbeddedLLMServer

REPO = Path(__file__).resolve().parents[1]


def demo_variant(path: Path, **changes: Any) -> Path:
    """Write the demo recipe with top-level `changes` (dicts merged one level deep) to `path`."""
    recipe = yaml.safe_load((REPO / "manifests" / "demo.yaml").read_text())
    for key, value in changes.items():
        merge = isinstance(value, dict) and isinstance(recipe.get(key), dict)
        recipe[key] = {**recipe[key], **value} if merge else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def tree_pss_mb(root: int) -> tuple[float, float]:
    """(PSS of `root` alone, PSS of `root` and all its descendants) in MB, from /proc smaps_rollup.

    PSS splits shared pages (Ray's object store, libraries) between the processes that map them,
    so the sum over a process tree counts each page once.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))

    def pss(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += pss(pid)
        stack += children.get(pid, [])
    return pss(root), total


def run_build(recipe: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `opens2s-data build` in a subprocess, sampling its memory every 0.5 s.

    Returns the manifest plus `peak_driver_mb`, `peak_tree_mb` and `wall_s`. Exits on failure.
    """
    cmd = [sys.executable, "-m", "pipeline", "build", str(recipe), "--out", str(out), *extra]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    peaks = [0.0, 0.0]

    def sample() -> None:
        while proc.poll() is None:
            driver, tree = tree_pss_mb(proc.pid)
            peaks[0], peaks[1] = max(peaks[0], driver), max(peaks[1], tree)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"build {recipe} failed ({proc.returncode}):\n{stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {**manifest, "peak_driver_mb": peaks[0], "peak_tree_mb": peaks[1], "wall_s": time.monotonic() - started}


class LlamaCppPythonServer(EmbeddedLLMServer):
    """The previous embedded server, llama-cpp-python's (one request at a time), for side-by-side benches.

    Needs the `bench` extra (`make install-bench`); the pipeline itself runs llama.cpp's server.
    """

    def command(self) -> list[str]:
        """llama_cpp.server's command line, with the settings the pipeline used to start it with."""
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--n_ctx", str(self.ctx_size),
            "--model_alias", self.model_path.stem,
            "--cache", "true", "--cache_type", "ram", "--cache_size", str(128 << 20),
        ]  # fmt: skip


def old_server_available() -> bool:
    """True when llama-cpp-python's server is installed (the `bench` extra)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None
