"""`opens2s-data verify` passes on real build output and fails on corrupted copies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from pipeline.verify import verify

pytestmark = pytest.mark.slow


def _copy(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    return copy


def _shard_with_rows(out: Path) -> Path:
    for path in sorted((out / "data").glob("*.parquet")):
        if pq.read_table(path).num_rows:
            return path
    pytest.skip("the tiny build kept no dialogue")


def test_verify_passes_on_a_real_build(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    problems, counts = verify(built[0])
    assert problems == []
    assert counts["requested"] == 2 and counts["kept"] + counts["rejected"] == 2
    result = run_cli("verify", str(built[0]), timeout=120)
    assert result.returncode == 0 and "ok:" in result.stdout


def test_truncated_shard_fails(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out = _copy(built, tmp_path)
    shard = _shard_with_rows(out)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    problems, _ = verify(out)
    assert any("unreadable Parquet" in p for p in problems)
    result = run_cli("verify", str(out), timeout=120)
    assert result.returncode == 1 and "problem:" in result.stderr


def test_duplicated_row_fails(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out = _copy(built, tmp_path)
    shard = _shard_with_rows(out)
    table = pq.read_table(shard)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), shard)
    problems, _ = verify(out)
    assert any("duplicate kept ids" in p for p in problems)
    assert any("rows but its stats say" in p for p in problems)


def test_missing_audio_fails(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out = _copy(built, tmp_path)
    shard = _shard_with_rows(out)
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["turns"][0]["audio"]["bytes"] = b""
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    problems, _ = verify(out)
    assert any("audio does not decode" in p for p in problems)


def test_missing_shard_and_lost_dialogue_fail(
    built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out = _copy(built, tmp_path)
    (out / "rejects" / "rejects-00001-of-00002.parquet").unlink()
    problems, _ = verify(out)
    assert any("shard 1: missing rejects" in p for p in problems)
    assert any("neither kept nor rejected" in p for p in problems)
