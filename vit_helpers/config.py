"""Model configuration: the article's `ModelArgs`, with the image size given instead of a patch count."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 256  # width of every token embedding
    hidden_dim: int = 512  # width of the MLP inside each block
    n_heads: int = 8  # attention heads; dim must divide evenly among them
    n_layers: int = 6  # transformer blocks
    patch_size: int = 4  # side of each square patch, in pixels
    n_channels: int = 3  # input channels (3 for RGB)
    image_size: int = 32  # side of the square input image; the article hard-coded n_patches=64 instead
    n_classes: int = 10  # output classes
    dropout: float = 0.2  # dropout after the embeddings and inside the MLP
    drop_path: float = 0.0  # stochastic depth while training: chance a block's branch is skipped per image (0 at the first block, rising to this at the last)

    def __post_init__(self) -> None:
        for name in ("dim", "hidden_dim", "n_heads", "n_layers", "patch_size", "n_channels", "image_size", "n_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}: each head gets dim/n_heads "
                f"channels, so pick n_heads among the divisors of {self.dim}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                f"patches must tile the image exactly (try a patch size that divides {self.image_size})"
            )
        for name in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        """Patches per image (the article's n_patches, now derived)."""
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "ModelArgs":
        """A copy with some fields changed (configs are frozen, never edited in place)."""
        return replace(self, **changes)


# Named presets. Parameter counts are for 10 classes (tests/test_model.py checks them).
MODEL_PRESETS: dict[str, ModelArgs] = {
    # 0.54M parameters: small enough to train on two CPU cores in a few minutes (quick mode).
    "small": ModelArgs(dim=96, hidden_dim=192, n_heads=3, n_layers=4, dropout=0.0),
    # 3.19M parameters: the article's model, exactly (published elsewhere as ViT-Lite-6/4).
    "article": ModelArgs(),
    # 11.87M parameters: a wider, deeper plain ViT (no convolutional stem) for the larger benchmark.
    "large": ModelArgs(dim=384, hidden_dim=1152, n_heads=8, n_layers=8, dropout=0.0),
}


def model_preset(name: str, **changes) -> ModelArgs:
    """The preset called `name`, with optional field changes."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[name].replace(**changes)
