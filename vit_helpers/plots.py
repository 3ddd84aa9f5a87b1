"""Figures for the notebooks. Each function draws one thing and returns its matplotlib Figure."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from .data import CIFAR10_CLASSES


def _img(x: torch.Tensor):
    """uint8 or [0, 1] float (C, H, W) -> (H, W, C) for imshow."""
    x = x.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x.clamp(0, 1).permute(1, 2, 0).numpy()  # (C,H,W)->(H,W,C)


def show_images(images: torch.Tensor, titles=None, ncols: int = 8, size: float = 1.4, fontsize: float = 8):
    """A grid of images with optional titles. A figure wider than the notebook is scaled down on screen, text
    included: for long titles use fewer columns or a larger `size` and `fontsize`, not shortened names."""
    n = len(images)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.3)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_img(images[i]))
            if titles is not None:
                ax.set_title(titles[i], fontsize=fontsize)
    fig.tight_layout()
    return fig


def show_patch_grid(image: torch.Tensor, patch_size: int, size: float = 4.5, numbers: bool = True):
    """One image cut into its patches, drawn with gaps so the grid is visible; `numbers` labels each patch with its
    position in the sequence (row by row, from 0)."""
    from .patching import img_to_patch

    x = image.unsqueeze(0)
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    patches = img_to_patch(x, patch_size, flatten_channels=False)[0]  # (N, C, P, P)
    g = image.shape[-1] // patch_size
    fig, axes = plt.subplots(g, g, figsize=(size, size))
    for k, (ax, p) in enumerate(zip(axes.flat, patches)):
        ax.imshow(_img(p))
        ax.axis("off")
        if numbers:
            ax.text(0.04, 0.96, str(k), transform=ax.transAxes, ha="left", va="top", fontsize=6.5, color="black",
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.75))
    fig.subplots_adjust(wspace=0.08, hspace=0.08)
    return fig


def plot_history(history: list[dict], title: str = ""):
    """Loss, accuracy and learning rate per epoch."""
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train")
    axes[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(ep, [h["train_acc"] for h in history], label="train")
    axes[1].plot(ep, [h["val_acc"] for h in history], label="validation")
    axes[1].set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    axes[2].plot(ep, [h["lr"] for h in history])
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: torch.Tensor, classes=CIFAR10_CLASSES):
    """Row-normalised: cell (i, j) is the share of class i's images predicted as j, in percent (each row sums to 100);
    the diagonal is the per-class accuracy. cm: counts (n_classes, n_classes), rows = true classes."""
    cmn = cm.double() / cm.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(7, 5.8))
    im = ax.imshow(100 * cmn.numpy(), cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix, row-normalised (% of each true class)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            pct = 100 * float(cmn[i, j])
            ax.text(j, i, f"{pct:.0f}" if pct >= 0.5 else "", ha="center", va="center", fontsize=8,
                    color="white" if pct > 50 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of the true class's test images")
    fig.tight_layout()
    return fig


def plot_attention_heads(image: torch.Tensor, cls_attn: torch.Tensor, size: float = 2.2, colorbar: bool = False, ncols: int = 3):
    """The image, then the [CLS] token's attention over the patches for each head, laid over the image.
    cls_attn: (H, g, g).

    colorbar: one colour scale shared by all heads (0 to the largest weight), with a colour bar.
    """
    H = cls_attn.shape[0]
    nrows = math.ceil((H + 1) / ncols)
    img = _img(image)
    vmax = float(cls_attn.max())
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size + (1.0 if colorbar else 0), nrows * (size + 0.25)),
                             squeeze=False, layout="constrained")
    axes = axes.flatten()
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=10)
    extent = (-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5)  # one attention cell covers its patch's pixels
    for h in range(H):
        ax = axes[h + 1]
        ax.imshow(img)
        im = ax.imshow(cls_attn[h].cpu().float().numpy(), cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest",
                       vmin=0.0, vmax=vmax if colorbar else float(cls_attn[h].max()))
        ax.set_title(f"head {h}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    if colorbar:
        fig.colorbar(im, ax=axes.tolist(), shrink=0.7, label="attention weight of [CLS] on the patch")
    return fig


def plot_rollout(images: torch.Tensor, masks: torch.Tensor, titles=None, size: float = 1.6, colorbar: bool = False):
    """Images on the top row, the rollout mask (g, g) over each image below (scaled to 0-1 per image).

    colorbar: add a colour bar for the scaled mask.
    """
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(n * size + (0.8 if colorbar else 0), 2 * size + 0.5), squeeze=False,
                             layout="constrained" if colorbar else None)
    for i in range(n):
        img = _img(images[i])
        m = torch.nn.functional.interpolate(masks[i][None, None].float(), size=img.shape[:2], mode="bilinear")[0, 0]
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        axes[0, i].imshow(img)
        axes[1, i].imshow(img)
        im = axes[1, i].imshow(m.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if colorbar:
        fig.colorbar(im, ax=axes[1].tolist(), shrink=0.9, label="rollout (0 = least, 1 = most)")
    else:
        fig.tight_layout()
    return fig


def plot_mean_attention_distance(distances: torch.Tensor, patch_size: int, baseline: float | None = None):
    """distances: (L, H) in pixels; one dot per head, as in the ViT paper's figure 7.

    baseline: a reference distance in pixels (e.g. that of uniform attention), drawn as a dashed line.
    """
    L, H = distances.shape
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", lw=1, label=f"uniform attention ({baseline:.1f} px)")
    offsets = torch.linspace(-0.25, 0.25, H) if H > 1 else torch.zeros(1)  # heads side by side within a layer
    for h in range(H):
        ax.scatter((torch.arange(1, L + 1) + offsets[h]).numpy(), distances[:, h].numpy(), s=28, label=f"head {h}")
    ax.plot(range(1, L + 1), distances.mean(1).numpy(), color="black", lw=1, label="mean over heads")
    ax.set(xlabel="layer", ylabel="mean attention distance (pixels)", title=f"attention distance per head (patch {patch_size} px)")
    ax.set_xticks(range(1, L + 1))
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def plot_attention_distance_side_by_side(distances: dict, patch_size: int, baseline: float | None = None):
    """distances: {model name: (L, H) tensor in pixels}; one panel per model, one dot per head, same axes."""
    fig, axes = plt.subplots(1, len(distances), figsize=(4.2 * len(distances), 3.6), sharey=True, squeeze=False)
    for ax, (name, d) in zip(axes[0], distances.items()):
        L, H = d.shape
        if baseline is not None:
            ax.axhline(baseline, ls="--", color="gray", lw=1, label=f"uniform attention ({baseline:.1f} px)")
        for h in range(H):
            ax.scatter(range(1, L + 1), d[:, h].numpy(), s=14, color="tab:blue", alpha=0.6, label="a head" if h == 0 else None)
        ax.plot(range(1, L + 1), d.mean(1).numpy(), color="tab:red", lw=1.5, label="mean over heads")
        ax.set(xlabel="layer", title=name, xticks=range(1, L + 1))
    axes[0][0].set_ylabel(f"mean attention distance (pixels; patch {patch_size}px)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_pos_embedding_similarity(sim: torch.Tensor, size: float = 0.8, colorbar: bool = False):
    """sim: (g, g, g, g); tile (i, j) shows the similarity of position (i, j) to all positions."""
    g = sim.shape[0]
    fig, axes = plt.subplots(g, g, figsize=(g * size + (0.9 if colorbar else 0), g * size))
    for i in range(g):
        for j in range(g):
            im = axes[i, j].imshow(sim[i, j].numpy(), cmap="viridis", vmin=-1, vmax=1)
            axes[i, j].axis("off")
    fig.suptitle("cosine similarity of position embeddings", fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    if colorbar:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="cosine similarity")
    return fig


def plot_reliability(bins: dict, ece: float):
    """Reliability diagram: accuracy per confidence bin against the diagonal, each bar labelled with the number of
    predictions in its bin (a bin of a few predictions is noise), and below it those counts on a log scale."""
    edges = bins["edges"].numpy()
    width = edges[1] - edges[0]
    count = bins["count"].numpy()
    has = count > 0
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw=dict(height_ratios=(3, 1.2)))
    ax.bar(edges[:-1][has], bins["accuracy"].numpy()[has], width=width, align="edge", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for left, acc, n in zip(edges[:-1][has], bins["accuracy"].numpy()[has], count[has]):
        ax.text(left + width / 2, min(acc, 0.97) + 0.01, f"{int(n):,}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set(ylabel="accuracy", title=f"reliability (ECE = {ece:.3f}); bar labels: predictions per bin", xlim=(0, 1), ylim=(0, 1.12))
    ax.legend(loc="upper left")
    ax_n.bar(edges[:-1][has], count[has], width=width, align="edge", edgecolor="k", color="tab:gray")
    ax_n.set(xlabel="confidence", ylabel="predictions", yscale="log")
    fig.tight_layout()
    return fig
