import os
from pathlib import Path

import pytest
import torch

from vit_helpers import ModelArgs

TINY = ModelArgs(dim=32, hidden_dim=64, n_heads=4, n_layers=2, patch_size=4, image_size=16, n_classes=5, dropout=0.0)


@pytest.fixture
def tiny_args() -> ModelArgs:
    return TINY


@pytest.fixture(autouse=True)
def _seed_and_isolate(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    # torch.compile's saved work (compile_cache.py) defaults to <repo>/checkpoints, shared by every test and kept
    # between runs: a GPU test's compiled code would then depend on what earlier runs left there.
    monkeypatch.setenv("VIT_COMPILE_CACHE", str(tmp_path / "compile_cache"))


def synthetic_data(n_train=512, n_test=128, classes=5, size=16, seed=0):
    """A learnable toy problem: each class is a distinct colour with noise."""
    from vit_helpers.data import ImageData

    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 256, (classes, 3), generator=g).float()

    def make(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = palette[y][:, :, None, None] + 40 * torch.randn(n, 3, size, size, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return ImageData(tx, ty, vx, vy, classes=tuple(f"c{i}" for i in range(classes)), source="synthetic")


def cifar_dir() -> Path | None:
    d = os.environ.get("VIT_DATA_DIR")
    return Path(d) if d and Path(d).is_dir() else None
