"""Several processes, one model: DistributedDataParallel (DDP) under `torchrun`, set up and torn down here.

`torchrun --nproc_per_node=N -m vit_helpers.train --recipe fast` starts N copies of the same command; torchrun
tells each its place through environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
Each process (a "rank") drives one GPU (NCCL carries the gradients between GPUs) or, without GPUs, a share of the
CPU (gloo), which is how the tests run it. What each rank does differently lives in these few helpers, so that
`train()` stays one loop:
- the global batch of the recipe is cut into N equal shares: every rank draws the same seeded epoch order and
  augmentation (`data.GPUBatches(rank=, world_size=)`) and keeps its slice, so batch size and lr keep their meaning;
- DDP averages the gradients of the N shares during backward (each rank's loss is its share's mean, so the
  average is the global batch's mean gradient), and every rank then takes the same optimizer step;
- evaluation splits the validation images into N disjoint shards and adds up the sums (`all_reduce_sum`);
- only rank 0 prints (`setup` silences the others' stdout) and writes checkpoints.

Without torchrun (WORLD_SIZE unset or 1) every helper is a no-op: one process, as in the notebooks.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Setup:
    """Where this process stands: its rank among world_size processes, and the device it drives."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group is running (several processes train one model)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the process that prints and writes; also true without torchrun."""
    return rank() == 0


def setup(cpu: bool = False) -> Setup:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs, `cpu`: gloo
    even where GPUs exist) and pick this rank's device, cuda:LOCAL_RANK; without torchrun: one process.
    Other ranks than 0 print nothing (their stdout goes nowhere; errors still reach stderr)."""
    use_cuda = torch.cuda.is_available() and not cpu
    if not launched():
        return Setup(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): start at "
                               f"most that many processes per node (torchrun --nproc_per_node={torch.cuda.device_count()})")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        # A CUDA graph may record NCCL's all-reduce only when the process group's watchdog does not query the
        # graph's events while it is being recorded (PyTorch's CUDA-graph notes, "Usage with DistributedDataParallel").
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    else:
        device = torch.device("cpu")
    if not active():
        dist.init_process_group("nccl" if use_cuda else "gloo", **({"device_id": device} if use_cuda else {}))
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # one table, rank 0's: the others would print the same lines
    return Setup(dist.get_rank(), dist.get_world_size(), device)


def teardown() -> None:
    """Leave the process group (at the end of a run, also after an error, so torchrun does not wait)."""
    if active():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, graphed: bool = False) -> nn.Module:
    """`model` wrapped in DistributedDataParallel when several processes run, else `model` itself.

    DDP copies rank 0's weights to every rank, then averages the gradients during backward. Each rank then draws
    its own random numbers (dropout, stochastic depth) from here on: the same seed on every rank would give the
    images at the same place in each shard the same masks. graphed: the whole step will be recorded as a CUDA graph,
    which needs DDP built on a side stream (its gradient hooks must not belong to the default stream).
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    if graphed and device.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ddp = DDP(model, device_ids=ids)
        torch.cuda.current_stream().wait_stream(side)
    else:
        ddp = DDP(model, device_ids=ids)
    if rank() > 0:  # rank 0 keeps its stream: a one-process run draws the same numbers
        torch.manual_seed(torch.initial_seed() + 7919 * rank())
    return ddp


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all ranks, in place (every rank gets the total); unchanged with one process."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_int(value: int) -> int:
    """Rank 0's `value` on every rank (e.g. the epochs a time budget chose from rank 0's clock)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.long, device=_collective_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] with one process."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class BatchSplitError(ValueError):
    """The global batch does not split evenly among the processes."""


def check_batch_size(batch_size: int) -> None:
    """The global batch is cut into equal shares, one per rank: it must divide evenly."""
    n = world_size()
    if batch_size % n:
        raise BatchSplitError(f"batch_size={batch_size} is the global batch, cut into equal shares for {n} processes, but "
                         f"{n} does not divide it: pick a batch size divisible by {n} (e.g. --set batch_size="
                         f"{batch_size // n * n or n}) or another number of processes")
