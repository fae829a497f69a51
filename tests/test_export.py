"""`opens2s-data export --format opens2s-jsonl`: checked by a small reader written to upstream OpenS2S's format.

The reader mirrors `process_dataset` in CASIA-LM/OpenS2S `src/instruction_dataset.py` (and the README's
"Data Preparation" example) independently of our export code: one key `messages`; every content item has
the four string keys; an `audio` item is user speech read with soundfile (>= 8000 samples, else upstream
drops the dialogue); a `speech_units` item is assistant text + a pure `<|audio_N|>` run + `spk_emb`
("" or a float .npy of shape [1, 1, 512]).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
from conftest import run_cli

UNIT = re.compile(r"<\|audio_(\d+)\|>")


def read_upstream(path: Path) -> list[dict]:
    """Parse the JSONL the way upstream's trainer consumes it; raise AssertionError on anything it would not take."""
    dialogues = []
    for line in path.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        assert list(obj) == ["messages"]
        turns = []
        for message in obj["messages"]:
            role, content = message["role"], message["content"]
            assert set(message) == {"role", "content"} and role in ("user", "assistant")
            assert isinstance(content, list)
            for item in content:
                assert set(item) == {"text", "audio", "speech_units", "spk_emb"}
                assert all(isinstance(v, str) for v in item.values())
                if item["audio"]:
                    assert role == "user"
                    waveform, rate = sf.read(item["audio"], dtype="float32", always_2d=True)
                    assert waveform.shape[0] >= 8000
                    turns.append({"role": role, "audio": waveform[:, 0], "rate": rate})
                elif item["speech_units"]:
                    assert role == "assistant" and item["text"]
                    units = [int(n) for n in UNIT.findall(item["speech_units"])]
                    assert "".join(f"<|audio_{u}|>" for u in units) == item["speech_units"]
                    spk = np.load(item["spk_emb"]) if item["spk_emb"] else np.zeros((1, 1, 512), np.float32)
                    assert spk.shape == (1, 1, 512) and spk.dtype == np.float32
                    turns.append({"role": role, "text": item["text"], "units": units, "spk": spk})
        dialogues.append({"turns": turns})
    return dialogues


def test_export_matches_the_upstream_format_and_the_shards(built, tmp_path: Path) -> None:
    out_dir, _ = built
    target = tmp_path / "export" / "train.jsonl"
    result = run_cli("export", str(out_dir), "--format", "opens2s-jsonl", "--out", str(target))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [r for f in sorted((out_dir / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    exported = read_upstream(target)
    assert len(exported) == len(rows)
    for row, dialogue in zip(rows, exported, strict=True):
        assert [t["role"] for t in dialogue["turns"]] == [t["role"] for t in row["turns"]]
        for turn, got in zip(row["turns"], dialogue["turns"], strict=True):
            if turn["role"] == "user":
                samples, rate = sf.read(io.BytesIO(turn["audio"]["bytes"]), dtype="float32")
                assert got["rate"] == rate == 16000 and np.array_equal(got["audio"], samples)
            else:
                assert got["text"] == turn["text"] and got["units"] == list(turn["speech_units"])
                assert abs(np.linalg.norm(got["spk"]) - 1.0) < 1e-5  # the voice's identity code
    assert (tmp_path / "export" / "train_assets" / "audio").is_dir()

    none = tmp_path / "none.jsonl"
    assert run_cli("export", str(out_dir), "--out", str(none), "--spk-emb", "none").returncode == 0
    lines = [json.loads(line) for line in none.read_text().splitlines()]
    assert all(i["spk_emb"] == "" for d in lines for m in d["messages"] for i in m["content"])
    assert all(float(np.abs(t["spk"]).sum()) == 0.0 for d in read_upstream(none) for t in d["turns"] if "spk" in t)


def test_export_rejects_bad_input(built, tmp_path: Path) -> None:
    out_dir, _ = built
    for args, message in [
        ([str(out_dir), "--format", "csv", "--out", str(tmp_path / "x.jsonl")], "--format 'csv': choose one of"),
        ([str(tmp_path), "--out", str(tmp_path / "x.jsonl")], "holds no Parquet shards"),
        ([str(out_dir), "--out", str(tmp_path)], "is a folder; give a .jsonl file path"),
        ([str(out_dir), "--out", str(tmp_path / "x.jsonl"), "--spk-emb", "ecapa"], "--spk-emb 'ecapa'"),
    ]:
        bad = run_cli("export", *args)
        assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and message in " ".join(bad.stderr.split())
    assert not (tmp_path / "x.jsonl").exists()
