"""Cutting images into patches and putting them back (Dosovitskiy et al., 2021, sec. 3.1)."""
from __future__ import annotations

import torch


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
