"""Data-parallel training across processes (torchrun / accelerate launch): ranks, sharding, reductions.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the training process joins
the process group (NCCL on GPUs, Gloo on CPU), each rank trains on its slice of every global batch,
DDP averages the gradients, and only rank 0 writes checkpoints, metrics and the result.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the job; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def launched_world_size() -> int:
    """The WORLD_SIZE a launcher (torchrun, accelerate) gave this process; 1 when started plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_process_group(use_cuda: bool, timeout_minutes: int = 30) -> Ranks:
    """Join the process group torchrun describes; on GPUs, bind this process to its local GPU."""
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={launched_world_size()} but {', '.join(missing)} not set: start the trainer with "
            "torchrun or accelerate launch (FINETUNE_LAUNCHER=torchrun|accelerate), which set them"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def current_ranks() -> Ranks:
    """The ranks of the joined process group, or a single process when there is none."""
    if not dist.is_initialized():
        return SINGLE
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def end_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(use_cuda: bool) -> Iterator[Ranks]:
    """Join the launcher's process group for the block when started with several ranks; a single process otherwise."""
    if launched_world_size() <= 1:
        yield current_ranks()
        return
    ranks = start_process_group(use_cuda)
    try:
        yield ranks
    finally:
        end_process_group()


def rank_slice(items: Sequence[int], ranks: Ranks) -> list[int]:
    """This rank's contiguous share of a global batch (the last ranks get fewer, possibly none).

    Contiguous rather than strided, so that N ranks with micro-batch b see exactly the micro-batches
    one process with gradient accumulation N sees: the two runs compute the same gradient.
    """
    share = -(-len(items) // ranks.world_size)
    return list(items[ranks.rank * share : (ranks.rank + 1) * share])


@dataclass(frozen=True)
class BatchPlan:
    """How training examples become optimizer steps: global batches, split over ranks and micro-batches.

    One optimizer step consumes a global batch of `batch_size x accumulation x world_size` examples;
    each rank takes its contiguous share and feeds it in `accumulation` micro-batches.
    """

    examples: int
    batch_size: int
    accumulation: int
    epochs: int
    max_steps: int = 0
    ranks: Ranks = SINGLE

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulation * self.ranks.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.examples / self.global_batch)

    @property
    def total_steps(self) -> int:
        return self.max_steps or self.steps_per_epoch * self.epochs

    def micro_batches(self, group: Sequence[int]) -> list[MicroBatch]:
        """This rank's micro-batches of one global batch (a rank whose share ran out gets empty ones,
        since it must still join every gradient exchange; a single process simply stops early)."""
        mine = rank_slice(group, self.ranks)
        parts = []
        for micro in range(self.accumulation):
            part = mine[micro * self.batch_size : (micro + 1) * self.batch_size]
            if not part and not self.ranks.distributed:
                break
            parts.append(MicroBatch(part, len(part) / len(group), self.ranks.world_size))
        return parts


@dataclass(frozen=True)
class MicroBatch:
    """Example indices of one forward/backward pass and their share of the global batch."""

    indices: list[int]
    share: float
    world_size: int

    @property
    def loss_weight(self) -> float:
        """DDP averages gradients over ranks; scaling by world_size makes the sum over ranks the global mean."""
        return self.share * self.world_size


def gradient_sync(model: torch.nn.Module, last_micro_batch: bool, ranks: Ranks):
    """DDP exchanges gradients on the last micro-batch of a step only; earlier ones accumulate locally."""
    if last_micro_batch or not ranks.distributed:
        return contextlib.nullcontext()
    return model.no_sync()


def reduce_sum(values: Sequence[float], ranks: Ranks, device: str = "cpu") -> list[float]:
    """Sum float values over all ranks (identity for a single process)."""
    if not ranks.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def wrap_data_parallel(model: torch.nn.Module, ranks: Ranks, device: str) -> torch.nn.Module:
    """DDP around the model so backward averages gradients over ranks; the model itself when single."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ranks.local_rank] if device == "cuda" else None)
