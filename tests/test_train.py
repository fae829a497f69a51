"""The bundled training module on a real build: losses fall, checkpoints reload exactly, resume, freezing,
streaming generation in the configured ratio, the CLI, and the GLM-4-Voice unit adapter (gpu)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli

from pipeline.io.audio import from_bytes
from pipeline.train.config import tiny_config
from pipeline.train.data import Collator, ParquetDialogues, dataset_units
from pipeline.train.generate import Chunk, generate
from pipeline.train.model import build_model
from pipeline.train.tokenizer import ByteTokenizer
from pipeline.train.tokens import AUDIO_TOKEN_INDEX, IGNORE_INDEX, TTS_END, TTS_START
from pipeline.train.trainer import TrainOptions, load_checkpoint, train

torch.set_num_threads(1)
STEPS = 40


@pytest.fixture(scope="module")
def trained(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path_factory: pytest.TempPathFactory):
    out_dir, _ = built
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny"
    result = train(out_dir, ckpt, "tiny", TrainOptions(steps=STEPS, batch_size=2, log_every=5))
    return out_dir, ckpt, result


def _batch(out_dir: Path, n: int = 2) -> dict:
    tok = ByteTokenizer()
    config = tiny_config(dataset_units(out_dir))
    examples = list(ParquetDialogues(out_dir, tok, config, epochs=1))[:n]
    return Collator(config, tok.pad_id)(examples)


def _user_clip(out_dir: Path):
    # the first kept dialogue (a shard whose dialogues were all rejected has no rows)
    row = next(r for f in sorted((out_dir / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist())
    return from_bytes(row["turns"][0]["audio"]["bytes"]), row["turns"][1]["speaker_id"]


def test_examples_follow_the_opens2s_layout(built) -> None:
    out_dir, _ = built
    tok = ByteTokenizer()
    config = tiny_config(dataset_units(out_dir))
    rows = [r for f in sorted((out_dir / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    examples = list(ParquetDialogues(out_dir, tok, config, epochs=1))
    assert sorted(e.id for e in examples) == sorted(r["id"] for r in rows)
    for ex in examples:
        row = next(r for r in rows if r["id"] == ex.id)
        replies = [t for t in row["turns"] if t["role"] == "assistant"]
        # the TTS spans are exactly <|im_tts_start|>text<|im_tts_end|> and carry labels; system/user do not
        spans = [i for i, t in enumerate(ex.token_types) if t == 1]
        spoken = [tok.encode(f"{TTS_START}{t['text']}{TTS_END}") for t in replies]
        assert [ex.input_ids[i] for i in spans] == [i for s in spoken for i in s]
        assert all(ex.labels[i] == ex.input_ids[i] for i in spans)
        audio_slots = [i for i, t in enumerate(ex.input_ids) if t == AUDIO_TOKEN_INDEX]
        assert all(ex.labels[i] == IGNORE_INDEX for i in range(max(audio_slots) + 1))
        assert len(audio_slots) == sum(config.audio_tokens(len(clip)) for clip in ex.audio)
        assert ex.units == [list(t["speech_units"]) + [config.unit_eos] for t in replies]
        assert all(s.shape == (512,) for s in ex.spk)
    batch = Collator(config, tok.pad_id)(examples)
    assert batch["features"].shape[1] == config.n_mels
    assert batch["features"].shape[2] % config.chunk_frames == 0


def test_tiny_model_learns_from_real_shards_and_reloads_exactly(built, trained) -> None:
    out_dir, ckpt, result = trained
    first, last = result.history[0], result.history[-1]
    print(
        "text loss",
        first["text_loss"],
        "->",
        last["text_loss"],
        "unit loss",
        first["unit_loss"],
        "->",
        last["unit_loss"],
        f"{result.samples_per_s:.1f} samples/s",
    )
    assert last["text_loss"] < 0.8 * first["text_loss"]
    assert last["unit_loss"] < 0.95 * first["unit_loss"]
    log = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, STEPS + 1, 5))
    assert {"text_loss", "unit_loss", "samples_per_s"} <= set(log[0])

    loaded = load_checkpoint(ckpt)
    assert loaded.step == STEPS
    batch = _batch(out_dir)
    with torch.no_grad():
        before, after = result.model(batch), loaded.model(batch)
    assert torch.equal(before.text, after.text) and torch.equal(before.units, after.units)
    clip, voice = _user_clip(out_dir)
    a = generate(result.model, ByteTokenizer(), clip, voice=voice, max_text_tokens=12, max_units=30)
    b = generate(loaded.model, ByteTokenizer(), clip, voice=voice, max_text_tokens=12, max_units=30)
    assert a.chunks == b.chunks


def test_resume_continues_exactly_where_it_stopped(built, tmp_path: Path) -> None:
    out_dir, _ = built
    straight = train(out_dir, tmp_path / "a", "tiny", TrainOptions(steps=6, log_every=3))
    train(out_dir, tmp_path / "b", "tiny", TrainOptions(steps=4, log_every=3))
    resumed = train(out_dir, tmp_path / "b", "tiny", TrainOptions(steps=6, log_every=3))
    assert resumed.resumed and resumed.start_step == 4 and resumed.step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adapters_regime_trains_only_the_adapters(built, tmp_path: Path) -> None:
    out_dir, _ = built
    start = build_model(tiny_config(dataset_units(out_dir)), seed=0).state_dict()
    after = train(out_dir, tmp_path / "c", "tiny", TrainOptions(steps=2, trainable="adapters")).model.state_dict()
    changed = {k.split(".")[0] for k in start if not torch.equal(start[k], after[k])}
    assert changed == {"adapter", "llm2tts", "spk2tts"}
    full = train(out_dir, tmp_path / "d", "tiny", TrainOptions(steps=1)).model.state_dict()
    assert {k.split(".")[0] for k in start if not torch.equal(start[k], full[k])} == {
        "adapter",
        "llm2tts",
        "spk2tts",
        "llm",
        "tts",
    }


def _check_interleave(chunks: list[Chunk], k: int, m: int, n_units: int) -> None:
    assert [c.kind for c in chunks] == ["text", "units"] * (len(chunks) // 2)
    texts, units = chunks[0::2], chunks[1::2]
    assert all(len(c.ids) == k for c in texts[:-1]) and len(texts[-1].ids) <= k
    speech_over = False
    for c in units[:-1]:  # while the text runs: m units per chunk until the TTS LM's EOS, then none
        assert len(c.ids) <= m and not (speech_over and c.ids)
        speech_over = speech_over or len(c.ids) < m
    assert sum(len(c.ids) for c in texts) > 0 and sum(len(c.ids) for c in units) > 0
    assert all(0 <= u < n_units for c in units for u in c.ids)


def test_streaming_generation_interleaves_in_the_configured_ratio(built, trained) -> None:
    out_dir, _, result = trained
    clip, voice = _user_clip(out_dir)
    config = result.model.config
    out = generate(result.model, ByteTokenizer(), clip, voice=voice, max_text_tokens=16, max_units=40)
    _check_interleave(out.chunks, config.text_span, config.speech_span, config.n_units)
    assert (config.text_span, config.speech_span) == (1, 2)
    assert len(out.chunks[1].ids) == 2  # speech starts after the first text token
    # an untrained model; with some seeds its TTS LM emits EOS first (no units at all), seed 3 does not
    other = build_model(tiny_config(dataset_units(out_dir), text_span=3, speech_span=5), seed=3)
    out = generate(other, ByteTokenizer(), clip, voice=voice, max_text_tokens=14, max_units=40)
    _check_interleave(out.chunks, 3, 5, config.n_units)
    assert [len(c.ids) for c in out.chunks[:4]] == [3, 5, 3, 5]


def test_cli_trains_and_rejects_bad_input(built, tmp_path: Path) -> None:
    out_dir, _ = built
    ok = run_cli(
        "train", str(out_dir), "--config", "tiny", "--steps", "2", "--log-every", "1", "--out", str(tmp_path / "ck")
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "text_loss" in ok.stderr and "unit_loss" in ok.stderr and (tmp_path / "ck" / "meta.json").is_file()
    for args, message in [
        (["--config", "huge"], "--config 'huge': choose one of tiny, opens2s"),
        (["--config", "opens2s"], "--audio-model is required with --config opens2s"),
        (["--config", "opens2s", "--audio-model", "/nowhere"], "--audio-model: /nowhere is not a folder"),
        (["--trainable", "everything"], "--trainable 'everything': choose one of"),
    ]:
        bad = run_cli("train", str(out_dir), "--out", str(tmp_path / "bad"), *args)
        assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and message in " ".join(bad.stderr.split())
    resumed_other = run_cli("train", str(out_dir), "--out", str(tmp_path / "ck"), "--config", "opens2s")
    assert resumed_other.returncode == 2


def test_glm4voice_paths_are_checked() -> None:
    from pipeline.adapters.units_glm4voice import GLM4VoiceUnits

    with pytest.raises(FileNotFoundError, match="no speech_tokenizer/modeling_whisper.py"):
        GLM4VoiceUnits("/nowhere/GLM-4-Voice", "/nowhere/tokenizer")


@pytest.mark.gpu
def test_glm4voice_tokenizer_encodes_speech() -> None:
    from pipeline.adapters.tts_espeak import EspeakEngine, Voice
    from pipeline.adapters.units_glm4voice import CODEBOOK_SIZE, GLM4VoiceUnits

    repo, folder = os.environ.get("GLM4VOICE_REPO", ""), os.environ.get("GLM4VOICE_TOKENIZER_DIR", "")
    if not (repo and Path(repo).exists() and folder and Path(folder).exists()):
        pytest.skip("set GLM4VOICE_REPO (a GLM-4-Voice checkout) and GLM4VOICE_TOKENIZER_DIR (glm-4-voice-tokenizer)")
    audio = EspeakEngine.instance().synthesize("Hello there, how are you today?", Voice("en-us"))
    units = GLM4VoiceUnits(repo, folder).encode(audio)
    assert abs(len(units) - 12.5 * audio.duration_s) <= 2 and all(0 <= u < CODEBOOK_SIZE for u in units)
