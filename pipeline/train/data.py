"""Training examples streamed from the Parquet shards, and the collator (log-mel at 16 kHz, padding).

`ParquetDialogues` never holds the dataset in memory: it walks the shard files with
`pyarrow.parquet.ParquetFile.iter_batches` (a few rows at a time, only the `id`, `scenario` and
`turns` columns) and builds one example per dialogue, laid out as upstream OpenS2S does:

    <|im_start|>system\\n{prompt}<|im_end|>\\n
    <|im_start|>user\\n<|im_audio_start|><|im_audio|> x n<|im_audio_end|><|im_end|>\\n
    <|im_start|>assistant\\n<think></think><|im_tts_start|>{text}<|im_tts_end|><|im_end|>\\n   (repeated)

Labels are IGNORE on the system and user parts; `token_types` is 1 on the TTS span (its hidden states
feed the TTS LM); each assistant turn contributes its speech units + EOS and a speaker vector. The
audio placeholder is a span of `config.audio_tokens(samples)` positions, filled with the adapter output.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.io.audio import from_bytes, resample
from pipeline.train.config import HOP, SAMPLE_RATE, ModelConfig
from pipeline.train.speaker import speaker_vector
from pipeline.train.tokenizer import TextTokenizer
from pipeline.train.tokens import (
    AUDIO_END,
    AUDIO_START,
    AUDIO_TOKEN_INDEX,
    IGNORE_INDEX,
    IM_END,
    IM_START,
    THINK_END,
    THINK_START,
    TTS_END,
    TTS_START,
)

COLUMNS = ["id", "scenario", "turns"]


class DataError(ValueError):
    """The data folder cannot be trained on; the message names the problem and the fix."""


def shard_files(data_dir: Path) -> list[Path]:
    """The kept-dialogue shards of a build folder (or a folder of .parquet files); DataError if none."""
    folder = data_dir / "data" if (data_dir / "data").is_dir() else data_dir
    files = [Path(p) for p in sorted(glob.glob(str(folder / "*.parquet")))]
    if not files:
        raise DataError(
            f"{data_dir} holds no Parquet shards (expected {data_dir}/data/train-*.parquet); "
            "point at an `opens2s-data build` output folder"
        )
    return files


def prompt_prefix(tok: TextTokenizer, config: ModelConfig) -> list[int]:
    """System turn ids."""
    return tok.encode(f"{IM_START}system\n{config.system_prompt}{IM_END}\n")


def user_audio_ids(tok: TextTokenizer, config: ModelConfig, num_samples: int) -> list[int]:
    """User turn ids: the audio placeholder span (`AUDIO_TOKEN_INDEX`, as upstream) sized for `num_samples`."""
    span = [AUDIO_TOKEN_INDEX] * config.audio_tokens(num_samples)
    return tok.encode(f"{IM_START}user\n{AUDIO_START}") + span + tok.encode(f"{AUDIO_END}{IM_END}\n")


def assistant_head(tok: TextTokenizer) -> list[int]:
    """Assistant turn opening (no reasoning), before the TTS span."""
    return tok.encode(f"{IM_START}assistant\n{THINK_START}{THINK_END}")


@dataclass
class Example:
    """One dialogue laid out for the model."""

    id: str
    input_ids: list[int]
    labels: list[int]
    token_types: list[int]
    audio: list[np.ndarray]
    units: list[list[int]]
    spk: list[np.ndarray]


def build_example(row: dict[str, Any], tok: TextTokenizer, config: ModelConfig, spk_mode: str = "code") -> Example:
    """Lay out one Parquet row; whole exchanges past `config.max_tokens` are dropped (the first is always kept)."""
    ex = Example(id=row["id"], input_ids=[], labels=[], token_types=[], audio=[], units=[], spk=[])

    def add(ids: list[int], learn: bool, tts: bool = False) -> None:
        ex.input_ids += ids
        ex.labels += ids if learn else [IGNORE_INDEX] * len(ids)
        ex.token_types += [int(tts)] * len(ids)

    add(prompt_prefix(tok, config), learn=False)
    turns = row["turns"]
    for i in range(0, len(turns) - 1, 2):
        user, reply = turns[i], turns[i + 1]
        if user["role"] != "user" or reply["role"] != "assistant":
            raise DataError(f"{row['id']}: turns must alternate user/assistant (turn {i + 1} is {user['role']})")
        clip = resample(from_bytes(user["audio"]["bytes"]), SAMPLE_RATE).samples
        user_ids = user_audio_ids(tok, config, len(clip))
        spoken = tok.encode(f"{TTS_START}{reply['text']}{TTS_END}")
        tail = tok.encode(f"{IM_END}\n")
        head = assistant_head(tok)
        if ex.audio and len(ex.input_ids) + len(user_ids) + len(head) + len(spoken) + len(tail) > config.max_tokens:
            break
        add(user_ids, learn=False)
        ex.audio.append(clip)
        add(head, learn=False)
        units = reply.get("speech_units") or []
        if units:
            add(spoken, learn=True, tts=True)
            ex.units.append([config.unit_offset + int(u) for u in units] + [config.unit_eos])
            ex.spk.append(speaker_vector(reply.get("speaker_id") or "", spk_mode, config.spk_dim))
        else:
            add(tok.encode(reply["text"]), learn=True)
        add(tail, learn=True)
    if not ex.audio:
        raise DataError(f"{row['id']}: no complete user/assistant exchange")
    return ex


SCENARIO_KEY = ("topic", "situation", "persona", "emotion", "intensity")


def scenario_key(scenario: dict[str, Any] | None) -> str:
    """What identifies a scenario across its renderings: topic, situation, persona, emotion, intensity.

    The voices (`speaker_id`, `assistant_speaker_id`) are left out on purpose: OpenS2S-style data repeats
    one query across many voices, and those copies must fall on the same side of a train/eval split.
    """
    import json

    fields = {k: (scenario or {}).get(k) for k in SCENARIO_KEY}
    return json.dumps(fields, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Split:
    """Which side of a by-scenario split to read: `part` "train" or "eval"; `eval_keys` the held-out scenarios."""

    part: str
    eval_keys: frozenset[str]

    def keeps(self, scenario: dict[str, Any] | None) -> bool:
        """Whether a row with this scenario belongs to this part."""
        return (scenario_key(scenario) in self.eval_keys) == (self.part == "eval")


def eval_scenarios(data_dir: Path, fraction: float, seed: int = 0) -> frozenset[str]:
    """Hold out `fraction` of the distinct scenarios (at least one), chosen by a seeded hash of their key.

    Reads only the `scenario` column. DataError when a split is asked for but there are fewer than two scenarios.
    """
    import hashlib

    import pyarrow.parquet as pq

    if fraction <= 0:
        return frozenset()
    keys: set[str] = set()
    for path in shard_files(data_dir):
        for batch in pq.ParquetFile(path).iter_batches(columns=["scenario"]):
            keys.update(scenario_key(s) for s in batch.column(0).to_pylist())
    if len(keys) < 2:
        raise DataError(
            f"{data_dir} holds {len(keys)} distinct scenario(s); a held-out split needs at least 2 "
            "(build more dialogues or pass --eval-fraction 0)"
        )
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    count = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    return frozenset(ranked[:count])


def split_rows(data_dir: Path, split: Split) -> int:
    """How many dialogues of the shards fall on `split`'s side (reads only the `scenario` column)."""
    import pyarrow.parquet as pq

    count = 0
    for path in shard_files(data_dir):
        for batch in pq.ParquetFile(path).iter_batches(columns=["scenario"]):
            count += sum(split.keeps(s) for s in batch.column(0).to_pylist())
    return count


class ParquetDialogues(IterableDataset):
    """Streams examples from the shards; file order is reshuffled every epoch from `seed`.

    Rows form one global order (the same on every rank); with `world` ranks, rank r takes the rows whose
    index i in that order has i % world == r, so ranks read disjoint examples and a step of `world` ranks
    sees exactly the rows a single process with the same global batch would. `skip` counts this rank's
    own rows already consumed (resuming): they are passed over without decoding. `split` keeps one side
    of a by-scenario split. `epochs=None` repeats forever. With DataLoader workers, worker w of W builds
    this rank's batches w, w + W, ... (batches of `batch_size`), so the loader's output order is unchanged.
    """

    def __init__(
        self,
        data_dir: Path,
        tok: TextTokenizer,
        config: ModelConfig,
        seed: int = 0,
        epochs: int | None = None,
        skip: int = 0,
        rows_per_read: int = 4,
        spk_mode: str = "code",
        rank: int = 0,
        world: int = 1,
        batch_size: int = 1,
        split: Split | None = None,
    ) -> None:
        super().__init__()
        self.files = shard_files(data_dir)
        self.tok, self.config, self.seed, self.epochs, self.skip = tok, config, seed, epochs, skip
        self.rows_per_read, self.spk_mode = rows_per_read, spk_mode
        self.rank, self.world, self.batch_size, self.split = rank, world, batch_size, split

    def rows(self) -> Iterator[dict[str, Any]]:
        """Raw rows (id, scenario, turns) of the split in the global training order, read a few at a time."""
        import pyarrow.parquet as pq

        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            order = np.random.default_rng(self.seed + epoch).permutation(len(self.files))
            found = 0
            for i in order:
                parquet = pq.ParquetFile(self.files[i])
                for batch in parquet.iter_batches(batch_size=self.rows_per_read, columns=COLUMNS):
                    for row in batch.to_pylist():
                        if self.split is None or self.split.keeps(row["scenario"]):
                            found += 1
                            yield row
            if not found:
                part = f" in the {self.split.part} split" if self.split is not None else ""
                raise DataError(f"the shards hold no dialogues{part}; build more data")
            epoch += 1

    def __iter__(self) -> Iterator[Example]:
        worker = get_worker_info()
        for index, row in enumerate(self.rows()):
            if index % self.world != self.rank:
                continue
            own = index // self.world
            if own < self.skip:
                continue
            if worker is not None and ((own - self.skip) // self.batch_size) % worker.num_workers != worker.id:
                continue
            yield build_example(row, self.tok, self.config, self.spk_mode)


class Collator:
    """Pads examples into tensors and computes Whisper log-mel features of every user clip at 16 kHz."""

    def __init__(self, config: ModelConfig, pad_id: int) -> None:
        from transformers import WhisperFeatureExtractor

        self.config, self.pad_id = config, pad_id
        self.window_samples = config.chunk_frames * HOP
        self.extractor = WhisperFeatureExtractor(
            feature_size=config.n_mels,
            sampling_rate=SAMPLE_RATE,
            hop_length=HOP,
            chunk_length=math.ceil(self.window_samples / SAMPLE_RATE),
            n_fft=400,
        )

    def features(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel [N, mels, windows * W] (padded to whole encoder windows) and valid frame counts [N]."""
        out = self.extractor(
            [c.astype(np.float32) for c in clips],
            sampling_rate=SAMPLE_RATE,
            padding="longest",
            pad_to_multiple_of=self.window_samples,
            truncation=False,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_features"], out["attention_mask"].sum(-1)

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        """Collate examples into the model's batch dict."""
        width = max(len(e.input_ids) for e in examples)

        def pad(rows: list[list[int]], value: int, size: int) -> torch.Tensor:
            return torch.tensor([r + [value] * (size - len(r)) for r in rows], dtype=torch.long)

        batch: dict[str, Any] = {
            "ids": [e.id for e in examples],
            "input_ids": pad([e.input_ids for e in examples], self.pad_id, width),
            "attention_mask": pad([[1] * len(e.input_ids) for e in examples], 0, width),
            "labels": pad([e.labels for e in examples], IGNORE_INDEX, width),
            "token_types": pad([e.token_types for e in examples], 0, width),
        }
        clips = [clip for e in examples for clip in e.audio]
        batch["features"], batch["frames"] = self.features(clips)
        units = [u for e in examples for u in e.units]
        if units:
            longest = max(len(u) for u in units)
            batch["units"] = pad(units, self.config.unit_pad, longest)
            batch["units_mask"] = pad([[1] * len(u) for u in units], 0, longest)
            batch["spk"] = torch.from_numpy(np.stack([s for e in examples for s in e.spk]))
        else:
            batch["units"] = batch["units_mask"] = batch["spk"] = None
        return batch


def dataset_units(data_dir: Path) -> int:
    """Codebook size of a build (units/codebook.npz), else 1 + the largest unit in the shards."""
    codebook = data_dir / "units" / "codebook.npz"
    if codebook.is_file():
        with np.load(codebook) as data:
            return int(data["centroids"].shape[0])
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    largest = -1
    for path in shard_files(data_dir):
        for batch in pq.ParquetFile(path).iter_batches(columns=["turns"]):
            flat = pc.list_flatten(pc.list_flatten(batch.column("turns")).field("speech_units"))
            if len(flat):
                largest = max(largest, int(pc.max(flat).as_py()))
    return largest + 1
