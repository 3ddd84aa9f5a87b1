"""Training speed of model variants side by side: what SPT, LSA, PatchDropout or another shape costs per image.

On a GPU:   python benchmarks/model_speed.py --out model_speed.json
            python benchmarks/model_speed.py --variants base,lsa,pd50 --set compile_scope=step
On a CPU:   python benchmarks/model_speed.py --tiny      (a few seconds; checks the script runs)

Each variant is the recipe's ViT with some ModelArgs changed (VARIANTS, or NAME:FIELD=VALUE,... on the command line),
trained by the package's own step for the recipe (`speed.make_step_fn`: what `train()` runs, CUDA graph and compiling
included) on the real batches. Every variant's step is built and warmed up first (compiling and recording happen
there), then the variants are timed in turn, ROUNDS times each, so that a slow moment of the machine falls on all of
them; the table gives each one's median images/s, its timings, its ratio to the first variant and its training FLOPs
per image. Beside it, one attention layer at the training shape: torch's kernel with and without LSA's diagonal mask.
The numbers are ratios within one run on one GPU: the question is what a change costs, not the absolute rate.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_helpers import VisionTransformer, count_parameters  # noqa: E402
from vit_helpers.cli import UsageError, parse_settings  # noqa: E402
from vit_helpers.config import ModelArgs, TrainConfig  # noqa: E402
from vit_helpers.speed import images_per_second, make_step_fn, median_seconds, train_flops_per_image  # noqa: E402
from vit_helpers.train import recipe  # noqa: E402

VARIANTS = {
    "base": {},
    "spt": {"spt": True},
    "lsa": {"lsa": True},
    "spt_lsa": {"spt": True, "lsa": True},
    "pd25": {"patch_dropout": 0.25},
    "pd50": {"patch_dropout": 0.5},
    "spt_lsa_pd25": {"spt": True, "lsa": True, "patch_dropout": 0.25},
    # deeper and narrower at no more parameters: 10 blocks of width 192, 6 heads of 32 channels like the base's 8
    # (2.99M parameters against 3.19M; a head width that is not a multiple of 8 would lose the flash kernel)
    "deep10_d192": {"n_layers": 10, "dim": 192, "hidden_dim": 384, "n_heads": 6},
}


def parse_variant(text: str) -> tuple[str, dict]:
    """'name' (one of VARIANTS) or 'name:field=value;field=value' (ModelArgs changes)."""
    name, _, changes = text.partition(":")
    if not changes:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)} or write NAME:FIELD=VALUE;FIELD=VALUE")
        return name, VARIANTS[name]
    return name, parse_settings(changes.split(";"), ModelArgs, "--variants")


def attention_with_and_without_mask(device: torch.device, tiny: bool) -> dict:
    """One attention layer (forward + backward) at the training shape, torch's kernel choice, with and without LSA's
    mask (no token attends to itself): milliseconds, the median of 20 (3 on a CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    B, H, N, hd = (8, 2, 17, 16) if tiny else (512, 8, 65, 32)
    q, k, v = (torch.randn(B, H, N, hd, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, N, hd, device=device, dtype=dtype)
    mask = ~torch.eye(N, dtype=torch.bool, device=device)
    out = {}
    for name, m in (("no mask", None), ("LSA mask", mask)):
        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m).backward(grad)  # noqa: E731
        out[name] = 1e3 * median_seconds(fn, device=device, reps=3 if tiny else 20, warmup=2)
    return out


def main(argv=None) -> int:
    try:
        return measure(argv)
    except UsageError as e:  # a bad --set or variant: the message says what to write instead
        raise SystemExit(f"model_speed.py: {e}") from None


def measure(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="fast", help="the recipe whose model, batches and step settings are timed")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: names of VARIANTS or NAME:FIELD=VALUE "
                   "with ';' between a variant's changes, e.g. 'wide:dim=320;hidden_dim=640'")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the recipe's training config (e.g. compile_scope=blocks)")
    p.add_argument("--rounds", type=int, default=3, help="timings per variant, taken in turn")
    p.add_argument("--steps", type=int, default=40, help="steps per timing")
    p.add_argument("--tiny", action="store_true", help="a tiny model on a few synthetic images on the CPU")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.steps < 1:
        raise SystemExit("--rounds and --steps must be at least 1")
    variants = [parse_variant(v) for v in a.variants.split(",") if v]
    if not variants:
        raise SystemExit("--variants names no variant")
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    args, cfg = recipe("quick" if a.tiny else a.recipe)
    cfg = cfg.replace(**parse_settings(a.set, TrainConfig, "--set"))
    if a.tiny:  # random 16x16 images: no CIFAR-10 needed
        from vit_helpers.data import ImageData

        g = torch.Generator().manual_seed(0)
        images = lambda n: torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)  # noqa: E731
        data = ImageData(images(256), torch.randint(0, 10, (256,), generator=g), images(64),
                         torch.randint(0, 10, (64,), generator=g), classes=tuple(map(str, range(10))), source="synthetic")
        args, cfg = args.replace(image_size=16, dim=32, hidden_dim=64, n_heads=4, n_layers=2), cfg.replace(
            batch_size=32, train_subset=None, val_size=64)
    else:
        from vit_helpers.data import load_cifar10

        data = load_cifar10()
    steps, warmup = (2, 1) if a.tiny else (a.steps, 5)
    built = {}
    for name, changes in variants:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        try:
            model_args = args.replace(**changes)
        except ValueError as e:  # a shape ModelArgs refuses, e.g. a width its heads do not divide
            raise SystemExit(f"model_speed.py: variant {name!r}: {e}") from None
        step, _ = make_step_fn(VisionTransformer(model_args), data, cfg, device)
        images_per_second(step, cfg.batch_size, steps=1, warmup=warmup, device=device)  # compiles and records here
        built[name] = (step, model_args)
        print(f"{name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    timings = {name: [] for name in built}
    for _ in range(a.rounds):
        for name, (step, _) in built.items():
            timings[name].append(images_per_second(step, cfg.batch_size, steps=steps, warmup=1, device=device))
    first = statistics.median(timings[variants[0][0]])
    rows = []
    for name, changes in variants:
        model_args = built[name][1]
        ips = statistics.median(timings[name])
        rows.append({"variant": name, "changes": changes, "images_per_s": ips, "timings": timings[name],
                     "ratio": ips / first, "params": count_parameters(VisionTransformer(model_args)),
                     "train_gflops_per_image": train_flops_per_image(model_args) / 1e9})
    attention = attention_with_and_without_mask(device, a.tiny)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{a.recipe if not a.tiny else 'tiny'} recipe's step, batch {cfg.batch_size}, on {where} (torch {torch.__version__}); "
          f"median of {a.rounds} timings of {steps} steps each, taken in turn:")
    print(f"| variant | images/s | x {variants[0][0]} | timings | parameters | training GFLOP/image |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['images_per_s']:,.0f} | {r['ratio']:.2f} | {', '.join(f'{t:,.0f}' for t in r['timings'])} "
              f"| {r['params']:,} | {r['train_gflops_per_image']:.4g} |")
    print("one attention layer, forward + backward at the training shape: "
          + ", ".join(f"{k} {v:.3f} ms" for k, v in attention.items()))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"device": where, "torch": torch.__version__, "recipe": a.recipe, "tiny": a.tiny,
                                     "config": {k: getattr(cfg, k) for k in ("batch_size", "precision", "compile",
                                                                             "compile_scope", "cuda_graph")},
                                     "rows": rows, "attention_ms": attention, "date": time.strftime("%Y-%m-%d")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
