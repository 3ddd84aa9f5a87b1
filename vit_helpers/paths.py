"""Where data, caches and checkpoints go (each overridable by an environment variable)."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path | None:
    """The repository checkout this package lives in, or None when installed elsewhere (e.g. Colab)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def _base() -> Path:
    return project_root() or Path.cwd()


def data_root() -> Path:
    """Where torchvision downloads CIFAR-10 (VIT_DATA_ROOT, default <repo>/data)."""
    return Path(os.environ.get("VIT_DATA_ROOT") or _base() / "data")


def cache_dir() -> Path:
    """Where decoded datasets are cached (VIT_CACHE_DIR, default <data root>/cache)."""
    return Path(os.environ.get("VIT_CACHE_DIR") or data_root() / "cache")


def checkpoint_dir() -> Path:
    """Where training writes checkpoints (VIT_CHECKPOINT_DIR, default <repo>/checkpoints)."""
    return Path(os.environ.get("VIT_CHECKPOINT_DIR") or _base() / "checkpoints")


def outputs_dir() -> Path:
    """Where the headless run writes executed notebooks and results (VIT_OUTPUT_DIR, default <repo>/outputs)."""
    return Path(os.environ.get("VIT_OUTPUT_DIR") or _base() / "outputs")


RELEASED_WEIGHTS = PACKAGE_DIR / "weights" / "vit_article_fast.pt"
