"""Issue 21's GPU measurements in one command each, on a 2-GPU machine (run 11, benchmarks/NOTES.md):

    python benchmarks/perf_ablation.py --plan ablation --out benchmarks/results/run11/ablation   # the levers, < 9 min
    python benchmarks/perf_ablation.py --plan seeds --out benchmarks/results/run11/seeds         # the final seeds, < 8 min
    python benchmarks/perf_ablation.py --list [--plan seeds]                                    # a plan and its estimates
    python benchmarks/perf_ablation.py --tiny --out /tmp/ablation                               # CPU, tiny models: checks the script

Each GPU works through a queue, one training run per process (CUDA_VISIBLE_DEVICES picks the GPU), so the two GPUs
run side by side and one run's crash can't take the others with it. A queue starts with its pinned runs, then takes
runs from a shared list, in order of priority, while the time estimate of the next one (a new teacher's training
included) still fits before --deadline; a pinned run that no longer fits is skipped; a run still going at the deadline
is stopped and recorded as such.

--plan ablation: 100 epochs of the distilled recipe as run 11 found it (soft T 2, w 0.7, the whole loss compiled:
RUN11_BASE), seed 0, no budget, one change per row (the EMA, T 3 / w 0.9, flash attention, no compile, batch 1024, less
mixing, ...); the compile cache's saving (cache10: a first epoch from soft100's cache); the attention kernels and the
teacher's forward timed alone (micro); the 30-second sprint with the 24- and the 10-epoch teacher.
--plan seeds: first the compile-scope probes (12 cold epochs of the distilled recipe with compile_scope "step" and
"blocks", one per GPU), whose measured first epoch and steady epochs choose the scope (choose_scope); then seeds 1 and 2
of the final `distilled` recipe with that scope, cold as the release benchmark is (which gives seed 0), and the sprint.

Compilation: every run starts with empty inductor/Triton caches; a run marked "cold" must also be the first to write the
vit_helpers compile cache on its GPU (it saves it after the first epoch), and later runs on that GPU load it where their
graphs match (cache10 measures the saving that way).

Writes into --out: one JSON per run (`runs/<name>.json`), each run's log (`logs/<name>.log`), and `ablation.json`
(the plan, every row, the micro-benchmarks, the chosen scope and the table, which is also printed at the end).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Every process: no NVLink multicast (NVLS) in NCCL, symmetric memory or NVSHMEM (the device machines' rule).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
ABLATION_EPOCHS = 100
PROBE_EPOCHS = 12
NO_BUDGET = {"budget_minutes": None, "seed": 0}
# The ablation's baseline, pinned: the distilled recipe as run 11 measured it (soft T 2, w 0.7, the whole loss compiled),
# so that the rows still mean what they meant after the recipe moved on (T 3, w 0.9, compile_scope="blocks").
RUN11_BASE = {**NO_BUDGET, "distill_weight": 0.7, "distill_temperature": 2.0, "compile_scope": "step"}

# name -> what it runs. est_s: seconds on one H200 including the process's start, data and test evaluation, its
# teacher's training when this GPU has not trained that teacher yet (+12 s, counted by the scheduler) and a compile
# (~30 s cold, ~5 s from the compile cache). Measured basis: a steady distilled epoch 0.68 s on an H200 (issue 21).
RUNS: dict[str, dict] = {
    "micro": {"kind": "micro", "est_s": 25,
              "why": "attention kernels and the teacher's forward, timed alone at the training shapes"},
    # the final recipe as the release benchmark runs it: cold compile, the student's time budget; seed 0 is the release's
    "final_seed1": {"recipe": "distilled", "set": {"seed": 1}, "teacher_seed": 1, "cold": True, "est_s": 285,
                    "why": "the final recipe as the release runs it (cold compile, its student budget), seed 1"},
    "final_seed2": {"recipe": "distilled", "set": {"seed": 2}, "teacher_seed": 2, "cold": True, "est_s": 285,
                    "why": "the final recipe, seed 2"},
    # compile_scope, measured cold side by side before the seeds (plan "seeds"): the seeds then use the faster one
    "probe_step": {"recipe": "distilled", "epochs": PROBE_EPOCHS, "set": {**NO_BUDGET, "compile_scope": "step"}, "cold": True,
                   "est_s": 55, "why": "the whole loss compiled as one function (compile_scope='step'), cold: compile time and speed"},
    "probe_blocks": {"recipe": "distilled", "epochs": PROBE_EPOCHS, "set": {**NO_BUDGET, "compile_scope": "blocks"}, "cold": True,
                     "est_s": 45, "why": "regional compilation (compile_scope='blocks'), cold: compile time and speed"},
    "sprint_final": {"recipe": "distilled_sprint", "est_s": 45, "why": "the sprint recipe as the release will run it"},
    # the ablation: 100 epochs of the distilled recipe without its budget, seed 0, one change each
    "soft100": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE}, "est_s": 110, "cold": True,
                "why": "baseline: soft T 2, w 0.7 (issue 21: 84.31%), cold compile"},
    "cache10": {"recipe": "distilled", "epochs": 10, "set": {**RUN11_BASE}, "est_s": 20,
                "why": "10 epochs of the baseline, its first epoch from soft100's compile cache: the cache's saving"},
    "ema100": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "ema_decay": 0.999}, "est_s": 110,
               "why": "+ an EMA of the weights, decay 0.999 (~11 epochs)"},
    "t3w09": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "distill_temperature": 3.0,
              "distill_weight": 0.9}, "est_s": 110, "why": "soft T 3, w 0.9 instead of T 2, w 0.7"},
    "mix05": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "mix_prob": 0.5}, "est_s": 110,
              "why": "MixUp/CutMix on 50% of the batches instead of 80%"},
    "lr15": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "lr": 1.5e-3}, "est_s": 110,
             "why": "lr 1.5e-3 instead of 1e-3"},
    "ls0": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "label_smoothing": 0.0}, "est_s": 110,
            "why": "no label smoothing on the true label (the teacher's term already softens the target)"},
    "flash100": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "attention": "flash"}, "est_s": 110,
                 "why": "flash attention instead of torch's choice (cuDNN on an H100 in run 2: 28% of the GPU time)"},
    "b1024": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "batch_size": 1024, "lr": 1.4e-3},
              "est_s": 100, "why": "batch 1024, lr x sqrt(2) (half the steps; bigger matrices)"},
    "nocompile100": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE, "compile": False}, "est_s": 120,
                     "why": "no torch.compile (the step still one CUDA graph): no compile time, slower steps"},
    "tmid100": {"recipe": "distilled", "epochs": ABLATION_EPOCHS, "set": {**RUN11_BASE},
                "teacher_model": {"stem_width": 48, "widths": [96, 192, 384]}, "est_s": 110,
                "why": "a narrower teacher (3/4 of the width, ~0.56x its FLOPs): a cheaper forward in every step"},
    "hard100": {"recipe": "distilled", "epochs": ABLATION_EPOCHS,
                "set": {**RUN11_BASE, "distill": "hard", "distill_weight": 0.5, "distill_temperature": 1.0}, "est_s": 110,
                "why": "reference: the old hard distillation, w 0.5 (issue 21: 83.41%)"},
    # the 30-second sprint: as in the release, and with a shorter teacher whose saved seconds go to the student
    "sprint": {"recipe": "distilled_sprint", "teacher_recipe": "teacher", "set": {"budget_minutes": 0.3}, "est_s": 45,
               "why": "the sprint as the 2026-12-01 release ran it (teacher 24 epochs, student budget 0.3 min)"},
    "sprint_t10": {"recipe": "distilled_sprint", "teacher_recipe": "teacher", "teacher_set": {"epochs": 10},
                   "set": {"budget_minutes": 0.38},
                   "est_s": 45, "why": "the sprint with a 10-epoch teacher (~5 s) and the student's budget 0.3 -> 0.38 min"},
}
# Issue 29's levers, measured at the 150-s target (teacher included: the 24-epoch teacher's ~11.5 s, then a 2.3-minute
# student budget), each with seeds 0 and 1 paired (the same teacher per seed), so a row's gain is read against the
# baseline of its own seed. At ~175 s a run (start, data and test included), one H200 holds three a command.
SHORT = {"budget_minutes": 2.3, "epochs": 220}
SPT_LSA = {"spt": True, "lsa": True}  # the small-data issue's two model options
LEVERS = {
    "base": ({}, {}, "the distilled recipe at the 150-s budget (baseline)"),
    "spt_lsa": ({}, SPT_LSA, "+ shifted patch tokens and locality self-attention (issue 27: +2.3 points at 40 epochs)"),
    "droppath": ({}, {"drop_path": 0.1}, "+ stochastic depth 0.1 (rejected in short runs; now ~190 epochs)"),  # a model field
    "erase": ({"erase_prob": 0.25}, {}, "+ Random Erasing on 25% of the images"),
}
for _lever, (_set, _model, _why) in LEVERS.items():
    for _seed in (0, 1):
        RUNS[f"{_lever}150_s{_seed}"] = {"recipe": "distilled", "set": {**SHORT, "seed": _seed, **_set}, "model": _model,
                                         "teacher_seed": _seed, "est_s": 190 if _model else 175, "why": f"{_why}, seed {_seed}"}
# Issue 29, second round: SPT + LSA (run 15: +1.96 points at 150 s, seed 0) at the full 265-s budget, and the sprint
# cut to fit 20 s (teacher_sprint's ~4.5 s, then a 0.25-minute student budget, evaluation included), with and without it.
for _seed in (0, 1):
    RUNS[f"spt_lsa265_s{_seed}"] = {"recipe": "distilled", "set": {"seed": _seed}, "model": SPT_LSA, "teacher_seed": _seed,
                                    "cold": True, "est_s": 300,
                                    "why": f"the distilled recipe as released (4.33-min student budget) + SPT and LSA, seed {_seed}"}
RUNS["sprint20"] = {"recipe": "distilled_sprint", "set": {"budget_minutes": 0.25}, "est_s": 40,
                    "why": "the sprint with a 0.25-min student budget: about 20 s with its 10-epoch teacher"}
RUNS["sprint20_spt_lsa"] = {"recipe": "distilled_sprint", "set": {"budget_minutes": 0.25}, "model": SPT_LSA, "est_s": 40,
                            "why": "the 20-s sprint + SPT and LSA"}
# Issue 29, third round (run 16: SPT + LSA at 265 s gave 91.09% and 90.65%, seeds 0 and 1; at 150 s 89.32% and 89.23%;
# the 20-s sprint 68.38%, and 63.83% with SPT + LSA, whose steps are 20% slower): SPT + LSA's third seed at 265 s;
# PatchDropout (a training step keeps 75% or 50% of each image's patch tokens, a cheaper step) on SPT + LSA at 150 s and
# on the sprint; stochastic depth on SPT + LSA at 150 s, now that the model is the one that would carry it.
RUNS["spt_lsa265_s2"] = {**RUNS["spt_lsa265_s0"], "set": {"seed": 2}, "teacher_seed": 2,
                         "why": "the distilled recipe as released (4.33-min student budget) + SPT and LSA, seed 2"}
for _seed in (0, 1):
    for _name, _extra, _why in (("pd25", {"patch_dropout": 0.25}, "PatchDropout 0.25 (48 of 64 patch tokens per step)"),
                                ("dp", {"drop_path": 0.1}, "stochastic depth 0.1")):
        RUNS[f"spt_lsa_{_name}150_s{_seed}"] = {
            "recipe": "distilled", "set": {**SHORT, "seed": _seed}, "model": {**SPT_LSA, **_extra}, "teacher_seed": _seed,
            "est_s": 190, "why": f"SPT + LSA + {_why} at the 150-s budget, seed {_seed}"}
for _p in (25, 50):
    RUNS[f"sprint20_pd{_p}"] = {**RUNS["sprint20"], "model": {"patch_dropout": _p / 100},
                                "why": f"the 20-s sprint + PatchDropout 0.{_p}"}
# Which GPU runs what (GPU -> its pinned runs, in order), then the shared runs in order of priority. Every pinned
# run marked "cold" must be the first to compile on its GPU.
PLANS: dict[str, tuple[dict[int, list[str]], list[str]]] = {
    "ablation": ({0: ["soft100", "cache10", "ema100", "t3w09"],
                  1: ["micro", "sprint", "sprint_t10", "flash100", "nocompile100"]},
                 ["b1024", "tmid100", "mix05", "lr15", "ls0", "hard100"]),
    # two phases: the compile-scope probes (one per GPU), then seeds 1 and 2 of the final recipe with the scope the probes
    # chose (see choose_scope), and the sprint
    "seeds": ({0: ["final_seed1"], 1: ["final_seed2", "sprint_final"]}, []),
    # issue 29: every lever at the 150-s budget, seed 0 then seed 1 (one GPU: everything in this order; two: by seed)
    "levers": ({0: [f"{lever}150_s0" for lever in LEVERS], 1: [f"{lever}150_s1" for lever in LEVERS]}, []),
    # issue 29, second round: the 150-s pair's seed 1 and the 20-s sprint on one queue, SPT + LSA at 265 s on the other
    # (each 265-s run compiles cold, so each must be the first on its GPU: seed 1's is a plan of its own)
    "levers2": ({0: ["base150_s1", "spt_lsa150_s1", "sprint20", "sprint20_spt_lsa"], 1: ["spt_lsa265_s0"]}, []),
    "levers3": ({0: ["spt_lsa265_s1"]}, []),
    # third round, one GPU a plan (about 460, 300 and 380 s)
    "levers4": ({0: ["spt_lsa_pd25150_s0", "spt_lsa_pd25150_s1", "sprint20_pd25", "sprint20_pd50"]}, []),
    "levers5": ({0: ["spt_lsa265_s2"]}, []),
    "levers6": ({0: ["spt_lsa_dp150_s0", "spt_lsa_dp150_s1"]}, []),
}
PROBES = {0: ["probe_step"], 1: ["probe_blocks"]}
PINNED, SHARED = PLANS["ablation"]
TEACHER_S = 15  # a teacher's training with its process's share of the start


# ---- the worker: one run in this process ----

def load_data(tiny: bool):
    if tiny:  # random images, as train_speed.py --synthetic
        import torch

        from vit_helpers.data import ImageData

        g = torch.Generator().manual_seed(0)
        rand = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return ImageData(rand(768), torch.randint(0, 10, (768,), generator=g), rand(256),
                         torch.randint(0, 10, (256,), generator=g), classes=tuple(map(str, range(10))), source="synthetic")
    from vit_helpers.data import load_cifar10

    return load_cifar10()


def teacher_for(spec: dict, data, device, tiny: bool, folder: Path) -> dict:
    """The teacher row (with its model) for a distilled run: trained once per GPU and seed, then read from `folder`."""
    import torch

    import train_speed as ts
    from vit_helpers.cnn import build_model
    from vit_helpers.config import TEACHER_RECIPES, recipe

    name, seed = spec.get("teacher_recipe") or TEACHER_RECIPES[spec["recipe"]], spec.get("teacher_seed", 0)
    changes, shape = dict(spec.get("teacher_set", {})), {k: tuple(v) if isinstance(v, list) else v
                                                           for k, v in spec.get("teacher_model", {}).items()}
    variant = f"{name}_seed{seed}" + (f"_{hashlib.blake2b(json.dumps([changes, spec.get('teacher_model', {})], sort_keys=True).encode(), digest_size=4).hexdigest()}"
                                      if changes or shape else "")
    weights, about = folder / f"{variant}.pt", folder / f"{variant}.json"
    if weights.is_file() and about.is_file():
        row = json.loads(about.read_text())
        args, _ = recipe(name)
        args = args.replace(stem_width=8, widths=(16, 16, 32)) if tiny else args.replace(**shape)
        model = build_model(args)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return {**row, "model": model.to(device), "reused": True}
    epochs = changes.pop("epochs", None)
    row, model = ts.run(name, data, device, epochs, tiny, None, {"seed": seed, **changes}, False, shape or None)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    kept = {k: row[k] for k in ("recipe", "train_seconds", "test_acc", "flops_per_image", "epochs", "params")}
    about.write_text(json.dumps(kept))
    return {**kept, "model": model, "reused": False}


def micro(device, tiny: bool) -> dict:
    """Times, alone: scaled-dot-product attention's kernels at the training shape (forward + backward), and the
    teacher's forward at the training batch in the ways it could run."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from vit_helpers.cnn import ConvNet
    from vit_helpers.config import CNN_PRESETS
    from vit_helpers.speed import median_seconds
    from vit_helpers.step import attention_kernels

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    reps = 3 if tiny else 20

    def timed(fn) -> float:
        """Median milliseconds of fn()."""
        return 1e3 * median_seconds(fn, device=device, reps=reps, warmup=2)

    out = {"attention": {}, "teacher": {}}
    B, H, N, hd = (8, 2, 17, 16) if tiny else (512, 8, 65, 32)  # batch, heads, tokens (64 patches + [CLS]), head width
    q, k, v = (torch.randn(B, H, N, hd, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, N, hd, device=device, dtype=dtype)
    try:
        out["attention"]["auto_picks"] = str(SDPBackend(torch._fused_sdp_choice(q, k, v)))
    except Exception as e:  # a private function: informative where it exists
        out["attention"]["auto_picks"] = f"unknown ({type(e).__name__})"
    for name in ("auto", "flash", "efficient", "cudnn", "math"):
        only = [] if name == "auto" else [{"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                                           "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]]
        try:
            with sdpa_kernel(only) if only else attention_kernels("auto"):
                fwd = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
                both = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(grad))
            out["attention"][name] = {"forward_ms": fwd, "forward_backward_ms": both,
                                      "per_step_ms_6_layers": 6 * both}
        except Exception as e:  # a kernel that can't run these shapes here
            out["attention"][name] = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"}
    args = CNN_PRESETS["teacher_small" if tiny else "teacher"]
    teacher = ConvNet(args).to(device).eval().requires_grad_(False)
    x = torch.randn(64 if tiny else 512, 3, 32, 32, device=device)
    amp = dict(device_type=device.type, dtype=dtype, enabled=cuda)

    def forward(model, inputs):
        with torch.no_grad(), torch.autocast(**amp):
            return model(inputs)

    variants = {"as_in_the_step": lambda: forward(teacher, x)}
    if cuda:
        half = ConvNet(args).to(device, dtype=dtype).eval().requires_grad_(False)
        half.load_state_dict(teacher.state_dict())
        variants["weights_in_bf16"] = lambda: forward(half, x.to(dtype))
    if cuda:  # last: cuDNN then tries its algorithms for each shape (not switched on in training today)
        variants["cudnn_benchmark"] = lambda: (setattr(torch.backends.cudnn, "benchmark", True), forward(teacher, x))
    for name, fn in variants.items():
        ms = timed(fn)
        out["teacher"][name] = {"ms": ms, "images_per_s": len(x) / ms * 1e3}
    return out


def compile_times() -> str | None:
    """torch.compile's own account of where this process's compile time went (dynamo, AOT autograd, inductor), or None."""
    try:
        from torch._dynamo.utils import compile_times as times

        text = times(repr="str", aggregate=True)
        print(text, flush=True)
        return text
    except Exception as e:  # a private function: informative where it exists
        return f"unknown ({type(e).__name__})"


def worker(name: str, spec: dict, result: Path, tiny: bool, teachers: Path) -> int:
    """Run one spec here and write its row to `result` (an error is written as the row)."""
    sys.path[:0] = [str(HERE), str(ROOT)]
    t0 = time.perf_counter()
    row: dict = {"name": name, "why": spec.get("why", ""), "spec": spec}
    try:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
        row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        if spec.get("kind") == "micro":
            row["micro"] = micro(device, tiny)
        else:
            import train_speed as ts

            data = load_data(tiny)
            if tiny:
                data.test_x, data.test_y = data.test_x[:256], data.test_y[:256]
            teacher = teacher_for(spec, data, device, tiny, teachers)
            epochs = (1 if tiny else spec["epochs"]) if spec.get("epochs") else None
            trained, _ = ts.run(spec["recipe"], data, device, epochs, tiny, None, dict(spec.get("set", {})), False,
                                spec.get("model") or None, teacher)
            trained.update(teacher_reused=teacher["reused"], teacher_seed=spec.get("teacher_seed", 0),
                           teacher_test_acc=teacher["test_acc"], teacher_epochs=teacher["epochs"],
                           teacher_params=teacher.get("params"), teacher_flops_per_image=teacher["flops_per_image"])
            row["compile_times"] = compile_times()
            row.update({k: v for k, v in trained.items() if k != "model"})
        row["status"] = "ok"
    except Exception as e:
        row.update(status="error", error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")  # on one line
        traceback.print_exc()
    row["wall_seconds"] = time.perf_counter() - t0
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(row, indent=1, default=str))
    return 0 if row["status"] == "ok" else 1


# ---- the scheduler: two queues, side by side ----

class Plan:
    """Which GPU runs what: its pinned runs, then the shared list in order, while the estimate fits the deadline."""

    def __init__(self, pinned: dict[int, list[str]], shared: list[str], runs: dict[str, dict], deadline: float):
        self.pinned, self.shared, self.runs, self.deadline = {g: list(n) for g, n in pinned.items()}, list(shared), runs, deadline
        self.lock = threading.Lock()
        self.teachers: dict[int, set] = {g: set() for g in pinned}  # (gpu) -> teachers trained there
        self.skipped: list[str] = []  # pinned runs whose estimate did not fit before the deadline

    @staticmethod
    def teacher_of(spec: dict) -> str:
        from vit_helpers.config import TEACHER_RECIPES

        return json.dumps([spec.get("teacher_recipe") or TEACHER_RECIPES[spec["recipe"]], spec.get("teacher_seed", 0),
                           spec.get("teacher_set", {}), spec.get("teacher_model", {})], sort_keys=True)

    def estimate(self, gpu: int, name: str) -> float:
        spec = self.runs[name]
        extra = TEACHER_S if spec.get("recipe") and self.teacher_of(spec) not in self.teachers[gpu] else 0
        return spec["est_s"] + extra

    def next(self, gpu: int, elapsed: float) -> str | None:
        """The next run for `gpu`, or None when none is left that fits before the deadline."""
        with self.lock:
            while self.pinned[gpu] and elapsed + self.estimate(gpu, self.pinned[gpu][0]) > self.deadline:
                self.skipped.append(self.pinned[gpu].pop(0))
            if self.pinned[gpu]:
                name = self.pinned[gpu].pop(0)
            else:
                fits = [n for n in self.shared if elapsed + self.estimate(gpu, n) <= self.deadline]
                if not fits:
                    return None
                name = fits[0]
                self.shared.remove(name)
            spec = self.runs[name]
            if spec.get("recipe"):
                self.teachers[gpu].add(self.teacher_of(spec))
            return name


def launch(name: str, spec: dict, gpu: int, out: Path, scratch: Path, tiny: bool, remaining: float) -> dict:
    """One run as its own process on GPU `gpu`; its row (or what went wrong) comes back."""
    result, log = out / "runs" / f"{name}.json", out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # The vit_helpers compile cache: a "cold" run gets an empty folder of its own and saves its cache there after its first
    # epoch; the later runs on that GPU load from the latest cold run's folder (where their graphs match).
    pointer = scratch / f"compile_cache_gpu{gpu}.txt"
    if spec.get("cold"):
        cache = scratch / f"compile_cache_gpu{gpu}_{name}"
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(cache))
    else:
        cache = Path(pointer.read_text()) if pointer.is_file() else scratch / f"compile_cache_gpu{gpu}"
    env = {**os.environ, **SAFE_ENV, "CUDA_VISIBLE_DEVICES": str(gpu), "VIT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           # empty inductor/Triton caches for every run
           "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor" / name), "TRITON_CACHE_DIR": str(scratch / "triton" / name),
           "VIT_COMPILE_CACHE": str(cache)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec", json.dumps(spec), "--result", str(result),
           "--teachers", str(scratch / f"teachers_gpu{gpu}")] + (["--tiny"] if tiny else [])
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, remaining), cwd=ROOT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if result.is_file():
        row = json.loads(result.read_text())
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        why = "stopped at the deadline" if rc == "timeout" else f"exit code {rc}"
        row = {"name": name, "why": spec.get("why", ""), "spec": spec, "status": "error", "error": f"{why}; log: {' | '.join(tail)[-300:]}"}
    row.update(gpu=gpu, process_seconds=time.perf_counter() - t0, log=str(log.relative_to(out)))
    return row


def run_plan(plan: Plan, out: Path, tiny: bool = False, start: float | None = None) -> list[dict]:
    """Both queues, side by side (one thread each, every run its own process); the rows in the order they finished.
    start: the time.perf_counter() the deadline counts from (default: now)."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="perf-ablation-"))  # caches and teachers: not results, removed at the end
    start, rows, lock = start or time.perf_counter(), [], threading.Lock()

    def queue(gpu: int) -> None:
        while True:
            elapsed = time.perf_counter() - start
            name = plan.next(gpu, elapsed)
            if name is None:
                return
            print(f"[{elapsed:5.0f} s] GPU {gpu}: {name} ({plan.runs[name].get('why', '')})", flush=True)
            row = launch(name, plan.runs[name], gpu, out, scratch, tiny, plan.deadline - elapsed)
            with lock:
                rows.append(row)
            took = time.perf_counter() - start
            print(f"[{took:5.0f} s] GPU {gpu}: {name} {row['status']}" + (f" ({row.get('error')})" if row["status"] != "ok" else
                  f": test {row.get('test_acc', float('nan')):.4f}" if "test_acc" in row else ""), flush=True)

    threads = [threading.Thread(target=queue, args=(g,)) for g in plan.pinned]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in plan.skipped + plan.shared:  # what no GPU had time for
        rows.append({"name": name, "why": plan.runs[name].get("why", ""), "spec": plan.runs[name], "status": "skipped",
                     "error": "not started: its estimate did not fit before the deadline"})
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def choose_scope(rows: list[dict], budget_s: float, default: str, margin: int = 3) -> tuple[str, str]:
    """(the compile_scope the final seeds use, why): the one whose measured cold first epoch and steady epochs (evaluation
    included, as the budget counts them) fit more epochs into the student's budget: "blocks" if it fits at least `margin`
    more than "step", "step" if it fits at least as many; `default` (the recipe's own) between the two or if a probe
    failed."""
    probe = {r["spec"]["set"]["compile_scope"]: r for r in rows if r["name"].startswith("probe_")}
    if any(r["status"] != "ok" for r in probe.values()) or set(probe) != {"step", "blocks"}:
        return default, f"the recipe's own ({default}): a probe failed or is missing: " + (
            ", ".join(f"{r['name']} {r['status']}" for r in probe.values()) or "none ran")
    fits = {}
    for scope, r in probe.items():
        h = r["history"]
        first = h[0]["seconds"] + h[0]["eval_seconds"]
        rest = h[1:] or h  # (a one-epoch probe: --tiny)
        each = sorted(e["seconds"] + e["eval_seconds"] for e in rest)[len(rest) // 2]
        fits[scope] = (1 + int((budget_s - first) / each), first, each)
    scope = "blocks" if fits["blocks"][0] >= fits["step"][0] + margin else "step" if fits["step"][0] >= fits["blocks"][0] else default
    why = "; ".join(f"{k}: first epoch {f:.1f} s, then {e:.3f} s each -> {n} epochs in {budget_s:.0f} s"
                    for k, (n, f, e) in fits.items())
    return scope, why


def fmt(v, spec="{:.1f}") -> str:
    return "-" if v is None else spec.format(v)


def table(rows: list[dict]) -> str:
    lines = ["| run | GPU | status | epochs | test acc | best val | train s (teacher + student) | images/s | 1st epoch s | to 90% val (s) | what |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("micro") or r["status"] != "ok":
            lines.append(f"| {r['name']} | {r.get('gpu', '-')} | {r['status']} | | | | | | | | "
                         f"{r.get('error') or 'see micro below'} |")
            continue
        teacher = f" ({r['teacher_seconds']:.1f} + {r['student_seconds']:.1f})" if r.get("teacher_seconds") is not None else ""
        lines.append(f"| {r['name']} | {r['gpu']} | ok | {r['epochs']} | {100 * r['test_acc']:.2f}% | {100 * r['best_val_acc']:.2f}% | "
                     f"{r['train_seconds']:.1f}{teacher} | {r['images_per_s']:,.0f} | {fmt(r.get('first_epoch_seconds'))} | "
                     f"{fmt(r.get('time_to_90'))} | {r['why']} |")
    return "\n".join(lines)


def micro_table(rows: list[dict]) -> str:
    found = next((r["micro"] for r in rows if r.get("micro")), None)
    if not found:
        return ""
    lines = [f"attention (one layer at the training shape; torch's choice here: {found['attention'].get('auto_picks')}):"]
    for name, t in found["attention"].items():
        if isinstance(t, dict):
            lines.append(f"  {name:9s} " + (t["error"] if "error" in t else
                         f"forward {t['forward_ms']:.3f} ms, forward+backward {t['forward_backward_ms']:.3f} ms "
                         f"(x6 layers: {t['per_step_ms_6_layers']:.2f} ms per step)"))
    lines.append("teacher forward (a training batch, bf16 autocast on a GPU, channels-last, eager):")
    for name, t in found["teacher"].items():
        lines.append(f"  {name:16s} {t['ms']:.3f} ms ({t['images_per_s']:,.0f} images/s)")
    return "\n".join(lines)


def tiny_runs() -> dict[str, dict]:
    """The plan with every estimate in seconds of a CPU (the same names, so --tiny exercises the same code)."""
    return {n: {**s, "est_s": 30} for n, s in RUNS.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "run10", help="results folder")
    p.add_argument("--deadline", type=float, default=500.0, help="seconds after the start by which every run must end")
    p.add_argument("--gpus", type=int, default=2, help="queues (1: everything on GPU 0, pinned runs of both queues first)")
    p.add_argument("--tiny", action="store_true", help="tiny models and random images on the CPU (seconds): checks the script")
    p.add_argument("--list", action="store_true", help="print the plan with its estimates and exit")
    p.add_argument("--plan", choices=sorted(PLANS), default="ablation",
                   help="ablation: the levers side by side (run 11); seeds: the final recipe's seeds 1 and 2, one per GPU; "
                        "levers: issue 29's levers at the 150-s budget, seeds 0 and 1")
    p.add_argument("--only", default=None, help="comma-separated run names: the plan keeps only these (in its order)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one spec in this process
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--teachers", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.worker, json.loads(a.spec), a.result, a.tiny, a.teachers)
    runs = tiny_runs() if a.tiny else RUNS
    plan_pinned, shared = PLANS[a.plan]
    pinned = plan_pinned if a.gpus >= 2 else {0: [n for g in sorted(plan_pinned) for n in plan_pinned[g]]}
    if a.only:
        keep = a.only.split(",")
        unknown = [n for n in keep if n not in runs]
        if unknown:
            raise SystemExit(f"--only: unknown runs {unknown}; the plan has {list(runs)}")
        pinned, shared = {g: [n for n in names if n in keep] for g, names in pinned.items()}, [n for n in shared if n in keep]
    if a.list:
        for g, names in pinned.items():
            print(f"GPU {g} pinned: " + ", ".join(f"{n} (~{runs[n]['est_s']} s)" for n in names))
        print("then, shared, in order: " + ", ".join(f"{n} (~{runs[n]['est_s']} s)" for n in shared))
        print(f"a teacher's training adds ~{TEACHER_S} s the first time a GPU needs it; deadline {a.deadline:.0f} s")
        return 0
    t0 = time.perf_counter()  # the deadline counts from here
    if not a.tiny:
        sys.path.insert(0, str(ROOT))
        from vit_helpers.data import load_cifar10

        load_cifar10()  # once, before the queues: the workers then read the decoded cache instead of decoding twice
    chosen = None
    if a.plan == "seeds":  # phase 1: the probes; phase 2 (below): the seeds with the scope they chose
        if a.gpus >= 2:
            probe_rows = run_plan(Plan(PROBES, [], runs, a.deadline), a.out, a.tiny, start=t0)
        else:  # one after the other on GPU 0, each from its own empty caches (a plan's scratch holds one compile cache per GPU)
            probe_rows = [row for g in sorted(PROBES) for row in run_plan(Plan({0: PROBES[g]}, [], runs, a.deadline), a.out,
                                                                          a.tiny, start=t0)]
        sys.path.insert(0, str(ROOT))
        from vit_helpers.config import recipe

        _, final = recipe("distilled")
        scope, why = choose_scope(probe_rows, 60 * final.budget_minutes, final.compile_scope)
        chosen = {"compile_scope": scope, "why": why}
        print(f"compile_scope for the seeds: {scope} ({why})", flush=True)
        runs = {n: ({**spec, "set": {**spec.get("set", {}), "compile_scope": scope}} if spec.get("recipe") == "distilled" else spec)
                for n, spec in runs.items()}
    else:
        probe_rows = []
    rows = probe_rows + run_plan(Plan(pinned, shared, runs, a.deadline), a.out, a.tiny, start=t0)
    text, micro_text = table(rows), micro_table(rows)
    print("\n" + text + ("\n\n" + micro_text if micro_text else ""))
    print(f"\n{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} runs ok, {time.perf_counter() - t0:.0f} s")
    combined = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/perf_ablation.py " + " ".join(argv or sys.argv[1:]),
                "deadline_s": a.deadline, "plan": {"pinned": pinned, "shared": shared, "runs": runs}, "rows": rows,
                "table": text, "micro": micro_text, "chosen": chosen}
    (a.out / "ablation.json").write_text(json.dumps(combined, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
