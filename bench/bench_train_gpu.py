"""Training throughput and peak memory of the full architecture at real sizes, bf16, on one GPU (or `tiny` on the CPU).

    .venv/bin/python bench/bench_train_gpu.py --size qwen3-0.6b --device cuda [--steps 20] [--batch-size 4]
    .venv/bin/python bench/bench_train_gpu.py --size tiny --device cpu --steps 6 --batch-size 2 --seconds 4 \
        --reply-chars 100

`qwen3-0.6b`: randomly initialised Qwen2-Audio encoder (its real shape: 32 layers, d_model 1280, frozen),
the conv adapter, a Qwen3-0.6B-shaped LLM (hidden 1024, 28 layers, intermediate 3072, 16 / 8 heads,
vocab 151936) and a TTS LM of the same shape over Qwen3's vocab plus 16384 unit tokens; trainable:
adapter, projections, LLM and TTS LM (`adapters-llm-tts`), AdamW, bf16 autocast, gradient checkpointing
on. The examples are synthetic but go through the real path: a WAV clip and an assistant reply with
units laid out by `build_example`, log-mel by the `Collator`, one optimizer step by the trainer's own
`optimizer_step`. Prints samples/s, LLM tokens/s, units/s and peak memory (GPU: torch's peak allocated;
CPU: the process's peak RSS). The first 2 steps (warm-up) are not timed. Asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import resource
import time

import numpy as np
import soundfile as sf
import torch

from pipeline.train import distributed
from pipeline.train.config import ModelConfig, tiny_config
from pipeline.train.data import Collator, Example, build_example
from pipeline.train.model import build_model, set_trainable
from pipeline.train.plan import QWEN2_AUDIO_ENCODER, QWEN3_06B
from pipeline.train.tokenizer import ByteTokenizer
from pipeline.train.trainer import TrainOptions, optimizer_step, to_device

WARMUP = 2


def sized_config(size: str) -> ModelConfig:
    """`tiny`, or the full architecture with Qwen3-0.6B-shaped LLM and TTS LM and the real Qwen2-Audio encoder."""
    if size == "tiny":
        return tiny_config(n_units=64)
    decoder = {**QWEN3_06B, "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 8192}
    n_units = 16384
    return ModelConfig(
        name="qwen3-0.6b",
        encoder={**QWEN2_AUDIO_ENCODER, "dropout": 0.0},
        llm=decoder,
        tts={**decoder, "vocab_size": QWEN3_06B["vocab_size"] + n_units},
        n_units=n_units,
        unit_offset=QWEN3_06B["vocab_size"],
        unit_eos=QWEN3_06B["vocab_size"] - 1,
        unit_pad=QWEN3_06B["vocab_size"] - 2,
        adapter_inner_dim=512,
        text_span=4,
        speech_span=8,
        max_tokens=4096,
    )


def synthetic_example(i: int, config: ModelConfig, seconds: float, reply_chars: int) -> Example:
    """One dialogue exchange: `seconds` of noise as the user's WAV, a reply of `reply_chars` with 2 units a char."""
    rng = np.random.default_rng(i)
    wav = io.BytesIO()
    sf.write(wav, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000, format="WAV")
    text = "".join(rng.choice(list("abcdefghij klmnopqrstuvwxyz,."), reply_chars))
    units = rng.integers(0, config.n_units, 2 * reply_chars).tolist()
    reply = {"role": "assistant", "text": text, "speech_units": units, "speaker_id": "voice-a"}
    row = {"id": f"synthetic-{i}", "turns": [{"role": "user", "audio": {"bytes": wav.getvalue()}}, reply]}
    return build_example(row, ByteTokenizer(), config)


def main() -> None:
    """Train `--steps` optimizer steps on synthetic dialogues and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=["tiny", "qwen3-0.6b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="user audio per dialogue")
    parser.add_argument("--reply-chars", type=int, default=400, help="assistant text per dialogue (byte tokens)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = sized_config(args.size)
    options = TrainOptions(batch_size=args.batch_size, lr=1e-4, bf16=True, grad_checkpointing=args.size != "tiny")
    model = build_model(config, seed=0)
    set_trainable(model, "adapters-llm-tts")
    if options.grad_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(args.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr)
    collate = Collator(config, ByteTokenizer().pad_id)
    batches = [
        collate([synthetic_example(s * args.batch_size + j, config, args.seconds, args.reply_chars)
                 for j in range(args.batch_size)])
        for s in range(min(args.steps, 4))
    ]  # fmt: skip
    dist_state = distributed.Dist(device=args.device)
    on_gpu = args.device.startswith("cuda")
    llm_tokens = units = 0
    losses: list[tuple[float, float]] = []
    for step in range(args.steps):
        if step == WARMUP:
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        batch = to_device(batches[step % len(batches)], args.device)
        losses.append(optimizer_step(model, [batch], optimizer, params, options, dist_state))
        if step >= WARMUP:
            llm_tokens += int(batch["attention_mask"].sum())
            units += int(batch["units_mask"].sum())
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    timed = args.steps - WARMUP
    total = sum(p.numel() for p in model.parameters())
    peak = (
        f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        if on_gpu
        else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    print(
        f"{args.size}: {total / 1e6:.2f} M parameters ({sum(p.numel() for p in params) / 1e6:.2f} M trainable), "
        f"bf16 autocast, gradient checkpointing {'on' if options.grad_checkpointing else 'off'}, {args.device}, "
        f"batch {args.batch_size} x ~{llm_tokens // max(timed * args.batch_size, 1)} LLM tokens"
    )
    print(
        f"{timed} timed steps in {elapsed:.1f} s: {timed * args.batch_size / elapsed:.2f} samples/s, "
        f"{llm_tokens / elapsed:.0f} LLM tokens/s, {units / elapsed:.0f} units/s, {peak}; "
        f"loss text {losses[0][0]:.3f} -> {losses[-1][0]:.3f}, units {losses[0][1]:.3f} -> {losses[-1][1]:.3f}"
    )


if __name__ == "__main__":
    main()
