"""The one switch: full mode (GPU, the real training) or quick mode (CPU, small and fast).

Read once, at import. Force either with the environment variable VIT_MODE=full or VIT_MODE=quick.
"""
from __future__ import annotations

import os
import platform

import torch

MODE_ENV = "VIT_MODE"
MODES = ("full", "quick")


def detect_mode(env: dict | None = None) -> str:
    """'full' with a CUDA GPU, else 'quick'; VIT_MODE overrides."""
    env = os.environ if env is None else env
    forced = env.get(MODE_ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"{MODE_ENV}={forced!r} is not a mode; use {MODE_ENV}=full or {MODE_ENV}=quick (or unset it)")
        return forced
    return "full" if torch.cuda.is_available() else "quick"


MODE = detect_mode()
QUICK = MODE == "quick"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    """The hardware this run trains on, in one line: the GPU's name, or the CPU's with its thread count."""
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def describe() -> str:
    """Which mode this run is in and on what hardware: a short line, then what the mode trains on indented below
    (one long line would wrap mid-word in a notebook's output). For the hardware alone, `device_name()`."""
    hw = device_name()
    why = f"forced by {MODE_ENV}" if os.environ.get(MODE_ENV) else ("a GPU was found" if MODE == "full" else "no GPU was found")
    what = (["training: the full recipe"] if MODE == "full" else
            ["training: a small model on a subset (real results, smaller)", "analysis: the released full model"])
    return "\n  ".join([f"Mode: {MODE} ({why}); device: {hw}", *what])


def print_mode() -> None:
    print(describe())

# The training recipe each mode uses (vit_helpers.train.RECIPES).
RECIPE = "fast" if MODE == "full" else "quick"
# The distillation recipe each mode uses (notebook 09); its teacher's is config.TEACHER_RECIPES[DISTILLED_RECIPE].
DISTILLED_RECIPE = "distilled" if MODE == "full" else "distilled_quick"
