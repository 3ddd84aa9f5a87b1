"""Checkpoints: atomic writes, `weights_only=True` loads, and a refusal when the model config differs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .config import ModelArgs
from .model import VisionTransformer

# Fields that change the weights' shapes or meaning. Dropout and drop_path are training-time knobs:
# the same weights run with any rate, so a checkpoint trained with another rate still loads.
ARCHITECTURE_FIELDS = ("dim", "hidden_dim", "n_heads", "n_layers", "patch_size", "n_channels", "image_size", "n_classes")


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint safely (tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def config_differences(saved: dict, args: ModelArgs) -> list[str]:
    want = args.to_dict()
    return [f"{k}: checkpoint has {saved.get(k)!r}, model has {want[k]!r}" for k in ARCHITECTURE_FIELDS if saved.get(k) != want[k]]


def check_config(ckpt: dict, args: ModelArgs, path="checkpoint") -> None:
    diffs = config_differences(ckpt["model_args"], args)
    if diffs:
        raise ValueError(
            f"{path} was saved from a model with another configuration:\n  " + "\n  ".join(diffs)
            + "\nBuild the model from the checkpoint instead: vit_helpers.checkpoint.load_model(path)"
        )


def load_weights(model: VisionTransformer, path: str | os.PathLike) -> dict:
    """Load a checkpoint's weights into `model` after checking its config; returns the checkpoint."""
    ckpt = load(path)
    check_config(ckpt, model.args, path)
    model.load_state_dict(ckpt["model"])
    return ckpt


def load_model(path: str | os.PathLike, device=None) -> tuple[VisionTransformer, dict]:
    """Build the model a checkpoint describes and load its weights (in eval mode)."""
    ckpt = load(path)
    model = VisionTransformer(ModelArgs(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device or "cpu").eval(), ckpt


def trained_model(recipe_name: str, device=None) -> tuple[VisionTransformer, dict, str]:
    """The best model notebook 05 trained with `recipe_name`, else the released one.

    Returns (model in eval mode, checkpoint dict, a sentence saying where it came from).
    """
    from . import paths

    local = paths.checkpoint_dir() / recipe_name / "best.pt"
    if local.is_file():
        model, ckpt = load_model(local, device)
        return model, ckpt, f"checkpoint from notebook 05 ({recipe_name} recipe): {local}"
    if not paths.RELEASED_WEIGHTS.is_file():
        raise FileNotFoundError(f"no checkpoint at {local} and no released weights at {paths.RELEASED_WEIGHTS}; run notebook 05 first")
    model, ckpt = load_model(paths.RELEASED_WEIGHTS, device)
    return model, ckpt, (f"released weights ({paths.RELEASED_WEIGHTS.name}, fast recipe on an H100), because "
                         f"notebook 05 has not saved {local} yet")
