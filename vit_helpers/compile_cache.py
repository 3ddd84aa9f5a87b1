"""Keep torch.compile's work between runs: PyTorch's "Mega-Cache" (`torch.compiler.save_cache_artifacts` and
`load_cache_artifacts`, PyTorch 2.7+), one file per torch version, GPU and training configuration.

Compiling the training step, the augmentation and the evaluation model costs 20-35 s of a fresh machine's first
epoch. Inductor keeps its own caches on disk (TORCHINDUCTOR_CACHE_DIR, by default a folder in /tmp), so a second run
on the same machine compiles in a few seconds; but a new machine, a new Colab runtime or a cleaned /tmp starts with
them empty. The Mega-Cache packs what this process compiled (inductor's graphs with their Triton kernels, AOTAutograd's
graphs, autotuning results) into bytes, which we keep beside the checkpoints; loading them before training fills
inductor's caches, so torch.compile finds its work done. Dynamo's tracing and the CUDA-graph recording still run
(a few seconds). `train()` loads the file before training and saves it after the first epoch (by then the step, the
augmentation and the evaluation model are compiled).

The file's name is the key: the torch version, the GPU, and a hash of the configs that shape the compiled graphs
(not the run's length, seed or logging). A cache only saves time, it is never needed: a missing file is silently
compiled around, and a corrupt or mismatched one is ignored with one line saying why; training never fails because
of it. VIT_COMPILE_CACHE=off turns it off (benchmarks do, to report cold numbers); VIT_COMPILE_CACHE=<folder> moves it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

ENV = "VIT_COMPILE_CACHE"
MAGIC = b"vit_helpers compile cache v1\n"  # then one line of JSON (what the bytes were made for), then torch's bytes
# TrainConfig fields that never reach a compiled graph: runs that differ only in these share a cache.
NOT_IN_THE_GRAPHS = ("epochs", "budget_minutes", "seed", "log_every", "checkpoint_every", "num_workers", "lr",
                     "warmup_epochs", "schedule", "milestones", "gamma", "ema_decay")


def folder(env: dict | None = None) -> Path | None:
    """Where compile caches go: VIT_COMPILE_CACHE (a folder, or "off"), else <checkpoints>/compile_cache."""
    from . import paths

    value = (os.environ if env is None else env).get(ENV, "").strip()
    if value.lower() in ("off", "0", "no", "false"):
        return None
    return Path(value) if value else paths.checkpoint_dir() / "compile_cache"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def cache_key(model_args, cfg, device: torch.device) -> str:
    """A file name that says what the cache was made for: torch version, GPU, and a hash of the graph-shaping configs."""
    described = {"model": model_args.to_dict() if model_args is not None else None,
                 "train": {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_THE_GRAPHS}}
    digest = hashlib.blake2b(json.dumps(described, sort_keys=True).encode(), digest_size=6).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"torch{torch.__version__}-{device_name(device)}").strip("-")
    return f"{readable}-{digest}"


@dataclass
class CompileCache:
    """One run's compile cache: `load()` before training, `save()` after the first epoch; each returns a line to show."""

    path: Path | None  # None: off (nothing is read or written)
    key: str = ""
    loaded: bytes | None = None
    saved: bool = False

    @classmethod
    def for_run(cls, model, cfg, device: torch.device) -> "CompileCache":
        """The cache of this run's graphs, or an inactive one where nothing is compiled (no torch.compile, or no GPU)."""
        where = folder()
        if where is None or not cfg.compile or device.type != "cuda":
            return cls(None)
        key = cache_key(getattr(model, "args", None), cfg, device)
        return cls(where / f"{key}.bin", key)

    def load(self) -> str | None:
        """Fill torch's compile caches from the file; a line saying what happened (None: off, or no file yet)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            blob = self.path.read_bytes()
            if not blob.startswith(MAGIC):
                raise ValueError("not a vit_helpers compile cache (its first line differs)")
            header, _, artifacts = blob[len(MAGIC):].partition(b"\n")
            made_for = json.loads(header).get("key")
            if made_for != self.key:
                raise ValueError(f"it was made for {made_for}")
            quiet = logging.getLogger("torch.compiler._cache")  # it logs a traceback for bytes it can't read: one line here
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)
            try:
                info = torch.compiler.load_cache_artifacts(artifacts)
            finally:
                quiet.setLevel(level)
            if info is None:
                raise ValueError("torch could not read its artifacts (damaged, or from another torch version)")
        except Exception as e:  # a cache is an optimisation: whatever is wrong with it, compile from scratch instead
            return f"compile cache: ignored {self._shown()} ({type(e).__name__}: {_first_line(e)}); compiling from scratch"
        self.loaded = artifacts
        n = sum(len(v) for v in info.artifacts.values())
        return f"compile cache: loaded {n} compiled artifacts ({len(artifacts) / 2**20:.1f} MB) from {self._shown()}"

    def save(self) -> str | None:
        """Write what this process compiled (once per run); a line saying what happened (None: off, or nothing new)."""
        if self.path is None or self.saved:
            return None
        self.saved = True
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            result = torch.compiler.save_cache_artifacts()
            if result is None or not result[0] or result[0] == self.loaded:
                return None  # nothing compiled, or exactly what was loaded
            header = json.dumps({"key": self.key, "torch": torch.__version__, "bytes": len(result[0])}).encode()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(MAGIC + header + b"\n" + result[0])
            os.replace(tmp, self.path)  # whole or not at all: a reader never sees half a file
        except Exception as e:  # a full disk or a read-only folder must not stop training
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # e.g. the folder itself can't be made
                pass
            return f"compile cache: not saved to {self._shown()} ({type(e).__name__}: {_first_line(e)})"
        return f"compile cache: saved {len(result[0]) / 2**20:.1f} MB to {self._shown()} (the next run compiles in seconds)"

    def _shown(self) -> str:
        from .checkpoint import shown

        return shown(self.path)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
