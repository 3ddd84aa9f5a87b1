"""Where a training step's time goes *without* the whole-step CUDA graph: augmentation alone, the
model step alone, the full step, then the top GPU kernels from the PyTorch profiler. GPU only.

This is the loop of runs 2-3 (`benchmarks/NOTES.md`): the model compiled (by default with
torch's `mode="reduce-overhead"`, which graphs the model alone), the batch made and the optimizer
stepped eagerly around it. The recipes now record the whole step (`TrainConfig.cuda_graph`), which
this script does not; to see the CPU cost that graph removes, profile `train()` itself (run 5 used
cProfile over three epochs).

    python benchmarks/profile_step.py --recipe fast
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_helpers import VisionTransformer  # noqa: E402
from vit_helpers.data import GPUBatches  # noqa: E402
from vit_helpers.speed import median_seconds  # noqa: E402
from vit_helpers.train import autocast_settings, make_optimizer, recipe  # noqa: E402


def timed(fn, reps=30, warmup=5) -> float:
    """Median milliseconds of fn() over reps."""
    return 1e3 * median_seconds(fn, device="cuda", reps=reps, warmup=warmup)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="fast")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode for the model")
    a = p.parse_args()
    dev = torch.device("cuda")
    args, cfg = recipe(a.recipe)
    bs = a.batch_size or cfg.batch_size
    x8 = torch.randint(0, 256, (bs * 8, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (bs * 8,))
    batches = GPUBatches(x8, y, bs, device=dev, shuffle=True, drop_last=True, policy=cfg.augment, mix_prob=cfg.mix_prob)
    model = VisionTransformer(args).to(dev)
    opt = make_optimizer(model, cfg, dev)
    amp, _ = autocast_settings(cfg.precision, dev)
    fwd = torch.compile(model, mode=a.compile_mode) if cfg.compile else model
    xb, yb = next(iter(batches))

    def step(x, t):
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), t, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    it = iter(batches)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)
            return next(it)

    aug_ms = timed(next_batch)
    model_ms = timed(lambda: step(xb, yb))
    full_ms = timed(lambda: step(*next_batch()))
    print(f"batch {bs}: augmentation {aug_ms:.2f} ms, model step {model_ms:.2f} ms, full step {full_ms:.2f} ms "
          f"-> {bs / full_ms * 1e3:,.0f} img/s (model alone {bs / model_ms * 1e3:,.0f} img/s)")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(*next_batch())
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
