"""LoRA: low-rank adapters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685).

A frozen linear layer W gets a trainable update (alpha / r) * B @ A with A: (r, in), B: (out, r).
B starts at zero, so the adapted model starts exactly equal to the base model.
"""
from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_save, check_config, load

ATTENTION_TARGETS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo")
MLP_TARGETS = ("ffn.0", "ffn.3")


def _check_layer(base: nn.Module, r: int, name: str = "this layer") -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
    max_r = min(base.in_features, base.out_features)
    if not isinstance(r, int) or not 1 <= r <= max_r:
        raise ValueError(f"LoRA rank must be an integer from 1 to {max_r} (min of in={base.in_features}, "
                         f"out={base.out_features}) for {name}, got {r!r}")


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B(A(dropout(x))), with base frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float | None = None, dropout: float = 0.0):
        super().__init__()
        _check_layer(base, r)
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


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _tensor_digests(model: nn.Module) -> dict[str, str]:
    """sha256 of each tensor of the base model, by its name in the base (LoRA wrappers seen through, LoRA matrices left out)."""
    wrapped = [n + "." for n in lora_layers(model)]
    out = {}
    for name, t in model.state_dict().items():
        if name.rpartition(".")[2].startswith("lora_"):
            continue
        for w in wrapped:  # "<layer>.base.weight" is the base model's "<layer>.weight"
            if name.startswith(w + "base."):
                name = w + name[len(w) + len("base."):]
                break
        t = t.detach().to("cpu").contiguous()
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
        out[name] = h.hexdigest()
    return out


def _combine(digests: dict[str, str], exclude) -> str:
    """One fingerprint from per-tensor digests, in name order, leaving out the names under `exclude` prefixes."""
    h = hashlib.sha256()
    for name in sorted(digests):
        if not _under(name, exclude):
            h.update(f"{name}:{digests[name]}\n".encode())
    return h.hexdigest()


def base_fingerprint(model: nn.Module, exclude=("head",)) -> str:
    """sha256 over the base model's weights (LoRA matrices and names under `exclude` left out), in name order."""
    if any(m.merged for m in lora_layers(model).values()):
        raise ValueError("the adapters are merged into the base weights; call unmerge_lora(model) first")
    return _combine(_tensor_digests(model), tuple(exclude))


def _remove_lora(model: nn.Module, adapters: dict[str, nn.Module], requires_grad: list) -> None:
    """Undo add_lora: the original linear layers back in place, every parameter's requires_grad as it was."""
    for name, adapter in adapters.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if getattr(parent, child) is adapter:
            if adapter.merged:
                adapter.unmerge()
            setattr(parent, child, adapter.base)
    for p, flag in requires_grad:
        p.requires_grad_(flag)
    model.__dict__.pop("_lora_base", None)


def add_lora(model: nn.Module, targets=ATTENTION_TARGETS, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
             trainable=("head",)) -> dict[str, LoRALinear]:
    """Put LoRA adapters on the linear layers whose names end with one of `targets`; freeze the rest.

    targets: name suffixes or glob patterns, e.g. ("attn.wq", "attn.wv") or ("*.ffn.*",).
    trainable: name prefixes of other parameters left trainable (e.g. "head" for a new task's classes).
    Returns the adapters by module name. All arguments are checked before the model is touched, and a
    failure midway puts it back as it was.
    """
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters; use a fresh copy of the base model "
                         "(or merge_lora + strip) instead of adding them twice")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable or ())
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
    for name, linear in chosen.items():
        _check_layer(linear, r, name)
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise ValueError(f"LoRA alpha must be a finite number (or None for alpha = r), got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA dropout is a probability in [0, 1), got {dropout!r}")
    names = [n for n, _ in model.named_parameters()]
    unknown = [t for t in trainable if not any(_under(n, (t,)) for n in names)]
    if unknown:
        raise ValueError(f"trainable prefixes {unknown} match no parameter (parameters are named like {names[:4]}...); "
                         f"fix the names, or they would silently stay frozen")
    # The base as it is now, for the fingerprint save_adapters writes (the adapters may be merged by then).
    digests = _tensor_digests(model)
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    adapters = {}
    try:
        for p, _ in requires_grad:
            p.requires_grad_(False)
        for name, linear in chosen.items():
            parent_name, _, child = name.rpartition(".")
            adapter = LoRALinear(linear, r, alpha, dropout)
            setattr(named[parent_name] if parent_name else model, child, adapter)
            adapters[name] = adapter
        for name, p in model.named_parameters():
            if "lora_" in name or _under(name, trainable):
                p.requires_grad_(True)
    except BaseException:  # e.g. out of memory for the new matrices: leave no half-adapted, frozen model behind
        _remove_lora(model, adapters, requires_grad)
        raise
    model.__dict__["_lora_base"] = {"digests": digests, "trainable": list(trainable)}
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


ADAPTER_KEYS = ("model_args", "targets", "r", "alpha", "extra", "state")


def save_adapters(model: nn.Module, path: str | os.PathLike, extra=("head",)) -> Path:
    """Write the adapters (and `extra` parameters) with the settings needed to re-create them and a fingerprint
    of the base model they were trained on (checked by load_adapters)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; call add_lora first")
    extra = (extra,) if isinstance(extra, str) else tuple(extra or ())
    settings = {(m.r, m.alpha) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"the adapters differ in (rank, alpha): {sorted(settings)}; the file holds one setting for all")
    names = [n for n, _ in model.named_parameters()]
    unknown = [e for e in extra if not any(_under(n, (e,)) for n in names)]
    if unknown:
        raise ValueError(f"extra prefixes {unknown} match no parameter (parameters are named like {names[:4]}...)")
    base = model.__dict__.get("_lora_base")
    if base is None:  # adapters made without add_lora: the base is what is there now, unless merged into it
        base = {"digests": _tensor_digests(model), "trainable": []} if not any(m.merged for m in layers.values()) else None
    fingerprint = None
    if base is None:
        warnings.warn(f"the adapters are merged and were not made by add_lora: {path} gets no base-model fingerprint, so "
                      f"load_adapters can't check the base it is loaded into", stacklevel=2)
    else:
        exclude = sorted(set(extra) | set(base["trainable"]))  # changed by fine-tuning, or replaced on load
        fingerprint = {"sha256": _combine(base["digests"], exclude), "exclude": exclude}
    (r, alpha), = settings
    return atomic_save({"model_args": model.args.to_dict(), "targets": sorted(layers), "r": r, "alpha": alpha,
                        "extra": list(extra), "state": adapter_state_dict(model, extra), "base_fingerprint": fingerprint}, path)


def load_adapters(model: nn.Module, path: str | os.PathLike, check_base: bool = True) -> dict[str, LoRALinear]:
    """Add the saved adapters to the base model they were trained on and load their weights.

    A base of the same config but other weights is refused (ValueError); check_base=False loads anyway, with a
    warning. A failure leaves the model as it was.
    """
    if lora_layers(model):
        raise ValueError(f"this model already has LoRA adapters; load {path} into a fresh copy of the base model")
    saved = load(path, keys=ADAPTER_KEYS)
    check_config(saved, model.args, path)
    fingerprint = saved.get("base_fingerprint")
    if fingerprint is None:
        warnings.warn(f"{path} has no base-model fingerprint (saved by an older vit_helpers, or from merged adapters): "
                      f"it can't be checked that this is the base model they were trained on", stacklevel=2)
    elif (found := base_fingerprint(model, fingerprint["exclude"])) != fingerprint["sha256"]:
        msg = (f"{path} was trained on another base model: same config, but this model's weights differ from the ones "
               f"the adapters were fine-tuned from (base fingerprint {fingerprint['sha256'][:12]}, this model "
               f"{found[:12]}; a base cast to another dtype differs too), so the outputs would not be the fine-tuned "
               f"model's. Load them into that base model (the checkpoint it came from)")
        if check_base:
            raise ValueError(msg + ", or pass check_base=False to load them anyway.")
        warnings.warn(msg + "; loading anyway (check_base=False).", stacklevel=2)
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    adapters = add_lora(model, targets=saved["targets"], r=saved["r"], alpha=saved["alpha"], trainable=saved["extra"])
    try:
        expected = {k for k in model.state_dict() if "lora_" in k or _under(k, saved["extra"])}
        missing, unexpected = sorted(expected - set(saved["state"])), sorted(set(saved["state"]) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{path} does not match the adapters it describes: "
                                  + (f"it lacks {missing[:5]}" if missing else "")
                                  + ("; " if missing and unexpected else "")
                                  + (f"it holds weights this model lacks: {unexpected[:5]}" if unexpected else "")
                                  + ". It was edited or written by other code; save it again with save_adapters.")
        try:
            model.load_state_dict(saved["state"], strict=False)
        except RuntimeError as e:  # shapes that don't fit
            raise CheckpointError(f"{path}'s weights don't fit this model: {str(e).strip()[:400]}") from e
    except BaseException:
        _remove_lora(model, adapters, requires_grad)
        raise
    return adapters
