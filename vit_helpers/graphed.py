"""The whole training step as one CUDA graph: batch making, forward, loss, backward, clipping and AdamW.

A CUDA graph records a sequence of GPU kernels once and replays it with a single launch, so the CPU no
longer has to issue hundreds of kernels per step ("whole-network capture" in PyTorch's CUDA-graph docs).
The recorded step is `step.TrainStep.update`, the plain step, unchanged; what recording needs lives here:
- an optimizer whose step count and learning rate are device tensors (`capturable`), the lr filled in place;
- inputs that are fixed buffers: each step copies its draws (image indices, augmentation draws, mix row)
  into them, and the graph makes the batch from the draws (`GPUBatches.make_batch`);
- a few warm-up calls before recording (they compile and create the optimizer's state), after which the
  weights and the optimizer's state are put back, so training starts where it was;
- no host synchronisation anywhere in the step.
With several GPUs (`vit_helpers.distributed`), the model is DistributedDataParallel and the graph records NCCL's
all-reduce of the gradients with the rest (PyTorch's CUDA-graph notes, "Usage with DistributedDataParallel"):
the process group exists before recording, DDP was built on a side stream (`distributed.wrap(graphed=True)`), and
at least 11 eager steps run before recording, after which DDP has settled its gradient buckets. Every rank records
and replays the same graph, so every replay is one collective step of all ranks.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig
from .data import GPUBatches
from .step import TrainStep, set_lr


class GraphedStep:
    """`step(draws, lr)`: the plain step with its batch making, recorded at the first call and replayed after."""

    # DDP rebuilds its gradient buckets in the order of the first backward passes; recorded before that settles,
    # the graph would hold buffers DDP later replaces. PyTorch's notes ask for at least 11 eager DDP steps.
    DDP_WARMUP = 11

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, batches: GPUBatches, warmup: int = 3,
                 teacher: nn.Module | None = None):
        if not isinstance(batches, GPUBatches):
            raise TypeError("the whole-step CUDA graph makes its batches on the GPU: use pipeline='gpu'")
        self.distributed = isinstance(model, DistributedDataParallel)
        if self.distributed:
            warmup = max(warmup, self.DDP_WARMUP)
        self.step = TrainStep(model, cfg, device, capturable=True, teacher=teacher)  # a teacher runs inside the graph too
        self.model, self.batches, self.warmup = model, batches, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []

    @property
    def totals(self) -> torch.Tensor:
        return self.step.totals

    @property
    def ema(self) -> nn.Module | None:
        return self.step.ema

    def epoch(self, batches: GPUBatches):
        """An epoch's draws, batch by batch (the graph makes each batch from them)."""
        return batches.plan()

    def _run(self, idx: torch.Tensor, u: torch.Tensor, mix: torch.Tensor) -> None:
        self.step.update(*self.batches.make_batch(idx, u, mix))

    def __call__(self, draws, lr: float) -> None:
        set_lr(self.step.optimizer, lr)  # outside the graph: fills the lr tensor the graph reads
        if self.graph is None:
            self._record(draws)
        for buf, t in zip(self.inputs, draws):
            buf.copy_(t, non_blocking=True)
        self.graph.replay()

    def _record(self, draws) -> None:
        self.inputs = [t.clone() for t in draws]
        optimizer = self.step.optimizer
        kept = [m for m in (self.model, self.step.ema) if m is not None]  # the warm-up moves the weights' average too
        weights = [{k: v.clone() for k, v in m.state_dict().items()} for m in kept]
        state = {p: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in optimizer.state.items()}
        side = torch.cuda.Stream()  # warm-up runs on a side stream, as torch.cuda.graph expects
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._run(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            # The outer stream context puts the current stream back even when recording fails: torch.cuda.graph's exit
            # raises before it restores it, which would leave later work on the abandoned capture stream.
            with torch.cuda.stream(torch.cuda.current_stream()), torch.cuda.graph(self.graph):
                self._run(*self.inputs)
        except torch.OutOfMemoryError:
            self.graph = None
            raise
        except RuntimeError as e:  # torch.AcceleratorError is one
            self.graph = None
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            if self.distributed:
                raise RuntimeError(
                    f"recording the training step with DistributedDataParallel as one CUDA graph failed ({first_line}). "
                    "Train with the compiled step instead (each kernel launched from Python, NCCL's all-reduce outside a "
                    "graph): --set cuda_graph=False on the command line, or TrainConfig(cuda_graph=False).") from e
            raise RuntimeError(
                f"recording the training step as a CUDA graph failed ({first_line}). A common cause: an "
                "autograd graph of this model made before training is still alive, e.g. a loss computed outside "
                "torch.no_grad() and kept in a variable; its backward nodes belong to another CUDA stream. Compute "
                "such values under torch.no_grad() (or delete them) and restart the kernel, or train with "
                "cuda_graph=False.") from e
        with torch.no_grad():  # undo the warm-up: the weights (and their average), the optimizer's state, the totals
            for m, saved in zip(kept, weights):
                for k, v in m.state_dict().items():
                    v.copy_(saved[k])
            for p, s in optimizer.state.items():
                for k, v in s.items():
                    if isinstance(v, torch.Tensor):  # state the warm-up created starts from zero, as it would have
                        v.copy_(state[p][k]) if p in state and k in state[p] else v.zero_()
            self.step.totals.zero_()

    def state_dict(self) -> dict:
        return self.step.state_dict()

    def load_state_dict(self, state: dict) -> None:
        optimizer = self.step.optimizer
        lrs = [g["lr"] for g in optimizer.param_groups]  # the tensors the graph will read
        self.step.load_state_dict(state)
        for group, lr in zip(optimizer.param_groups, lrs):
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
