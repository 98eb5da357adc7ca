"""Process-group set-up from torchrun's environment (or one plain process) and the few collectives
the trainer needs. NCCL on GPU, Gloo on CPU."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import InputError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_control_group = None  # Gloo: small CPU collectives that must not wait for the GPU


def init_distributed(device: str = "auto", timeout_minutes: float = 10.0) -> Dist:
    """Reads RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; without them, one process. A
    collective that waits `timeout_minutes` for a rank (dead, stuck) fails on every rank."""
    global _control_group
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise InputError("train.device=cuda but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None,
                                timeout=timeout)  # fmt: skip
        _control_group = dist.new_group(backend="gloo", timeout=timeout) if use_cuda else dist.group.WORLD
    return Dist(rank, world_size, local_rank, dev)


def any_rank(flags: list[bool], world_size: int) -> list[bool]:
    """Element-wise: is the flag set on any rank? On the CPU (Gloo), so asking it every step never
    waits for the GPU's queue; every rank must ask at the same step."""
    if world_size == 1:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return [bool(v) for v in t.tolist()]


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' tensors concatenated along dim 0; the backward keeps this rank's slice of the
    gradient. Every rank computes the same loss of the gathered tensor, so its own gradient of that
    loss is already the whole gradient for its slice: no communication in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """`x` of every rank, stacked along dim 0 in rank order, differentiable for this rank's rows. Every
    rank must pass the same shape (training batches are equal on every rank). A loss of the result is
    a loss of the global batch: see `recipes.base.Term` ('global') for how it is scaled."""
    if world_size == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_gather_objects(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], world_size: int) -> list[float]:
    """Element-wise sum over ranks of a few Python numbers (objects work on NCCL and Gloo alike)."""
    return [sum(col) for col in zip(*all_gather_objects(list(values), world_size), strict=True)]


def broadcast_object(obj, world_size: int):
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def cleanup(synchronize: bool = False) -> None:
    """Tears the process groups down. `synchronize` (a normal end, every rank alive) waits for every
    rank first, so no rank tears down while a peer is still in its last collective. Two Gloo ranks
    ending a run aborted at exit ("terminate called without an active exception") about once in 40
    runs without this and without freeing the trainer first (train.py); none in 220 runs with both.
    After an error a peer may be dead, so there is no wait then."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier(group=_control_group)
        dist.destroy_process_group()
