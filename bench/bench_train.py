"""Training throughput of the tiny config and the Parquet data loader's throughput, measured in one run.

    .venv/bin/python bench/bench_train.py [DATA_DIR] [--steps N] [--batch-size B] [--threads T]

DATA_DIR defaults to out/demo (a `make demo` build). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipeline.train.config import tiny_config
from pipeline.train.data import Collator, ParquetDialogues, dataset_units
from pipeline.train.tokenizer import ByteTokenizer
from pipeline.train.trainer import TrainOptions, train


def loader_throughput(data_dir: Path, passes: int = 2) -> tuple[float, float, int]:
    """(rows/s building examples, rows/s including collation with log-mel, rows) over `passes` epochs."""
    tok, config = ByteTokenizer(), tiny_config(dataset_units(data_dir))
    start = time.perf_counter()
    examples = list(ParquetDialogues(data_dir, tok, config, epochs=passes))
    built = time.perf_counter() - start
    collate = Collator(config, tok.pad_id)
    start = time.perf_counter()
    for i in range(0, len(examples), 2):
        collate(examples[i : i + 2])
    collated = time.perf_counter() - start
    return len(examples) / built, len(examples) / (built + collated), len(examples)


def main() -> None:
    """Run the loader, then a short tiny-config training run, and print both figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", nargs="?", default="out/demo", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_s, rows_collated_s, rows = loader_throughput(args.data_dir)
    print(
        f"loader: {rows} dialogues read from Parquet -> examples at {rows_s:.1f} rows/s; "
        f"with log-mel collation {rows_collated_s:.1f} rows/s"
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        options = TrainOptions(steps=args.steps, batch_size=args.batch_size, log_every=args.steps)
        result = train(args.data_dir, folder / "ckpt", "tiny", options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    params = sum(p.numel() for p in result.model.parameters()) if result.model is not None else 0
    last = result.history[-1]
    print(
        f"train (tiny, {params / 1e6:.2f} M parameters, batch {args.batch_size}, {args.threads} thread(s)): "
        f"{result.samples_per_s:.2f} samples/s over {args.steps} steps; "
        f"last text_loss {last['text_loss']:.3f}, unit_loss {last['unit_loss']:.3f}"
    )


if __name__ == "__main__":
    main()
