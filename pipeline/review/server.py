"""The review web app: a stdlib ThreadingHTTPServer over one output folder.

Routes (JSON unless said otherwise):
    GET  /                          the page (pipeline/review/page.py)
    GET  /api/meta                  dataset, annotator default, filters' choices, reason tags
    GET  /api/queue?size&seed&emotion&speaker&status&annotator
                                    a stratified random queue and the annotator's judgements on it
    GET  /api/sample/ID             one sample: scenario, turns (with audio URLs), rejects
    GET  /api/judgements?annotator  stored judgements
    POST /api/judgements            {annotator, sample_id, decision, reasons, comment} -> upsert
    GET  /audio/TURN_ID.flac        a kept turn's FLAC bytes (Range supported), nothing else

The audio route never touches a path built from the request: the turn id is matched against
`dlg-<seed>-<index>-tNN` and looked up in the dataset's index; anything else is 400 or 404.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.records import EMOTIONS
from pipeline.review.dataset import TURN_ID, BuildOutput
from pipeline.review.db import REASON_TAGS, JudgementError, JudgementStore
from pipeline.review.page import PAGE
from pipeline.review.sampling import filter_samples, stratified_sample

MAX_BODY = 64 * 1024
MAX_QUEUE = 10_000
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReviewApp:
    """What the server serves: the dataset, the judgements store and the queue defaults."""

    def __init__(self, build: BuildOutput, annotator: str = "", size: int = 20, seed: int = 0) -> None:
        """Serve `build`; `annotator`, `size` and `seed` are the page's defaults."""
        self.build = build
        self.store = JudgementStore(build.root)
        self.annotator = annotator
        self.size = size
        self.seed = seed

    def meta(self) -> dict[str, Any]:
        """The page's start-up data."""
        samples = self.build.samples()
        speakers = sorted({s.speaker_id for s in samples})
        emotions = [e for e in EMOTIONS if any(s.emotion == e for s in samples)]
        emotions += sorted({s.emotion for s in samples} - set(EMOTIONS))
        return {
            "dataset": self.build.manifest.get("recipe", {}).get("name", self.build.root.name),
            "path": str(self.build.root),
            "complete": self.build.complete,
            "annotator": self.annotator,
            "size": self.size,
            "seed": self.seed,
            "emotions": emotions,
            "speakers": speakers,
            "statuses": ["kept", "rejected", "all"],
            "reason_tags": list(REASON_TAGS),
            "counts": {
                "kept": sum(s.status == "kept" for s in samples),
                "rejected": sum(s.status == "rejected" for s in samples),
            },
        }

    def queue(self, query: dict[str, str]) -> dict[str, Any]:
        """A seeded stratified queue over the samples that match the query's filters."""
        try:
            size = int(query.get("size") or self.size)
            seed = int(query.get("seed") or self.seed)
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "size and seed must be integers") from None
        if not 1 <= size <= MAX_QUEUE:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"size must be 1 to {MAX_QUEUE}")
        try:
            pool = filter_samples(
                self.build.samples(), query.get("emotion", ""), query.get("speaker", ""), query.get("status") or "kept"
            )
        except ValueError as err:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, str(err)) from None
        chosen = stratified_sample(pool, size, seed)
        judged = {j["sample_id"]: j for j in self.store.all(query.get("annotator", ""))}
        items = [
            {"id": s.id, "status": s.status, "emotion": s.emotion, "speaker_id": s.speaker_id,
             "judgement": judged.get(s.id)}
            for s in chosen
        ]  # fmt: skip
        return {"items": items, "available": len(pool), "size": size, "seed": seed}

    def sample(self, sample_id: str, annotator: str) -> dict[str, Any]:
        """One sample with the annotator's judgement of it."""
        sample = self.build.sample(sample_id)
        if sample is None:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"no sample {sample_id!r} in this dataset")
        judged = [j for j in self.store.all(annotator) if j["sample_id"] == sample_id]
        return {**sample.to_json(), "judgement": judged[0] if judged else None}

    def judge(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate and upsert one judgement."""
        sample = self.build.sample(str(body.get("sample_id", "")))
        if sample is None:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"no sample {body.get('sample_id')!r} in this dataset")
        reasons = body.get("reasons") or []
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "reasons must be a list of tags")
        try:
            return self.store.upsert(
                str(body.get("annotator", "")), sample.id, str(body.get("decision", "")), reasons,
                str(body.get("comment") or ""), sample.status, sample.emotion, sample.speaker_id,
            )  # fmt: skip
        except JudgementError as err:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, str(err)) from None


class _Handler(BaseHTTPRequestHandler):
    server: ReviewHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        self.server.log(f"{self.address_string()} {format % args}")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _route(self) -> tuple[str, dict[str, str]]:
        """The decoded path and query; 400 for anything that is not a plain absolute path."""
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if not self.path.startswith("/") or parts.netloc or ".." in path or "\\" in path or "\x00" in path:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "bad path")
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if self.server.loopback_only and host not in _LOOPBACK:
            raise _BadRequest(HTTPStatus.FORBIDDEN, "this server answers only to 127.0.0.1 / localhost")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return path, query

    def _handle(self, work: Callable[[], None]) -> None:
        try:
            work()
        except _BadRequest as err:
            self._json({"error": str(err)}, err.status)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self._handle(self._post)

    def _get(self) -> None:
        path, query = self._route()
        app = self.server.app
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/api/meta":
            self._json(app.meta())
        elif path == "/api/queue":
            self._json(app.queue(query))
        elif path.startswith("/api/sample/"):
            self._json(app.sample(path.removeprefix("/api/sample/"), query.get("annotator", "")))
        elif path == "/api/judgements":
            self._json(app.store.all(query.get("annotator") or None))
        elif path.startswith("/audio/"):
            self._audio(path.removeprefix("/audio/"))
        else:
            raise _BadRequest(HTTPStatus.NOT_FOUND, "not found")

    def _audio(self, name: str) -> None:
        turn = name.removesuffix(".flac")
        if "/" in name or not name.endswith(".flac") or not TURN_ID.match(turn):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "audio is addressed as /audio/<turn id>.flac")
        data = self.server.app.build.audio(turn)
        if data is None:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"no kept turn {turn!r} in this dataset")
        headers = {"Accept-Ranges": "bytes"}
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match and (match[1] or match[2]):
            size = len(data)
            start, end = (int(match[1]), int(match[2] or size - 1)) if match[1] else (size - int(match[2]), size - 1)
            if start >= size or start > end:
                self._send(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "audio/flac", {"Content-Range": f"*/{size}"}
                )
                return
            end = min(end, size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self._send(HTTPStatus.PARTIAL_CONTENT, data[start : end + 1], "audio/flac", headers)
            return
        self._send(HTTPStatus.OK, data, "audio/flac", headers)

    def _post(self) -> None:
        path, _ = self._route()
        if path != "/api/judgements":
            raise _BadRequest(HTTPStatus.NOT_FOUND, "not found")
        if self.headers.get_content_type() != "application/json":
            # A cross-site form cannot send JSON without a CORS preflight, which this server never grants.
            raise _BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the judgement as application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"body must be 1 to {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        self._json(self.server.app.judge(body))


class ReviewHTTPServer(ThreadingHTTPServer):
    """The threading HTTP server of one `ReviewApp`; binds 127.0.0.1 unless told otherwise."""

    daemon_threads = True

    def __init__(
        self, app: ReviewApp, host: str = "127.0.0.1", port: int = 0, log: Callable[[str], None] | None = None
    ) -> None:
        """Bind `host:port` (port 0: a free port); `log` receives one line per request (default stderr)."""
        self.app = app
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.loopback_only = host in _LOOPBACK
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.server_address[:2]
        return f"http://{'[' + str(host) + ']' if ':' in str(host) else host}:{port}/"

    def start(self) -> ReviewHTTPServer:
        """Serve in a background thread (for tests and embedding); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="review-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=10)


def make_server(
    out_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    annotator: str = "",
    size: int = 20,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReviewHTTPServer:
    """A review server over `out_dir`, its index read (raises NotABuildOutputError for a folder that is not a
    build, OSError when the address cannot be bound)."""
    build = BuildOutput(Path(out_dir))
    build.samples(on_progress)
    return ReviewHTTPServer(ReviewApp(build, annotator, size, seed), host, port, log)
