"""The training loop: plain PyTorch over the streamed Parquet examples, with checkpoints and resume.

A checkpoint folder holds `checkpoint.pt` (model, optimizer, step, options, model config, the data's
unit codebook), `config.json` (readable copy of the model config), `log.jsonl` (one line per logged
step: text loss and unit loss separately, samples/s) and, for Hugging Face tokenizers, `tokenizer/`.
Running `train` again on the same folder resumes from its step up to `--steps` in total, skipping
the examples already seen, so the data order is the one an uninterrupted run would have used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.train.config import CONFIG_NAMES, ConfigError, ModelConfig, opens2s_config, tiny_config
from pipeline.train.data import Collator, DataError, ParquetDialogues, dataset_units, shard_files
from pipeline.train.model import TRAINABLE, S2SModel, build_model, set_trainable
from pipeline.train.speaker import SPK_MODES
from pipeline.train.tokenizer import ByteTokenizer, HFTokenizer, TextTokenizer
from pipeline.train.tokens import AUDIO

CHECKPOINT = "checkpoint.pt"


class TrainError(ValueError):
    """Bad input to the trainer (data, config, checkpoint folder); the message says how to fix it."""


@dataclass
class TrainOptions:
    """Optimisation and bookkeeping settings (stored in the checkpoint; a resume keeps them)."""

    steps: int = 100
    batch_size: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    trainable: str = "adapters-llm-tts"
    spk_emb: str = "code"
    seed: int = 0
    log_every: int = 10
    save_every: int = 0
    num_workers: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    """What a `train` call did."""

    checkpoint: Path
    start_step: int
    step: int
    resumed: bool
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    model: S2SModel | None = None


@dataclass
class Loaded:
    """A model restored from a checkpoint folder."""

    model: S2SModel
    tokenizer: TextTokenizer
    config: ModelConfig
    step: int
    state: dict[str, Any]


def make_tokenizer(config: ModelConfig, folder: Path | None = None) -> TextTokenizer:
    """The text tokenizer of `config` (the checkpoint's saved copy when there is one)."""
    if config.tokenizer == "bytes":
        return ByteTokenizer()
    saved = folder / "tokenizer" if folder is not None else None
    return HFTokenizer(saved if saved is not None and saved.is_dir() else Path(config.paths["llm"]))


def dataset_codebook(data_dir: Path) -> str:
    """The single `units_codebook` version of the shards; TrainError if they mix codebooks."""
    import pyarrow.parquet as pq

    versions: set[str] = set()
    for path in shard_files(data_dir):
        versions.update(pq.read_table(path, columns=["units_codebook"]).column(0).to_pylist())
    if len(versions) > 1:
        raise TrainError(f"{data_dir} mixes speech-unit codebooks {sorted(versions)}; train on one build at a time")
    return versions.pop() if versions else ""


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(
    folder: Path,
    model: S2SModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    options: TrainOptions,
    codebook: str,
    tokenizer: TextTokenizer,
) -> None:
    """Write the checkpoint atomically (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer) and not (folder / "tokenizer").is_dir():
        tokenizer.save(folder / "tokenizer")
    (folder / "config.json").write_text(model.config.to_json())
    state = {
        "config": asdict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "options": asdict(options),
        "codebook": codebook,
    }
    _atomic_save(state, folder / CHECKPOINT)


def load_checkpoint(folder: Path, device: str = "cpu") -> Loaded:
    """Rebuild the model from a checkpoint folder (no pretrained files needed: the config is inside)."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise TrainError(f"{folder} holds no {CHECKPOINT}; give a folder written by `opens2s-data train`")
    state = torch.load(path, map_location=device, weights_only=False)
    config = ModelConfig.from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return Loaded(model, make_tokenizer(config, folder), config, int(state["step"]), state)


def _new_config(name: str, data_dir: Path, model_paths: dict[str, str | None] | None) -> ModelConfig:
    if name == "tiny":
        return tiny_config(n_units=dataset_units(data_dir))
    if name == "opens2s":
        paths = model_paths or {}
        return opens2s_config(paths.get("audio"), paths.get("llm"), paths.get("tts"))
    raise TrainError(f"--config {name!r}: choose one of {', '.join(CONFIG_NAMES)}")


def _check_options(options: TrainOptions) -> None:
    if options.trainable not in TRAINABLE:
        raise TrainError(f"--trainable {options.trainable!r}: choose one of {', '.join(TRAINABLE)}")
    if options.spk_emb not in SPK_MODES:
        raise TrainError(f"--spk-emb {options.spk_emb!r}: choose one of {', '.join(SPK_MODES)}")
    if options.steps < 1 or options.batch_size < 1:
        raise TrainError("--steps and --batch-size must be at least 1")


def train(
    data_dir: Path,
    out: Path,
    config: str = "tiny",
    options: TrainOptions | None = None,
    model_paths: dict[str, str | None] | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or resume) into `out` for `options.steps` optimizer steps in total.

    Raises TrainError (or its ConfigError/DataError cousins) for bad input, before any file is written.
    """
    options = options or TrainOptions()
    _check_options(options)
    try:
        codebook = dataset_codebook(data_dir)
        resumed = (out / CHECKPOINT).is_file()
        if out.exists() and not out.is_dir():
            raise TrainError(f"--out {out} is a file; give a checkpoint folder")
        if not resumed and out.is_dir() and any(out.iterdir()):
            raise TrainError(f"--out {out} is not empty and holds no {CHECKPOINT}; choose an empty folder")
        if resumed:
            loaded = load_checkpoint(out, options.device)
            if loaded.config.name != config:
                raise TrainError(f"{out} holds a {loaded.config.name!r} checkpoint; pass --config {loaded.config.name}")
            if loaded.state["codebook"] != codebook:
                raise TrainError(
                    f"{out} was trained on units {loaded.state['codebook']!r} but {data_dir} has "
                    f"{codebook!r}; use a new --out"
                )
            model, tok, step = loaded.model, loaded.tokenizer, loaded.step
            options = TrainOptions(
                **{
                    **loaded.state["options"],
                    "steps": options.steps,
                    "log_every": options.log_every,
                    "save_every": options.save_every,
                }
            )
        else:
            model_cfg = _new_config(config, data_dir, model_paths)
            model, step = build_model(model_cfg, options.seed, pretrained=config == "opens2s"), 0
            tok = make_tokenizer(model_cfg)
        needed = dataset_units(data_dir)
        if needed > model.config.n_units:
            raise TrainError(
                f"{data_dir} has {needed} speech units but the model's TTS LM knows "
                f"{model.config.n_units}; use a matching --config or a new --out"
            )
    except (ConfigError, DataError) as err:
        raise TrainError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    model.to(options.device).train()
    set_trainable(model, options.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    if resumed:
        optimizer.load_state_dict(loaded.state["optimizer"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + step + 1) / options.warmup_steps) if options.warmup_steps else 1.0
    )
    dataset = ParquetDialogues(
        data_dir,
        tok,
        model.config,
        seed=options.seed,
        skip=step * options.batch_size // max(options.num_workers, 1),
        spk_mode=options.spk_emb,
    )
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=Collator(model.config, tok.pad_id),
    )
    audio_id = tok.token_id(AUDIO)
    result = TrainResult(checkpoint=out / CHECKPOINT, start_step=step, step=step, resumed=resumed)
    window: list[tuple[float, float]] = []
    t0, seen, began = time.perf_counter(), 0, time.perf_counter()
    batches = iter(loader)
    while step < options.steps:
        batch = _to_device(next(batches), options.device)
        losses = model(batch, audio_id)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
        optimizer.step()
        schedule.step()
        step += 1
        seen += len(batch["ids"])
        window.append((losses.text.item(), losses.units.item()))
        if step % options.log_every == 0 or step == options.steps:
            elapsed = time.perf_counter() - t0
            record = {
                "step": step,
                "text_loss": sum(w[0] for w in window) / len(window),
                "unit_loss": sum(w[1] for w in window) / len(window),
                "lr": schedule.get_last_lr()[0],
                "samples_per_s": seen / elapsed if elapsed else 0.0,
            }
            result.history.append(record)
            with (out / "log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            if on_log is not None:
                on_log(record)
            window, t0, seen = [], time.perf_counter(), 0
        if options.save_every and step % options.save_every == 0:
            save_checkpoint(out, model, optimizer, step, options, codebook, tok)
    save_checkpoint(out, model, optimizer, step, options, codebook, tok)
    result.step, result.model = step, model.eval()
    done = step - result.start_step
    result.samples_per_s = done * options.batch_size / (time.perf_counter() - began) if done else 0.0
    return result


def _to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
