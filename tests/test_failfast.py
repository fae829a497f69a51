"""Fail fast: a stage that fails on every item stops the build; a re-run after the fix resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from pipeline.failfast import FailFastError, FailFastMonitor
from pipeline.recipe import load_recipe
from pipeline.records import Dialogue, Reject
from pipeline.verify import verify


def _dialogue(index: int, reason: str | None) -> Dialogue:
    reject = Reject(stage=reason.split("_")[0], reason=reason, detail="boom") if reason else None
    return Dialogue(id=f"d{index}", index=index, shard=0, seed=0, scenario=None, reject=reject)  # type: ignore[arg-type]


def _watch(tmp_path: Path, reasons: list[str | None], **fail_fast: object) -> list[str]:
    monitor = FailFastMonitor(load_recipe(write_recipe(tmp_path, fail_fast=fail_fast)))
    return [d.id for d in monitor.watch(iter(_dialogue(i, r) for i, r in enumerate(reasons)))]


def test_first_items_failing_alike_stop_before_anything_is_released(tmp_path: Path) -> None:
    released: list[str] = []
    monitor = FailFastMonitor(load_recipe(write_recipe(tmp_path, fail_fast={"first_items": 3})))
    stream = iter([_dialogue(0, "tts_error"), _dialogue(1, "wer_too_high"), _dialogue(2, "tts_error"),
                   _dialogue(3, "tts_error"), _dialogue(4, None)])  # fmt: skip
    with pytest.raises(FailFastError, match=r"stage tts \(tts.backend espeak\) fails: the first 3 .* tts_error: boom"):
        released.extend(d.id for d in monitor.watch(stream))
    assert released == []  # held back: no shard is written with them


def test_a_working_build_is_released_in_order_and_never_stopped(tmp_path: Path) -> None:
    reasons = ["tts_error", "tts_error", None, "gates_error", None, "wer_too_high"]
    assert _watch(tmp_path, reasons, first_items=3) == [f"d{i}" for i in range(6)]
    assert _watch(tmp_path, ["tts_error"] * 2, first_items=3) == ["d0", "d1"]  # shorter than the probation
    assert _watch(tmp_path, ["tts_error"] * 5, first_items=0, window=10) == [f"d{i}" for i in range(5)]


def test_error_share_in_the_window_stops_a_build_that_went_bad(tmp_path: Path) -> None:
    reasons: list[str | None] = [None] * 4 + ["units_error"] * 3
    with pytest.raises(FailFastError, match=r"3 of the last 4 dialogues failed with units_error"):
        _watch(tmp_path, reasons, first_items=2, window=4, max_error_share=0.5)


def test_corrupt_asr_model_stops_the_build_and_the_fix_resumes(tmp_path: Path, llm_url: str) -> None:
    """A real misconfiguration: the ASR folder the recipe names exists but its model.bin is damaged
    (an interrupted copy). Every dialogue fails at the gates; the build stops after `first_items`."""
    from pipeline.adapters.asr_whisper import default_model_dir

    asr = tmp_path / "whisper"
    shutil.copytree(default_model_dir(), asr)
    (asr / "model.bin").write_bytes(b"\0" * 4096)
    recipe = write_recipe(
        tmp_path, num_dialogues=2, shard_size=1, fail_fast={"first_items": 2}, gates={"max_wer": 0.6},
        asr={"model_path": str(asr)}, llm={"backend": "openai", "base_url": llm_url},
    )  # fmt: skip
    out = tmp_path / "out"
    failed = run_cli("build", str(recipe), "--out", str(out))
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert len(errors) == 1, failed.stderr
    assert "stage gates (asr.backend faster-whisper" in errors[0] and "setup failed" in errors[0], errors[0]
    assert not list((out / "completions").glob("*.done"))  # none of the failed dialogues was written

    shutil.copy(default_model_dir() / "model.bin", asr / "model.bin")  # the fix: the recipe is unchanged
    fixed = run_cli("build", str(recipe), "--out", str(out))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "resumed" in fixed.stderr
    problems, counts = verify(out)
    assert problems == [] and counts["kept"] + counts["rejected"] == 2
    reasons = json.loads((out / "manifest.json").read_text())["counts"]["rejected_by_reason"]
    assert not [r for r in reasons if r.endswith("_error")], reasons


def test_verify_fails_an_empty_dataset_and_warns_on_a_dominant_reason(tmp_path: Path) -> None:
    """A build that ran to the end with every dialogue rejected by one stage error: exit 0 before,
    now `verify` reports it as a problem and names the dominant reason."""
    from pipeline.catalogs import load_catalogs
    from pipeline.io.shards import OutputFolder
    from pipeline.stages.base import BuildContext
    from pipeline.stages.s1_scenarios import ScenarioSampler
    from pipeline.verify import dominant_reject_warnings

    recipe = load_recipe(write_recipe(tmp_path, num_dialogues=4, shard_size=2))
    out = OutputFolder(tmp_path / "out", recipe)
    out.prepare(overwrite=False)
    sampler = ScenarioSampler(BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=out.root))
    for shard in range(recipe.num_shards):
        dialogues = [sampler.new(i) for i in out.shard_indices(shard)]
        for d in dialogues:
            d.reject = Reject(stage="tts", reason="tts_error", detail="RuntimeError: voice missing")
        out.write_shard(shard, dialogues, 0.1)
    out.write_manifest({"recipe": recipe.model_dump(mode="json"), "recipe_hash": recipe.fingerprint(),
                        "seed": recipe.seed, "num_dialogues": 4, "num_shards": 2, "status": "complete",
                        "counts": out.totals()})  # fmt: skip
    problems, counts = verify(out.root)
    assert counts["kept"] == 0
    assert problems == [
        "no dialogue was kept: all 4 were rejected (most common reason: tts_error); the dataset is empty"
    ]
    warnings = dominant_reject_warnings(out.root)
    assert len(warnings) == 1 and warnings[0].startswith("4 of 4 requested dialogues were rejected for tts_error")
