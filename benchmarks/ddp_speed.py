"""Several GPUs: images/s of the fast recipe on 1 and on N GPUs at the same global batch, and the distilled recipe on
N GPUs (its time to 90% validation accuracy and its test accuracy). Writes release/ddp.json and prints a table.

On a machine with 2 GPUs (one command, about 6 to 8 minutes on H200s; CIFAR-10 from $VIT_DATA_DIR or --data DIR):
    python benchmarks/ddp_speed.py
On a CPU, to check the script end to end (gloo, a tiny model on a synthetic image folder, about a minute):
    python benchmarks/ddp_speed.py --tiny --out /tmp/ddp.json
    python benchmarks/ddp_speed.py --dry-run        (only print the commands)

Every run is the command line `python -m vit_helpers.train` started by torchrun in its own processes, exactly as a
user would start it, with its --out JSON read back:
1. fast, 1 GPU, the whole step recorded as one CUDA graph (torchrun with 1 process: no DDP, the plain one-GPU run);
2. fast, N GPUs, the graphed step under DDP (NCCL's all-reduce recorded inside the graph);
3. fast, N GPUs, the compiled eager step under DDP (--set cuda_graph=False: the fallback); --eager-on-1 adds it on 1;
4. distilled (whatever config.RECIPES calls "distilled"), N GPUs, its full recipe, teacher trained first.
images/s is the median over the epochs after the first (which compiles and records), for the global batch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed.py beside this script, also when loaded by path

# Required on the 2-GPU machine (NVLink multicast is off there): every process of every run gets these.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# --tiny: the quick recipes shrunk to a tiny model on a tiny synthetic folder (16x16 images, 5 classes), on the CPU.
TINY = ["--model-set", "image_size=16", "--model-set", "dim=32", "--model-set", "hidden_dim=64", "--model-set", "n_heads=2",
        "--model-set", "n_layers=2", "--set", "train_subset=None", "--set", "val_size=40", "--set", "batch_size=32",
        "--set", "eval_batch_size=40"]


def plan(gpus: int, epochs: int, tiny: bool, eager_on_1: bool, distilled: bool, budget: float | None = None) -> list[dict]:
    """The runs, each {"name", "gpus", "step", "argv"} (argv: the command line's options)."""
    fast, dist = ("quick", "distilled_quick") if tiny else ("fast", "distilled")
    extra = TINY if tiny else []
    fast_argv = ["--recipe", fast, "--epochs", str(epochs), *extra]
    if tiny:  # the quick recipe on a CPU: one eager step, no graph to compare with
        runs = [{"name": f"fast_{n}_eager", "gpus": n, "step": "eager (CPU)", "argv": fast_argv} for n in (1, gpus)]
    else:
        eager = [*fast_argv, "--set", "cuda_graph=False"]
        runs = [{"name": "fast_1_graphed", "gpus": 1, "step": "graphed", "argv": fast_argv},
                {"name": f"fast_{gpus}_graphed", "gpus": gpus, "step": "graphed", "argv": fast_argv},
                {"name": f"fast_{gpus}_eager", "gpus": gpus, "step": "compiled eager", "argv": eager}]
        if eager_on_1:
            runs.append({"name": "fast_1_eager", "gpus": 1, "step": "compiled eager", "argv": eager})
    if distilled:
        shorter = ["--budget-minutes", f"{budget:g}"] if budget else []  # the recipe's own budget otherwise
        runs.append({"name": f"distilled_{gpus}", "gpus": gpus, "step": "graphed", "argv": ["--recipe", dist, *shorter, *extra]})
    return runs


def command(run: dict, work: Path, data: Path | None) -> list[str]:
    argv = [*run["argv"], "--checkpoint-dir", str(work / run["name"]), "--out", str(work / f"{run['name']}.json")]
    if data is not None:
        argv += ["--data", str(data)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run['gpus']}",
            "-m", "vit_helpers.train", *argv]


def environment(tiny: bool) -> dict:
    env = {**os.environ, **NCCL_ENV, "VIT_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    if tiny:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


def steady_images_per_s(history: list[dict]) -> float:
    """Median images/s over the epochs after the first (compiling and recording happen in the first)."""
    return statistics.median(h["images_per_s"] for h in (history[1:] or history))


def summarize(runs: list[dict], outs: dict[str, dict], gpu: str, command_line: str) -> dict:
    """release/ddp.json from the runs' --out JSONs (see HELPERS_COMMON.md for the schema)."""
    rows = []
    for r in runs:
        o = outs.get(r["name"])
        if o is None or "error" in o:  # a failed run is a row that says so, not a stop: the other rows still count
            if r["name"].startswith("fast"):
                rows.append({"gpus": r["gpus"], "step": r["step"], "images_per_s": None, "error": (o or {}).get("error", "did not run")})
            continue
        if o["world_size"] != r["gpus"]:
            raise RuntimeError(f"{r['name']} ran on {o['world_size']} processes, expected {r['gpus']}")
        if r["name"].startswith("fast"):
            rows.append({"gpus": r["gpus"], "images_per_s": steady_images_per_s(o["history"]), "step": r["step"],
                         "epochs": len(o["history"]), "first_epoch_seconds": o["history"][0]["seconds"],
                         "test_acc": o["test_acc"]})
    ok = [x for x in rows if x["images_per_s"]]
    pairs = [(one, many) for one in ok for many in ok if one["gpus"] == 1 and many["gpus"] != 1 and one["step"] == many["step"]]
    first = next(o for o in outs.values() if "error" not in o)
    report = {"gpu": gpu, "n_gpus": max(r["gpus"] for r in runs), "date": time.strftime("%Y-%m-%d"),
              "torch": first["torch"], "command": command_line, "global_batch": first["train_config"]["batch_size"],
              "rows": rows, "scaling": pairs[0][1]["images_per_s"] / pairs[0][0]["images_per_s"] if pairs else None,
              "scaling_step": pairs[0][0]["step"] if pairs else None, "distilled": None}
    from train_speed import time_to  # the benchmark's own definition of "time to X%", one home

    d = next((r for r in runs if r["name"].startswith("distilled")), None)
    if d is not None and "error" in outs.get(d["name"], {"error": "did not run"}):
        report["distilled"] = {"gpus": d["gpus"], "error": outs.get(d["name"], {}).get("error", "did not run")}
    elif d is not None:
        o = outs[d["name"]]
        teacher = (o["teacher"] or {}).get("train_seconds", 0.0)
        report["distilled"] = {"gpus": d["gpus"], "recipe": o["recipe"], "epochs": len(o["history"]), "test_acc": o["test_acc"],
                               "seconds_total": teacher + o["train_seconds"], "seconds_to_90_val": time_to(o["history"], 0.90, teacher),
                               "teacher_seconds": teacher, "teacher_test_acc": (o["teacher"] or {}).get("test_acc"),
                               "images_per_s": steady_images_per_s(o["history"]), "wall_seconds": o["wall_seconds"],
                               "budget_minutes": o["train_config"].get("budget_minutes")}
    return report


def table(report: dict) -> str:
    lines = [f"{report['gpu']}, torch {report['torch']}, global batch {report['global_batch']}, {report['date']}",
             f"{'gpus':>4}  {'step':<15}  {'images/s':>10}", f"{'-' * 4}  {'-' * 15}  {'-' * 10}"]
    lines += [f"{r['gpus']:>4}  {r['step']:<15}  " + (f"{r['images_per_s']:>10,.0f}" if r["images_per_s"] else f"failed: {r['error']}")
              for r in report["rows"]]
    if report["scaling"]:
        lines.append(f"scaling, {report['n_gpus']} GPUs over 1 ({report['scaling_step']} step): {report['scaling']:.2f}x")
    d = report["distilled"]
    if d and "error" in d:
        lines.append(f"distilled on {d['gpus']} GPUs: failed ({d['error']})")
    elif d:
        to90 = "not reached" if d["seconds_to_90_val"] is None else f"{d['seconds_to_90_val']:.1f} s"
        lines.append(f"{d['recipe']} on {d['gpus']} GPUs: test {100 * d['test_acc']:.2f}% in {d['seconds_total']:.1f} s of "
                     f"training (teacher {d['teacher_seconds']:.1f} s included); 90% validation at {to90}")
    return "\n".join(lines)


def tiny_folder(root: Path) -> Path:
    """A small synthetic folder-per-class image tree (each class a colour with noise), as --data reads it."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    palette = torch.randint(0, 256, (5, 3), generator=g).float()
    for split, n in (("train", 240), ("test", 40)):
        y = torch.randint(0, 5, (n,), generator=g)
        x = (palette[y][:, :, None, None] + 40 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 255).to(torch.uint8)
        for i in range(n):
            f = root / split / f"c{int(y[i])}" / f"{i:04d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(f)  # (C,H,W)->(H,W,C)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2, help="GPUs of the multi-GPU rows (default 2)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of each fast-recipe run (the first compiles; default 8)")
    p.add_argument("--eager-on-1", action="store_true", help="also measure the compiled eager step on 1 GPU")
    p.add_argument("--no-distilled", action="store_true", help="skip the distilled recipe's full run")
    p.add_argument("--distilled-budget", type=float, default=None, metavar="MIN",
                   help="the distilled run's budget in minutes on N GPUs (default: the recipe's own, made for one GPU)")
    p.add_argument("--out", type=Path, default=ROOT / "release" / "ddp.json", help="where the JSON goes (default release/ddp.json)")
    p.add_argument("--data", type=Path, default=None, help="a folder-per-class CIFAR-10 copy (default: $VIT_DATA_DIR, "
                   "else torchvision's download)")
    p.add_argument("--tiny", action="store_true", help="on the CPU with gloo: a tiny model on a synthetic folder (checks the script)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and their environment, run nothing")
    a = p.parse_args(argv)
    runs = plan(a.gpus, 2 if a.tiny else a.epochs, a.tiny, a.eager_on_1, not a.no_distilled, a.distilled_budget)
    command_line = "python benchmarks/ddp_speed.py" + (f" {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    with tempfile.TemporaryDirectory(prefix="ddp_speed_") as tmp:
        work = Path(tmp)
        data = tiny_folder(work / "images") if a.tiny else (a.data.resolve() if a.data else None)
        env = environment(a.tiny)
        if a.dry_run:
            print(" ".join(f"{k}={v}" for k, v in NCCL_ENV.items()))
            for r in runs:
                print(" ".join(command(r, work, data)))
            return 0
        if not a.tiny:
            import torch

            if torch.cuda.device_count() < a.gpus:
                print(f"ddp_speed: {a.gpus} GPUs needed, {torch.cuda.device_count()} found (or use --tiny on a CPU)", file=sys.stderr)
                return 2
            gpu = torch.cuda.get_device_name(0)
        else:
            gpu = "CPU (gloo, tiny model: checks the script only)"
        outs, t0 = {}, time.perf_counter()
        for r in runs:
            print(f"== {r['name']} ({time.perf_counter() - t0:.0f} s so far): {' '.join(command(r, work, data)[3:])}", flush=True)
            done = subprocess.run(command(r, work, data), env=env, cwd=ROOT)  # relative paths mean what they do here
            if done.returncode != 0:  # recorded, and the next run goes on: one command on a lent GPU, no second try
                print(f"ddp_speed: {r['name']} failed (exit status {done.returncode}); see its output above", file=sys.stderr)
                outs[r["name"]] = {"error": f"exit status {done.returncode}"}
                continue
            outs[r["name"]] = json.loads((work / f"{r['name']}.json").read_text())
        if all("error" in o for o in outs.values()):
            print("ddp_speed: every run failed; nothing written", file=sys.stderr)
            return 1
    report = summarize(runs, outs, gpu, command_line)
    report["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print("\n" + table(report) + f"\n(wrote {a.out}; {report['seconds']:.0f} s in all)")
    return 1 if any("error" in o for o in outs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
