"""Data augmentation on the GPU, different for every image in the batch, with no host round trips.

TrivialAugment (Müller & Hutter, 2021, arXiv:2103.10044): each image gets one operation, chosen at
random, at a random strength. torchvision's TrivialAugmentWide applies one draw to a whole batched
tensor, so the per-image version is written here in vectorised form: every colour operation is
computed for the whole batch and each image keeps its own; all geometric operations (TrivialAugment's
rotate/shear/translate, the random crop with padding, and the flip) are folded into one affine matrix
per image and applied in a single `grid_sample`. Random Erasing is an optional extra (`erase_mask`).

All randomness comes in as one tensor of uniform draws per batch (`draw`), so the augmentation itself
is a pure function (`augment_from_draws`) that torch.compile can fuse into a few kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# TrivialAugment's operations. Equalize is left out: a per-image histogram is awkward to vectorise
# and the other contrast operations cover its role here.
COLOR_OPS = ("identity", "brightness", "contrast", "color", "sharpness", "posterize", "solarize", "autocontrast")
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
TRIVIAL_OPS = COLOR_OPS + GEOMETRIC_OPS

MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.3  # fraction of the image side
MAX_FACTOR = 0.9  # brightness/contrast/color/sharpness factor in [0.1, 1.9]


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """b + factor * (a - b): factor 1 gives a, 0 gives b (PIL's ImageEnhance)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    # Python-float weights: building a small tensor on the GPU every batch would be a blocking copy.
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def color_ops(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Apply COLOR_OPS[op[i]] with strength mag[i] in [0, 1] to image i. x: (B, 3, H, W) in [0, 1]."""
    factor = 1 + MAX_FACTOR * mag * sign
    out = x
    gray = _grayscale(x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # PIL's SMOOTH, roughly
    bits = (8 - torch.round(4 * mag)).view(-1, 1, 1, 1)  # keep 4..8 bits
    step = torch.pow(2.0, 8 - bits)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    candidates = {
        "brightness": _blend(x, torch.zeros_like(x), factor),
        "contrast": _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor),
        "color": _blend(x, gray, factor),
        "sharpness": _blend(x, blur, factor),
        "posterize": torch.floor(x * 255 / step) * step / 255,
        "solarize": torch.where(x >= (1 - mag).view(-1, 1, 1, 1), 1 - x, x),
        "autocontrast": torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x),
    }
    for name, value in candidates.items():
        out = torch.where((op == COLOR_OPS.index(name)).view(-1, 1, 1, 1), value, out)
    return out


def affine_matrices(
    n: int, device, *, flip: torch.Tensor | None = None, shift: torch.Tensor | None = None, size: int = 32,
    geo_op: torch.Tensor | None = None, mag: torch.Tensor | None = None, sign: torch.Tensor | None = None,
) -> torch.Tensor:
    """One (2, 3) matrix per image for `F.affine_grid`, in normalised coordinates ([-1, 1] spans the image).

    Combines the geometric TrivialAugment op `geo_op` (-1 for none; else an index into GEOMETRIC_OPS)
    with strength `mag` and direction `sign`, then a horizontal flip where `flip` (bool, per image) is
    true, then a shift by `shift` (n, 2) whole pixels (= a random crop of the zero-padded image).
    """
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    m = eye
    if geo_op is not None:
        s = mag * sign
        ang = torch.deg2rad(MAX_ROTATE_DEG * s)
        rot = eye.clone()
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = ang.cos(), -ang.sin(), ang.sin(), ang.cos()
        shx, shy, trx, try_ = eye.clone(), eye.clone(), eye.clone(), eye.clone()
        shx[:, 0, 1] = MAX_SHEAR * s
        shy[:, 1, 0] = MAX_SHEAR * s
        trx[:, 0, 2] = 2 * MAX_TRANSLATE * s
        try_[:, 1, 2] = 2 * MAX_TRANSLATE * s
        for k, mat in enumerate((rot, shx, shy, trx, try_)):
            m = torch.where((geo_op == k).view(-1, 1, 1), mat, m)
    if flip is not None:
        f = eye.clone()
        f[:, 0, 0] = torch.where(flip, -1.0, 1.0)
        m = f @ m
    if shift is not None:
        t = eye.clone()
        t[:, :2, 2] = shift * 2 / size  # whole pixels, so bilinear sampling copies pixels exactly
        m = t @ m
    return m[:, :2]


# Columns of the uniform draws each image gets (one `torch.rand(B, N_DRAWS)` per batch): drawing
# everything at once keeps the augmentation itself a pure function, which torch.compile fuses into a
# few kernels instead of about a hundred small ones.
N_DRAWS = 11
POLICIES = ("none", "crop_flip", "trivial")


def draw(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The random numbers for `n` images: uniform in [0, 1), shape (n, N_DRAWS)."""
    return torch.rand(n, N_DRAWS, generator=generator, device=device)


def augment_from_draws(x: torch.Tensor, u: torch.Tensor, policy: str = "trivial", pad: int = 4) -> torch.Tensor:
    """uint8 images (B, C, H, W) and their draws `u` (B, N_DRAWS) -> augmented float images in [0, 1].

    Columns of u: 0 operation, 1 strength, 2 sign, 3 flip, 4-5 shift; 6-10 belong to `erase_mask`.
    """
    B, C, H, W = x.shape
    out = x.float() / 255
    if policy == "none":
        return out
    geo_op = mag = sign = None
    if policy == "trivial":
        op = (u[:, 0] * len(TRIVIAL_OPS)).long().clamp_max(len(TRIVIAL_OPS) - 1)
        mag = u[:, 1]
        sign = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
        out = color_ops(out, op, mag, sign)
        geo_op = torch.where(op >= len(COLOR_OPS), op - len(COLOR_OPS), -1)
    flip = u[:, 3] < 0.5
    shift = torch.floor(u[:, 4:6] * (2 * pad + 1)) - pad  # whole pixels in [-pad, pad]
    theta = affine_matrices(B, u.device, flip=flip, shift=shift, size=W, geo_op=geo_op, mag=mag, sign=sign)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def erase_mask(u: torch.Tensor, height: int, width: int, prob: float) -> torch.Tensor:
    """Random Erasing (Zhong et al., 2020, arXiv:1708.04896): a bool mask (B, 1, H, W) of one rectangle
    per image, for a fraction `prob` of the images (no rectangle for the others).

    The rectangle covers 2%-33% of the image, aspect ratio 0.3-3.3 (log-uniform), at a uniform
    position; `u` holds the draws (B, N_DRAWS), columns 6-10.
    """
    area = (0.02 + (1 / 3 - 0.02) * u[:, 7]) * height * width
    ratio = torch.exp(math.log(0.3) + 2 * math.log(1 / 0.3) * u[:, 8])
    eh = torch.sqrt(area * ratio).round().clamp(1, height)
    ew = torch.sqrt(area / ratio).round().clamp(1, width)
    y0 = torch.floor(u[:, 9] * (height - eh + 1))
    x0 = torch.floor(u[:, 10] * (width - ew + 1))
    rows = torch.arange(height, device=u.device).view(1, -1, 1)
    cols = torch.arange(width, device=u.device).view(1, 1, -1)
    inside = ((rows >= y0.view(-1, 1, 1)) & (rows < (y0 + eh).view(-1, 1, 1))
              & (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + ew).view(-1, 1, 1)))
    return (inside & (u[:, 6] < prob).view(-1, 1, 1)).unsqueeze(1)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, policy: str = "trivial", pad: int = 4) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> augmented float images in [0, 1], same shape, one draw per image.

    policy: "none" (only convert), "crop_flip" (random crop with `pad` zero padding, and flip),
    or "trivial" (crop_flip plus one TrivialAugment operation per image).
    """
    check_images(x, policy)
    return augment_from_draws(x, draw(len(x), generator, x.device), policy, pad)


def check_images(x: torch.Tensor, policy: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        raise TypeError(f"augmentation expects uint8 images (B, C, H, W), got {getattr(x, 'dtype', type(x).__name__)} "
                        f"of shape {tuple(getattr(x, 'shape', ()))}; convert with (x * 255).round().to(torch.uint8)")
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}; use one of {POLICIES}")
