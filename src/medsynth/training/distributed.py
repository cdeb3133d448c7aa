"""Multi-process training with PyTorch DistributedDataParallel, configured from torchrun's environment.

`torchrun --nproc_per_node=K -m medsynth train ...` starts K processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set; each process trains on its own shard of the data (see
`medsynth.data.datasets.StepSampler`), gradients are averaged by DDP (NCCL on CUDA, gloo on CPU), and
only rank 0 writes checkpoints and reports progress and samples.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistributedContext:
    """The process's place in a torchrun job; a single process when the variables are absent."""
    return DistributedContext(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(context: DistributedContext, device: torch.device) -> bool:
    """Join the process group (NCCL for CUDA, gloo otherwise); True when this call created it."""
    if not context.is_distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel on `device` (one device per process)."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (so that all ranks stop at the same step)."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_strings(text: str, context: DistributedContext) -> list[str]:
    """`text` of every rank, in rank order (collective: every rank must call it)."""
    if not context.is_distributed:
        return [text]
    out: list[str] = [""] * context.world_size
    dist.all_gather_object(out, text)
    return out


def parameter_digest(models: dict[str, nn.Module]) -> str:
    """SHA-256 of every parameter of `models` (by model and parameter name), to compare ranks."""
    digest = hashlib.sha256()
    for name in sorted(models):
        for param_name, param in sorted(models[name].named_parameters()):
            digest.update(f"{name}/{param_name}".encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
