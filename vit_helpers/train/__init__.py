"""Training: one readable `train()` loop, `evaluate()`, and the learning-rate schedule.

The loop calls a training step once per batch. The step has one interface, `step(batch, lr)`, and lives in
`vit_helpers.step` (`TrainStep`, the plain eager step that notebook 05 writes by hand); `vit_helpers.graphed`
records that same step, batch making included, as one CUDA graph; `make_step` picks one. `vit_helpers.compiling`
compiles them (and undoes it). The recipes live in `vit_helpers.config`; the training state on disk belongs to
`vit_helpers.checkpoint`. `python -m vit_helpers.train` runs the command line (`__main__.py` beside this file).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint as ckpt_io
from .. import distributed
from ..compile_cache import CompileCache
from ..compiling import compiled
from ..config import RECIPES, TrainConfig, recipe  # noqa: F401  (re-exported: the notebooks import them from here)
from ..data import GPUBatches, ImageData, classic_loader, train_val_split
from ..graphed import GraphedStep
from ..progress import EpochLog  # the table and the progress display (an HTML display in Jupyter, tqdm in a terminal)
from ..step import (TrainStep, autocast_settings, check_teacher, freeze_teacher, make_optimizer,  # noqa: F401
                   param_groups, set_lr, teacher_loss)  # (re-exported: the notebooks and tests import them from here)


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def subset_indices(train_idx: torch.Tensor, labels: torch.Tensor, n: int, balanced: bool = False) -> torch.Tensor:
    """The first `n` of the (randomly ordered) training indices; `balanced`: the first n / n_classes of each class,
    kept in the split's order. Smaller subsets are inside larger ones, so a curve over sizes only adds images."""
    if n > len(train_idx):
        raise ValueError(f"train_subset={n} is more than the {len(train_idx)} training images")
    if not balanced:
        return train_idx[:n]
    y = labels[train_idx]
    classes = torch.unique(labels)
    if n % len(classes):
        raise ValueError(f"a balanced subset of {n} images can't split evenly among {len(classes)} classes; "
                         f"choose a multiple of {len(classes)}")
    per_class = n // len(classes)
    rank_in_class = torch.zeros_like(y)  # how many images of the same class come before each one in the split's order
    for c in classes:
        where = (y == c).nonzero().squeeze(1)
        if len(where) < per_class:
            raise ValueError(f"a balanced subset of {n} images needs {per_class} of class {int(c)}, but the training "
                             f"split has {len(where)}; choose a smaller train_subset")
        rank_in_class[where] = torch.arange(len(where))
    return train_idx[rank_in_class < per_class]


def make_batches(data: ImageData, cfg: TrainConfig, device: torch.device, n_classes: int):
    """(train batches, validation batches, number of training images) for a config. With several processes
    (`vit_helpers.distributed`), this rank's share of every training batch and its shard of the validation images."""
    distributed.check_batch_size(cfg.batch_size)
    train_idx, val_idx = train_val_split(len(data.train_x), cfg.val_size, cfg.seed)
    if cfg.train_subset is not None:
        train_idx = subset_indices(train_idx, data.train_y, cfg.train_subset, cfg.balanced_subset)
    train_idx = train_idx.repeat(cfg.subset_repeat)  # each pass is shuffled with the rest of the epoch
    tx, ty = data.train_x[train_idx], data.train_y[train_idx]
    vx, vy = data.train_x[val_idx], data.train_y[val_idx]
    rank, world = distributed.rank(), distributed.world_size()
    if cfg.pipeline == "classic":
        if world > 1:
            raise ValueError("the classic pipeline (the article's DataLoader) runs in one process; train on several "
                             "with pipeline='gpu' (e.g. the fast recipe)")
        train = classic_loader(tx, ty, cfg.batch_size, True, cfg.num_workers, cfg.seed)
        val = classic_loader(vx, vy, cfg.eval_batch_size, False, cfg.num_workers)
    else:
        train = GPUBatches(tx, ty, cfg.batch_size, device=device, shuffle=True, drop_last=True, policy=cfg.augment,
                           mix_prob=cfg.mix_prob, n_classes=n_classes, seed=cfg.seed, erase_prob=cfg.erase_prob,
                           repeats=cfg.repeats, compile=cfg.compile, rank=rank, world_size=world)
        val = GPUBatches(vx[rank::world], vy[rank::world], cfg.eval_batch_size, device=device)  # disjoint shards
    if len(train) == 0:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the {len(tx)} training images; lower it")
    return train, val, len(tx)


def make_step(model: nn.Module, cfg: TrainConfig, device: torch.device, batches, teacher: nn.Module | None = None):
    """The whole-step CUDA graph where the config asks for it and the device allows it, else the plain step."""
    dropped = [f"{k}" for k in ("compile", "cuda_graph") if getattr(cfg, k)] + (["precision='auto'"] if cfg.precision == "auto" else [])
    if device.type != "cuda" and dropped:
        warnings.warn(f"training on the {device.type.upper()}: {', '.join(dropped)} need a CUDA GPU and are dropped "
                      "(this run uses float32, eager, one step at a time)", stacklevel=3)
    if cfg.compile and device.type == "cuda" and cfg.precision == "auto":
        # Under autocast the matrix multiplies run in bf16/fp16, so inductor's hint to enable TF32 for float32 ones
        # does not apply; left on, it is the one warning every compiled run would print.
        warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*", category=UserWarning)
    if cfg.cuda_graph and device.type == "cuda":
        if autocast_settings(cfg.precision, device)[1]:
            warnings.warn("this GPU has no bfloat16: float16 needs a GradScaler, which waits for the GPU every step, "
                          "so the whole-step CUDA graph is dropped (the plain step runs instead)", stacklevel=3)
        else:
            return GraphedStep(model, cfg, device, batches, teacher=teacher)
    return TrainStep(model, cfg, device, teacher=teacher)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device | str | None = None, precision: str = "fp32",
             across_ranks: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` over an iterable of (inputs, int labels).
    across_ranks: each of several processes holds one shard of the images; the sums are added over all of them."""
    device = torch.device(device or next(model.parameters()).device)
    amp_dtype, _ = autocast_settings(precision, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
        n += len(y)
    model.train(was_training)
    sums = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(n), device=device)])
    if across_ranks:
        distributed.all_reduce_sum(sums)
    loss_sum, correct, n = sums.tolist()
    return loss_sum / n, correct / n


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000, device=None, flip_tta: bool = False) -> torch.Tensor:
    """Logits (N, n_classes), float32 on the CPU, for raw (not normalised) images (N, C, H, W); `flip_tta`
    averages with the mirror image.

    images: uint8 in 0..255 (as stored), or floating point in [0, 1] (e.g. torchvision's ToTensor); both are scaled
    and normalised the same way. Floating-point images outside [0, 1] are refused: they are either 0..255 values
    (pass them as uint8) or already normalised (call the model on them directly).
    """
    from ..data import normalize, to_model_input

    if images.is_floating_point():
        lo, hi = (float(images.min()), float(images.max())) if images.numel() else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise ValueError(f"predict() takes uint8 images (0..255) or float images in [0, 1]; these {images.dtype} "
                             f"images range over [{lo:.3g}, {hi:.3g}]. Pass 0..255 values as uint8 "
                             f"(images.round().to(torch.uint8)); for images already normalised, call model(x) directly.")
        prepare = lambda x: normalize(x.float())
    elif images.dtype == torch.uint8:
        prepare = to_model_input
    else:
        raise TypeError(f"predict() takes uint8 images (0..255) or float images in [0, 1], got dtype {images.dtype}")
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = prepare(images[i:i + batch_size].to(device))
        logits = model(x).float()
        if flip_tta:
            logits = (logits.softmax(-1) + model(x.flip(-1)).float().softmax(-1)).div(2).log()
        out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out)


class NonFiniteLossError(FloatingPointError):
    pass


@dataclass
class TrainResult:
    """What `train()` returns. `history` holds one record per epoch: epoch, train_loss and train_acc (over the epoch's
    augmented batches), val_loss, val_acc, lr (the epoch's last step's), seconds (that epoch's training time: its
    batches and steps, validation excluded; not a running total), eval_seconds (its validation) and images_per_s.
    `train_seconds`, the run's training time, is the sum of `seconds`; the log table's time column prints it so far."""

    history: list[dict] = field(default_factory=list)  # one record per epoch (the keys above)
    best_val_acc: float = 0.0
    best_epoch: int = 0
    epochs: int = 0  # the run's length: cfg.epochs, or what budget_minutes chose
    checkpoint_dir: Path | None = None

    @property
    def train_seconds(self) -> float:
        return sum(h["seconds"] for h in self.history)

    def add(self, record: dict) -> bool:
        """Append an epoch's record; True when its validation accuracy is the best so far."""
        self.history.append(record)
        improved = record["val_acc"] > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = record["val_acc"], record["epoch"]
        return improved


def train(model: nn.Module, data: ImageData, cfg: TrainConfig, *, teacher: nn.Module | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False, device: torch.device | str | None = None,
          progress: bool | None = None, on_epoch_end=None) -> TrainResult:
    """Train `model` on `data` with `cfg`; returns the per-epoch history (`TrainResult` says what each record holds).

    teacher: a trained model to distill from (needs cfg.distill 'hard' or 'soft'); put in eval mode and never updated.
    With cfg.ema_decay, the validation, best.pt and the model at the end are the weights' moving average.
    checkpoint_dir: where best.pt (best validation accuracy) and last.pt (to resume from) go, or None.
    resume: continue from checkpoint_dir/last.pt exactly (refused if the model, config, data, teacher or number of
        processes differ).
    Under torchrun (`vit_helpers.distributed.setup()` first), every process calls this: one model, DDP; cfg.batch_size
    is the global batch, split among them; rank 0 alone logs and writes.
    progress: show a progress bar (default: on, except in headless runs; see `show_progress_bar`).
    on_epoch_end: optional callback(epoch_record) after each epoch.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    n_classes = model.args.n_classes if hasattr(model, "args") else int(data.train_y.max()) + 1
    teacher = freeze_teacher(teacher, cfg, device)
    check_teacher(teacher, data, n_classes, device)
    train_batches, val_batches, _ = make_batches(data, cfg, device, n_classes)
    spe = len(train_batches)  # steps per epoch
    net = distributed.wrap(model, device, graphed=cfg.cuda_graph)  # DDP with several processes, else the model itself
    step = make_step(net, cfg, device, train_batches, teacher)
    run = ckpt_io.TrainingRun(checkpoint_dir, model, cfg, data, step, train_batches, device, teacher)  # (None: no files)
    result = TrainResult(epochs=cfg.epochs, checkpoint_dir=run.directory)
    if resume:
        run.resume(result)
    pace, cache = Pace(spe, cfg), CompileCache.for_run(model, cfg, device)  # (torch.compile's work from an earlier run)
    with compiled(step, cfg, device) as forward, EpochLog(cfg, spe, result, show_progress_bar(progress)) as log:  # (see compiling.py)
        log.note(cache.load())
        while (epoch := len(result.history)) < result.epochs:  # (a budget fixes result.epochs after the first epoch)
            planned = cfg.replace(epochs=result.epochs, budget_minutes=None)  # the schedule runs over the chosen length
            step.totals.zero_()
            pace.start(epoch, device)
            for i, batch in enumerate(step.epoch(train_batches)):
                lr = lr_at(epoch * spe + i, planned, spe)
                step(batch, lr)
                pace.tick(i, device)
                log.bar.update(1)
            seconds = pace.stop(device)
            averages = training_averages(step.totals, spe * cfg.batch_size, distilling=teacher is not None)
            check_finite(averages["train_loss"], model, epoch, cfg, run)
            t1 = time.perf_counter()
            val_loss, val_acc = evaluate(forward, val_batches, device, cfg.precision, across_ranks=True)
            record = {"epoch": epoch + 1, **averages, "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": seconds,
                      "eval_seconds": time.perf_counter() - t1, "images_per_s": spe * cfg.batch_size / seconds}
            improved = result.add(record)
            if epoch == 0 and cfg.budget_minutes:
                result.epochs = distributed.broadcast_int(pace.fit_budget(result, log))  # rank 0's clock decides
            log.epoch(record)
            log.note(cache.save())  # once, after the first epoch: the step, augmentation and evaluation are compiled by now
            run.save(result, improved, (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == result.epochs)
            if on_epoch_end is not None:
                on_epoch_end(record)
    if step.ema is not None:  # the model ends with what was validated and kept as best.pt: the average
        model.load_state_dict(step.ema.state_dict())
    return result


def training_averages(totals: torch.Tensor, n_images: int, distilling: bool) -> dict[str, float]:
    """An epoch's training loss and accuracy, from the step's sums (added over all processes); when distilling, also
    the loss's two terms before weighting: train_labels_loss (cross-entropy with the labels, weighted 1 - w) and
    train_teacher_loss (the teacher's term, weighted w), so that train_loss = (1 - w) * the first + w * the second."""
    loss_sum, correct, labels_sum, teacher_sum = distributed.all_reduce_sum(totals.clone()).tolist()
    averages = {"train_loss": loss_sum / n_images, "train_acc": correct / n_images}
    if distilling:
        averages |= {"train_labels_loss": labels_sum / n_images, "train_teacher_loss": teacher_sum / n_images}
    return averages


def check_finite(train_loss: float, model: nn.Module, epoch: int, cfg: TrainConfig, run: ckpt_io.TrainingRun) -> None:
    """After each epoch: a non-finite loss or weight stops the run before it writes anything."""
    if not (math.isfinite(train_loss) and all(bool(p.isfinite().all()) for p in model.parameters())):
        raise NonFiniteLossError(f"the training loss or the weights became non-finite in epoch {epoch + 1} "
                                 f"(loss {train_loss}); stopped before writing anything, so {run.kept()}. "
                                 f"Lower the learning rate (now {cfg.lr}), keep grad_clip on, or use precision='fp32'.")


def load_or_train(model: nn.Module, data: ImageData, cfg: TrainConfig, checkpoint_dir: str | Path, *,
                  teacher: nn.Module | None = None, device: torch.device | str | None = None, progress: bool | None = None,
                  retrain: bool = False) -> TrainResult:
    """What the notebooks call: load the finished run of these configs from `checkpoint_dir`, resume an
    unfinished one, or train from scratch (`retrain=True`: always from scratch, replacing what is there)."""
    last = Path(checkpoint_dir) / "last.pt"
    kw = dict(teacher=teacher, checkpoint_dir=checkpoint_dir, device=device, progress=progress)
    if retrain or not last.is_file():
        return train(model, data, cfg, **kw)
    state = ckpt_io.load_finished_run(last, model, cfg, data, teacher)  # refuses a run of other configs, data or teacher
    if state is None:
        print(f"resuming the unfinished run in {ckpt_io.shown(checkpoint_dir)}")
        return train(model, data, cfg, resume=True, **kw)
    print(f"loaded the finished run from {ckpt_io.shown(checkpoint_dir)} (retrain=True trains again)")
    return TrainResult(state["history"], state["best_val_acc"], state["best_epoch"], state["epochs"], Path(checkpoint_dir))


def show_progress_bar(progress: bool | None = None) -> bool:
    """Whether train() shows a progress bar: `progress` if given, else yes except in headless runs (VIT_PROGRESS=0: CI,
    the stored notebooks), which log a table only; with several processes, only on rank 0."""
    if progress is None:
        progress = os.environ.get("VIT_PROGRESS", "1").strip() != "0"
    return progress and distributed.is_main()


class Pace:
    """Times each epoch, and in the first one the steady seconds per step, once compiling and graph recording
    are over: that fixes the length of a run with a time budget, and warns before a run that would take hours."""

    WARN_SECONDS = 3600

    def __init__(self, steps_per_epoch: int, cfg: TrainConfig):
        self.spe, self.cfg = steps_per_epoch, cfg
        self.a = min(2, steps_per_epoch - 1)  # steps 0..a include compiling and recording
        self.b = min(self.a + 10, steps_per_epoch - 1)  # enough steps for a first estimate
        self.marks: dict[int, float] = {}
        self.first = False

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the GPU runs behind the CPU: wait for it before reading the clock
        return time.perf_counter()

    def start(self, epoch: int, device: torch.device) -> None:
        self.first = epoch == 0
        self.t0 = self._now(device)

    def tick(self, i: int, device: torch.device) -> None:
        if self.first and i in (self.a, self.b) and self.b > self.a:
            self.marks[i] = self._now(device)
            if i == self.b and not self.cfg.budget_minutes and self.estimate(self.cfg.epochs) > self.WARN_SECONDS:
                warnings.warn(f"at the measured {self.images_per_s():,.0f} images/s on the {'GPU' if device.type == 'cuda' else 'CPU'}, "
                              f"{self.cfg.epochs} epochs will take about {self.estimate(self.cfg.epochs) / 3600:.1f} hours. "
                              "Set budget_minutes to fit the run into a time you choose (or, without a GPU, use "
                              "VIT_MODE=quick)", stacklevel=3)

    def stop(self, device: torch.device) -> float:
        end = self._now(device)
        if self.first:
            self.marks[self.spe - 1] = end  # after the epoch's last step, as tick(i) reads the clock after step i
        return end - self.t0

    def step_seconds(self) -> float:
        """Steady seconds per step: between the earliest and the latest reading, over the steps run between them (an
        epoch too short for two readings: its whole time over its steps, compiling included)."""
        (i, t_i), (j, t_j) = min(self.marks.items()), max(self.marks.items())
        return (t_j - t_i) / (j - i) if j > i else (t_j - self.t0) / (j + 1)

    def images_per_s(self) -> float:
        return self.cfg.batch_size / self.step_seconds()

    def estimate(self, epochs: int) -> float:
        """Seconds for `epochs` epochs at the steady pace, evaluation included (a forward pass costs about a third of a step)."""
        per_epoch = self.step_seconds() * (self.spe + self.cfg.val_size / self.cfg.batch_size / 3)
        return per_epoch * epochs

    def fit_budget(self, result: TrainResult, log: "EpochLog") -> int:
        """After the first epoch: the most epochs (up to cfg.epochs) that fit into budget_minutes."""
        first = result.history[0]["seconds"] + result.history[0]["eval_seconds"]
        budget = 60 * self.cfg.budget_minutes
        epochs = max(1, min(self.cfg.epochs, 1 + int((budget - first) / self.estimate(1))))
        log.write(f"budget {self.cfg.budget_minutes:g} min: {self.images_per_s():,.0f} images/s once compiled, the first "
                  f"epoch took {first:.0f} s -> {epochs} epochs (about {(first + self.estimate(epochs - 1)) / 60:.1f} min)")
        return epochs
