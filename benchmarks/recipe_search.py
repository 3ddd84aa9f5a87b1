"""Recipe search on one GPU: measure each batch size's throughput alone, then train variants of the
fast recipe side by side, each for as many epochs as fit in the same time budget when run alone.

    python benchmarks/recipe_search.py --budget 120 --out-dir /tmp/search

The side-by-side phase shares the GPU, so its timings mean nothing; its accuracies are comparable,
because every variant got the same alone-time budget (from the probe), not the same epochs.
Each variant is `benchmarks/train_speed.py --recipes fast` with settings; see VARIANTS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_IMAGES = 45_000  # the training split

# name: (TrainConfig changes, ModelArgs changes), on top of the fast recipe.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "b512": ({"batch_size": 512}, {}),
    "b256": ({"batch_size": 256}, {}),
    "b128": ({"batch_size": 128}, {}),
    "b128_sd_re": ({"batch_size": 128, "erase_prob": 0.25}, {"drop_path": 0.1}),
}


def settings_args(train: dict, model: dict) -> list[str]:
    out = []
    for k, v in train.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    for k, v in model.items():
        out += ["--model-set", f"{k}={json.dumps(v)}"]
    return out


def command(train: dict, model: dict, epochs: int, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "train_speed.py"), "--recipes", "fast", "--epochs", str(epochs),
            "--out", str(out), *settings_args(train, model)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=120.0, help="seconds of training each variant would get alone")
    p.add_argument("--probe-epochs", type=int, default=3, help="epochs of the alone throughput probe per batch size")
    p.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    p.add_argument("--out-dir", type=Path, required=True)
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    a.out_dir.mkdir(parents=True, exist_ok=True)

    # 1. Alone: images/s per variant (the probe's median epoch after the first, which includes compilation).
    speed = {}
    for name in names:
        train, model = VARIANTS[name]
        out = a.out_dir / f"probe_{name}.json"
        subprocess.run(command(train, model, a.probe_epochs, out), check=True)
        speed[name] = json.loads(out.read_text())["rows"][0]["images_per_s"]
        print(f"probe {name}: {speed[name]:,.0f} images/s alone", flush=True)

    # 2. Side by side: epochs that fit the budget alone.
    procs = {}
    for name in names:
        train, model = VARIANTS[name]
        epochs = max(1, round(a.budget * speed[name] / TRAIN_IMAGES))
        log = open(a.out_dir / f"{name}.log", "w")
        procs[name] = (epochs, subprocess.Popen(command(train, model, epochs, a.out_dir / f"{name}.json"),
                                                stdout=log, stderr=subprocess.STDOUT))
        print(f"started {name}: {epochs} epochs", flush=True)
    t0 = time.perf_counter()
    failed = [name for name, (_, proc) in procs.items() if proc.wait() != 0]
    print(f"side-by-side phase: {time.perf_counter() - t0:.0f} s; failed: {failed or 'none'}", flush=True)

    rows = []
    for name in names:
        f = a.out_dir / f"{name}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())["rows"][0]
        rows.append({"variant": name, "settings": r["overrides"], "epochs": r["epochs"], "alone_images_per_s": speed[name],
                     "alone_seconds": r["epochs"] * TRAIN_IMAGES / speed[name], "best_val_acc": r["best_val_acc"],
                     "test_acc": r["test_acc"]})
    rows.sort(key=lambda r: -r["test_acc"])
    print("\n| variant | settings | epochs | images/s alone | ~s alone | best val | test |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {json.dumps(r['settings'])} | {r['epochs']} | {r['alone_images_per_s']:,.0f} | "
              f"{r['alone_seconds']:.0f} | {100 * r['best_val_acc']:.2f}% | {100 * r['test_acc']:.2f}% |")
    (a.out_dir / "search.json").write_text(json.dumps({"budget_s": a.budget, "rows": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
