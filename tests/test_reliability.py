"""Faults, crashes and bad input lose nothing."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, REPO, processes_matching, run_cli, write_recipe
from faultproxy import FAULTS, FaultProxy

from pipeline.adapters.llm_client import ChatClient, LLMError
from pipeline.recipe import LLMConfig, RecipeError
from pipeline.verify import verify

pytestmark = pytest.mark.slow


def _accounted(out: Path, requested: int) -> None:
    problems, counts = verify(out)
    assert problems == []
    assert counts["kept"] + counts["rejected"] == requested


def test_every_fault_kind_becomes_text_or_llm_error(llm_url: str) -> None:
    with FaultProxy(llm_url, rate=0.6, hang_s=3.0, seed=1) as proxy:
        client = ChatClient(
            LLMConfig(backend="openai", base_url=proxy.url, timeout_s=1.5, request_retries=2), proxy.url
        )
        outcomes = []
        for seed in range(30):
            try:
                outcomes.append(bool(client.chat([{"role": "user", "content": "Say hi."}], seed=seed, max_tokens=5)))
            except LLMError:
                outcomes.append(False)
    assert set(FAULTS) <= set(proxy.counts), proxy.counts
    assert sum(outcomes) >= 15  # retries recover most requests even at a 60% fault rate


def test_build_through_20_percent_faults_accounts_for_every_dialogue(tmp_path: Path, llm_url: str) -> None:
    with FaultProxy(llm_url, rate=0.2, hang_s=5.0, seed=2) as proxy:
        recipe = write_recipe(
            tmp_path,
            num_dialogues=4,
            shard_size=2,
            llm={"backend": "openai", "base_url": proxy.url, "timeout_s": 3.0},
            reliability={"outage_budget_s": 10.0},
        )
        result = run_cli("build", str(recipe), "--out", str(tmp_path / "out"))
        if result.returncode == 1 and "failed transiently" in result.stderr:
            # a request whose faults outlasted every retry is a transient reject: the resume retries it
            result = run_cli("build", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert sum(n for fault, n in proxy.counts.items() if fault != "none") >= 1, proxy.counts
    _accounted(tmp_path / "out", 4)


def _kill_everything(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes, as a crashed machine would lose them
    except ProcessLookupError:
        pass


def test_five_random_sigkills_then_resume(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, name="kills", num_dialogues=6, shard_size=1)
    out = tmp_path / "out"
    rng = random.Random(5)
    kills = 0
    while kills < 5:
        cmd = [*CLI, "build", str(recipe), "--out", str(out)]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, **quiet)
        try:
            proc.wait(timeout=rng.uniform(3.0, 25.0))
            break  # finished before this kill
        except subprocess.TimeoutExpired:
            _kill_everything(proc)
            kills += 1
    assert kills >= 3, "the build finished too fast to be interrupted"
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    _accounted(out, 6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["requested"] == 6


def test_killed_ray_worker_is_retried(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, name="worker", num_dialogues=4, shard_size=1)
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "build", str(recipe), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        if list((out / "completions").glob("*.done")):
            victim = next(iter(processes_matching(b"MapWorker(MapBatches(RayStage))")), None)
        time.sleep(0.2)
    assert victim is not None, "no stage worker to kill while the build ran"
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    _accounted(out, 4)


def test_full_disk_while_writing_a_shard_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.io.files as files
    from pipeline.build import build

    recipe = write_recipe(tmp_path, name="disk", num_dialogues=2, shard_size=1)
    out = tmp_path / "out"
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if "/data/.train-" in os.readlink(f"/proc/self/fd/{fd}"):  # a shard's data file, mid-write
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    # Shards are written by Ray writer tasks in worker processes, which inherit this environment: a
    # sitecustomize on their PYTHONPATH fills the disk there (and the patch covers this process too).
    hook = tmp_path / "full-disk-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        "_fsync = os.fsync\n"
        "def _full_disk(fd):\n"
        "    if '/data/.train-' in os.readlink(f'/proc/self/fd/{fd}'):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    _fsync(fd)\n"
        "os.fsync = _full_disk\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build(recipe, out)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".train-*"))
    assert not list(out.glob("data/*.parquet")) and not list(out.glob("completions/*"))
    monkeypatch.undo()
    result = build(recipe, out)
    assert result.complete
    _accounted(out, 2)


def test_empty_catalog_and_unwritable_folder(tmp_path: Path) -> None:
    from pipeline.catalogs import load_catalogs
    from pipeline.recipe import load_recipe

    catalog = tmp_path / "empty-catalog.yaml"
    catalog.write_text(
        "topics: []\npersonas: [{name: A, age_group: adult, gender: female, occupation: x, style: warm}]\n"
    )
    with pytest.raises(RecipeError, match="the topic catalog is empty"):
        load_catalogs(load_recipe(write_recipe(tmp_path, scenarios={"catalog": str(catalog)})))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("build", str(write_recipe(tmp_path)), "--out", str(blocker / "out"), timeout=120)
    assert result.returncode == 2 and "not writable" in result.stderr


def test_non_utf8_recipe(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = run_cli("build", str(path), "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and "not UTF-8" in result.stderr
    assert not (tmp_path / "out").exists()
