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


# The uniform draws each image gets, by name: one `torch.rand(B, N_DRAWS)` per batch, whose columns are
# read only through `drawn(u, name)`. Drawing everything at once keeps the augmentation itself a pure
# function, which torch.compile fuses into a few kernels instead of about a hundred small ones.
DRAWS = {
    "op": 0,  # which TrivialAugment operation
    "strength": 1,  # its strength, 0 to 1
    "sign": 2,  # its direction (below 0.5: negative)
    "flip": 3,  # below 0.5: mirror the image
    "shift": slice(4, 6),  # the random crop's (x, y) shift
    "erase": 6,  # below erase_prob: erase a rectangle
    "erase_area": 7,  # its area, its aspect ratio and its position
    "erase_ratio": 8,
    "erase_y": 9,
    "erase_x": 10,
}
N_DRAWS = 11


def drawn(u: torch.Tensor, name: str) -> torch.Tensor:
    """The named column(s) of the draws u (B, N_DRAWS)."""
    return u[:, DRAWS[name]]


POLICIES = ("none", "crop_flip", "trivial")


def draw(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The random numbers for `n` images: uniform in [0, 1), shape (n, N_DRAWS)."""
    return torch.rand(n, N_DRAWS, generator=generator, device=device)


def crop_flip_from_draws(u: torch.Tensor, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(flip (B,) bool, shift (B, 2) whole pixels (x, y) in [-pad, pad]) that the draws u (B, N_DRAWS) ask for.

    Output pixel (i, j) of image b is input pixel (i + shift_y, j + shift_x) (0 outside the image: a crop of the
    zero-padded image), then mirrored left-right where flip is true.
    """
    return drawn(u, "flip") < 0.5, torch.floor(drawn(u, "shift") * (2 * pad + 1)) - pad


def augment_from_draws(x: torch.Tensor, u: torch.Tensor, policy: str = "trivial", pad: int = 4) -> torch.Tensor:
    """uint8 images (B, C, H, W) and their draws `u` (B, N_DRAWS, see DRAWS) -> augmented float images in [0, 1]."""
    B, C, H, W = x.shape
    out = x.float() / 255
    if policy == "none":
        return out
    geo_op = mag = sign = None
    if policy == "trivial":
        op = (drawn(u, "op") * len(TRIVIAL_OPS)).long().clamp_max(len(TRIVIAL_OPS) - 1)
        mag = drawn(u, "strength")
        sign = torch.where(drawn(u, "sign") < 0.5, -1.0, 1.0)
        out = color_ops(out, op, mag, sign)
        geo_op = torch.where(op >= len(COLOR_OPS), op - len(COLOR_OPS), -1)
    flip, shift = crop_flip_from_draws(u, pad)
    theta = affine_matrices(B, u.device, flip=flip, shift=shift, size=W, geo_op=geo_op, mag=mag, sign=sign)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def trivial_ops() -> list[tuple[str, str, str]]:
    """TrivialAugment's operations as `augment_from_draws` applies them: (name, kind, what it does).

    Each image gets one of them, all equally likely, at a strength s drawn uniformly in [0, 1] and a direction
    d = +1 or -1 (each with chance 1/2); built from the constants above, so the table stays true to the code.
    """
    f = f"factor 1 + {MAX_FACTOR:g}·d·s ({1 - MAX_FACTOR:.1f} to {1 + MAX_FACTOR:.1f})"
    effects = {
        "identity": "nothing",
        "brightness": f"blend with black: {f}",
        "contrast": f"blend with the image's mean grey: {f}",
        "color": f"blend with its greyscale copy: {f}",
        "sharpness": f"blend with a 3x3 blur: {f}",
        "posterize": "keep 8 - round(4·s) bits per channel (4 to 8)",
        "solarize": "invert the pixels brighter than 1 - s",
        "autocontrast": "stretch each channel to the full range (no strength)",
        "rotate": f"turn by {MAX_ROTATE_DEG:g}·d·s degrees",
        "shear_x": f"shear sideways by {MAX_SHEAR:g}·d·s",
        "shear_y": f"shear up or down by {MAX_SHEAR:g}·d·s",
        "translate_x": f"move sideways by {MAX_TRANSLATE:g}·d·s of the width",
        "translate_y": f"move up or down by {MAX_TRANSLATE:g}·d·s of the height",
    }
    return [(name, "colour" if name in COLOR_OPS else "geometric", effects[name]) for name in TRIVIAL_OPS]


def apply_op(x: torch.Tensor, name: str, strength: float | torch.Tensor, sign: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The TrivialAugment operation `name` on every image of x (B, C, H, W), floats in [0, 1], with strength in
    [0, 1] and direction sign (+1 or -1), each a number or one per image: the policy's own code, one operation
    at a time (to show it, or to check one written out by hand)."""
    if name not in TRIVIAL_OPS:
        raise ValueError(f"unknown operation {name!r}; TrivialAugment's are {TRIVIAL_OPS}")
    B = len(x)
    mag = torch.as_tensor(strength, dtype=x.dtype, device=x.device).expand(B)
    sign = torch.as_tensor(sign, dtype=x.dtype, device=x.device).expand(B)
    if name in COLOR_OPS:
        return color_ops(x, torch.full((B,), COLOR_OPS.index(name), device=x.device), mag, sign)
    geo_op = torch.full((B,), GEOMETRIC_OPS.index(name), device=x.device)
    theta = affine_matrices(B, x.device, size=x.shape[-1], geo_op=geo_op, mag=mag, sign=sign)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def erase_mask(u: torch.Tensor, height: int, width: int, prob: float) -> torch.Tensor:
    """Random Erasing (Zhong et al., 2020, arXiv:1708.04896): a bool mask (B, 1, H, W) of one rectangle
    per image, for a fraction `prob` of the images (no rectangle for the others).

    The rectangle covers 2%-33% of the image, aspect ratio 0.3-3.3 (log-uniform), at a uniform
    position; `u` holds the draws (B, N_DRAWS), read by name (DRAWS).
    """
    area = (0.02 + (1 / 3 - 0.02) * drawn(u, "erase_area")) * height * width
    ratio = torch.exp(math.log(0.3) + 2 * math.log(1 / 0.3) * drawn(u, "erase_ratio"))
    eh = torch.sqrt(area * ratio).round().clamp(1, height)
    ew = torch.sqrt(area / ratio).round().clamp(1, width)
    y0 = torch.floor(drawn(u, "erase_y") * (height - eh + 1))
    x0 = torch.floor(drawn(u, "erase_x") * (width - ew + 1))
    rows = torch.arange(height, device=u.device).view(1, -1, 1)
    cols = torch.arange(width, device=u.device).view(1, 1, -1)
    inside = ((rows >= y0.view(-1, 1, 1)) & (rows < (y0 + eh).view(-1, 1, 1))
              & (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + ew).view(-1, 1, 1)))
    return (inside & (drawn(u, "erase") < prob).view(-1, 1, 1)).unsqueeze(1)


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


# ---- MixUp (Zhang et al., 2018) and CutMix (Yun et al., 2019), one draw per batch ----
# Each batch gets a row of MIX_ROW's fields: kind 0 leaves it alone, 1 blends it with itself rolled by one
# image (MixUp, weight lam), 2 pastes the rolled batch's box x1:x2, y1:y2 (CutMix, lam = the share left
# uncovered). torchvision's v2.MixUp / v2.CutMix do the same, with python-side draws; here the rows are
# drawn for a whole epoch, so mixing is a tensor function a CUDA graph can hold.
MIX_ROW = ("kind", "lam", "x1", "y1", "x2", "y2")
MIX_COLUMNS = len(MIX_ROW)


def sample_beta(n: int, a: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws from Beta(a, a) on the CPU (Johnk's method: X = U^(1/a), Y = V^(1/a), kept when X + Y <= 1)."""
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while len(todo):
        u = torch.rand(2, len(todo), generator=generator, dtype=torch.float64)
        x, y = u[0] ** (1 / a), u[1] ** (1 / a)
        ok = (x + y <= 1) & (x + y > 0)
        out[todo[ok]] = x[ok] / (x[ok] + y[ok])
        todo = todo[~ok]
    return out.float()


def mix_plan(n_batches: int, prob: float, size: tuple[int, int], generator: torch.Generator | None = None,
             mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0) -> torch.Tensor:
    """(n_batches, MIX_COLUMNS) rows on the CPU: each batch mixed with chance `prob`, MixUp or CutMix 50/50."""
    h, w = size
    mixed, which, u_x, u_y = torch.rand(n_batches, 4, generator=generator).unbind(1)
    kind = torch.where(mixed < prob, torch.where(which < 0.5, 1.0, 2.0), 0.0)
    lam_mix = sample_beta(n_batches, mixup_alpha, generator)
    lam_cut = sample_beta(n_batches, cutmix_alpha, generator)
    # CutMix's box, as torchvision draws it: a centre anywhere, sides sqrt(1 - lam) of the image's.
    cx, cy = (u_x * w).floor(), (u_y * h).floor()
    r = 0.5 * torch.sqrt(1 - lam_cut)
    half_w, half_h = (r * w).floor(), (r * h).floor()
    x1, y1 = (cx - half_w).clamp(min=0), (cy - half_h).clamp(min=0)
    x2, y2 = (cx + half_w).clamp(max=w), (cy + half_h).clamp(max=h)
    lam_box = 1 - (x2 - x1) * (y2 - y1) / (w * h)
    lam = torch.where(kind == 1, lam_mix, torch.where(kind == 2, lam_box, 1.0))
    return torch.stack([kind, lam, x1, y1, x2, y2], 1)  # MIX_ROW


def mix_batch(x: torch.Tensor, y: torch.Tensor, row: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Images (B, C, H, W) and int labels (B,) mixed as `row` says -> (images, soft labels (B, n_classes))."""
    y = F.one_hot(y, n_classes).to(x.dtype)
    kind, lam, x1, y1, x2, y2 = row.unbind()  # MIX_ROW
    xr, yr = x.roll(1, 0), y.roll(1, 0)
    rows = torch.arange(x.shape[-2], device=x.device).view(-1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, -1)
    box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    x = torch.where(kind == 1, lam * x + (1 - lam) * xr, torch.where((kind == 2) & box, xr, x))
    return x, lam * y + (1 - lam) * yr
