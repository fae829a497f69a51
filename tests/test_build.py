"""End to end: real builds on the embedded backends, resume, SIGKILL, and the data contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO, processes_matching, run_cli, write_recipe

from pipeline.adapters.llm_server import SERVER_MODULE
from pipeline.verify import verify

pytestmark = pytest.mark.slow


def _ids(out: Path) -> tuple[list[str], list[str]]:
    kept = [i for f in sorted((out / "data").glob("*.parquet")) for i in pq.read_table(f).column("id").to_pylist()]
    rejected = [
        row["id"]
        for f in sorted((out / "rejects").glob("*.parquet"))
        for row in pq.read_table(f).to_pylist()
        if row["level"] == "dialogue"
    ]
    return kept, rejected


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_two_dialogue_build_accounts_for_every_dialogue(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = built
    assert "build summary" in result.stdout and "dialogues requested" in result.stdout
    kept, rejected = _ids(out)
    assert sorted(kept + rejected) == ["dlg-3-000000", "dlg-3-000001"]
    assert len(set(kept + rejected)) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["requested"] == 2
    assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 2
    assert manifest["versions"]["faster-whisper"] == "1.2.1"
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert len(list((out / "completions").iterdir())) == 2
    assert (out / "units" / "codebook.npz").exists()
    assert not list(out.rglob("*.tmp"))
    own_server = f"{sys.executable}\0-m\0{SERVER_MODULE}".encode()  # this venv's, not another checkout's
    # Orphans only: a server that outlived its build is re-parented to init; servers of other builds
    # running on the machine at the same time (another test session) still have their parent.
    leftover = [pid for pid in processes_matching(own_server) if _parent(pid) == 1]
    assert not leftover, "the embedded LLM server outlived the build"
    assert verify(out) == ([], {"requested": 2, "kept": len(kept), "rejected": len(rejected)})


def test_rows_follow_the_data_contract(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = built
    rows = [row for f in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    for row in rows:
        assert row["llm_model"] and row["tts_backend"].startswith("espeak-ng") and row["units_codebook"]
        assert set(row["scenario"]) >= {"topic", "situation", "persona", "emotion", "speaker_id"}
        for n, turn in enumerate(row["turns"], start=1):
            assert turn["turn_id"] == f"{row['id']}-t{n:02d}"
            assert turn["role"] == ("user" if n % 2 else "assistant")
            assert turn["audio"]["bytes"][:4] == b"fLaC" and turn["sampling_rate"] == 16000
            assert turn["duration_s"] > 0.5 and turn["asr_text"] and turn["wer"] is not None
            if turn["role"] == "assistant":
                assert len(turn["speech_units"]) == pytest.approx(turn["duration_s"] * 12.5, abs=1.5)
            else:
                assert turn["emotion_measured"] == turn["emotion"]


def test_voices_fit_personas_and_user_turns_carry_their_labels(
    built: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Every kept dialogue's user voice fits its persona (gender, age group equal or adjacent) and each
    user turn carries the speaker's catalog labels and the measured F0 and speaking rate."""
    from pipeline.catalogs import load_catalogs
    from pipeline.recipe import Recipe
    from pipeline.records import AGE_GROUPS

    out, _ = built
    catalogs = load_catalogs(Recipe.model_validate(json.loads((out / "manifest.json").read_text())["recipe"]))
    rows = [row for f in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    for row in rows:
        persona, voice = row["scenario"]["persona"], catalogs.speaker(row["scenario"]["speaker_id"])
        assert persona["gender"] in ("nonbinary", voice.gender)
        assert abs(AGE_GROUPS.index(persona["age_group"]) - AGE_GROUPS.index(voice.age_group)) <= 1
        for turn in row["turns"]:
            if turn["role"] == "user":
                assert (turn["gender"], turn["age_group"], turn["accent"]) == (
                    voice.gender,
                    voice.age_group,
                    voice.accent,
                )
                assert 60 < turn["f0_median_hz"] < 400 and 1.0 < turn["speaking_rate_wps"] < 6.0, turn["turn_id"]


def test_output_loads_with_datasets_and_decodes_audio(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    datasets = pytest.importorskip("datasets")
    out, _ = built
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    audio_feature = ds.features["turns"].feature["audio"]
    assert isinstance(audio_feature, datasets.Audio) and audio_feature.sampling_rate == 16000
    if len(ds) == 0:
        pytest.skip("the tiny build kept no dialogue")
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"datasets decodes audio through torchcodec, which cannot load here ({err}); install ffmpeg")
    decoded = ds[0]["turns"][0]["audio"]
    samples = decoded.get_all_samples()
    assert samples.sample_rate == 16000
    assert samples.data.shape[-1] == pytest.approx(ds[0]["turns"][0]["duration_s"] * 16000, abs=2)


def test_rerun_resumes_without_rewriting(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = built
    recipe = out.parent / "two.yaml"
    before = {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 shard(s) written now" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before


def test_folder_of_another_recipe_is_refused(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = built
    other = write_recipe(out.parent, name="other", seed=99)
    listing = sorted(p.name for p in out.rglob("*"))
    result = run_cli("build", str(other), "--out", str(out), timeout=120)
    assert result.returncode == 2
    assert "another recipe's run" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in out.rglob("*")) == listing


def test_dead_llm_endpoint_is_one_clear_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, llm={"backend": "openai", "base_url": "http://127.0.0.1:9/v1"})
    result = run_cli("build", str(recipe), "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2
    assert "no OpenAI-compatible server answers at http://127.0.0.1:9/v1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_sigkill_mid_run_then_resume_gives_the_same_ids(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, name="kill", num_dialogues=4, shard_size=1)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*CLI, "build", str(recipe), "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "completions").glob("*.done")):
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.2)
    done_before = len(list((out / "completions").glob("*.done")))
    assert 1 <= done_before < 4, "no shard finished in time, or all did: nothing to interrupt"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's own processes, so the next run starts clean
    except ProcessLookupError:
        pass
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    kept, rejected = _ids(out)
    assert sorted(kept + rejected) == [f"dlg-3-{i:06d}" for i in range(4)]
    for shard in (out / "data").glob("*.parquet"):
        pq.read_table(shard)  # every visible shard is whole
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert verify(out)[0] == []


def test_text_only_build_runs_every_text_gate_and_keeps_no_near_duplicates(tmp_path: Path) -> None:
    """A real text-only build with the embedding checks on; a low near-duplicate threshold makes
    the dataset-wide dedup bite on real LLM text."""
    from itertools import combinations

    from pipeline.stages.s6_dedup import jaccard, shingles

    threshold = 0.12
    recipe = write_recipe(
        tmp_path, name="text", num_dialogues=8, shard_size=4, text_only=True,
        scenarios={"min_exchanges": 1, "max_exchanges": 2},
        text_gates={"emotion_check": True, "response_check": True, "situation_check": True, "emotion_margin": -0.2,
                    "near_duplicate_jaccard": threshold},
    )  # fmt: skip
    out = tmp_path / "out"
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify(out)[0] == []
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    rejects = [r for f in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) + sum(r["level"] == "dialogue" for r in rejects) == 8
    assert all(t["audio"] is None and t["text"] for r in rows for t in r["turns"])
    text_reasons = {"text_emotion_mismatch", "text_unresponsive", "text_too_short", "text_too_long",
                    "text_role_leak", "text_not_plain_english", "text_wrong_language", "text_degenerate",
                    "text_repeats_previous", "near_duplicate", "llm_request_failed", "text_wrong_role",
                    "text_off_situation"}  # fmt: skip
    assert {r["reason"] for r in rejects} <= text_reasons
    sets = {r["id"]: shingles(t["text"] for t in r["turns"]) for r in rows}
    assert all(jaccard(sets[a], sets[b]) < threshold for a, b in combinations(sets, 2))
    index = {r["id"]: r["index"] for r in rows}
    for dup in (r for r in rejects if r["reason"] == "near_duplicate"):
        measured = json.loads(dup["measured_json"])
        assert measured["jaccard"] >= threshold and measured["duplicate_of"] in index
        assert index[measured["duplicate_of"]] < int(dup["id"].rsplit("-", 1)[1])  # the earlier one is kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_gates_version"] == "text-gates-v1" and manifest["units"] is None
    assert "emotion_max_share_diff" in manifest["counts"]["balance"]


def test_a_shard_with_no_kept_dialogue_still_loads_with_datasets(
    built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """A shard whose dialogues were all rejected is a valid, empty Parquet file (no row group)."""
    datasets = pytest.importorskip("datasets")
    from pipeline.io.shards import _parquet_bytes, row_schema

    out, _ = built
    empty = tmp_path / "train-empty.parquet"
    empty.write_bytes(_parquet_bytes([], row_schema(16000)))
    assert pq.ParquetFile(empty).metadata.num_row_groups == 0
    files = [str(empty), *map(str, sorted((out / "data").glob("*.parquet")))]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == sum(pq.read_metadata(f).num_rows for f in files[1:])
