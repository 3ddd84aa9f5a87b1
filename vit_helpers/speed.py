"""Measuring training speed (notebook 06): images per second of a step, where a step's time goes, the matrix-multiply
rate, model FLOPs utilisation (MFU), and the speed ladder a release records.

MFU is PaLM's measure (Chowdhery et al., 2022, arXiv:2204.02311): the FLOPs the model needs per second of training,
divided by what the hardware can do; here the denominator is the *measured* rate of a large matrix multiply, not a
datasheet peak.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .config import ModelArgs, TrainConfig
from .data import ImageData
from .model import flops_per_image


def synchronize(device: torch.device | str | None) -> None:
    """Wait until the GPU has finished all queued work (a no-op on the CPU, which runs each operation as it is called)."""
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step: Callable[[], object], batch_size: int, *, steps: int = 20, warmup: int = 3,
                      device: torch.device | str | None = None) -> float:
    """Images per second of `step()`, one training step on `batch_size` images: `warmup` untimed calls (compiling,
    recording, allocating), then `steps` timed ones. The GPU runs behind the CPU, so the clock is read only after
    the GPU has finished (`synchronize`), before and after."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - t0)


def make_step_fn(model: nn.Module, data: ImageData, cfg: TrainConfig, device: torch.device | str) -> tuple[Callable[[], None], object]:
    """(step, batches): `step()` trains `model` on the next batch exactly as `train()` would with `cfg` (the same
    batches from the same split, the same step object from `make_step`), epoch after epoch, at a fixed learning rate."""
    from .train import lr_at, make_batches, make_step

    device = torch.device(device)
    model.to(device).train()
    batches, _, _ = make_batches(data, cfg, device, model.args.n_classes)
    if len(batches) == 0:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training split; lower it or raise train_subset")
    step = make_step(model, cfg, device, batches)
    lr = lr_at(len(batches), cfg, len(batches))  # the rate after one epoch of warmup: a typical step

    def forever() -> Iterator:
        while True:
            yield from step.epoch(batches)  # a GraphedStep's epoch yields the draws its graph makes each batch from

    it = forever()
    return (lambda: step(next(it), lr)), batches


def median_seconds(fn: Callable[[], object], *, device: torch.device | str | None = None, reps: int = 10,
                   warmup: int = 3) -> float:
    """The median time of one call of `fn()`, in seconds, over `reps` calls after `warmup` untimed ones; the GPU is
    waited for (`synchronize`) before and after each call, so each time is that call's whole work."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_tflops(m: int, k: int, n: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  reps: int = 10, warmup: int = 3) -> float:
    """Measured rate, in TFLOP/s, of (m, k) @ (k, n) in `dtype` (2mkn FLOPs per product), the median of `reps`."""
    device = torch.device(device)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / median_seconds(lambda: a @ b, device=device, reps=reps, warmup=warmup) / 1e12


def copy_gbps(n_bytes: int = 2**28, *, device: torch.device | str = "cpu", reps: int = 10) -> float:
    """Measured memory bandwidth, in GB/s: a copy of `n_bytes` reads and writes each byte once (median of `reps`)."""
    device = torch.device(device)
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * n_bytes / median_seconds(lambda: dst.copy_(src), device=device, reps=reps, warmup=1) / 1e9


def train_flops_per_image(args: ModelArgs) -> float:
    """FLOPs of one training image: the forward pass, and a backward pass that costs about twice as much
    (a gradient for each layer's input and one for its weights)."""
    return 3.0 * flops_per_image(args, training=True)


def mfu(images_per_s: float, flops_per_train_image: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: the share of the peak rate that the model's own arithmetic uses."""
    if not peak_tflops > 0:
        raise ValueError(f"peak_tflops must be positive, got {peak_tflops!r}")
    return images_per_s * flops_per_train_image / (peak_tflops * 1e12)


@dataclass
class StepProfile:
    """What `profile_step` saw, per step: the work items the device ran, their summed time, and the wall time."""

    device: str
    items: int  # CUDA kernels (and copies) on a GPU; operators the CPU ran on a CPU
    busy_ms: float  # summed time of those items
    wall_ms: float  # wall time, with the profiler's own overhead included
    top: list[tuple[str, int, float]] = field(default_factory=list)  # (name, count per step, ms per step), costliest first

    def table(self, rows: int = 8, width: int = 60) -> str:
        what = "kernel" if self.device == "cuda" else "operator"
        lines = [f"{what:<{width}}  {'per step':>8}  {'ms/step':>8}  {'share':>6}"]
        for name, count, ms in self.top[:rows]:
            name = name if len(name) <= width else name[: width - 3] + "..."
            lines.append(f"{name:<{width}}  {count:8.0f}  {ms:8.3f}  {ms / self.busy_ms:6.1%}")
        return "\n".join(lines)


def profile_step(step: Callable[[], object], *, device: torch.device | str = "cpu", steps: int = 3) -> StepProfile:
    """Profile `steps` calls of `step()` (after one untimed call) with torch.profiler.

    On a GPU it counts the kernels the GPU ran and sums their time ("busy"); on a CPU, the operators at the top of
    the call tree (each one a trip through PyTorch's dispatcher, the CPU's counterpart of a kernel launch)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    # Kineto, the profiler's engine, logs each start and stop on stderr (a red box in a notebook); 6: errors only.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    device = torch.device(device)
    gpu = device.type == "cuda"
    step()
    synchronize(device)
    with warnings.catch_warnings():
        # On a GPU, torch 2.11 warns at the end that a profiling *cycle* keeps only its own events; with no schedule
        # there is one cycle, so nothing is lost, and the warning would be a red box in the notebook.
        warnings.filterwarnings("ignore", message=".*Profiler clears events at the end of each cycle.*")
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            wall = time.perf_counter() - t0
    events = prof.events()
    if gpu:
        items = [(e.name, e.time_range.elapsed_us()) for e in events if e.device_type == DeviceType.CUDA]
    else:  # operators not called by another operator (forward, backward and optimizer); their time includes their children's
        top_level = lambda e: e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")
        items = [(e.name, e.cpu_time) for e in events if e.name.startswith("aten::") and top_level(e)]
    counts, micros = Counter(), Counter()
    for name, us in items:
        counts[name] += 1
        micros[name] += us
    top = sorted(((name, counts[name] / steps, micros[name] / steps / 1e3) for name in counts), key=lambda r: -r[2])
    return StepProfile(device.type, round(len(items) / steps), sum(micros.values()) / steps / 1e3, wall / steps * 1e3, top)


def hardware_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's with its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass
class SpeedLadder:
    """Images per second of the same model and data, one change at a time: the rows notebook 06 measures and a
    release keeps in release/speed_ladder.json."""

    gpu: str  # where it was measured (a CPU's name in quick mode)
    date: str
    torch: str
    model: str  # which model, in words
    batch_size: int
    rows: list[dict] = field(default_factory=list)  # {"step": what changed, "images_per_s": measured}
    train_flops_per_image: float | None = None  # for the MFU column
    matmul_tflops: float | None = None  # the measured peak, for the MFU column

    @classmethod
    def here(cls, device: torch.device | str, model: str, batch_size: int) -> "SpeedLadder":
        return cls(hardware_name(device), time.strftime("%Y-%m-%d"), torch.__version__, model, batch_size)

    def add(self, step: str, images_per_s: float) -> None:
        if not (isinstance(images_per_s, (int, float)) and math.isfinite(images_per_s) and images_per_s > 0):
            raise ValueError(f"images_per_s must be a positive finite number, got {images_per_s!r} for {step!r}")
        self.rows.append({"step": step, "images_per_s": float(images_per_s)})

    def table(self) -> str:
        """One line per row: images/s, the speed-up over the first row, and MFU where the peak is known."""
        with_mfu = bool(self.train_flops_per_image and self.matmul_tflops)
        width = max([len(r["step"]) for r in self.rows] + [4])
        lines = [f"{'step':<{width}}  {'images/s':>9}  {'speed-up':>8}" + ("  {:>6}".format("MFU") if with_mfu else "")]
        for r in self.rows:
            line = f"{r['step']:<{width}}  {r['images_per_s']:9,.0f}  {r['images_per_s'] / self.rows[0]['images_per_s']:7.1f}x"
            if with_mfu:
                line += f"  {mfu(r['images_per_s'], self.train_flops_per_image, self.matmul_tflops):6.1%}"
            lines.append(line)
        return "\n".join(lines)

    def plot(self, ax, title: str | None = None, yours: dict[str, float] | None = None):
        """A horizontal bar per row, the first at the top, on a log scale (the rungs span two orders of magnitude,
        and equal factors look equal). yours: the learner's images/s by row name, drawn beside the package's."""
        rows = self.rows[::-1]
        mine = [(i, yours[r["step"]]) for i, r in enumerate(rows) if r["step"] in (yours or {})]
        height = 0.4 if mine else 0.8
        shift = height / 2 if mine else 0.0  # the package's bar above yours in each row
        values = [r["images_per_s"] for r in rows]
        bars = ax.barh([i + shift for i in range(len(rows))], values, height=height, color="tab:blue", label="the package's step")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
        if mine:
            bars = ax.barh([i - shift for i, _ in mine], [v for _, v in mine], height=height, color="tab:orange", label="your step")
            ax.bar_label(bars, labels=[f"{v:,.0f}" for _, v in mine], padding=3)
            ax.legend(loc="upper right")  # the first rung, at the top, is the slowest
        everything = values + [v for _, v in mine]
        ax.set_xscale("log")
        ax.set_xlim(min(everything) / 2, max(everything) * 4)  # bars start at the left edge; room for their labels
        ax.set_yticks(range(len(rows)), [r["step"] for r in rows])
        ax.set_xlabel("training images per second (log scale)")
        ax.set_title(title or f"{self.model}, batch {self.batch_size}: {self.gpu}, {self.date}")
        return ax

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON (through a temporary file, so an interrupted write never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpeedLadder":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            ladder = cls(**d)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path} is not a speed ladder written by SpeedLadder.save ({type(e).__name__}: {e}); "
                             "write it again by running notebook 06 on a GPU") from e
        if not ladder.rows or any(set(r) != {"step", "images_per_s"} for r in ladder.rows):
            raise ValueError(f"{path} has no rows, or rows without exactly 'step' and 'images_per_s'")
        return ladder
