"""Several processes (torchrun, or torch.multiprocessing in tests): DDP over gloo on CPU, nccl on GPUs.

`torchrun --nproc_per_node N -m graftkit.cli.main train ...` sets RANK/WORLD_SIZE/
MASTER_ADDR; `context()` then joins the process group. Every rank computes the
same initialisation from the seed, DDP averages gradients, so weights stay
identical; only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average BatchNorm running statistics over ranks (each saw its own shard), as timm's distribute_bn."""
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b.div_(self.world)

    def from_main(self, value):
        """Rank 0's value (an int or a float) on every rank (decisions from timings must agree)."""
        if not self.active:
            return value
        kind = type(value)
        t = torch.tensor([value], dtype=torch.int64 if kind is int else torch.float64,
                         device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(t, 0)
        return kind(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a stop decided by one rank stops them all)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def context(device: str | torch.device | None = None) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Context(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return Context(rank, world, local, device)
