"""An OpenAI-compatible proxy that injects faults in front of a real server (for tests).

Each POST is forwarded to the upstream server, except that with probability `rate` it instead
gets one fault, in turn: HTTP 500, HTTP 429 with Retry-After, a hang longer than the client's
timeout, a truncated JSON body, an empty body, or a reset connection. GETs pass through.

Outages: while `down` is set, every connection (GET and POST) is reset as soon as it is accepted,
as a restarting server behind a load balancer would; a POST for which `refuse(body)` is true is reset
too (the hook may set `down` to start an outage there; tests clear `down` to end it). `answered`
holds the sha256 of every POST that got the upstream's answer.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import socket
import struct
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("http_500", "http_429", "timeout", "truncated_json", "empty_body", "connection_reset")


class FaultProxy:
    """Runs the proxy on 127.0.0.1 in a background thread; counts what it did."""

    def __init__(self, upstream: str, rate: float, hang_s: float = 6.0, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.hang_s = hang_s
        self.counts: Counter[str] = Counter()
        self.arrived: list[str] = []  # sha256 of each POST body, in arrival order
        self.bodies: list[bytes] = []  # each POST body, in arrival order
        self.answered: list[str] = []  # sha256 of each POST body answered with the upstream's 200
        self.down = False
        self.refuse: Callable[[bytes], bool] | None = None
        self._rng = random.Random(seed)
        self._cycle = itertools.cycle(FAULTS)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if proxy.down:
                    return self._reset("refused")
                with urllib.request.urlopen(proxy.upstream + self.path.removeprefix("/v1"), timeout=30) as resp:
                    self._reply(resp.status, resp.read())

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                digest = hashlib.sha256(body).hexdigest()
                proxy.arrived.append(digest)
                proxy.bodies.append(body)
                if proxy.down or (proxy.refuse is not None and proxy.refuse(body)):
                    return self._reset("refused")
                fault = proxy._pick()
                if fault == "connection_reset":
                    return self._reset()
                if fault == "http_500":
                    return self._reply(500, b'{"error": {"message": "injected"}}')
                if fault == "http_429":
                    return self._reply(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
                if fault == "timeout":
                    time.sleep(proxy.hang_s)
                    return self._reply(500, b"{}")
                request = urllib.request.Request(
                    proxy.upstream + self.path.removeprefix("/v1"), data=body, method="POST",
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=120) as resp:
                    data = resp.read()
                if fault == "truncated_json":
                    data = data[: len(data) // 2]
                elif fault == "empty_body":
                    data = b""
                else:
                    proxy.answered.append(digest)
                self._reply(200, data)

            def _reset(self, count: str = "") -> None:
                if count:
                    with proxy._lock:
                        proxy.counts[count] += 1
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

            def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _pick(self) -> str:
        with self._lock:
            fault = next(self._cycle) if self._rng.random() < self.rate else "none"
            self.counts[fault] += 1
            return fault

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
