"""The training loop over the streamed Parquet examples: one process or many (torchrun + FSDP2), with exact resume.

A checkpoint folder holds `meta.json` (step, rows consumed, options, model config, the data's unit
codebook, the held-out scenarios, and which `state-*` folder is current), `state-NNNNNNNN/` (model and
optimizer state written by `torch.distributed.checkpoint`, sharded by rank), `config.json` (readable
model config), `log.jsonl` (rank 0: one line per logged step with the text and unit losses, the eval
losses when evaluated, lr, samples/s and tokens/s), `ranks/rank-NNNNN.jsonl` (every rank: the example ids
of each of its steps) and, for Hugging Face tokenizers, `tokenizer/`. Running `train` again on the folder
resumes from its step up to `--steps`, skipping the examples already seen, so the data order is the one
an uninterrupted run would have used. A new `state-*` folder is complete before `meta.json` points at it.

One optimizer step consumes `batch_size x grad_accum x world` dialogues (the global batch). The losses are
summed per token and divided by the step's global token counts, so the step's gradient equals the one
a single process computes on the whole global batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.train import distributed
from pipeline.train.config import CONFIG_NAMES, ConfigError, ModelConfig, opens2s_config, tiny_config
from pipeline.train.data import (
    Collator,
    DataError,
    ParquetDialogues,
    Split,
    dataset_units,
    eval_scenarios,
    shard_files,
    split_rows,
)
from pipeline.train.model import TRAINABLE, S2SModel, build_model, set_trainable
from pipeline.train.speaker import SPK_MODES
from pipeline.train.tokenizer import ByteTokenizer, HFTokenizer, TextTokenizer
from pipeline.train.tokens import IGNORE_INDEX

META = "meta.json"


class TrainError(ValueError):
    """Bad input to the trainer (data, config, checkpoint folder); the message says how to fix it."""


@dataclass
class TrainOptions:
    """Optimisation and bookkeeping settings (stored in the checkpoint; a resume keeps them)."""

    steps: int = 100
    batch_size: int = 2
    grad_accum: int = 1
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
    bf16: bool = False
    grad_checkpointing: bool = False
    eval_fraction: float = 0.0
    eval_every: int = 0


@dataclass
class TrainResult:
    """What a `train` call did (on this rank)."""

    checkpoint: Path
    start_step: int
    step: int
    resumed: bool
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    model: S2SModel | None = None
    world: int = 1


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
    if saved is not None and saved.is_dir():
        return HFTokenizer(saved, require_specials=True)
    if "opens2s" in config.paths:
        return HFTokenizer(Path(config.paths["opens2s"]), require_specials=True)
    return HFTokenizer(Path(config.paths["llm"]))


def dataset_codebook(data_dir: Path) -> str:
    """The single `units_codebook` version of the shards; TrainError if they mix codebooks."""
    import pyarrow.parquet as pq

    versions: set[str] = set()
    for path in shard_files(data_dir):
        versions.update(pq.read_table(path, columns=["units_codebook"]).column(0).to_pylist())
    if len(versions) > 1:
        raise TrainError(f"{data_dir} mixes speech-unit codebooks {sorted(versions)}; train on one build at a time")
    return versions.pop() if versions else ""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_meta(folder: Path) -> dict[str, Any]:
    """The checkpoint's meta.json; TrainError when the folder holds no checkpoint."""
    path = folder / META
    if not path.is_file():
        raise TrainError(f"{folder} holds no {META}; give a folder written by `opens2s-data train`")
    return json.loads(path.read_text())


def save_checkpoint(
    folder: Path,
    model: S2SModel,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    tokenizer: TextTokenizer,
    dist_state: distributed.Dist,
) -> None:
    """Write `state-<step>/` with DCP (all ranks), then point meta.json at it and drop older states (rank 0)."""
    name = f"state-{meta['step']:08d}"
    distributed.save_state(folder / name, model, optimizer)
    dist_state.barrier()
    if dist_state.main:
        if isinstance(tokenizer, HFTokenizer) and not (folder / "tokenizer").is_dir():
            tokenizer.save(folder / "tokenizer")
        (folder / "config.json").write_text(model.config.to_json())
        _write_json(folder / META, {**meta, "state": name})
        for old in folder.glob("state-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    dist_state.barrier()


def load_checkpoint(folder: Path, device: str = "cpu") -> Loaded:
    """Rebuild the model from a checkpoint folder in one process (no pretrained files needed: the config is inside)."""
    meta = read_meta(folder)
    config = ModelConfig.from_dict(meta["config"])
    model = build_model(config)
    distributed.load_state(folder / meta["state"], model, None)
    model.to(device).eval()
    return Loaded(model, make_tokenizer(config, folder), config, int(meta["step"]), meta)


def _new_model(
    name: str, data_dir: Path, model_paths: dict[str, str | None] | None, init_from: Path | None, seed: int
) -> tuple[S2SModel, TextTokenizer]:
    if init_from is not None:
        from pipeline.train.upstream import load_opens2s

        return load_opens2s(init_from, seed)
    if name == "tiny":
        config = tiny_config(n_units=dataset_units(data_dir))
    elif name == "opens2s":
        paths = model_paths or {}
        config = opens2s_config(paths.get("audio"), paths.get("llm"), paths.get("tts"))
    else:
        raise TrainError(f"--config {name!r}: choose one of {', '.join(CONFIG_NAMES)}")
    return build_model(config, seed, pretrained=name == "opens2s"), make_tokenizer(config)


def _artefact(path: Path) -> bool:
    """A file a run that stopped before its first checkpoint may have left (a fresh start replaces it)."""
    return path.name in {"log.jsonl", "ranks", "config.json", "tokenizer"} or path.name.startswith("state-")


def _check_options(options: TrainOptions) -> None:
    if options.trainable not in TRAINABLE:
        raise TrainError(f"--trainable {options.trainable!r}: choose one of {', '.join(TRAINABLE)}")
    if options.spk_emb not in SPK_MODES:
        raise TrainError(f"--spk-emb {options.spk_emb!r}: choose one of {', '.join(SPK_MODES)}")
    if options.steps < 1 or options.batch_size < 1 or options.grad_accum < 1:
        raise TrainError("--steps, --batch-size and --grad-accum must be at least 1")
    if not 0 <= options.eval_fraction < 1:
        raise TrainError("--eval-fraction must be in [0, 1)")
    if options.eval_every and not options.eval_fraction:
        raise TrainError("--eval-every needs a held-out split: give --eval-fraction (e.g. 0.1)")


def _counts(batch: dict[str, Any]) -> tuple[int, int]:
    """Label tokens of a collated batch: text (next-token targets) and speech units (with EOS)."""
    text = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    units = int(batch["units_mask"].sum()) if batch.get("units_mask") is not None else 0
    return text, units


def _truncate_log(path: Path, step: int) -> None:
    """Keep only the lines of a JSONL log whose "step" is at most `step`."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in lines))


def optimizer_step(
    model: S2SModel,
    micro: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    options: TrainOptions,
    dist_state: distributed.Dist,
) -> tuple[float, float]:
    """One optimizer step over this rank's micro-batches; returns the step's global mean text and unit loss.

    Each micro-batch's summed losses are divided by the step's token counts over all micro-batches and
    ranks, so the gradient is the one of the whole global batch (FSDP2 averages over ranks: hence x world).
    """
    local = [_counts(b) for b in micro]
    text_n, unit_n = dist_state.sum([sum(c[0] for c in local), sum(c[1] for c in local)])
    sums = [0.0, 0.0]
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(micro):
        if dist_state.sharded:
            model.set_requires_gradient_sync(i == len(micro) - 1)
        with _autocast(options, dist_state):
            losses = model(batch)
        objective = losses.text_sum / max(text_n, 1) + losses.unit_sum / max(unit_n, 1)
        (objective * dist_state.world).backward()
        sums[0] += losses.text_sum.item()
        sums[1] += losses.unit_sum.item()
    torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
    optimizer.step()
    text_sum, unit_sum = dist_state.sum(sums)
    return text_sum / max(text_n, 1), unit_sum / max(unit_n, 1)


def to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """The batch with its tensors on `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _autocast(options: TrainOptions, dist_state: distributed.Dist) -> Any:
    """bf16 autocast for one unsharded process (FSDP2 casts the weights itself)."""
    if options.bf16 and not dist_state.sharded:
        return torch.autocast(device_type=dist_state.device.split(":")[0], dtype=torch.bfloat16)
    return nullcontext()


def evaluate(
    model: S2SModel,
    data_dir: Path,
    tok: TextTokenizer,
    options: TrainOptions,
    split: Split,
    dist_state: distributed.Dist,
) -> tuple[float, float]:
    """Mean text and unit loss per label token over the held-out split (each rank streams its own rows).

    Every rank runs the same number of batches (FSDP2 gathers weights collectively); a rank with fewer
    rows repeats a batch and leaves it out of the sums.
    """
    collate = Collator(model.config, tok.pad_id)

    def stream(rank: int, world: int) -> Any:
        dataset = ParquetDialogues(
            data_dir, tok, model.config, options.seed, epochs=1, spk_mode=options.spk_emb, rank=rank, world=world,
            split=split,
        )  # fmt: skip
        return iter(DataLoader(dataset, batch_size=options.batch_size, collate_fn=collate))

    total = split_rows(data_dir, split)
    batches = math.ceil(math.ceil(total / dist_state.world) / options.batch_size)
    mine, last = stream(dist_state.rank, dist_state.world), None
    sums = [0.0, 0.0, 0.0, 0.0]
    model.eval()
    with torch.no_grad():
        for _ in range(batches):
            batch = next(mine, None)
            counted = batch is not None
            batch = batch if batch is not None else last if last is not None else next(stream(0, 1))
            last = batch
            with _autocast(options, dist_state):
                losses = model(to_device(batch, dist_state.device))
            if counted:
                parts = [losses.text_sum.item(), losses.text_count, losses.unit_sum.item(), losses.unit_count]
                sums = [a + b for a, b in zip(sums, parts, strict=True)]
    model.train()
    text_sum, text_count, unit_sum, unit_count = dist_state.sum(sums)
    return text_sum / max(text_count, 1), unit_sum / max(unit_count, 1)


def _prepare(
    data_dir: Path,
    out: Path,
    config: str,
    options: TrainOptions,
    model_paths: dict[str, str | None] | None,
    init_from: Path | None,
) -> tuple[S2SModel, TextTokenizer, TrainOptions, dict[str, Any] | None, str]:
    """Check the input and build (or rebuild) the model; raises TrainError before any file is written."""
    try:
        codebook = dataset_codebook(data_dir)
        if out.exists() and not out.is_dir():
            raise TrainError(f"--out {out} is a file; give a checkpoint folder")
        resumed = (out / META).is_file()
        if not resumed and out.is_dir() and any(not _artefact(p) for p in out.iterdir()):
            raise TrainError(f"--out {out} is not empty and holds no {META}; choose an empty folder")
        meta = read_meta(out) if resumed else None
        if meta is not None:
            model_cfg = ModelConfig.from_dict(meta["config"])
            if model_cfg.name != config and init_from is None:
                raise TrainError(f"{out} holds a {model_cfg.name!r} checkpoint; pass --config {model_cfg.name}")
            if meta["codebook"] != codebook:
                raise TrainError(
                    f"{out} was trained on units {meta['codebook']!r} but {data_dir} has {codebook!r}; use a new --out"
                )
            model, tok = build_model(model_cfg), make_tokenizer(model_cfg, out)
            kept = {"steps", "log_every", "save_every", "eval_every", "num_workers", "device"}
            options = TrainOptions(**{**meta["options"], **{k: getattr(options, k) for k in kept}})
        else:
            model, tok = _new_model(config, data_dir, model_paths, init_from, options.seed)
        needed = dataset_units(data_dir)
        if needed > model.config.n_units:
            raise TrainError(
                f"{data_dir} has {needed} speech units but the model's TTS LM knows "
                f"{model.config.n_units}; use a matching --config or a new --out"
            )
    except (ConfigError, DataError) as err:
        raise TrainError(str(err)) from None
    return model, tok, options, meta, codebook


def train(
    data_dir: Path,
    out: Path,
    config: str = "tiny",
    options: TrainOptions | None = None,
    model_paths: dict[str, str | None] | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    init_from: Path | None = None,
    save_opens2s: Path | None = None,
) -> TrainResult:
    """Train (or resume) into `out` for `options.steps` optimizer steps in total, on one process or under torchrun.

    `init_from` starts from an upstream OpenS2S checkpoint folder; `save_opens2s` writes the final model in
    upstream's layout. Raises TrainError (or its ConfigError/DataError cousins) for bad input, before any
    file is written.
    """
    options = options or TrainOptions()
    _check_options(options)
    model, tok, options, meta, codebook = _prepare(data_dir, out, config, options, model_paths, init_from)
    if save_opens2s is not None and not isinstance(tok, HFTokenizer):
        raise TrainError("--save-opens2s needs a Hugging Face tokenizer: train with --init-from or --config opens2s")
    dist_state = distributed.setup(options.device)
    try:
        return _run(data_dir, out, model, tok, options, meta, codebook, dist_state, on_log, save_opens2s)
    finally:
        distributed.teardown(dist_state)


def _run(
    data_dir: Path,
    out: Path,
    model: S2SModel,
    tok: TextTokenizer,
    options: TrainOptions,
    meta: dict[str, Any] | None,
    codebook: str,
    dist_state: distributed.Dist,
    on_log: Callable[[dict[str, float]], None] | None,
    save_opens2s: Path | None,
) -> TrainResult:
    resumed = meta is not None
    try:
        eval_keys = frozenset(meta["eval_scenarios"]) if meta else eval_scenarios(data_dir, options.eval_fraction)
    except DataError as err:
        raise TrainError(str(err)) from None
    step, rows = (int(meta["step"]), int(meta["rows"])) if meta else (0, 0)
    if rows % dist_state.world:
        raise TrainError(f"{out} stopped after {rows} dialogues, which {dist_state.world} ranks cannot split evenly")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranks").mkdir(exist_ok=True)
    set_trainable(model, options.trainable)
    if options.grad_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    if dist_state.sharded:
        distributed.shard(model, dist_state, options.bf16)  # moves the shards to the device
    else:
        model.to(dist_state.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    if meta is not None:
        distributed.load_state(out / meta["state"], model, optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + step + 1) / options.warmup_steps) if options.warmup_steps else 1.0
    )
    split = Split("train", eval_keys) if eval_keys else None
    dataset = ParquetDialogues(
        data_dir,
        tok,
        model.config,
        seed=options.seed,
        skip=rows // dist_state.world,
        spk_mode=options.spk_emb,
        rank=dist_state.rank,
        world=dist_state.world,
        batch_size=options.batch_size,
        split=split,
    )
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=Collator(model.config, tok.pad_id),
    )
    log_path, ids_path = out / "log.jsonl", out / "ranks" / f"rank-{dist_state.rank:05d}.jsonl"
    dist_state.barrier()
    for path in (log_path, ids_path) if dist_state.main else (ids_path,):
        _truncate_log(path, step)  # steps a crash logged past the checkpoint (or a failed fresh start's)
    dist_state.barrier()
    result = TrainResult(out / META, step, step, resumed, world=dist_state.world)
    window: list[tuple[float, float]] = []
    t0, seen, tokens, began = time.perf_counter(), 0, 0, time.perf_counter()
    batches = iter(loader)
    global_batch = options.batch_size * options.grad_accum * dist_state.world

    def make_meta() -> dict[str, Any]:
        return {
            "step": step,
            "rows": rows,
            "world": dist_state.world,
            "config": asdict(model.config),
            "options": asdict(options),
            "codebook": codebook,
            "eval_scenarios": sorted(eval_keys),
        }

    while step < options.steps:
        micro = [to_device(next(batches), dist_state.device) for _ in range(options.grad_accum)]
        window.append(optimizer_step(model, micro, optimizer, params, options, dist_state))
        schedule.step()
        step += 1
        rows += global_batch
        seen += global_batch
        tokens += int(sum(int(b["attention_mask"].sum()) for b in micro))
        with ids_path.open("a") as f:
            f.write(json.dumps({"step": step, "ids": [i for b in micro for i in b["ids"]]}) + "\n")
        evaluated = bool(options.eval_every) and (step % options.eval_every == 0 or step == options.steps)
        if step % options.log_every == 0 or step == options.steps or evaluated:
            elapsed = time.perf_counter() - t0
            all_tokens = dist_state.sum([tokens])[0]
            record: dict[str, float] = {
                "step": step,
                "text_loss": sum(w[0] for w in window) / len(window),
                "unit_loss": sum(w[1] for w in window) / len(window),
                "lr": schedule.get_last_lr()[0],
                "samples_per_s": seen / elapsed if elapsed else 0.0,
                "tokens_per_s": all_tokens / elapsed if elapsed else 0.0,
            }
            if evaluated:
                record["eval_text_loss"], record["eval_unit_loss"] = evaluate(
                    model, data_dir, tok, options, Split("eval", eval_keys), dist_state
                )
            result.history.append(record)
            if dist_state.main:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if on_log is not None:
                    on_log(record)
            window, t0, seen, tokens = [], time.perf_counter(), 0, 0
        if options.save_every and step % options.save_every == 0 and step < options.steps:
            save_checkpoint(out, model, optimizer, make_meta(), tok, dist_state)
    if step > result.start_step or not resumed:
        save_checkpoint(out, model, optimizer, make_meta(), tok, dist_state)
    if save_opens2s is not None:
        _save_upstream(model, tok, save_opens2s, dist_state)
    result.step, result.model = step, model.eval()
    done = step - result.start_step
    result.samples_per_s = done * global_batch / (time.perf_counter() - began) if done else 0.0
    return result


def _save_upstream(model: S2SModel, tok: TextTokenizer, folder: Path, dist_state: distributed.Dist) -> None:
    from pipeline.train.upstream import save_opens2s

    assert isinstance(tok, HFTokenizer)  # checked in `train`
    state = distributed.full_state(model, dist_state)
    if dist_state.main:
        save_opens2s(state, model.config, tok, folder)
    dist_state.barrier()
