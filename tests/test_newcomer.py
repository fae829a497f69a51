"""A newcomer's first minutes: output file modes, start-up caches, a quiet console, the batching LLM server."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.io.files import atomic_write_bytes, current_umask


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "shared.bin", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.bin", b"y")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
    assert (tmp_path / "shared.bin").read_bytes() == b"x"
    assert not list(tmp_path.glob(".*.tmp"))


def test_build_output_is_readable_by_others(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = built
    expected = 0o666 & ~current_umask()  # the build inherits the test session's umask
    assert expected != 0o600, "run the tests with a umask that lets others read (e.g. 022)"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    private = [p.relative_to(out) for p in files if stat.S_IMODE(p.stat().st_mode) == 0o600]
    assert not private, f"files written 0600: {private}"
    assert {p.relative_to(out): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.relative_to(out): oct(expected) for p in files
    }


def test_start_up_cache_keys_by_inputs_and_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io import cache

    calls: list[str] = []

    def compute(tag: str) -> bytes:
        calls.append(tag)
        return tag.encode()

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "c"))
    assert cache.cached_bytes("k", {"a": 1}, lambda: compute("first")) == (b"first", False)
    assert cache.cached_bytes("k", {"a": 1}, lambda: compute("again")) == (b"first", True)
    assert cache.cached_bytes("k", {"a": 2}, lambda: compute("other")) == (b"other", False)
    assert calls == ["first", "other"]
    assert len(list((tmp_path / "c" / "k").glob("k-*.bin"))) == 2
    monkeypatch.setenv(cache.CACHE_ENV, "off")
    assert cache.cached_bytes("k", {"a": 1}, lambda: compute("uncached")) == (b"uncached", False)


def test_codebook_and_emotion_calibration_come_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from conftest import write_recipe

    import pipeline.stages.s4_gates as s4
    import pipeline.stages.s5_units as s5
    from pipeline.catalogs import load_catalogs
    from pipeline.io import cache
    from pipeline.recipe import load_recipe

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    recipe = load_recipe(write_recipe(tmp_path))
    catalogs = load_catalogs(recipe)
    first = s5.fit_dataset_codebook(recipe, catalogs, tmp_path / "run1")
    monkeypatch.setattr(s5, "fit_codebook", None)  # a second fit would fail: it must come from the cache
    second = s5.fit_dataset_codebook(recipe, catalogs, tmp_path / "run2")
    assert second.version == first.version and (tmp_path / "run2" / s5.CODEBOOK_PATH).exists()

    monkeypatch.setattr(s4, "CALIBRATION_SENTENCES", s4.CALIBRATION_SENTENCES[:2])  # a smaller calibration set
    speakers = s4.calibration_speakers(catalogs, 2)
    fitted, hit = s4.calibrate_emotion_check(catalogs, speakers)
    loaded, hit_again = s4.calibrate_emotion_check(catalogs, speakers)
    assert (hit, hit_again) == (False, True)
    assert loaded.labels == fitted.labels and np.array_equal(loaded.prototypes, fitted.prototypes)
    _, other = s4.calibrate_emotion_check(catalogs, speakers[:1])  # other speakers: another entry
    assert other is False


def test_console_has_only_our_lines(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    import re

    _, result = built
    third_party = re.compile(
        r"core_worker|raylet|\.py:\d+ -- |\(MapWorker|\(pid=|Token authentication|Progress bars|"
        r"SetuptoolsDeprecationWarning|srv |llama_|ggml|WARNING|INFO"
    )
    noisy = [line for line in (result.stderr + result.stdout).splitlines() if third_party.search(line)]
    assert not noisy, noisy
    assert "start-up: Ray start" in result.stdout and "start-up: first dialogue" in result.stdout


def test_text_gate_emotion_prototypes_come_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from pipeline.io import cache
    from pipeline.recipe import LLMConfig, TextGatesConfig
    from pipeline.stages.s2_text_gates import TextGates

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    sentences = {"happy": ["I got the job and I am thrilled."], "sad": ["My grandmother passed away last night."]}
    fresh = TextGates(TextGatesConfig(), LLMConfig(), sentences)
    computed = fresh.emotion_scores("We won the final and I cannot stop smiling.")
    assert computed.argmax() == 0
    again = TextGates(TextGatesConfig(), LLMConfig(), sentences)
    monkeypatch.setattr(again, "embed", lambda texts: fresh.embed(texts) if texts != sentences["happy"] else None)
    assert np.array_equal(again.emotion_scores("We won the final and I cannot stop smiling."), computed)
