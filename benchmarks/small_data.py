"""The small-data grid of notebook 10: CNN, ViT, distilled ViT and ViT + SPT + LSA at five training-set sizes.

On a GPU:   python benchmarks/small_data.py --out release/small_data.json --max-seconds 540
            (run it again with the same --out until it prints "grid complete": finished points are skipped)
            Several processes may share one GPU, each with its own part of the grid: --shard 0/3, 1/3, 2/3 at once.
On a CPU:   python benchmarks/small_data.py --quick --out /tmp/grid.json   (tiny subsets, the small models)

Each finished point is written at once to --out (under a lock, atomically), so a command stopped by its time limit
loses only the points it was training; --max-seconds stops before starting a point that the last points' times say
would not end in time. The protocol is `vit_helpers.small_data`'s docstring. The file records the GPU, versions and
settings. The ViTs' small kernels leave an H200 half idle, so a few processes sharing it finish the grid sooner; the
seconds of points trained side by side are then not comparable with one process alone (the file says how many ran).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_helpers import small_data as sd  # noqa: E402
from vit_helpers.data import load_cifar10  # noqa: E402
from vit_helpers.speed import hardware_name  # noqa: E402


def write_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def load_grid(path: Path, settings: dict) -> dict:
    """The grid file, or a new one; refuses a file made with other settings (its points would not compare)."""
    if not path.is_file():
        return {"settings": settings, "runs": []}
    grid = json.loads(path.read_text())
    if grid.get("settings") != settings:
        raise SystemExit(f"{path} holds a grid with other settings ({grid.get('settings')}); these are {settings}. "
                         f"Use another --out, or delete the file to start over.")
    return grid


def add_record(path: Path, settings: dict, record: dict) -> dict:
    """Append one point to the grid file under an exclusive lock (other shards may be writing too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        grid = load_grid(path, settings)
        grid["runs"].append(record)
        grid.update(torch=torch.__version__, python=platform.python_version(), date=time.strftime("%Y-%m-%d"))
        write_atomic(path, grid)
    return grid


def groups(points: list[sd.Point]) -> list[list[sd.Point]]:
    """The points by (size, seed), in plan order: a distilled point and the CNN it learns from stay together."""
    by: dict[tuple[int, int], list[sd.Point]] = {}
    for pt in points:
        by.setdefault((pt.size, pt.seed), []).append(pt)
    return list(by.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the grid's JSON file (created, or continued)")
    p.add_argument("--quick", action="store_true", help="tiny subsets and the quick recipes (CPU, minutes)")
    p.add_argument("--seeds-small", type=int, default=2, help="seeds at the two smallest sizes (default 2)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop before a point that would end after this")
    p.add_argument("--only", default=None, help="comma-separated point keys (model/size/seed) to run, e.g. vit/2500/0")
    p.add_argument("--shard", default="0/1", help="K/N: run the K-th of N parts of the grid (N processes at once)")
    a = p.parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = {"quick": a.quick, "vit_epochs": sd.QUICK_VIT_EPOCHS if a.quick else sd.VIT_EPOCHS,
                "sizes": list(sd.QUICK_SIZES if a.quick else sd.SIZES)}
    grid = load_grid(a.out, settings)
    done = {f"{r['model']}/{r['size']}/{r['seed']}" for r in grid["runs"]}
    todo = [pt for pt in sd.plan(a.quick, a.seeds_small) if pt.key not in done]
    if a.only:
        wanted = set(a.only.split(","))
        todo = [pt for pt in todo if pt.key in wanted]
    k, n = (int(v) for v in a.shard.split("/"))
    if not 0 <= k < n:
        raise SystemExit(f"--shard K/N needs 0 <= K < N, got {a.shard}")
    todo = [pt for i, group in enumerate(groups(todo)) if i % n == k for pt in group]
    print(f"{len(done)} points done, {len(todo)} to run on {hardware_name(device)}", flush=True)
    data = load_cifar10()
    teachers: dict[tuple[int, int], torch.nn.Module] = {}  # (size, seed) -> the CNN trained on that subset
    last_seconds: dict[str, float] = {}
    for pt in todo:
        needs_teacher = pt.model.startswith("distilled") and (pt.size, pt.seed) not in teachers
        guess = last_seconds.get(pt.model, 0.0) + (last_seconds.get("cnn", 0.0) if needs_teacher else 0.0)
        if a.max_seconds is not None and time.perf_counter() - start + 1.2 * guess > a.max_seconds:
            print(f"stopping before {pt.key}: about {guess:.0f} s more would pass --max-seconds {a.max_seconds:.0f}")
            break
        teacher = None
        if pt.model.startswith("distilled"):
            if (pt.size, pt.seed) not in teachers:  # its CNN finished in an earlier command: trained again, the same way
                print(f"training the CNN of {pt.size} images, seed {pt.seed}, again as {pt.key}'s teacher", flush=True)
                teachers[(pt.size, pt.seed)] = sd.run_point(sd.Point("cnn", pt.size, pt.seed), data, device, quick=a.quick)[1]
            teacher = teachers[(pt.size, pt.seed)]
        record, model = sd.run_point(pt, data, device, quick=a.quick, teacher=teacher)
        if pt.model == "cnn":
            teachers[(pt.size, pt.seed)] = model
        last_seconds[pt.model] = record["wall_seconds"]
        record.update(gpu=hardware_name(device), processes_sharing_the_device=n)
        grid = add_record(a.out, settings, record)
        print(f"{pt.key:>24}: test {100 * record['test_acc']:.2f}%  ({record['wall_seconds']:.1f} s, "
              f"{record['epochs']} epochs x {record['passes_per_epoch']} passes)", flush=True)
    finished = {f"{r['model']}/{r['size']}/{r['seed']}" for r in load_grid(a.out, settings)["runs"]}  # (all shards')
    remaining = [pt for pt in sd.plan(a.quick, a.seeds_small) if pt.key not in finished]
    print("grid complete" if not remaining else f"{len(remaining)} points still to run: run again with the same --out")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
