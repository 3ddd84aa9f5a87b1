"""The training step: one interface, `step(batch, lr)`, and the plain eager implementation, `TrainStep`.

`train()` (in `vit_helpers.train`) calls a step once per batch; `vit_helpers.graphed.GraphedStep` records this
same step as one CUDA graph (`train.make_step` picks one), and `vit_helpers.distributed` wraps it for several
processes; `vit_helpers.compiling` compiles it. Everything a step
needs lives here: the optimizer and its parameter groups, the precision, and the loss, distillation included.

Distillation (notebook 09): with a `teacher`, the step also runs that frozen model on the same augmented
images and adds its term to the loss: DeiT's hard distillation (Touvron et al., 2021, arXiv:2012.12877: the
teacher's top class as a second label) or Hinton et al.'s soft distillation (2015, arXiv:1503.02531: match
its probabilities at a temperature T).
"""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .compiling import compiles
from .config import TrainConfig
from .data import ImageData


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; leave norms, biases and the cls/position embeddings undecayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embedding")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD; `capturable` (for a CUDA graph) keeps the step count and the lr in device tensors."""
    kw = {"fused": device.type == "cuda"}  # fused: one kernel for all parameters
    kw["lr"] = torch.tensor(cfg.lr, device=device) if capturable else cfg.lr  # set_lr fills the tensor in place
    if cfg.optimizer == "sgd":  # no step count to keep: a device-tensor lr is all a CUDA graph needs
        return torch.optim.SGD(param_groups(model, cfg.weight_decay), momentum=cfg.momentum, nesterov=True, **kw)
    kw["betas"] = cfg.betas
    if capturable:
        kw["capturable"] = True
    if cfg.optimizer == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], **kw)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a CUDA graph holds this tensor's address
        else:
            group["lr"] = lr


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if precision == "fp32" or device.type != "cuda":
        return None, False
    if native_bf16():
        return torch.bfloat16, False
    return torch.float16, True  # e.g. a Colab T4: fp16 needs loss scaling to keep small gradients


def native_bf16() -> bool:
    """Whether this GPU computes in bfloat16 itself (Ampere and later). torch.cuda.is_bf16_supported() alone also says
    yes where bf16 is only emulated (a T4 can hold bf16 tensors, but its tensor cores compute in float16, not bf16)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch older than the argument: it did not count emulation
        return torch.cuda.is_bf16_supported()


def teacher_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The teacher's term of the distillation loss, which is (1 - w) * (the usual loss) + w * this, w = cfg.distill_weight.

    hard (DeiT): cross-entropy with the teacher's top class as the label. As in DeiT, label smoothing applies to the
        true label only, not to the teacher's. Cross-entropy is linear in its target, so the total equals the
        cross-entropy on the target (1 - w) * smoothed(y) + w * one_hot(teacher's class).
    soft (Hinton): T^2 * KL(softmax(teacher / T) || softmax(student / T)); T^2 keeps its gradients' size as T changes.
    """
    if cfg.distill == "hard":
        return F.cross_entropy(logits, teacher_logits.argmax(-1))
    t = cfg.distill_temperature
    return t * t * F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), reduction="batchmean", log_target=True)


def attention_kernels(name: str):
    """A context in which F.scaled_dot_product_attention tries kernel `name` first (cfg.attention), with the plain
    math as the fallback where that kernel can't run; "auto" leaves torch's own choice."""
    if name == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel(list(dict.fromkeys([kernel, SDPBackend.MATH])), set_priority=True)


def freeze_teacher(teacher: nn.Module | None, cfg: TrainConfig, device: torch.device) -> nn.Module | None:
    """The teacher on `device`, in eval mode (BatchNorm uses its running statistics), its weights never trained."""
    if teacher is None and cfg.distill != "none":
        raise ValueError(f"distill={cfg.distill!r} needs a teacher: train(..., teacher=a trained model)")
    if teacher is not None and cfg.distill == "none":
        raise ValueError("a teacher was given but distill='none': set distill='hard' or 'soft', or leave the teacher out")
    return None if teacher is None else teacher.to(device).eval().requires_grad_(False)


class TrainStep:
    """One optimizer step: `step(batch, lr)` with batch = (images, labels), where the labels are class
    indices (B,) or, after MixUp/CutMix, soft targets (B, n_classes). Notebook 05 writes this step by hand and checks it against train().
    teacher: a frozen model to distill from (cfg.distill), run on the same augmented images."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, capturable: bool = False,
                 teacher: nn.Module | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        self.teacher = freeze_teacher(teacher, cfg, device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model, cfg, device, capturable)
        self.amp_dtype, needs_scaler = autocast_settings(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
        # this epoch's sums, on the device: the loss, correct predictions, and the loss's two terms (labels, teacher)
        self.totals = torch.zeros(4, device=device)
        self.ema = self.make_ema(model) if cfg.ema_decay else None  # the weights' moving average (cfg.ema_decay)
        self.compile_mode = "default" if capturable else cfg.compile_mode  # (a CUDA graph records the kernels itself)
        if compiles(cfg, device) and cfg.compile_scope == "step":  # fuse the model and the loss into fewer kernels
            self.loss = torch.compile(self.loss, mode=self.compile_mode)  # a compiled copy of the step's own method
        # compile_scope="blocks" compiles the caller's modules in place, which `compiling.compiled` does and undoes

    def epoch(self, batches):
        """What `__call__` takes, batch by batch, for one epoch."""
        return batches

    def __call__(self, batch, lr: float) -> None:
        set_lr(self.optimizer, lr)
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        self.update(x, y)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, loss, backward, clip, optimizer step; never waits for the GPU (a CUDA graph can record it)."""
        loss, sums = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the scaler multiplies the loss only for float16 (else a no-op)
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=self.device.type == "cuda")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.update_ema()
        self.totals += sums  # read once per epoch, not per step

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, this batch's sums for `totals`): the sums are of the loss, the correct predictions (with soft
        targets: their largest class), and the loss's two terms before weighting, the labels' cross-entropy and the
        teacher's term (0 without a teacher), so that the history can show what each term did (notebook 09)."""
        with (torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None, cache_enabled=False),
              attention_kernels(self.cfg.attention)):
            logits = self.model(x)
        # cross_entropy takes class indices, or probabilities (soft targets): -sum(target * log_softmax(logits))
        labels_term = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        loss, from_teacher = labels_term, torch.zeros_like(labels_term)
        if self.teacher is not None:  # distillation (notebook 09)
            w = self.cfg.distill_weight
            from_teacher = teacher_loss(logits.float(), self.teacher_logits(x), self.cfg)
            loss = (1 - w) * labels_term + w * from_teacher
        hard = y.argmax(-1) if y.dim() == 2 else y
        n = len(x)
        sums = torch.stack([loss.detach() * n, (logits.argmax(-1) == hard).sum().float(), labels_term.detach() * n,
                            from_teacher.detach() * n])
        return loss, sums

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits for the student's (augmented) images, in the student's precision."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None, cache_enabled=False):
            return self.teacher(x).float()

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}
        if self.ema is not None:
            state["ema"] = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])  # copies in place: a recorded CUDA graph keeps its addresses

    # ---- an exponential moving average of the weights (cfg.ema_decay; off by default) ----
    # Polyak averaging: after every step, ema <- ema + (1 - decay) * (weights - ema), so the average spans about
    # 1 / (1 - decay) steps (0.999: ~1000 steps, ~11 epochs at batch 512). `train()` validates the average instead of
    # the weights, keeps it as best.pt and ends with it in the model; the weights themselves train as before.

    @staticmethod
    def make_ema(model: nn.Module) -> nn.Module:
        """A frozen copy of the model (the module inside DDP, under torchrun), in eval mode, that will hold the average."""
        ema = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
        for module in ema.modules():  # a block the caller compiled in place would still call the original's forward
            module._compiled_call_impl = None
        return ema

    @torch.no_grad()
    def update_ema(self) -> None:
        """One averaging step, on the device, without waiting for it (a CUDA graph records it with the step)."""
        weights = getattr(self.model, "module", self.model)  # (DDP's wrapped module under torchrun)
        pairs = list(zip(self.ema.state_dict().values(), weights.state_dict().values()))
        averaged = [(e, w) for e, w in pairs if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in averaged], [w for _, w in averaged], 1 - self.cfg.ema_decay)
        for e, w in pairs:
            if not e.is_floating_point():  # counters (BatchNorm's batch count) are copied, not averaged
                e.copy_(w)


def check_teacher(teacher: nn.Module | None, data: ImageData, n_classes: int, device: torch.device) -> None:
    """Before training: the (frozen) teacher, if any, must take the data's images and give one logit per class."""
    from .data import to_model_input

    if teacher is None:
        return
    example = to_model_input(data.train_x[:2].to(device))
    try:
        with torch.no_grad():
            out = teacher(example)
    except Exception as e:
        raise ValueError(f"the teacher ({type(teacher).__name__}) can't take the data's images: it was given a batch of "
                         f"shape {tuple(example.shape)} (B, C, H, W) and failed with {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:300]}") from e
    if tuple(out.shape) != (len(example), n_classes):
        raise ValueError(f"the teacher gives outputs of shape {tuple(out.shape)} for {len(example)} images; expected "
                         f"({len(example)}, {n_classes}): one logit for each of the student's {n_classes} classes")
