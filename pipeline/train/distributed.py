"""Multi-process training on PyTorch's own engine: torchrun + FSDP2 (`fully_shard`) + distributed checkpoints.

One process per GPU (or per CPU slot with the gloo backend in tests), started by `torchrun`, which sets
RANK / WORLD_SIZE / LOCAL_RANK. Parameters, gradients and optimizer state are sharded across the ranks
(FSDP2, ZeRO-3-like): every decoder layer of the audio encoder, the LLM and the TTS LM is its own unit,
and the root unit holds the rest (embeddings, heads, adapter, projections). Checkpoints are written by
`torch.distributed.checkpoint` (DCP): each rank writes its own shards, and a checkpoint saved by N ranks
loads on M ranks (DCP reshards). A single process (no torchrun) uses the same code with world size 1
and no sharding.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    """Where this process stands: rank, world size, its device, and whether the model is FSDP2-sharded."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    sharded: bool = False

    @property
    def main(self) -> bool:
        """Rank 0 (the one that logs and writes the shared files)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.sharded:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over the ranks (fp64 on the communication device)."""
        if not self.sharded:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def setup(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl for CUDA, gloo for CPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=rank, world=world, device=device, sharded=True)


def teardown(state: Dist) -> None:
    """Leave the process group."""
    if state.sharded and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: nn.Module, state: Dist, bf16: bool) -> nn.Module:
    """FSDP2-shard `model` over all ranks: each decoder layer its own unit, then the root.

    With `bf16`, `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`: forward and backward
    run on bf16 copies of the weights, gradients are reduced in fp32, and the sharded master weights and
    AdamW state stay fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cuda" if state.device.startswith("cuda") else "cpu", (state.world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"mesh": mesh} | ({"mp_policy": policy} if policy is not None else {})
    for stack in (model.audio_encoder.layers, model.llm.model.layers, model.tts.model.layers):
        for layer in stack:
            fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group (expected for one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write model and optimizer state with DCP into `folder` (every rank writes its own shards)."""
    import torch.distributed.checkpoint as dcp

    with _single_process_quiet():
        dcp.save(_state(model, optimizer), checkpoint_id=str(folder))


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a DCP checkpoint into `model` (and `optimizer`), whatever world size wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _state(model, optimizer)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(folder))
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def full_state(model: nn.Module, state: Dist) -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state on the CPU; a collective under FSDP2 (every rank must call it)."""
    if not state.sharded:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
