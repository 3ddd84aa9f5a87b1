"""Reading a trained ViT: errors, attention, positional embeddings, calibration.

Attention rollout: Abnar & Zuidema, 2020 (arXiv:2005.00928). Mean attention distance and the
positional-embedding similarity figure: Dosovitskiy et al., 2021, figures 7 and 10. Expected
calibration error: Guo et al., 2017 (arXiv:1706.04599).
"""
from __future__ import annotations

import math

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    targets, preds = torch.as_tensor(targets).long().flatten(), torch.as_tensor(preds).long().flatten()
    if targets.shape != preds.shape:
        raise ValueError(f"targets and preds differ in length: {targets.numel()} vs {preds.numel()}")
    return torch.bincount(targets * n_classes + preds, minlength=n_classes**2).view(n_classes, n_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each class: correct / images of that class (NaN for a class with no images)."""
    cm = cm.double()
    return cm.diag() / cm.sum(1)


def most_confused_pairs(cm: torch.Tensor, classes, k: int = 5) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal counts as (true class, predicted class, count)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    counts, idx = off.flatten().topk(k)
    n = cm.shape[0]
    return [(classes[i // n], classes[i % n], int(c)) for c, i in zip(counts.tolist(), idx.tolist()) if c > 0]


def accuracy_with_ci(correct: int, total: int, z: float = 1.96) -> tuple[float, float, float]:
    """(accuracy, low, high): Wilson score interval, 95% for z=1.96."""
    if total <= 0:
        raise ValueError("total must be positive")
    p = correct / total
    denom = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denom
    return p, centre - half, centre + half


def attention_rollout(maps: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """Attention flow through all layers. maps: (L, B, H, T, T) -> (B, T, T), rows summing to 1.

    Heads are averaged; with `residual` each layer's matrix becomes (A + I) / 2, standing in for the
    skip connection, before the layers are multiplied from the first to the last.
    """
    if maps.dim() != 5:
        raise ValueError(f"expected maps shaped (L, B, H, T, T), got {tuple(maps.shape)}")
    a = maps.double().mean(2)  # (L, B, T, T)
    if residual:
        a = (a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)) / 2
    a = a / a.sum(-1, keepdim=True)
    out = a[0]
    for layer in a[1:]:
        out = layer @ out
    return out.float()


def patch_coordinates(grid_size: int, patch_size: int = 1) -> torch.Tensor:
    """(N, 2) centre of each patch in pixels, row by row (the order img_to_patch uses)."""
    r, c = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], 1).double() * patch_size


def mean_attention_distance(attn: torch.Tensor, grid_size: int, patch_size: int, has_cls: bool = True) -> torch.Tensor:
    """Average pixel distance between a patch and the patches it attends to, per head.

    attn: (..., H, T, T) weights; the [CLS] token (first, when has_cls) is left out as query and
    key, and each row is renormalised over patches. Returns (..., H), averaged over queries and
    any batch dimension just before H when attn is (B, H, T, T) or (L, B, H, T, T).
    """
    a = attn.double()
    if has_cls:
        a = a[..., 1:, 1:]
    n = grid_size**2
    if a.shape[-1] != n:
        raise ValueError(f"expected {n} patch tokens for a {grid_size}x{grid_size} grid, got {a.shape[-1]}")
    a = a / a.sum(-1, keepdim=True)
    pos = patch_coordinates(grid_size, patch_size).to(a.device)
    dist = torch.cdist(pos, pos)  # (N, N) pixels between patch centres
    per_query = (a * dist).sum(-1)  # (..., H, N)
    out = per_query.mean(-1)  # (..., H)
    if attn.dim() >= 4:
        out = out.mean(-2)  # average over the batch dimension
    return out.float()


def pos_embedding_similarity(pos_embedding: torch.Tensor, grid_size: int, has_cls: bool = True) -> torch.Tensor:
    """Cosine similarity of every patch position's embedding with every other: (g, g, g, g).

    [i, j] is a g x g map of how similar position (i, j) is to each position.
    """
    p = pos_embedding.detach().reshape(-1, pos_embedding.shape[-1]).double()
    if has_cls:
        p = p[1:]
    if p.shape[0] != grid_size**2:
        raise ValueError(f"expected {grid_size**2} patch positions, got {p.shape[0]}")
    p = torch.nn.functional.normalize(p, dim=-1)
    return (p @ p.T).view(grid_size, grid_size, grid_size, grid_size).float()


def reliability_bins(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """Per confidence bin: count, mean confidence, accuracy; bins split [0, 1] evenly."""
    conf, corr = confidences.double().flatten(), correct.double().flatten()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.double)
    idx = torch.bucketize(conf, edges[1:-1])  # bin b holds (edges[b], edges[b+1]]; 0 goes to bin 0
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    corr_sum = torch.bincount(idx, weights=corr, minlength=n_bins)
    safe = count.clamp_min(1)
    return {"edges": edges, "count": count, "confidence": conf_sum / safe, "accuracy": corr_sum / safe}


def expected_calibration_error(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """Sum over bins of (share of images) x |accuracy - mean confidence|."""
    b = reliability_bins(confidences, correct, n_bins)
    return float((b["count"] / b["count"].sum() * (b["accuracy"] - b["confidence"]).abs()).sum())
