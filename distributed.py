"""Process-group set-up and the few collectives the training loop needs (torchrun / legacy launcher).

A run is distributed when the launcher sets ``WORLD_SIZE`` > 1. CUDA runs use NCCL for the gradients
and one GPU per process (``LOCAL_RANK``); CPU runs use gloo. Small control messages (per-step flags,
validation counts, RNG states, skip counters) always travel over a separate gloo group, so they never
queue behind gradient traffic or force a GPU synchronisation.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """This process's place in the run: rank, world size, its device and the gloo control group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control_group: Any = None
    batchnorm_group: Any = None  # CPU only: the group of CpuSyncBatchNorm's collectives

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher_world_size() -> int:
    """WORLD_SIZE as set by torchrun or ``torch.distributed.launch`` (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str, local_rank: int | None = None, timeout_minutes: float = 30.0) -> DistEnv:
    """Join the launcher's process group (if any) and pick this process's device.

    ``local_rank`` is the legacy launcher's ``--local-rank`` argument; the ``LOCAL_RANK`` environment
    variable (set by torchrun and by the legacy launcher alike) takes precedence.
    """
    world_size = launcher_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank if local_rank is not None else 0))
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available")
        target = torch.device("cuda", local_rank if world_size > 1 else (target.index or 0))
        torch.cuda.set_device(target)
    if world_size == 1:
        return DistEnv(device=target)
    if target.type not in ("cuda", "cpu"):
        raise ValueError(f"distributed training supports cuda and cpu devices, got {target}")
    backend = "nccl" if target.type == "cuda" else "gloo"
    timeout = timedelta(minutes=timeout_minutes)
    init_kwargs = {"device_id": target} if target.type == "cuda" else {}
    dist.init_process_group(backend, timeout=timeout, **init_kwargs)
    # Own groups for control messages and CPU BatchNorm statistics, so their collectives never
    # interleave with DDP's asynchronous gradient all-reduces on the default group.
    control = dist.new_group(backend="gloo", timeout=timeout)
    batchnorm = dist.new_group(backend="gloo", timeout=timeout) if backend == "gloo" else None
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, target, control, batchnorm)


def cleanup(env: DistEnv) -> None:
    """Destroy the process groups once the objects holding their pending work (DDP's reducer) are
    collected: gloo aborts the process if such work outlives its group at interpreter exit."""
    if env.is_distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def sum_across_ranks(values: Sequence[float], env: DistEnv) -> list[float]:
    """Element-wise sum over all ranks (float64 on the CPU control group); identity when alone."""
    if not env.is_distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, group=env.control_group)
    return tensor.tolist()


def gather_rows(values: Sequence[float], env: DistEnv) -> torch.Tensor:
    """Every rank's ``values`` as rows of a [world size, n] float64 tensor (one tensor all-gather on the
    CPU control group, cheap enough for every step)."""
    row = torch.tensor(list(values), dtype=torch.float64)
    if not env.is_distributed:
        return row.unsqueeze(0)
    rows = [torch.empty_like(row) for _ in range(env.world_size)]
    dist.all_gather(rows, row, group=env.control_group)
    return torch.stack(rows)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (picklable objects; small ones only)."""
    if not env.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj, group=env.control_group)
    return gathered


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier(group=env.control_group)
