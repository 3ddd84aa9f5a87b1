"""Does a ViT need more data than a CNN? The grid of notebook 10: test accuracy against the number of training images.

The protocol, the same for every point:
- a class-balanced subset of the training split (`TrainConfig.balanced_subset`), smaller subsets inside larger ones,
  and at the largest size the whole split of 45,000 (each class within 1% of 4,500); the same validation and test
  images at every size;
- at every size a model sees as many training images as at full size: a subset of n images is passed over
  `full / n` times per epoch (`TrainConfig.subset_repeat`), so every size runs the same steps with the same schedule;
- each model with its own recipe: the CNN with the teacher's, the ViTs with the fast recipe's, the distilled ViT with
  the distilled recipe's, cut to a fixed number of epochs (of the full size) so that the grid fits a short GPU session;
- the distilled ViT learns from the CNN trained on the same subset (the same point of the grid);
- the number reported is the test accuracy of the model after its last epoch (no selection on the test set).

`benchmarks/small_data.py` runs the whole grid (a point at a time, written as it ends); notebook 10 runs points live.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelArgs, TrainConfig, recipe
from .data import GPUBatches, ImageData

# Full mode: five sizes, about doubling, up to the 45,000 images of the training split.
SIZES = (2_500, 5_000, 11_250, 22_500, 45_000)
# Quick mode (two CPU cores): 1,000 images stand for the full split, and the quick recipes' small models train.
QUICK_SIZES = (250, 1_000)
# The models of the grid, in the order a point is run (the distilled ViT needs the CNN of its size first).
MODELS = ("cnn", "vit", "distilled", "spt_lsa")
# Also measured, at full size only: the distilled recipe with SPT and LSA.
FULL_SIZE_ONLY = ("distilled_spt_lsa",)
LABELS = {"cnn": "CNN (ResNet-9)", "vit": "ViT", "distilled": "ViT distilled from the CNN", "spt_lsa": "ViT + SPT + LSA",
          "distilled_spt_lsa": "ViT + SPT + LSA, distilled"}
# The ViTs' length, in epochs of the full size (the fast recipe trains 420): short enough that the grid fits about
# 13 minutes of one H200 (run 12: 15 of the 29 points in 417 s, one process); a longer run raises every ViT line
# (notebook 10 says by how much at full size).
VIT_EPOCHS = 40
QUICK_VIT_EPOCHS = 5


@dataclass(frozen=True)
class Point:
    model: str  # one of MODELS or FULL_SIZE_ONLY
    size: int  # training images
    seed: int

    @property
    def key(self) -> str:
        return f"{self.model}/{self.size}/{self.seed}"


def plan(quick: bool = False, seeds_small: int = 2) -> list[Point]:
    """Every point of the grid, most wanted first: seed 0 at every size, then more seeds at the two smallest sizes,
    then the full-size-only models."""
    sizes = QUICK_SIZES if quick else SIZES
    points = [Point(m, n, 0) for n in sizes for m in MODELS]
    points += [Point(m, n, s) for s in range(1, seeds_small) for n in sizes[:2] for m in MODELS]
    points += [Point(m, sizes[-1], 0) for m in FULL_SIZE_ONLY]
    return points


def point_configs(point: Point, quick: bool = False, vit_epochs: int | None = None) -> tuple[ModelArgs, TrainConfig]:
    """(model config, training config) of one point: the model's own recipe on a balanced subset of `point.size`
    images, repeated up to the full size's images per epoch."""
    sizes = QUICK_SIZES if quick else SIZES
    full = sizes[-1]
    if point.size > full or full % point.size:
        raise ValueError(f"size {point.size} must divide the full size {full} (so every size sees the same images)")
    vit_epochs = vit_epochs or (QUICK_VIT_EPOCHS if quick else VIT_EPOCHS)
    name = {"cnn": "teacher", "vit": "fast", "spt_lsa": "fast", "distilled": "distilled", "distilled_spt_lsa": "distilled"}
    if point.model not in name:
        raise ValueError(f"unknown model {point.model!r}; choose one of {MODELS + FULL_SIZE_ONLY}")
    if quick:
        name = {**name, "cnn": "teacher_quick", "vit": "quick", "spt_lsa": "quick", "distilled": "distilled_quick",
                "distilled_spt_lsa": "distilled_quick"}
    args, cfg = recipe(name[point.model])
    if point.model in ("spt_lsa", "distilled_spt_lsa"):
        args = args.replace(spt=True, lsa=True)
    changes = dict(train_subset=point.size, balanced_subset=True, subset_repeat=full // point.size, seed=point.seed,
                   budget_minutes=None, log_every=10**6, checkpoint_every=10**6)
    if quick:  # two CPU cores: a smaller validation split keeps the per-epoch evaluation short
        changes["val_size"] = 1_000
    if not quick and point.size == full:  # the whole training split, as the recipes train (its classes within 1% of 4,500)
        changes.update(train_subset=None, balanced_subset=False)
    if point.model != "cnn":
        changes["epochs"] = vit_epochs
    return args, cfg.replace(**changes)


def test_accuracy(model: nn.Module, data: ImageData, cfg: TrainConfig, device: torch.device) -> float:
    from .train import evaluate

    test = GPUBatches(data.test_x, data.test_y, cfg.eval_batch_size, device=device)
    return evaluate(model, test, device, cfg.precision)[1]


def run_point(point: Point, data: ImageData, device: torch.device | str | None = None, *, quick: bool = False,
              teacher: nn.Module | None = None, vit_epochs: int | None = None) -> tuple[dict, nn.Module]:
    """Train one point of the grid; returns (its record, the trained model). A distilled point needs `teacher`:
    the CNN trained on the same subset (the "cnn" point of the same size and seed)."""
    from .cnn import build_model
    from .train import train

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args, cfg = point_configs(point, quick, vit_epochs)
    if cfg.distill != "none" and teacher is None:
        raise ValueError(f"{point.key} learns from the CNN trained on the same {point.size} images: pass teacher=")
    torch.manual_seed(cfg.seed)
    model = build_model(args)
    t0 = time.perf_counter()
    result = train(model, data, cfg, teacher=teacher if cfg.distill != "none" else None, device=device, progress=False)
    wall = time.perf_counter() - t0
    record = {"model": point.model, "size": point.size, "seed": point.seed, "test_acc": test_accuracy(model, data, cfg, device),
              "val_acc": result.history[-1]["val_acc"], "best_val_acc": result.best_val_acc, "epochs": result.epochs,
              "passes_per_epoch": cfg.subset_repeat, "images_seen": result.epochs * cfg.subset_repeat * point.size,
              "train_seconds": round(result.train_seconds, 2), "wall_seconds": round(wall, 2),
              "parameters": sum(p.numel() for p in model.parameters())}
    return record, model


def summarize(records: list[dict]) -> dict[str, dict[int, tuple[float, float, int]]]:
    """{model: {size: (mean test accuracy, spread, number of seeds)}}; the spread is half the range of the seeds
    (0 for one seed): with two seeds, the distance from the mean to either."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in records:
        out.setdefault(r["model"], {}).setdefault(r["size"], []).append(r["test_acc"])
    return {m: {n: (sum(a) / len(a), (max(a) - min(a)) / 2, len(a)) for n, a in sorted(sizes.items())}
            for m, sizes in out.items()}


def plot_grid(records: list[dict], title: str = ""):
    """Test accuracy against training images (log axis), one line per model, seeds as error bars."""
    import matplotlib.pyplot as plt

    table = summarize(records)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model in [m for m in MODELS + FULL_SIZE_ONLY if m in table]:
        sizes = sorted(table[model])
        mean = [100 * table[model][n][0] for n in sizes]
        spread = [100 * table[model][n][1] for n in sizes]
        style = dict(marker="o", capsize=3) if len(sizes) > 1 else dict(marker="*", markersize=11, linestyle="none")
        ax.errorbar(sizes, mean, yerr=spread, label=LABELS[model], **style)
    ax.set_xscale("log")
    all_sizes = sorted({r["size"] for r in records})
    ax.set_xticks(all_sizes, [f"{n:,}" for n in all_sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
