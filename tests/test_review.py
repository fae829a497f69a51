"""The review web app on a real build: sampling, judgements under concurrency, the audio route, the CLI, Chromium."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_cli

from pipeline.io.audio import from_bytes
from pipeline.review.dataset import BuildOutput, Sample
from pipeline.review.db import JudgementError, JudgementStore
from pipeline.review.sampling import stratified_sample
from pipeline.review.server import ReviewHTTPServer, make_server

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def copy(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    """A private copy of the session build (tests write judgements and reports into it)."""
    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    return out


@pytest.fixture
def server(copy: Path) -> Iterator[tuple[ReviewHTTPServer, list[str]]]:
    """A review server on a free port over the copy, with its request log."""
    log: list[str] = []
    srv = make_server(copy, annotator="alice", size=10, seed=0, log=log.append).start()
    yield srv, log
    srv.stop()


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium through Playwright (no browser download)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def sync_playwright_or_skip() -> Any:
    """Playwright's sync API, or skip the test with the reason."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright module is not installed (pip install '.[review]')")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    return sync_playwright


def request(srv: ReviewHTTPServer, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, bytes]:
    """One raw HTTP request (the path is sent exactly as given)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=30)
    payload = None if body is None else json.dumps(body).encode()
    if payload is not None:
        headers.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def one_error(stderr: str) -> bool:
    """stderr holds exactly one `error:` message and nothing else (rich may wrap it over lines)."""
    return stderr.startswith("error:") and stderr.count("error:") == 1 and "Traceback" not in stderr


def wait_for_sample(page: Any, sample_id: str) -> None:
    """Wait until the page shows `sample_id` and has no sample request in flight."""
    page.wait_for_selector(f"#sample:not([data-loading]) h2:has-text('{sample_id}')")


def _sample(i: int, emotion: str, speaker: str) -> Sample:
    return Sample(id=f"dlg-1-{i:06d}", status="kept", emotion=emotion, speaker_id=speaker)


def test_stratified_sample_is_seeded_and_covers_strata_before_repeating() -> None:
    samples = [_sample(i, e, s) for i, (e, s) in enumerate((e, s) for e in ("happy", "sad", "angry") for s in "ab")]
    samples += [_sample(100 + i, "happy", "a") for i in range(10)]  # one crowded stratum
    first = stratified_sample(samples, 6, seed=1)
    assert [s.id for s in first] == [s.id for s in stratified_sample(samples, 6, seed=1)]
    assert {s.stratum for s in first} == {s.stratum for s in samples}  # 6 strata, 6 draws: one each
    assert [s.emotion for s in first[:3]] != [first[0].emotion] * 3  # emotions interleave
    assert len(stratified_sample(samples, 100, seed=1)) == len(samples)
    assert [s.id for s in stratified_sample(samples, 16, seed=2)] != [s.id for s in stratified_sample(samples, 16, 1)]


def test_judgement_store_upserts_one_row_per_annotator_and_sample(tmp_path: Path) -> None:
    store = JudgementStore(tmp_path)
    store.upsert("alice", "dlg-1-000001", "reject", ["wrong_emotion"], "flat", "kept", "sad", "spk-01")
    store.upsert("alice", "dlg-1-000001", "accept", ["wrong_emotion"], "fine after all", "kept", "sad", "spk-01")
    store.upsert("bob", "dlg-1-000001", "reject", ["audio_artifact"], "", "kept", "sad", "spk-01")
    rows = store.all()
    assert [(r["annotator"], r["decision"], r["reasons"]) for r in rows] == [
        ("alice", "accept", []),
        ("bob", "reject", ["audio_artifact"]),
    ]
    assert rows[0]["comment"] == "fine after all" and rows[0]["updated_at"]
    assert store.path.parent.name == "review"
    mode = store._connect  # the database runs in WAL mode (readers never block the writer)
    with mode() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for bad in (("", "accept", []), ("x", "maybe", []), ("x", "reject", []), ("x", "reject", ["nope"])):
        with pytest.raises(JudgementError):
            store.upsert(bad[0], "dlg-1-000001", bad[1], bad[2], "", "kept", "sad", "spk-01")
    out = tmp_path / "j.parquet"
    assert store.export_parquet(out) == 2
    assert pq.read_table(out).to_pylist()[1]["reasons"] == ["audio_artifact"]


def test_two_annotators_submitting_concurrently_lose_no_judgement(
    server: tuple[ReviewHTTPServer, list[str]], copy: Path
) -> None:
    srv, _ = server
    ids = [s.id for s in BuildOutput(copy).samples()]
    per_annotator = 80
    failures: list[tuple[int, bytes]] = []
    last: dict[tuple[str, str], str] = {}

    def annotate(name: str) -> None:
        for n in range(per_annotator):
            sample_id = ids[n % len(ids)]
            comment = f"{name} request {n}"
            decision = ("accept", "reject")[n % 2]
            body = {"annotator": name, "sample_id": sample_id, "decision": decision, "comment": comment,
                    "reasons": ["other"] if decision == "reject" else []}  # fmt: skip
            status, data = request(srv, "POST", "/api/judgements", body)
            if status != 200 or json.loads(data)["comment"] != comment:
                failures.append((status, data))
            last[(name, sample_id)] = comment
            request(srv, "GET", f"/api/queue?annotator={name}&status=all")  # reads interleaved with writes

    threads = [threading.Thread(target=annotate, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    rows = JudgementStore(copy).all()
    assert {(r["annotator"], r["sample_id"]): r["comment"] for r in rows} == last
    assert len(rows) == 2 * len(ids)


def test_audio_route_serves_only_the_datasets_audio(server: tuple[ReviewHTTPServer, list[str]], copy: Path) -> None:
    srv, log = server
    kept = [s for s in BuildOutput(copy).samples() if s.status == "kept"]
    if not kept:
        pytest.skip("the tiny build kept no dialogue")
    turn = kept[0].turns[0]
    status, data = request(srv, "GET", f"/audio/{turn['turn_id']}.flac")
    assert status == 200 and data[:4] == b"fLaC"
    assert abs(from_bytes(data).duration_s - turn["duration_s"]) < 0.05
    status, part = request(srv, "GET", f"/audio/{turn['turn_id']}.flac", Range="bytes=0-99")
    assert status == 206 and part == data[:100]
    seed = BuildOutput(copy).manifest["seed"]
    attempts = {
        "/audio/../manifest.json": 400,
        "/audio/%2e%2e/manifest.json": 400,
        "/audio/%2e%2e%2fmanifest.json": 400,
        "/audio/..%2F..%2F..%2Fetc%2Fpasswd": 400,
        "/../../etc/passwd": 400,
        "/audio//etc/passwd": 400,
        "/audio/%2Fetc%2Fpasswd.flac": 400,
        f"/audio/{turn['turn_id']}.wav": 400,
        "/audio/manifest.json": 400,
        f"/audio/dlg-{seed}-999999-t01.flac": 404,
        f"/audio/{turn['turn_id'][:-2]}99.flac": 404,
        "/etc/passwd": 404,
    }
    got = {path: request(srv, "GET", path)[0] for path in attempts}
    assert got == attempts
    assert sum(f"/audio/{turn['turn_id']}.flac" in line for line in log) == 2


def test_server_checks_requests(server: tuple[ReviewHTTPServer, list[str]], copy: Path) -> None:
    srv, _ = server
    assert srv.server_address[0] == "127.0.0.1"
    sample_id = BuildOutput(copy).samples()[0].id
    ok = {"annotator": "alice", "sample_id": sample_id, "decision": "accept"}
    assert request(srv, "GET", "/api/meta", Host="evil.example:80")[0] == 403  # DNS rebinding
    assert request(srv, "POST", "/api/judgements", ok, **{"Content-Type": "text/plain"})[0] == 415
    assert request(srv, "POST", "/api/judgements", {**ok, "sample_id": "dlg-0-000000"})[0] == 404
    assert request(srv, "POST", "/api/judgements", {**ok, "decision": "reject"})[0] == 400  # no reason
    assert request(srv, "GET", "/api/queue?size=abc")[0] == 400
    assert request(srv, "GET", "/api/queue?status=maybe")[0] == 400
    status, body = request(srv, "POST", "/api/judgements", ok)
    assert status == 200 and json.loads(body)["decision"] == "accept"
    status, body = request(srv, "GET", "/api/queue?annotator=alice&status=all&size=5")
    queue = json.loads(body)
    assert status == 200 and queue["available"] == len(BuildOutput(copy).samples())
    assert [i["judgement"]["decision"] for i in queue["items"] if i["id"] == sample_id] == ["accept"]


def test_review_cli_binds_loopback_and_refuses_a_folder_that_is_not_a_build(copy: Path, tmp_path: Path) -> None:
    result = run_cli("review-export", str(copy), "--out", str(tmp_path / "j.parquet"))
    assert result.returncode == 2 and "annotate first" in result.stderr  # nothing judged yet
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "pipeline", "review", str(copy), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("review page: http://127.0.0.1:"), line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (tmp_path / "empty").mkdir()
    for args in (("review", str(tmp_path / "empty")), ("review-export", str(tmp_path / "nope"), "--out", "x.parquet")):
        result = run_cli(*args)
        assert result.returncode == 2 and one_error(result.stderr), result.stderr


def test_review_export_writes_every_judgement(copy: Path, tmp_path: Path) -> None:
    store = JudgementStore(copy)
    for name in ("alice", "bob"):
        store.upsert(name, "dlg-3-000000", "reject", ["mispronounced", "other"], f"{name} says", "kept", "x", "y")
    out = tmp_path / "judgements.parquet"
    result = run_cli("review-export", str(copy), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert [(r["annotator"], r["reasons"], r["comment"]) for r in rows] == [
        ("alice", ["mispronounced", "other"], "alice says"),
        ("bob", ["mispronounced", "other"], "bob says"),
    ]


def test_review_page_in_chromium_plays_audio_and_persists_judgements(
    server: tuple[ReviewHTTPServer, list[str]], copy: Path
) -> None:
    sync_playwright = sync_playwright_or_skip()
    srv, log = server
    samples = BuildOutput(copy).samples()
    if len(samples) < 2 or not any(s.turns for s in samples):
        pytest.skip("the tiny build has fewer than two samples or no kept audio")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(srv.url)
            page.wait_for_selector("#queue li")
            page.select_option("#f-status", "all")  # rejected dialogues too
            page.click("#draw")
            page.wait_for_function(f"document.querySelectorAll('#queue li').length === {len(samples)}")
            queue = page.eval_on_selector_all("#queue li", "items => items.map(li => li.dataset.id)")
            with_audio = next(i for i, sid in enumerate(queue) if next(s for s in samples if s.id == sid).turns)
            page.click(f"#queue li:nth-child({with_audio + 1})")
            wait_for_sample(page, queue[with_audio])
            page.keyboard.press("p")  # shortcut: play the next turn
            page.wait_for_function(
                "(() => { const a = document.querySelector('#sample audio');"
                " return a.readyState >= 2 && a.duration > 0 && !a.error; })()"
            )
            turn_id = page.get_attribute("#sample audio", "data-turn")
            assert any(f"GET /audio/{turn_id}.flac" in line and (" 200 " in line or " 206 " in line) for line in log)

            first, second = queue[0], queue[1]
            page.click("#queue li:nth-child(1)")
            wait_for_sample(page, first)
            page.keyboard.press("a")  # accept; the page moves on to the next unjudged sample
            wait_for_sample(page, second)
            page.keyboard.press("1")  # tick the first reason tag
            page.fill("#comment", "flat voice")
            page.click("#reject")
            page.wait_for_selector(f"#queue li[data-id='{second}'][data-decision='reject']")

            page.reload()
            page.wait_for_selector(f"#queue li[data-id='{first}'][data-decision='accept']")
            page.wait_for_selector(f"#queue li[data-id='{second}'][data-decision='reject']")
            page.click(f"#queue li[data-id='{second}']")
            wait_for_sample(page, second)
            page.wait_for_function("document.querySelector('#comment').value === 'flat voice'")
            assert page.is_checked("#reason-wrong_emotion")
            assert "judged 2 of" in page.inner_text("#progress-text")
            assert errors == []
        finally:
            browser.close()
    rows = {r["sample_id"]: r for r in JudgementStore(copy).all("alice")}
    assert rows[first]["decision"] == "accept"
    assert (rows[second]["decision"], rows[second]["reasons"], rows[second]["comment"]) == (
        "reject", ["wrong_emotion"], "flat voice",
    )  # fmt: skip
