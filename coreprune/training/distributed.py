"""Data-parallel training through PyTorch's own DistributedDataParallel.

``fit`` runs under ``torchrun`` unchanged: it finds the process group (or the environment
``torchrun`` sets and creates the group: NCCL on CUDA, Gloo on CPU), wraps the model in DDP,
shards the training data with a ``DistributedSampler`` and sums the epoch's metrics over
ranks, so every rank records the same history and takes the same early-stop decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from coreprune.torch_utils import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Who this process is in a data-parallel run (rank 0 of 1 when not distributed)."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and shows progress."""
        return self.rank == 0

    def all_reduce_sum(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over ranks, in place (no-op when not distributed)."""
        if self.enabled:
            for tensor in tensors:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def broadcast_int(self, value: int, device: torch.device) -> int:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _env_world() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from the variables torchrun sets, or None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as error:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({error})") from error
    return rank, world, local


def setup_distributed(
    distributed: bool | None, device: str | torch.device | None
) -> tuple[DistContext, torch.device]:
    """Decide whether to train data-parallel, and on which device this rank trains.

    ``distributed``: False never; True always (needs a process group or torchrun's
    environment); None when a process group is initialised or torchrun started more than one
    process. Under DDP with CUDA each rank uses ``cuda:LOCAL_RANK``.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be a bool or None, got {type(distributed).__name__}")
    target = resolve_device(device)
    if distributed is False:
        return DistContext(), target
    initialised = dist.is_available() and dist.is_initialized()
    env = _env_world()
    if not initialised:
        wanted = distributed is True or (env is not None and env[1] > 1)
        if not wanted:
            return DistContext(), target
        if env is None or not dist.is_available():
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group or the "
                "RANK/WORLD_SIZE environment torchrun sets; launch with "
                "`torchrun --nproc_per_node=N ...` or pass distributed=None"
            )
    local_rank = env[2] if env is not None else 0
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", local_rank % torch.cuda.device_count())
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not initialised:
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    context = DistContext(
        enabled=True, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank
    )
    return context, target


def wrap_model(model: nn.Module, context: DistContext, device: torch.device) -> nn.Module:
    """DDP around ``model`` (already on ``device``); the model itself when not distributed."""
    if not context.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard_loader(loader: DataLoader, context: DistContext, seed: int) -> DataLoader:
    """The same loader with a ``DistributedSampler``: each rank sees 1/world of every epoch,
    shuffled (if the loader shuffled) by ``seed + epoch`` identically on every rank.

    Each rank keeps the loader's batch size, so the effective batch is ``world_size`` times
    larger. A loader that already has a DistributedSampler is used as it is.
    """
    if not context.enabled:
        return loader
    if not isinstance(loader, DataLoader):
        raise TypeError(f"DDP training needs a DataLoader, got {type(loader).__name__}")
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError("DDP training needs a map-style dataset; an IterableDataset cannot shard")
    if loader.batch_size is None or not isinstance(
        loader.sampler, RandomSampler | SequentialSampler
    ):
        raise TypeError(
            "under DDP, fit shards loaders built with batch_size= and shuffle=True/False; "
            "for a custom sampler, build the loader with a DistributedSampler yourself"
        )
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
    )
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        persistent_workers=loader.persistent_workers if workers > 0 else False,
    )
