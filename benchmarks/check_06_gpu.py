"""Check notebook 06's learner-written speed rungs on a GPU in one short run, before the notebook's full run.

The code checked is the notebook's own: the functions `plain_loss`, `training_step`, `make_optimizer`,
`bf16_loss`, `record` and `gpu_ms` and the tolerances `TOL` are read from notebooks/py/06_going_fast.py
(its jupytext twin) and executed here, so this script cannot drift from what the notebook runs. Each check
prints PASS or FAIL, and the exit status is the number of failures:

- your plain step (fp32, eager) against the package's `TrainStep`: loss and weights after one step;
- bf16 autocast: against float32 (the looser tolerance) and against `TrainStep(precision="auto")`;
- one `torch.compile` of the bf16 loss: against the eager bf16 loss;
- the whole step captured by hand as a CUDA graph (side-stream warm-up at lr 0, capturable AdamW with a
  tensor lr, static buffers): the warm-up leaves the weights unchanged, and the first replay's loss equals
  the eager bf16 loss;
- speed: each of your rungs against the package's (`speed.make_step_fn` with the rung's config), which
  must reach a share of the package's rate (SPEED_FLOOR; your graph leaves the batch making outside it);
- a replay's GPU time (CUDA events) against its wall time back to back.

    python benchmarks/check_06_gpu.py                 # the fast recipe; CIFAR-10 from $VIT_DATA_DIR or torchvision
    python benchmarks/check_06_gpu.py --synthetic     # random images instead (a machine without the data set)

Without a CUDA GPU only the plain-step check runs (the others print SKIP).
"""
from __future__ import annotations

import argparse
import ast
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vit_helpers as vh  # noqa: E402
from vit_helpers import speed  # noqa: E402
from vit_helpers.data import CIFAR10_CLASSES, ImageData, load_cifar10  # noqa: E402
from vit_helpers.step import TrainStep  # noqa: E402
from vit_helpers.train import make_batches, param_groups, recipe  # noqa: E402

TWIN = ROOT / "notebooks" / "py" / "06_going_fast.py"
FUNCTIONS = ("plain_loss", "training_step", "make_optimizer", "bf16_loss", "record", "gpu_ms")
SPEED_FLOOR = {"bf16": 0.8, "compiled": 0.8, "graphed": 0.6}  # your images/s over the package's, at least


def notebook_code(device: torch.device) -> dict:
    """The twin's functions named in FUNCTIONS, and its TOL, executed in a namespace like the notebook's."""
    tree = ast.parse(TWIN.read_text())
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS}
    missing = set(FUNCTIONS) - set(found)
    tol = [n for n in tree.body if isinstance(n, ast.Assign) and any("TOL" in ast.unparse(t) for t in n.targets)]
    if missing or not tol:
        raise SystemExit(f"{TWIN} no longer defines {sorted(missing) or 'TOL'}: update this script")
    ns = {"torch": torch, "F": F, "statistics": statistics, "param_groups": param_groups, "speed": speed,
          "device": device, "GPU": device.type == "cuda"}
    exec(compile(ast.Module([found[name] for name in FUNCTIONS], type_ignores=[]), str(TWIN), "exec"), ns)
    ns["TOL"] = ast.literal_eval(tol[0].value.elts[1])  # LR, TOL = cfg.lr, {...}
    return ns


class Report:
    def __init__(self):
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    def close(self, name: str, value: float, expected: float, tol: float) -> None:
        gap = abs(value - expected)
        self.check(name, gap <= tol, f"{value:.6f} against {expected:.6f}, difference {gap:.1e} (tolerance {tol:g})")

    def skip(self, name: str, why: str) -> None:
        print(f"SKIP  {name}: {why}", flush=True)


def synthetic_data(n_train: int = 50_000, n_test: int = 10_000) -> ImageData:
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    lab = lambda n: torch.randint(0, 10, (n,), generator=g)
    return ImageData(img(n_train), lab(n_train), img(n_test), lab(n_test), CIFAR10_CLASSES, "random images (--synthetic)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    p.add_argument("--steps", type=int, default=30, help="timed steps per speed measurement (after 5 warm-up steps)")
    a = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    nb = notebook_code(device)
    TOL, training_step = nb["TOL"], nb["training_step"]
    data = synthetic_data() if a.synthetic else load_cifar10()
    args, cfg = recipe(a.recipe)
    print(f"{speed.hardware_name(device)}, torch {torch.__version__}; {a.recipe} recipe, batch {cfg.batch_size}; data: {data.source}")
    report, lr = Report(), cfg.lr

    eager_cfg = cfg.replace(precision="fp32", compile=False, cuda_graph=False)
    x, y = next(iter(make_batches(data, eager_cfg, device, args.n_classes)[0]))
    torch.manual_seed(0)
    ref = vh.VisionTransformer(args).to(device)
    with torch.no_grad():
        ref_loss = nb["plain_loss"](ref, x, y, cfg).item()

    def fresh(rung_cfg):
        model = copy.deepcopy(ref)
        return model, nb["make_optimizer"](model, rung_cfg)

    def pkg_loss(rung_cfg) -> float:
        step = TrainStep(copy.deepcopy(ref), rung_cfg, device)
        step((x, y), lr)
        return (step.totals[0] / len(x)).item()

    def forever(rung_cfg):
        batches, _, _ = make_batches(data, rung_cfg, device, args.n_classes)
        while True:
            yield from batches

    def rate(fn, bs=cfg.batch_size, steps=a.steps) -> float:
        return speed.images_per_second(fn, bs, steps=steps, warmup=5, device=device)

    def pkg_rate(rung_cfg) -> float:
        torch.manual_seed(0)
        step, _ = speed.make_step_fn(vh.VisionTransformer(args), data, rung_cfg, device)
        return rate(step)

    def speed_check(name, mine, rung_cfg):
        theirs = pkg_rate(rung_cfg)
        report.check(f"{name}: speed", mine >= SPEED_FLOOR[name] * theirs,
                     f"yours {mine:,.0f} images/s, the package's {theirs:,.0f} ({mine / theirs:.2f}x; at least {SPEED_FLOOR[name]}x)")

    # the plain step: any device
    model, opt = fresh(eager_cfg)
    mine = training_step(model, opt, x, y, lr, eager_cfg).item()
    pkg_model = copy.deepcopy(ref)
    TrainStep(pkg_model, eager_cfg, device)((x, y), lr)
    report.close("plain step against the reference loss", mine, ref_loss, TOL["same"])
    gap = max((p - q).abs().max().item() for p, q in zip(model.parameters(), pkg_model.parameters()))
    report.check("plain step against TrainStep: weights after one step", gap <= TOL["same"], f"largest difference {gap:.1e}")
    report.close("plain step against TrainStep: loss", mine, pkg_loss(eager_cfg), TOL["same"])

    if not gpu:
        for name in ("bf16", "compiled", "graphed", "replay GPU time"):
            report.skip(name, "needs a CUDA GPU")
        return report.failed

    # bf16 autocast
    bf16_cfg = eager_cfg.replace(precision="auto")
    model, opt = fresh(bf16_cfg)
    bf16_ref = training_step(model, opt, x, y, lr, bf16_cfg, nb["bf16_loss"]).item()
    report.close("bf16 against float32", bf16_ref, ref_loss, TOL["bf16 vs fp32"])
    report.close("bf16 against TrainStep(precision='auto')", bf16_ref, pkg_loss(bf16_cfg), TOL["same in bf16"])
    it = forever(bf16_cfg)
    speed_check("bf16", rate(lambda: training_step(model, opt, *next(it), lr, bf16_cfg, nb["bf16_loss"])), bf16_cfg)

    # one torch.compile call
    warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*", category=UserWarning)
    compiled_cfg = bf16_cfg.replace(compile=True)
    compiled_loss = torch.compile(nb["bf16_loss"])
    model, opt = fresh(compiled_cfg)
    t0 = time.perf_counter()
    compiled = training_step(model, opt, x, y, lr, compiled_cfg, compiled_loss).item()
    print(f"      (the first compiled step, compiling included: {time.perf_counter() - t0:.1f} s)")
    report.close("compiled against eager bf16", compiled, bf16_ref, TOL["compiled vs eager"])
    it = forever(compiled_cfg)
    speed_check("compiled", rate(lambda: training_step(model, opt, *next(it), lr, compiled_cfg, compiled_loss)), compiled_cfg)

    # the whole step captured by hand
    g_model = copy.deepcopy(ref)
    static_lr = torch.tensor(0.0, device=device)
    g_opt = torch.optim.AdamW(param_groups(g_model, cfg.weight_decay), lr=static_lr, betas=cfg.betas, fused=True, capturable=True)
    static_x, static_y = x.clone(), y.clone()
    g, static_loss = nb["record"](g_model, g_opt, static_x, static_y, static_lr, cfg, compiled_loss)
    moved = max((p - q).abs().max().item() for p, q in zip(g_model.parameters(), ref.parameters()))
    report.check("graph: the warm-up at lr 0 leaves the weights", moved == 0.0, f"largest change {moved:.1e}")

    def graphed_step(bx, by, step_lr):
        static_x.copy_(bx)
        static_y.copy_(by)
        static_lr.fill_(step_lr)
        g.replay()
        return static_loss

    report.close("graphed against eager bf16", graphed_step(x, y, lr).item(), bf16_ref, TOL["graphed vs eager"])
    it = forever(compiled_cfg)
    mine = rate(lambda: graphed_step(*next(it), lr))
    speed_check("graphed", mine, compiled_cfg.replace(cuda_graph=True))
    replay_gpu = nb["gpu_ms"](g.replay)
    replay_wall = 1e3 / rate(g.replay, bs=1, steps=100)
    report.check("graph: a replay back to back takes its GPU time", replay_wall <= 1.15 * replay_gpu,
                 f"GPU time {replay_gpu:.2f} ms (CUDA events), wall {replay_wall:.2f} ms per replay; "
                 f"your whole step {1e3 * cfg.batch_size / mine:.2f} ms")
    print(f"{report.failed} check(s) failed" if report.failed else "all checks passed")
    return report.failed


if __name__ == "__main__":
    raise SystemExit(main())
