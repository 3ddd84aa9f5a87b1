"""LoRA: low-rank adapters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685).

A frozen linear layer W gets a trainable update (alpha / r) * B @ A with A: (r, in), B: (out, r).
B starts at zero, so the adapted model starts exactly equal to the base model.
"""
from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_save, check_config, load

ATTENTION_TARGETS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo")
MLP_TARGETS = ("ffn.0", "ffn.3")


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B(A(dropout(x))), with base frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float | None = None, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        max_r = min(base.in_features, base.out_features)
        if not isinstance(r, int) or not 1 <= r <= max_r:
            raise ValueError(f"LoRA rank must be an integer from 1 to {max_r} (min of in={base.in_features}, "
                             f"out={base.out_features}) for this layer, got {r!r}")
        self.base = base
        self.base.requires_grad_(False)
        self.r = r
        self.alpha = float(alpha if alpha is not None else r)
        self.scale = self.alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: one matmul per call again, as fast as the base."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, targets=ATTENTION_TARGETS, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
             trainable=("head",)) -> dict[str, LoRALinear]:
    """Put LoRA adapters on the linear layers whose names end with one of `targets`; freeze the rest.

    targets: name suffixes or glob patterns, e.g. ("attn.wq", "attn.wv") or ("*.ffn.*",).
    trainable: name prefixes of other parameters left trainable (e.g. "head" for a new task's classes).
    Returns the adapters by module name.
    """
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters; use a fresh copy of the base model "
                         "(or merge_lora + strip) instead of adding them twice")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    named = dict(model.named_modules())

    def matches(name: str, pattern: str) -> bool:
        return fnmatch.fnmatch(name, pattern) if any(ch in pattern for ch in "*?[") else (name == pattern or name.endswith("." + pattern))

    chosen = {}
    for pattern in targets:
        hits = [n for n, m in named.items() if isinstance(m, nn.Linear) and matches(n, pattern)]
        if not hits:
            linears = [n for n, m in named.items() if isinstance(m, nn.Linear)]
            raise ValueError(f"LoRA target {pattern!r} matches no linear layer; linear layers are named like "
                             f"{linears[:6]}... (use e.g. {ATTENTION_TARGETS} or {MLP_TARGETS})")
        chosen.update({n: named[n] for n in hits})
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = {}
    for name, linear in chosen.items():
        parent_name, _, child = name.rpartition(".")
        adapter = LoRALinear(linear, r, alpha, dropout)
        setattr(named[parent_name] if parent_name else model, child, adapter)
        adapters[name] = adapter
    trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable or ())
    for name, p in model.named_parameters():
        if "lora_" in name or any(name == t or name.startswith(t + ".") for t in trainable):
            p.requires_grad_(True)
    return adapters


def merge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def adapter_state_dict(model: nn.Module, extra=("head",)) -> dict[str, torch.Tensor]:
    """Only what fine-tuning changed: the LoRA matrices and the parameters under `extra` prefixes."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if "lora_" in k or any(k == e or k.startswith(e + ".") for e in extra)}


def save_adapters(model: nn.Module, path: str | os.PathLike, extra=("head",)) -> Path:
    """Write the adapters (and `extra` parameters) with the settings needed to re-create them."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; call add_lora first")
    any_layer = next(iter(layers.values()))
    return atomic_save({"model_args": model.args.to_dict(), "targets": sorted(layers), "r": any_layer.r,
                        "alpha": any_layer.alpha, "extra": list(extra), "state": adapter_state_dict(model, extra)}, path)


def load_adapters(model: nn.Module, path: str | os.PathLike) -> dict[str, LoRALinear]:
    """Add the saved adapters to a base model of the same config and load their weights."""
    saved = load(path)
    check_config(saved, model.args, path)
    adapters = add_lora(model, targets=saved["targets"], r=saved["r"], alpha=saved["alpha"], trainable=saved["extra"])
    missing = set(saved["state"]) - set(model.state_dict())
    if missing:
        raise ValueError(f"{path} holds weights this model lacks: {sorted(missing)[:5]}")
    model.load_state_dict(saved["state"], strict=False)
    return adapters
