"""A transient failure never costs a dialogue: outages are retried on resume, gate rejections never."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray.exceptions as ray_errors
from conftest import run_cli, write_recipe
from faultproxy import FaultProxy

from pipeline.adapters.llm_client import ChatClient, LLMError
from pipeline.catalogs import load_catalogs
from pipeline.failures import PERMANENT, TRANSIENT, classify
from pipeline.io import shards
from pipeline.io.shards import OutputFolder
from pipeline.recipe import LLMConfig, load_recipe
from pipeline.records import Dialogue, Reject, dialogue_id
from pipeline.stages.base import BuildContext, Stage
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import DialogueWriter, add_turns, request_seed

# --- the classifier -------------------------------------------------------------------------------


class APIConnectionError(Exception):  # named like openai's: the classifier matches class names
    pass


class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError
    pass


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


def _wrapped(err: BaseException) -> RuntimeError:
    try:
        raise err
    except BaseException as inner:  # noqa: BLE001
        try:
            raise RuntimeError("the TTS server is unreachable") from inner
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), TRANSIENT),
        (ConnectionResetError(), TRANSIENT),
        (TimeoutError("read timed out"), TRANSIENT),
        (APIConnectionError("Connection error."), TRANSIENT),
        (StatusError(429), TRANSIENT),
        (StatusError(503), TRANSIENT),
        (StatusError(400), PERMANENT),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), TRANSIENT),
        (RuntimeError("CUDA error: out of memory"), TRANSIENT),
        (ray_errors.RayTaskError("tts", "traceback", ConnectionResetError()), TRANSIENT),  # Ray keeps `.cause`
        (ray_errors.RayTaskError("tts", "traceback", ValueError("bad shape")), PERMANENT),
        (ray_errors.ActorDiedError(), TRANSIENT),
        (_wrapped(ConnectionResetError()), TRANSIENT),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/mnt/nfs/voice.wav"), TRANSIENT),
        (OSError(errno.ESTALE, "Stale file handle", "/mnt/nfs/model.bin"), TRANSIENT),
        (OSError(errno.EACCES, "Permission denied", "/data/x"), PERMANENT),
        (LLMError("HTTP 400: prompt too long", transient=False), PERMANENT),
        (LLMError("APIConnectionError: Connection error.", transient=True), TRANSIENT),
        (ValueError("could not broadcast input array"), PERMANENT),
        (KeyError("speaker"), PERMANENT),
        ("CUDA out of memory while decoding", TRANSIENT),
        ("prompt is longer than the model's context", PERMANENT),
    ],
)
def test_classify(err: BaseException | str, kind: str) -> None:
    assert classify(err) == kind


class _Crashing(Stage):
    name = "tts"

    def __init__(self, err: Exception) -> None:
        self.err = err

    def process(self, dialogue: Dialogue) -> Dialogue:
        raise self.err


def _dialogues(tmp_path: Path, n: int, **overrides: Any) -> tuple[Any, list[Dialogue]]:
    recipe = load_recipe(write_recipe(tmp_path, num_dialogues=n, shard_size=n, text_only=True, **overrides))
    ctx = BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=tmp_path)
    sampler = ScenarioSampler(ctx)
    dialogues = [sampler.new(i) for i in range(n)]
    return recipe, dialogues


def test_stage_errors_are_classified(tmp_path: Path) -> None:
    _, (first, second) = _dialogues(tmp_path, 2)
    first = _Crashing(OSError(errno.EIO, "Input/output error", "/mnt/nfs/voice.onnx")).run(first)
    second = _Crashing(ValueError("bad shape")).run(second)
    assert first.reject is not None and first.reject.reason == "tts_error" and first.transient
    assert second.reject is not None and second.reject.kind == PERMANENT and not second.transient


def test_outage_budget_is_not_part_of_the_recipe_identity(tmp_path: Path) -> None:
    short = load_recipe(write_recipe(tmp_path, name="a", reliability={"outage_budget_s": 5}))
    long = load_recipe(write_recipe(tmp_path, name="a", reliability={"outage_budget_s": 3600}))
    assert short.reliability.outage_budget_s == 5 and short.fingerprint() == long.fingerprint()


# --- the shard merge ------------------------------------------------------------------------------


def _written(d: Dialogue, text: str) -> Dialogue:
    add_turns(d, [type("W", (), {"text": f"{text} user says hello there friend", "strategy": ""})(),
                  type("W", (), {"text": f"{text} assistant answers kindly", "strategy": ""})()], "calm")  # fmt: skip
    d.timings["dialogue"] = 0.5
    return d


def _outcome(d: Dialogue, how: str) -> Dialogue:
    if how == "kept":
        return _written(d, d.id)
    kind = TRANSIENT if how == "transient" else PERMANENT
    d.reject = Reject("dialogue", "llm_request_failed" if kind == TRANSIENT else "text_too_short", kind=kind)
    return d


def _files(out: OutputFolder) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    name = out.shard_name(0)
    data = pq.read_table(out.root / "data" / f"train-{name}.parquet").to_pylist()
    rejects = pq.read_table(out.root / "rejects" / f"rejects-{name}.parquet").to_pylist()
    stats = json.loads((out.root / "stats" / "shard-00000.json").read_text())
    stats.pop("wall_s")
    return data, rejects, stats


def test_merge_is_exact_and_survives_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, _ = _dialogues(tmp_path, 4)
    final = ["kept", "permanent", "kept", "kept"]
    reference = OutputFolder(tmp_path / "reference", recipe)
    reference.write_shard(0, [_outcome(d, how) for d, how in zip(_dialogues(tmp_path, 4)[1], final, strict=True)], 1.0)

    out = OutputFolder(tmp_path / "out", recipe)
    first = ["kept", "permanent", "transient", "transient"]
    out.write_shard(0, [_outcome(d, how) for d, how in zip(_dialogues(tmp_path, 4)[1], first, strict=True)], 1.0)
    assert out.pending_shards() == [0] and out.todo(0) == [2, 3] and out.pending_shards(retry_transient=False) == []
    assert out.totals()["transient"] == 2
    assert [i for i, _ in out.kept_texts()] == [dialogue_id(recipe.seed, 0)]

    retried = [_outcome(d, "kept") for d in _dialogues(tmp_path, 4)[1][2:]]
    real_write = shards.atomic_write_json

    def crash_at_the_marker(path: Path, obj: Any) -> None:
        if path.suffix == ".done":
            raise OSError(errno.EIO, "killed")
        real_write(path, obj)

    monkeypatch.setattr(shards, "atomic_write_json", crash_at_the_marker)
    with pytest.raises(OSError, match="killed"):
        out.write_shard(0, retried, 2.0)
    monkeypatch.setattr(shards, "atomic_write_json", real_write)
    # data, rejects and stats are merged already; the old marker still says what to merge
    assert out.todo(0) == [2, 3]
    assert [i for i, _ in out.kept_texts()] == [dialogue_id(recipe.seed, 0)]  # not the half-merged rows

    out.write_shard(0, retried, 2.0)  # the resume redoes the merge
    assert out.pending_shards() == [] and out.todo(0) == []
    assert _files(out) == _files(reference)
    assert json.loads((out.root / "stats" / "shard-00000.json").read_text())["wall_s"] == 3.0


class _BadRequest(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"error": {"message": "the prompt is too long"}}'
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_dialogue_writer_classifies_request_failures(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadRequest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    outcomes = []
    try:
        for port, budget in (
            (server.server_address[1], 5.0),
            (refused.getsockname()[1], 0.0),
            (refused.getsockname()[1], 0.6),
        ):
            url = f"http://127.0.0.1:{port}/v1"
            recipe, (dialogue,) = _dialogues(
                tmp_path, 1, llm={"backend": "openai", "base_url": url, "request_retries": 0, "cache_requests": False},
                reliability={"outage_budget_s": budget, "probe_max_interval_s": 0.2},
            )  # fmt: skip
            writer = DialogueWriter(BuildContext(recipe, load_catalogs(recipe), tmp_path, url))
            writer.setup()
            reject = writer.run(dialogue).reject
            assert reject is not None
            outcomes.append((reject.reason, reject.kind))
    finally:
        server.shutdown()
        refused.close()
    assert outcomes == [
        ("llm_request_failed", PERMANENT),  # the server answered: 400 is about the request, not an outage
        ("llm_request_failed", TRANSIENT),  # refused, no outage wait
        ("llm_endpoint_down", TRANSIENT),  # refused for longer than reliability.outage_budget_s
    ]


# --- the LLM client's outage wait -----------------------------------------------------------------


@pytest.mark.slow
def test_client_waits_out_an_outage_then_fails_fast(llm_url: str) -> None:
    with FaultProxy(llm_url, rate=0.0) as proxy:
        cfg = LLMConfig(backend="openai", base_url=proxy.url, timeout_s=10.0, request_retries=0)
        client = ChatClient(cfg, proxy.url, outage_budget_s=20.0, probe_max_interval_s=1.0)
        proxy.down = True
        threading.Timer(2.0, lambda: setattr(proxy, "down", False)).start()
        assert client.chat([{"role": "user", "content": "Say hi."}], seed=1, max_tokens=5) is not None
        assert client.probes >= 2 and proxy.counts["refused"] >= 3  # the request, then probes with backoff

        short = ChatClient(cfg, proxy.url, outage_budget_s=1.0, probe_max_interval_s=0.5)
        proxy.down = True
        with pytest.raises(LLMError) as failed:
            short.chat([{"role": "user", "content": "Say hi."}], seed=2, max_tokens=5)
        assert failed.value.transient and failed.value.outage and "outage_budget_s" in str(failed.value)
        sent = len(proxy.arrived)
        started = time.monotonic()
        with pytest.raises(LLMError) as again:
            short.chat([{"role": "user", "content": "Say hello."}], seed=3, max_tokens=5)
        assert again.value.outage and len(proxy.arrived) == sent  # one probe, no request to a dead endpoint
        assert time.monotonic() - started < 5.0
        proxy.down = False
        assert short.chat([{"role": "user", "content": "Say hello."}], seed=3, max_tokens=5) is not None


# --- whole builds ---------------------------------------------------------------------------------


def _seed_of(body: bytes) -> int:
    return int(json.loads(body)["seed"])


def _seeds(seed: int, index: int, exchanges: int = 1, attempts: int = 3) -> set[int]:
    """The request seeds of dialogue `index` in turns mode (every step and repair attempt)."""
    steps = [f"{role}{n}" for n in range(exchanges) for role in ("u", "a")]
    return {request_seed(dialogue_id(seed, index), step, a) for step in steps for a in range(attempts)}


def _outcomes(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every dialogue's rows: its kept row, or its reject rows, by id."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("data/*.parquet")) + sorted(out.glob("rejects/*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows.setdefault(row["id"], []).append(row)
    return rows


def _transient_ids(out: Path) -> set[str]:
    return {
        row["id"]
        for path in out.glob("rejects/*.parquet")
        for row in pq.read_table(path).to_pylist()
        if row["level"] == "dialogue" and row["kind"] == TRANSIENT
    }


def _recipe(folder: Path, proxy: FaultProxy, name: str, **overrides: Any) -> Path:
    """A recipe whose LLM is behind `proxy`, waiting out an outage for 1 s only.

    llama.cpp's prompt cache makes an answer depend on the slot's previous prompt (measured: 3 of 4
    dialogues changed when the same requests came in another order), so two builds agree only
    without it: `cache_prompt: false`.
    """
    llm = {"backend": "openai", "base_url": proxy.url, "request_retries": overrides.pop("request_retries", 1)}
    llm["extra_body"] = {"cache_prompt": False}
    reliability = {"outage_budget_s": 1.0, "probe_max_interval_s": 0.5}
    return write_recipe(folder, name=name, llm=llm, reliability=reliability, **overrides)


@pytest.mark.slow
def test_outage_is_retried_on_resume_and_nothing_else(tmp_path: Path, llm_url: str) -> None:
    with FaultProxy(llm_url, rate=0.0) as proxy:
        recipe = _recipe(tmp_path, proxy, "outage", num_dialogues=4, shard_size=2, text_only=True)
        reference, out = tmp_path / "reference", tmp_path / "out"
        result = run_cli("build", str(recipe), "--out", str(reference))
        assert result.returncode == 0, result.stderr[-2000:]

        outage_starts = _seeds(3, 2)  # the endpoint goes down when dialogue 2 is first asked for

        def go_down(body: bytes) -> bool:
            if _seed_of(body) in outage_starts:
                proxy.down = True
            return proxy.down

        proxy.refuse = go_down
        reference_answers = len(proxy.answered)  # the reference build's requests are not this folder's
        first = run_cli("build", str(recipe), "--out", str(out))
        assert first.returncode == 1, first.stderr[-2000:]
        assert "failed transiently" in first.stderr and "re-run the same command" in first.stderr
        transient = _transient_ids(out)
        assert transient, first.stderr[-2000:]
        untouched = set(_outcomes(out)) - transient
        assert untouched, "the outage hit every dialogue"
        checked = run_cli("verify", str(out))
        assert checked.returncode == 1 and f"{len(transient)} dialogue(s) failed transiently" in checked.stderr
        assert proxy.counts["refused"] > len(transient)  # the client probed the dead endpoint

        proxy.refuse, proxy.down = None, False
        answered, before = set(proxy.answered[reference_answers:]), len(proxy.arrived)
        second = run_cli("build", str(recipe), "--out", str(out))
        assert second.returncode == 0, second.stderr[-2000:]
        assert f"retried {len(transient)} dialogue(s)" in second.stderr
        resent, resent_seeds = proxy.arrived[before:], {_seed_of(body) for body in proxy.bodies[before:]}
    print(f"outage: run 1 left {len(transient)} transient reject(s) {sorted(transient)}, {len(untouched)} untouched; "
          f"{proxy.counts['refused']} connection(s) refused; run 2 sent {len(resent)} request(s), "
          f"{len(answered & set(resent))} of them answered before")  # fmt: skip
    assert resent and not answered & set(resent), "a finished request was sent again"
    indices = {int(i.rsplit("-", 1)[1]) for i in transient}
    assert resent_seeds <= set().union(*(_seeds(3, i) for i in indices))  # only the transient dialogues ran

    checked = run_cli("verify", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not _transient_ids(out)
    stats = json.loads((out / "manifest.json").read_text())["counts"]
    assert stats["kept"] + stats["rejected"] == 4 and stats["transient"] == 0
    after, expected = _outcomes(out), _outcomes(reference)
    assert set(after) == set(expected)
    for dialogue in untouched:
        assert after[dialogue] == expected[dialogue], _differences(after[dialogue], expected[dialogue])


def _differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """Which fields of two dialogues' rows differ (for a readable failure)."""
    pairs = [(k, x.get(k), y.get(k)) for x, y in zip(a, b, strict=False) for k in x if x.get(k) != y.get(k)]
    return f"{len(a)} vs {len(b)} rows; " + "; ".join(f"{k}: {x!r} != {y!r}"[:600] for k, x, y in pairs)


@pytest.mark.slow
def test_gate_rejection_is_never_retried(tmp_path: Path, llm_url: str) -> None:
    with FaultProxy(llm_url, rate=0.0) as proxy:
        # One shard (the retry merges into the shard that holds the gate rejection); every clip fails a
        # signal gate (deterministic, unlike a WER gate, which a perfect transcript passes).
        gates = {"min_duration_s": 100.0, "emotion_check": False}
        recipe = _recipe(tmp_path, proxy, "gated", num_dialogues=2, shard_size=2, gates=gates, request_retries=0)
        out = tmp_path / "out"
        proxy.refuse = lambda body: _seed_of(body) in _seeds(3, 1)  # only dialogue 1's requests fail
        first = run_cli("build", str(recipe), "--out", str(out))
        assert first.returncode == 1, first.stderr[-2000:]
        before = _outcomes(out)
        gated, failed = before[dialogue_id(3, 0)][0], before[dialogue_id(3, 1)][0]
        assert (gated["stage"], gated["reason"], gated["kind"]) == ("gates", "too_short", PERMANENT)
        assert (failed["reason"], failed["kind"]) == ("llm_endpoint_down", TRANSIENT)

        sent = len(proxy.bodies)
        skipped = run_cli("build", str(recipe), "--out", str(out), "--no-retry-transient")
        assert skipped.returncode == 0 and "not retried (--no-retry-transient)" in skipped.stderr
        assert len(proxy.bodies) == sent and _outcomes(out) == before

        proxy.refuse = None
        second = run_cli("build", str(recipe), "--out", str(out))
        assert second.returncode == 0, second.stderr[-2000:]
        seeds = {_seed_of(body) for body in proxy.bodies[sent:]}
    assert seeds and seeds <= _seeds(3, 1)  # dialogue 0's gate rejection was not asked for again
    after = _outcomes(out)
    assert after[dialogue_id(3, 0)] == before[dialogue_id(3, 0)]
    assert after[dialogue_id(3, 1)][0]["kind"] == PERMANENT and not _transient_ids(out)
