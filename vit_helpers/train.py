"""Training: one readable `train()` loop, `evaluate()`, the learning-rate schedule, and the recipes.

The recipes:
- article: the article's recipe exactly (Adam 3e-4, batch 16, 150 epochs, steps at 80 and 130,
  PIL transforms in a DataLoader, float32).
- fast: AdamW with warmup and cosine decay, label smoothing, gradient clipping, TrivialAugment,
  MixUp/CutMix, large batches, bf16 and torch.compile, data and augmentation on the GPU.
- quick: the fast recipe shrunk for two CPU cores: the small model on a subset, a few minutes.
- large: the fast recipe for the larger preset model.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt_io
from .config import ModelArgs, model_preset
from .data import GPUBatches, ImageData, classic_loader, train_val_split


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 150  # passes over the training split
    batch_size: int = 16  # images per optimizer step
    optimizer: str = "adam"  # "adam" (the article) or "adamw" (decoupled weight decay)
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW decay, never applied to norms, biases or embeddings
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    schedule: str = "multistep"  # "multistep" (the article) or "cosine" (linear warmup, then cosine to 0)
    warmup_epochs: float = 0.0  # linear warmup length, for "cosine"
    milestones: tuple[int, ...] = (80, 130)  # epochs where "multistep" multiplies the lr by gamma
    gamma: float = 0.1  # "multistep" factor
    label_smoothing: float = 0.0  # mass moved from the true class to all classes
    grad_clip: float | None = None  # max global gradient norm, or None
    pipeline: str = "classic"  # "classic" (PIL + DataLoader) or "gpu" (uint8 tensors augmented on the device)
    augment: str = "trivial"  # gpu pipeline: "none", "crop_flip" or "trivial"
    mix_prob: float = 0.0  # gpu pipeline: chance a batch gets MixUp or CutMix
    erase_prob: float = 0.0  # gpu pipeline: chance an image gets a Random Erasing rectangle
    repeats: int = 1  # gpu pipeline: repeated augmentation, copies of each image per batch (each augmented on its own)
    precision: str = "fp32"  # "fp32", or "auto": bf16 autocast where supported, fp16 + GradScaler on older GPUs
    compile: bool = False  # torch.compile the model (GPU only)
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" replays CUDA graphs of the model alone
    cuda_graph: bool = False  # gpu pipeline on a GPU: record the whole step (augment, mix, forward, backward, clip, AdamW) as one CUDA graph
    train_subset: int | None = None  # train on only this many images of the training split
    val_size: int = 5000  # images held out of the 50,000 for validation
    num_workers: int = 4  # classic pipeline's DataLoader processes
    eval_batch_size: int = 1000  # images per evaluation batch
    seed: int = 0  # model init, split, shuffling and augmentation
    log_every: int = 1  # print a history line every this many epochs
    checkpoint_every: int = 1  # write last.pt every this many epochs (and at the end); best.pt whenever validation improves

    def replace(self, **changes) -> "TrainConfig":
        from dataclasses import replace

        return replace(self, **changes)


RECIPES: dict[str, tuple[str, dict, TrainConfig]] = {
    # name: (model preset, model changes, training config)
    "article": ("article", {}, TrainConfig()),
    # Chosen from measured runs (benchmarks/NOTES.md): lr 2e-3 trained worse than 1e-3; without MixUp/CutMix
    # the model overfit (train 97%, validation 82%); at equal training time batch 512 beat 256 and 128, and
    # stochastic depth with Random Erasing did not help. 420 epochs fit in about 4.5 minutes on an H100.
    "fast": ("article", {"dropout": 0.0}, TrainConfig(
        epochs=420, batch_size=512, optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine",
        warmup_epochs=5, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="trivial", mix_prob=0.8,
        precision="auto", compile=True, cuda_graph=True, log_every=25, checkpoint_every=25)),
    "large": ("large", {}, TrainConfig(
        epochs=250, batch_size=512, optimizer="adamw", lr=7e-4, weight_decay=0.05, schedule="cosine",
        warmup_epochs=5, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="trivial", mix_prob=0.8,
        precision="auto", compile=True, cuda_graph=True, log_every=25, checkpoint_every=25)),
    "quick": ("small", {}, TrainConfig(
        epochs=6, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
        warmup_epochs=1, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="crop_flip", mix_prob=0.0,
        precision="fp32", train_subset=10_000, val_size=2_000)),
}


def recipe(name: str) -> tuple[ModelArgs, TrainConfig]:
    """(model config, training config) of a named recipe: 'article', 'fast', 'large' or 'quick'."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    preset, changes, cfg = RECIPES[name]
    return model_preset(preset, **changes), cfg


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'multistep' or 'cosine'")
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; leave norms, biases and the cls/position embeddings undecayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embedding")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam or AdamW; `capturable` (for a CUDA graph) keeps the step count and the lr in device tensors."""
    fused = device.type == "cuda"  # one kernel for all parameters instead of several per tensor
    kw = {"betas": cfg.betas, "fused": fused}
    if capturable:
        kw.update(capturable=True, lr=torch.tensor(cfg.lr, device=device))  # set_lr then fills it in place
    else:
        kw["lr"] = cfg.lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], **kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kw)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'adam' or 'adamw'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a CUDA graph holds this tensor's address
        else:
            group["lr"] = lr


class CapturedStep:
    """`fn(*inputs)` recorded once as a CUDA graph and replayed: one launch per training step instead of
    hundreds, so small batches stop being limited by the CPU (PyTorch's "whole-network capture").

    Recording needs a few warm-up calls (they compile and create the optimizer's state); the model's
    weights and the optimizer's state are put back afterwards, so training starts where it was.
    Inputs are copied into fixed buffers before each replay; `fn` must not synchronise with the host.
    """

    def __init__(self, fn, example_inputs, model: nn.Module, optimizer: torch.optim.Optimizer, warmup: int = 3):
        self.inputs = [t.clone() for t in example_inputs]
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        state = {p: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            fn(*self.inputs)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(weights[k])
            for p, s in optimizer.state.items():
                for k, v in s.items():
                    if isinstance(v, torch.Tensor):  # state made by the warm-up starts from zero, as it would have
                        v.copy_(state[p][k]) if p in state and k in state[p] else v.zero_()

    def __call__(self, *inputs) -> None:
        for buf, t in zip(self.inputs, inputs):
            buf.copy_(t, non_blocking=True)
        self.graph.replay()


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if precision == "fp32" or device.type != "cuda":
        return None, False
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; use 'fp32' or 'auto'")
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True  # e.g. a Colab T4: fp16 needs loss scaling to keep small gradients


def make_batches(data: ImageData, cfg: TrainConfig, device: torch.device, n_classes: int):
    """(train batches, validation batches, number of training images) for a config."""
    train_idx, val_idx = train_val_split(len(data.train_x), cfg.val_size, cfg.seed)
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    tx, ty = data.train_x[train_idx], data.train_y[train_idx]
    vx, vy = data.train_x[val_idx], data.train_y[val_idx]
    if cfg.pipeline == "classic":
        return (classic_loader(tx, ty, cfg.batch_size, True, cfg.num_workers, cfg.seed),
                classic_loader(vx, vy, cfg.eval_batch_size, False, cfg.num_workers), len(tx))
    if cfg.pipeline != "gpu":
        raise ValueError(f"unknown pipeline {cfg.pipeline!r}; use 'classic' or 'gpu'")
    train = GPUBatches(tx, ty, cfg.batch_size, device=device, shuffle=True, drop_last=True, policy=cfg.augment,
                       mix_prob=cfg.mix_prob, n_classes=n_classes, seed=cfg.seed, erase_prob=cfg.erase_prob,
                       repeats=cfg.repeats, compile=cfg.compile)
    val = GPUBatches(vx, vy, cfg.eval_batch_size, device=device)
    return train, val, len(tx)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device | str | None = None, precision: str = "fp32") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` over an iterable of (inputs, int labels)."""
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
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def predict(model: nn.Module, x_uint8: torch.Tensor, batch_size: int = 1000, device=None, flip_tta: bool = False) -> torch.Tensor:
    """Logits (N, n_classes), float32 on the CPU, for uint8 images; `flip_tta` averages with the mirror image."""
    from .data import to_model_input

    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x_uint8), batch_size):
        x = to_model_input(x_uint8[i:i + batch_size].to(device))
        logits = model(x).float()
        if flip_tta:
            logits = (logits.softmax(-1) + model(x.flip(-1)).float().softmax(-1)).div(2).log()
        out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out)


class NonFiniteLossError(FloatingPointError):
    pass


def _rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if "cuda" in s and device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], device)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    best_val_acc: float = 0.0
    best_epoch: int = 0
    checkpoint_dir: Path | None = None

    @property
    def train_seconds(self) -> float:
        return sum(h["seconds"] for h in self.history)


def train(model: nn.Module, data: ImageData, cfg: TrainConfig, *, checkpoint_dir: str | Path | None = None,
          resume: bool = False, device: torch.device | str | None = None, progress: bool = True,
          on_epoch_end=None) -> TrainResult:
    """Train `model` on `data` with `cfg`; returns the per-epoch history.

    checkpoint_dir: where best.pt (best validation accuracy) and last.pt (for resuming) go, or None.
    resume: continue from checkpoint_dir/last.pt: same schedule position, optimizer and RNG state.
    on_epoch_end: optional callback(epoch_record) after each epoch.
    """
    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    args: ModelArgs | None = getattr(model, "args", None)
    n_classes = args.n_classes if args else int(data.train_y.max()) + 1
    train_batches, val_batches, n_train = make_batches(data, cfg, device, n_classes)
    steps_per_epoch = len(train_batches)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the {n_train} training images; lower it")
    amp_dtype, needs_scaler = autocast_settings(cfg.precision, device)
    # The whole-step graph needs the GPU pipeline and no GradScaler (fp16's scaler syncs with the host).
    graphed = cfg.cuda_graph and device.type == "cuda" and cfg.pipeline == "gpu" and not needs_scaler
    optimizer = make_optimizer(model, cfg, device, capturable=graphed)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
    compiled = cfg.compile and device.type == "cuda"

    def forward_loss(x, y):
        """(loss, correct predictions) of one batch; with MixUp/CutMix, correct means the dominant label."""
        # (autocast's weight-cast cache would keep tensors made during graph recording: off when graphed)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=not graphed):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        hard = y.argmax(-1) if y.dim() == 2 else y
        return loss, (logits.argmax(-1) == hard).sum()

    # Compiled, the loss is part of the same graph (and CUDA graph) as the model: fewer kernel launches.
    # (Inside a whole-step graph, torch.compile's own CUDA graphs would be graphs within a graph: off.)
    mode = "default" if graphed else cfg.compile_mode
    step_forward = torch.compile(forward_loss, mode=mode) if compiled else forward_loss
    forward = torch.compile(model, mode=mode) if compiled else model  # for evaluation
    params = [p for p in model.parameters() if p.requires_grad]
    totals = torch.zeros(2, device=device)  # this epoch's summed loss and correct predictions, kept on the device

    def train_step(x, y):
        """One optimizer step on a batch. No host synchronisation, so that it can run as a CUDA graph."""
        loss, n_correct = step_forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=device.type == "cuda")
        scaler.step(optimizer)
        scaler.update()
        totals.add_(torch.stack([loss.detach() * len(x), n_correct.float()]))  # reading them every step would stall the GPU

    def raw_step(idx, u, mix):  # what the graph records: batch making included
        train_step(*train_batches.make_batch(idx, u, mix))

    captured = None

    result = TrainResult(checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)
    start_epoch = 0
    last_path = result.checkpoint_dir / "last.pt" if result.checkpoint_dir else None
    if resume:
        if last_path is None or not last_path.is_file():
            raise FileNotFoundError(f"resume=True but there is no last.pt in {checkpoint_dir}; train without resume first")
        state = ckpt_io.load(last_path, map_location=device)
        if args is not None:
            ckpt_io.check_config(state, args, last_path)
        if state["train_config"] != _plain(cfg):
            raise ValueError(f"{last_path} was trained with another TrainConfig; resume with the same config\n"
                             f"  saved: {state['train_config']}\n  given: {_plain(cfg)}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if graphed:  # the graph reads the lr from a device tensor
            for group in optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device)
        scaler.load_state_dict(state["scaler"])
        if hasattr(train_batches, "load_state_dict"):
            train_batches.load_state_dict(state["batches"])
        _set_rng_state(state["rng"], device)
        result.history, result.best_val_acc, result.best_epoch = state["history"], state["best_val_acc"], state["best_epoch"]
        start_epoch = state["epoch"]

    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, disable=not progress,
               desc="training", unit="step", mininterval=1.0)
    for epoch in range(start_epoch, cfg.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        totals.zero_()
        for i, batch in enumerate(train_batches.plan() if graphed else train_batches):
            lr = lr_at(epoch * steps_per_epoch + i, cfg, steps_per_epoch)
            set_lr(optimizer, lr)
            if graphed:  # batch = this step's draws; the graph makes the batch and trains on it
                if captured is None:
                    captured = CapturedStep(raw_step, batch, model, optimizer)
                    totals.zero_()  # the warm-up calls added to it
                captured(*batch)
            else:
                x, y = batch
                train_step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        seen = steps_per_epoch * cfg.batch_size
        loss_total, correct = totals.tolist()
        train_loss = loss_total / seen
        if not math.isfinite(train_loss):
            bar.close()
            kept = f"the last good checkpoint is kept at {last_path}" if last_path and last_path.is_file() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"the training loss became {train_loss} in epoch {epoch + 1}; stopped, and {kept}. "
                f"Lower the learning rate (now {cfg.lr}), keep grad_clip on, or use precision='fp32'."
            )
        t1 = time.perf_counter()
        val_loss, val_acc = evaluate(forward, val_batches, device, cfg.precision)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": correct / seen, "val_loss": val_loss,
                  "val_acc": val_acc, "lr": lr, "seconds": seconds, "eval_seconds": time.perf_counter() - t1,
                  "images_per_s": seen / seconds}
        result.history.append(record)
        improved = val_acc > result.best_val_acc
        if improved:
            result.best_val_acc, result.best_epoch = val_acc, epoch + 1
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}", lr=f"{lr:.1e}",
                        img_s=f"{record['images_per_s']:,.0f}", refresh=False)  # the bar redraws on its own clock
        if progress and ((epoch + 1) % cfg.log_every == 0 or epoch + 1 == cfg.epochs):
            tqdm.write(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {train_loss:.3f} acc {record['train_acc']:.3f}  "
                       f"val loss {val_loss:.3f} acc {val_acc:.3f}  lr {lr:.2e}  {record['images_per_s']:,.0f} img/s")
        if result.checkpoint_dir:
            meta = {"model_args": args.to_dict() if args else None, "train_config": _plain(cfg), "history": result.history,
                    "epoch": epoch + 1, "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch}
            if improved:
                ckpt_io.atomic_save({**meta, "model": _cpu_state(model)}, result.checkpoint_dir / "best.pt")
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                ckpt_io.atomic_save({**meta, "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                                     "scaler": scaler.state_dict(), "rng": _rng_state(device),
                                     "batches": train_batches.state_dict() if hasattr(train_batches, "state_dict") else {}},
                                    last_path)
        if on_epoch_end is not None:
            on_epoch_end(record)
    bar.close()
    return result


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _plain(cfg: TrainConfig) -> dict:
    """The config as plain values (tuples become lists), as it round-trips through a checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
