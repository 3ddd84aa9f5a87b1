"""Compiling a training run with torch.compile, and undoing it: the one owner of what is compiled in place.

`torch.compile(f)` returns a compiled copy and changes nothing else: `TrainStep` compiles its own loss that way
(compile_scope="step"), and `compiled` the model that evaluation runs. `nn.Module.compile()` instead compiles a
module in place: it sets `module._compiled_call_impl`, which `module(x)` then calls. Regional compilation
(compile_scope="blocks") compiles each transformer block and the teacher so, which changes the caller's modules;
only the context managers here do it, and on leaving they give each module back what it had (None: its plain
forward). A module the caller had compiled stays compiled; nothing stays compiled that came in plain.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from .config import TrainConfig


def compiles(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether cfg.compile applies on `device`: the project compiles for a CUDA GPU only (a CPU run stays eager)."""
    return cfg.compile and device.type == "cuda"


@contextmanager
def compile_regions(model: nn.Module, teacher: nn.Module | None = None, mode: str = "default",
                    **compile_kw) -> Iterator[list[nn.Module]]:
    """Regional compilation (cfg.compile_scope="blocks"): each transformer block of `model`, and the teacher, compiled in
    place for the `with` block, which gets the list of them; on leaving, each module is as it came.

    The blocks run the same code on same-shaped inputs, so torch.compile traces and generates kernels for one block and
    reuses them for every layer (the block's weights are inputs to the compiled graph, not constants), where compiling
    the whole loss generates code for all six layers."""
    inner = getattr(model, "module", model)  # (DDP's wrapped module under torchrun)
    blocks = list(getattr(inner, "transformer", None) or [])
    if not blocks:
        raise ValueError(f"compile_scope='blocks' compiles a VisionTransformer's blocks (model.transformer); "
                         f"{type(inner).__name__} has none: use compile_scope='step'")
    regions = blocks + ([teacher] if teacher is not None else [])
    before = [module._compiled_call_impl for module in regions]  # a caller's own compiled forward comes back on leaving
    try:
        for module in regions:
            module.compile(mode=mode, **compile_kw)
        yield regions
    finally:
        for module, impl in zip(regions, before):
            module._compiled_call_impl = impl


@contextmanager
def compiled(step, cfg: TrainConfig, device: torch.device) -> Iterator[nn.Module]:
    """What cfg.compile asks for a run of `step` (a TrainStep or GraphedStep), for the `with` block, which gets the model
    that evaluation runs: the trained model, or with cfg.ema_decay the weights' average, compiled as well.

    compile_scope "step": the step compiled its loss itself, and the evaluated model is compiled as a whole (a copy).
    "blocks": the blocks of the model (and of the average) and the teacher are compiled in place (`compile_regions`)
    and given back on leaving, also after an error. `train()` runs its loop inside one; so should anyone who builds a
    step with compile_scope="blocks" (outside one, the step runs eager)."""
    plain = getattr(step, "step", step)  # (a GraphedStep records a TrainStep)
    evaluated = plain.ema if plain.ema is not None else getattr(plain.model, "module", plain.model)
    if not compiles(cfg, device):
        yield evaluated
    elif cfg.compile_scope == "step":
        yield torch.compile(evaluated)
    else:
        with (compile_regions(plain.model, plain.teacher, plain.compile_mode),
              compile_regions(evaluated) if evaluated is plain.ema else nullcontext()):  # the average's blocks, for evaluation
            yield evaluated
