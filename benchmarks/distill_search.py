"""Distillation search on one GPU, in one command that fits a wall-clock budget (default 9 minutes):

    python benchmarks/distill_search.py --out results/distill      (CIFAR-10 from $VIT_DATA_DIR)

1. teachers: variants of the `teacher` recipe (ResNet-9, full and half width, epochs), each capped at
   --teacher-seconds by a time budget; test accuracy, seconds, and the teacher's forward throughput in
   bf16 and fp32 (what it adds to each student step);
2. the `distilled` recipe (hard, w=0.5, 300 epochs) with the teacher of best validation accuracy;
3. throughput: the `fast` ViT recipe alone for a few epochs (images/s without a teacher);
4. a soft-distillation student for the time left.
Each run's length is capped (a time budget) so the whole search ends inside the budget.
Each result is printed as it finishes and written to OUT/results.json at once; a failing variant is
reported and skipped. A summary table ends the output. `--tiny` runs it all on the CPU with tiny models
and synthetic images, to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_speed import environment, fmt, run  # noqa: E402  (also puts the project on sys.path)

from vit_helpers.cnn import ConvNet  # noqa: E402
from vit_helpers.config import recipe  # noqa: E402
from vit_helpers.data import load_cifar10  # noqa: E402

# name: (CNNArgs changes, TrainConfig changes) on top of the teacher recipe; run in this order.
TEACHERS: dict[str, tuple[dict, dict]] = {
    "half_e30": ({"stem_width": 32, "widths": (64, 128, 256)}, {"epochs": 30}),  # a quarter of the FLOPs
    "resnet9_e24": ({}, {}),
    "resnet9_e16": ({}, {"epochs": 16}),  # not run by default (time)
}
# name: TrainConfig changes on top of the distilled recipe; run in this order while time is left.
STUDENTS: dict[str, dict] = {
    "hard_w0.5": {},
    "soft_w0.5_T2": {"distill": "soft", "distill_temperature": 2.0, "epochs": 150},
}


class Search:
    def __init__(self, out: Path, budget_s: float):
        self.out, self.t0, self.budget = out, time.perf_counter(), budget_s
        self.results: dict = {"teachers": {}, "teacher_forward": {}, "throughput": {}, "students": {}}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def attempt(self, section: str, name: str, fn, need_s: float):
        """Run fn() unless fewer than need_s seconds are left; record its result or its error, never raise."""
        if self.left() < need_s:
            print(f"-- {section}/{name}: skipped, {self.left():.0f} s left (needs {need_s:.0f})", flush=True)
            self.results[section][name] = {"skipped": f"{self.left():.0f} s left"}
            self.save()
            return None
        print(f"== {section}/{name} ({self.left():.0f} s left) ==", flush=True)
        try:
            value = fn()
        except Exception as e:  # one failing variant must not end the search
            traceback.print_exc()
            value = {"error": f"{type(e).__name__}: {e}"}
        self.results[section][name] = value
        self.save()
        return value


def slim(row: dict) -> dict:
    """A row without its bulky history (kept as val-acc per epoch)."""
    out = {k: v for k, v in row.items() if k not in ("history", "config", "model_args")}
    out["val_acc_per_epoch"] = [round(h["val_acc"], 4) for h in row["history"]]
    out["config_changes"] = row.get("overrides")
    return out


def teacher_forward(model: torch.nn.Module, device: torch.device, batch: int = 512, steps: int = 30) -> dict:
    """The teacher's inference images/s on one batch size, bf16 autocast and fp32 (both channels-last)."""
    if device.type != "cuda":
        return {"bf16_images_per_s": 0.0, "fp32_images_per_s": 0.0}
    x = torch.randn(batch, 3, 32, 32, device=device)
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            for _ in range(5):
                model(x)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                model(x)
            torch.cuda.synchronize()
        out[f"{name}_images_per_s"] = batch * steps / (time.perf_counter() - t)
    return out


def synthetic_cifar():
    from vit_helpers.data import ImageData

    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageData(images(1024), torch.randint(0, 10, (1024,), generator=g), images(256),
                     torch.randint(0, 10, (256,), generator=g), classes=tuple(map(str, range(10))), source="synthetic")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole search")
    p.add_argument("--teacher-seconds", type=float, default=40.0, help="most training seconds per teacher variant")
    p.add_argument("--student-epochs", type=int, default=300, help="epochs of the first (hard) student")
    p.add_argument("--teachers", default="half_e30,resnet9_e24", help=f"comma-separated, of {list(TEACHERS)}")
    p.add_argument("--students", default=",".join(STUDENTS), help=f"comma-separated, of {list(STUDENTS)}")
    p.add_argument("--log", action="store_true", help="print each run's epoch table")
    p.add_argument("--tiny", action="store_true", help="on the CPU, tiny models and synthetic images: checks the script")
    a = p.parse_args(argv)
    device = torch.device("cpu" if a.tiny else "cuda")
    s = Search(a.out, 60 * a.minutes - 15)  # 15 s for the summary and the way out
    s.results["environment"] = environment(device, None)
    data = synthetic_cifar() if a.tiny else load_cifar10()
    print(f"data: {data} ({s.left():.0f} s left)", flush=True)
    compile_s = 0 if a.tiny else 45  # the first epoch of a compiled ViT run: torch.compile and graph recording (benchmarks/NOTES.md)

    # 1. teachers
    models = {}
    for name in a.teachers.split(","):
        model_changes, changes = TEACHERS[name]

        def teacher_run():
            minutes = min(a.teacher_seconds, s.left() - 20) / 60
            row, model = run("teacher", data, device, None, a.tiny, None, {**changes, "budget_minutes": minutes}, a.log, model_changes)
            models[name] = model
            row = slim(row)
            row["forward"] = s.results["teacher_forward"][name] = teacher_forward(model, device)
            return row

        r = s.attempt("teachers", name, teacher_run, need_s=30)
        if r and "error" not in r:
            print(f"teacher {name}: test {r['test_acc']:.4f}, val {r['val_acc_per_epoch'][-1]:.4f}, {r['epochs']} epochs in "
                  f"{r['train_seconds']:.1f} s, {r['images_per_s']:,.0f} img/s training; forward alone "
                  f"{r['forward']['bf16_images_per_s']:,.0f} img/s bf16, {r['forward']['fp32_images_per_s']:,.0f} fp32", flush=True)
    ok = {n: r for n, r in s.results["teachers"].items() if "test_acc" in r}
    if not ok:
        print("no teacher trained: stopping")
        return 1
    best = max(ok, key=lambda n: (ok[n]["val_acc_per_epoch"][-1], -ok[n]["train_seconds"]))  # chosen on validation, not test
    teacher = {**ok[best], "recipe": f"teacher/{best}", "model": models[best]}
    s.results["chosen_teacher"] = best
    print(f"chosen teacher: {best} (validation {ok[best]['val_acc_per_epoch'][-1]:.4f})", flush=True)

    def throughput():  # the student's images/s without a teacher (the distilled runs give it with one)
        r = s.attempt("throughput", "fast_no_teacher", lambda: slim(run("fast", data, device, 2 if a.tiny else 4, a.tiny, None, {}, a.log)[0]),
                      need_s=compile_s + 30)
        if r and "error" not in r:
            print(f"fast recipe alone: {r['images_per_s']:,.0f} img/s (first epoch {r['first_epoch_seconds']:.1f} s)", flush=True)

    # 2-4. distilled students, the throughput measurement after the first
    for i, name in enumerate(a.students.split(",")):
        changes = {"epochs": a.student_epochs, **STUDENTS[name]}
        if i == 1:
            throughput()

        def student_run(first=i == 0):
            cap = s.left() - 25 - (compile_s + 40 if first else 0)  # test evaluation, the way out, the throughput run
            changes_capped = {**changes, "budget_minutes": cap / 60}
            return slim(run("distilled", data, device, None, a.tiny, None, changes_capped, a.log, None, teacher)[0])

        r = s.attempt("students", name, student_run, need_s=compile_s + 60)
        if r and "error" not in r:
            print(f"student {name}: test {r['test_acc']:.4f} after {r['epochs']} epochs; {r['train_seconds']:.1f} s "
                  f"(teacher {r['teacher_seconds']:.1f} + student {r['student_seconds']:.1f}), {r['images_per_s']:,.0f} img/s, "
                  f"to 75%: {fmt(r['time_to_75'])} s, to 90%: {fmt(r['time_to_90'])} s", flush=True)

    if len(a.students.split(",")) < 2:
        throughput()
    summary = ["| run | test acc | epochs | train s | images/s | to 75% (s) | to 90% (s) |", "|---|---|---|---|---|---|---|"]
    for section in ("teachers", "throughput", "students"):
        for name, r in s.results[section].items():
            if "test_acc" not in r:
                summary.append(f"| {section}/{name} | {r.get('error') or r.get('skipped')} | | | | | |")
                continue
            summary.append(f"| {section}/{name} | {100 * r['test_acc']:.2f}% | {r['epochs']} | {r['train_seconds']:.1f} | "
                           f"{r['images_per_s']:,.0f} | {fmt(r['time_to_75'])} | {fmt(r['time_to_90'])} |")
    s.results["summary"] = "\n".join(summary)
    s.save()
    print("\n" + s.results["summary"] + f"\n\nteacher forward alone (img/s, batch 512): {json.dumps(s.results['teacher_forward'])}"
          f"\nchosen teacher: {best}; students' train s = teacher + student; {s.results['environment']}"
          f"\ntotal wall {time.perf_counter() - s.t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
