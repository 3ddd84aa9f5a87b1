"""Cutting images into patches and putting them back (Dosovitskiy et al., 2021, sec. 3.1), and Shifted Patch
Tokenization (Lee, Lee and Song, 2021, "Vision Transformer for Small-Size Datasets", arXiv:2112.13492, sec. 3.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_images(x: torch.Tensor, patch_size: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected images shaped (B, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"image size {H}x{W} is not divisible by patch_size={patch_size}; "
            f"resize or crop the images, or choose a patch size that divides both sides"
        )


def img_to_patch(x: torch.Tensor, patch_size: int, flatten_channels: bool = True) -> torch.Tensor:
    """Split images into non-overlapping patches, row by row (the article's function).

    Args:
        x: images (B, C, H, W).
        patch_size: side P of each square patch; must divide H and W.
        flatten_channels: if True return (B, N, C*P*P), else (B, N, C, P, P).
    """
    _check_images(x, patch_size)
    B, C, H, W = x.shape
    P = patch_size
    x = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, H/P, P, W/P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P)
    x = x.flatten(1, 2)  # (B, N, C, P, P) with N = (H/P)*(W/P)
    if flatten_channels:
        x = x.flatten(2, 4)  # (B, N, C*P*P)
    return x


def patch_to_img(patches: torch.Tensor, patch_size: int, image_size: int | tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of `img_to_patch`: (B, N, C*P*P) or (B, N, C, P, P) back to (B, C, H, W)."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"image size {H}x{W} is not divisible by patch_size={P}")
    gh, gw = H // P, W // P
    B, N = patches.shape[:2]
    if N != gh * gw:
        raise ValueError(f"got {N} patches but a {H}x{W} image with patch_size={P} has {gh * gw}")
    x = patches.reshape(B, gh, gw, channels, P, P)  # (B, H/P, W/P, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, H/P, P, W/P, P)
    return x.reshape(B, channels, H, W)  # (B, C, H, W)


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images (B, C, H, W) moved `dx` pixels right and `dy` down (negative: left, up); the uncovered border is 0."""
    # F.pad takes (left, right, top, bottom); a negative pad crops, so padding one side and cropping the other moves
    # the picture while keeping its size.
    return F.pad(x, (dx, -dx, dy, -dy))


class ShiftedPatchTokenization(nn.Module):
    """SPT: the image and its four diagonal shifts by half a patch, concatenated on channels (B, 5C, H, W), then
    cut into patches, LayerNorm over each patch's 5*C*P*P values, and a linear projection to `dim`.

    A patch then also holds the pixels around it (a half patch up-left, up-right, down-left and down-right): each
    token starts with a wider, overlapping view, the locality a convolution has built in.
    """

    SHIFTS = ((-1, -1), (1, -1), (-1, 1), (1, 1))  # left-up, right-up, left-down, right-down, in half patches

    def __init__(self, n_channels: int, patch_size: int, dim: int):
        super().__init__()
        if patch_size % 2:
            raise ValueError(f"shifted patches move by half a patch, so patch_size must be even, got {patch_size}")
        self.patch_size = patch_size
        patch_dim = 5 * n_channels * patch_size**2
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 5C, H, W): the image, then its four diagonal shifts."""
        s = self.patch_size // 2
        return torch.cat([x, *(shift(x, dx * s, dy * s) for dx, dy in self.SHIFTS)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, N, dim)."""
        patches = img_to_patch(self.shifted(x), self.patch_size)  # (B, 5C, H, W) -> (B, N, 5C*P*P)
        return self.proj(self.norm(patches))
