"""Data-parallel training under ``torchrun --nproc_per_node N`` (or a single process).

:func:`setup` reads ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by torchrun), initialises the
process group (NCCL on CUDA, Gloo on CPU) and returns a :class:`DistContext`; without those
variables (or with ``WORLD_SIZE=1``) it returns a single-process context and every helper here is
a no-op, so the training loop uses one code path for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..inference import resolve_device as _resolve

__all__ = ["DistContext", "setup", "teardown", "wrap_model", "unwrap", "all_reduce_sums",
           "any_rank", "env_world_size", "resolve_device"]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """:func:`napari_vldun.inference.resolve_device` (one rule for "auto" and a missing CUDA), with a bare
    "cuda" taken as ``cuda:LOCAL_RANK`` so that every torchrun process gets its own GPU."""
    dev = _resolve(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return dev


def setup(device: str = "auto") -> DistContext:
    """Detect torchrun's environment and initialise the default process group if needed."""
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(0, 1, 0, dev, False)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        initialized_here = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, initialized_here)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
        ctx.initialized_here = False


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed; the model itself otherwise.

    No ``find_unused_parameters`` (it walks the autograd graph after every forward): the training loop adds
    a zero-weighted sum of every output (``loop._touch``), so every trainable parameter gets a gradient in
    every step, the heads of label sets absent from a rank's batch included; the frozen parts of a phase
    have ``requires_grad=False`` and DDP ignores them (``tests/test_train.py``)."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model``)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sums(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum a dict of floats over ranks (same keys on every rank, in float64); identity when single."""
    if not ctx.distributed:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
