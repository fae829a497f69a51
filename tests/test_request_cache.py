"""A resumed build replays finished LLM requests and sends none of them again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, REPO, run_cli, write_recipe
from faultproxy import FaultProxy

from pipeline.io.request_cache import RequestCache
from pipeline.verify import verify

pytestmark = pytest.mark.slow


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    assert cache.get(payload) is None
    cache.put(payload, "hello")
    assert RequestCache(tmp_path / "c.sqlite").get(payload) == "hello"
    assert cache.get({**payload, "seed": 2}) is None
    assert len(cache) == 1


def test_resume_after_kill_resends_no_finished_request(tmp_path: Path, llm_url: str) -> None:
    with FaultProxy(llm_url, rate=0.0) as proxy:
        recipe = write_recipe(
            tmp_path,
            num_dialogues=3,
            shard_size=3,  # one shard: the kill always lands inside unfinished work
            scenarios={"min_exchanges": 2, "max_exchanges": 2},
            llm={"backend": "openai", "base_url": proxy.url},
        )
        out = tmp_path / "out"
        cmd = [*CLI, "build", str(recipe), "--out", str(out)]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, **quiet)
        deadline = time.monotonic() + 300
        while len(proxy.arrived) < 5 and time.monotonic() < deadline:
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        # the writer is sequential: when request 5 arrives, requests 1-4 were answered and cached
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = set(proxy.arrived[:4])
        first_run = len(proxy.arrived)
        time.sleep(1.0)
        result = run_cli("build", str(recipe), "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        resent = finished & set(proxy.arrived[first_run:])
    assert not resent, f"{len(resent)} finished request(s) were sent again"
    assert len(RequestCache(out / "cache" / "llm.sqlite")) >= len(set(proxy.arrived))
    assert verify(out)[0] == []
