"""Rank, shard and gather under torchrun: which rows of a batch this process owns, the
collectives that put the batch back together, and the process group a launched command needs.
Outside torchrun (no process group) every helper is the identity of a single process."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["Shards", "SharedNoise", "torchrun_group"]


class Shards:
    """The rows [lo, hi) of an n-row batch that this rank samples, and the collectives that put
    the batch together (rank r owns rows n r / world .. n (r + 1) / world)."""

    def __init__(self, n: int):
        dist = torch.distributed
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.n = n
        bounds = [n * r // self.world for r in range(self.world + 1)]
        self.lo, self.hi = bounds[self.rank], bounds[self.rank + 1]
        self.sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]  # rows of each rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The full batch (rank order) on every rank, from each rank's rows x (hi - lo, ...)."""
        if not self.on:
            return x
        padded = torch.zeros((max(self.sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, self.sizes)])

    def all_ok(self, ok: bool, device) -> bool:
        """True on every rank only if it is True on every rank."""
        if not self.on:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def max(self, value: float, device) -> float:
        """The largest `value` over the ranks."""
        if not self.on:
            return value
        v = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.MAX)
        return float(v.item())

    def broadcast(self, obj):
        """Rank 0's (picklable) `obj` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class SharedNoise:
    """N(0, I) draws for the full batch from one generator, of which this rank keeps its rows:
    an SDE sampler then sees exactly the noise it would see in a single-process run."""

    def __init__(self, generator: torch.Generator, shards: Shards):
        self.generator, self.shards = generator, shards

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        full = torch.randn((self.shards.n, *like.shape[1:]), generator=self.generator, dtype=like.dtype,
                           device=like.device)
        return full[self.shards.lo: self.shards.hi]


@contextlib.contextmanager
def torchrun_group(device: str) -> Iterator[str]:
    """Inside a command launched by torchrun (WORLD_SIZE > 1) with no process group yet: start
    one (NCCL on CUDA, with this process on its LOCAL_RANK GPU, else gloo) and destroy it on
    exit. Yields the device this process should use (`device` itself outside torchrun)."""
    dist = torch.distributed
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if started:
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            device = f"cuda:{torch.cuda.current_device()}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device
    finally:
        if started:  # a live gloo group at interpreter exit aborts the process
            dist.destroy_process_group()
