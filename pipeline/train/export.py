"""Export a build to the upstream OpenS2S training JSONL (`messages` format), with its audio and speaker files.

Upstream (CASIA-LM/OpenS2S, README "Data Preparation" and `src/instruction_dataset.py`) reads one JSON
object per line with exactly one key, `messages`; each message has `role` and a `content` list whose
items all carry the four string keys `text`, `audio`, `speech_units`, `spk_emb`. An item with `audio`
is user speech (a file path, read with soundfile; clips under 8000 samples are dropped upstream); an
item with `speech_units` is the assistant's spoken reply: `text` plus units as a `<|audio_N|>` run
(tokenised by the TTS LM's tokenizer, EOS appended) and `spk_emb`, a path to a float32 `.npy` of shape
[1, 1, 512] or "" (read as zeros). Upstream adds its own system prompt.

Files: `FILE` and, next to it, `FILE-stem_assets/audio/<turn_id>.flac` (the shard's FLAC bytes, as is)
and `FILE-stem_assets/spk/<voice>.npy`. Paths in the JSONL are absolute, because upstream resolves
them against its own working directory. About `spk_emb`, see `pipeline.train.speaker`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.files import atomic_write_bytes
from pipeline.train.speaker import SPK_DIM, SPK_MODES, speaker_vector
from pipeline.train.tokens import units_to_string

FORMATS = ("opens2s-jsonl",)


class ExportError(ValueError):
    """Bad export input; the message names the problem and the fix."""


@dataclass
class ExportResult:
    """What an export wrote."""

    jsonl: Path
    assets: Path
    dialogues: int
    audio_files: int
    spk_files: int
    codebooks: list[str]


def _item(text: str = "", audio: str = "", speech_units: str = "", spk_emb: str = "") -> dict[str, str]:
    return {"text": text, "audio": audio, "speech_units": speech_units, "spk_emb": spk_emb}


def dialogue_messages(row: dict[str, Any], audio_dir: Path, spk_paths: dict[str, str]) -> dict[str, Any]:
    """The upstream `messages` object of one Parquet row (writes nothing; `spk_paths` maps voice -> .npy path)."""
    messages = []
    for turn in row["turns"]:
        if turn["role"] == "user":
            path = audio_dir / f"{turn['turn_id']}.flac"
            messages.append({"role": "user", "content": [_item(audio=str(path))]})
        else:
            units = units_to_string(turn["speech_units"] or [])
            spk = spk_paths.get(turn["speaker_id"] or "", "") if units else ""
            messages.append(
                {"role": "assistant", "content": [_item(text=turn["text"], speech_units=units, spk_emb=spk)]}
            )
    return {"messages": messages}


def export_opens2s_jsonl(data_dir: Path, out: Path, spk_emb: str = "code") -> ExportResult:
    """Write the OpenS2S JSONL for every kept dialogue of the build in `data_dir` (streamed shard by shard).

    `spk_emb`: `code` writes each assistant voice's identity code, `zeros` a zero vector (what upstream
    inference uses), `none` leaves the field empty (upstream then uses zeros).
    """
    import pyarrow.parquet as pq

    from pipeline.train.data import DataError, shard_files

    if spk_emb not in SPK_MODES:
        raise ExportError(f"--spk-emb {spk_emb!r}: choose one of {', '.join(SPK_MODES)}")
    try:
        files = shard_files(data_dir)
    except DataError as err:
        raise ExportError(str(err)) from None
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a .jsonl file path")
    out = out.resolve()
    assets = out.parent / f"{out.stem}_assets"
    audio_dir, spk_dir = assets / "audio", assets / "spk"
    try:
        audio_dir.mkdir(parents=True, exist_ok=True)
        spk_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {assets} ({err.strerror}); choose a writable --out") from None
    spk_paths: dict[str, str] = {}
    codebooks: set[str] = set()
    dialogues = audio_files = 0
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=8, columns=["id", "turns", "units_codebook"]):
                for row in batch.to_pylist():
                    codebooks.add(row["units_codebook"])
                    for turn in row["turns"]:
                        if turn["role"] == "user":
                            atomic_write_bytes(audio_dir / f"{turn['turn_id']}.flac", turn["audio"]["bytes"])
                            audio_files += 1
                        elif spk_emb != "none" and (voice := turn["speaker_id"] or "") not in spk_paths:
                            target = spk_dir / f"{voice or 'unknown'}.npy"
                            np.save(target, speaker_vector(voice, spk_emb).reshape(1, 1, SPK_DIM))
                            spk_paths[voice] = str(target)
                    f.write(json.dumps(dialogue_messages(row, audio_dir, spk_paths), ensure_ascii=False) + "\n")
                    dialogues += 1
    os.replace(tmp, out)
    return ExportResult(out, assets, dialogues, audio_files, len(spk_paths), sorted(codebooks))
