"""The command line: train a named recipe from a terminal, on one device or, under torchrun, on several.

    python -m vit_helpers.train --recipe fast
    torchrun --nproc_per_node=2 -m vit_helpers.train --recipe fast

(`python -m vit_helpers.train` runs this module's `main`.) It does what notebook 05 does with `train()`: build the
recipe's model, train it with checkpoints, print the same compact table, and at the end the test accuracy. Under
torchrun every process runs this same command; `vit_helpers.distributed` makes them one DistributedDataParallel run.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import time
import types
import typing
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from . import distributed, paths
from .config import RECIPES, TEACHER_RECIPES, CNNArgs, ModelArgs, TrainConfig, recipe

PROG = "python -m vit_helpers.train"
EPILOG = f"""examples:
  {PROG} --recipe quick
  {PROG} --recipe fast --epochs 100 --set lr=2e-3 --set mix_prob=0.5
  {PROG} --recipe fast --budget-minutes 5 --out fast.json
  {PROG} --recipe fast --resume                    (continue the run in checkpoints/fast)
  torchrun --nproc_per_node=2 -m vit_helpers.train --recipe fast     (one model on 2 GPUs)

Under torchrun, --set batch_size stays the global batch (split evenly among the processes, so it must divide by
their number) and the learning rate keeps its meaning; rank 0 prints and writes. A run resumes only with the number
of processes that started it. Values of --set/--model-set: numbers, true/false, None, comma-separated tuples
(--set milestones=80,130), or words (--set augment=crop_flip)."""


class UsageError(Exception):
    """A bad option: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not argparse's usage block
        _fail(message)


def _fail(message: str, status: int = 2, each_line: bool = False) -> typing.NoReturn:
    """Print `message` (each_line: one problem per line, each an error line of its own) and exit with `status`."""
    lines = str(message).strip().splitlines() or [""]
    for i, line in enumerate(lines):
        print(f"{PROG}: error: {line.strip()}" if each_line or i == 0 else f"  {line.strip()}", file=sys.stderr)
    raise SystemExit(status)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES), metavar="NAME",
                   help=f"the training recipe (vit_helpers.config.RECIPES): {', '.join(sorted(RECIPES))}")
    p.add_argument("--epochs", type=int, metavar="N", help="train N epochs instead of the recipe's (the schedule follows)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="fit the run into M minutes: the first epoch measures the speed, which fixes the epochs "
                        "(at most the recipe's or --epochs)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="settings",
                   help="change a TrainConfig field of the recipe, e.g. --set lr=2e-3 (repeatable)")
    p.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE", dest="model_settings",
                   help="change a field of the recipe's model config (ModelArgs, or CNNArgs for a teacher recipe), "
                        "e.g. --model-set n_layers=8 (repeatable)")
    p.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                   help="where best.pt and last.pt go (default: checkpoints/<recipe>, where the notebooks look); "
                        "a distilled recipe's teacher trains into DIR/teacher")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the checkpoint directory exactly where it stopped (same options, same "
                        "number of processes); without it, a directory that holds a run is refused")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after epoch N (a multiple of checkpoint_every, so last.pt is written there); finish later "
                        "with --resume, e.g. in time-limited job slots")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="a folder-per-class copy of the data (train/<class>/*, test/<class>/*); default: $VIT_DATA_DIR, "
                        "else torchvision's download of CIFAR-10")
    p.add_argument("--teacher-checkpoint", type=Path, metavar="PATH",
                   help="distilled recipes: the trained teacher to learn from (a best.pt or last.pt); without it the "
                        "teacher is trained first with its own recipe (config.TEACHER_RECIPES), or loaded if finished")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the history, configs, test accuracy and timings as JSON to FILE")
    return p


# ---- FIELD=VALUE, parsed by the field's type ----

def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        plural = {bool: "true/false values", int: "integers", float: "numbers", str: "words"}.get(args[0] if args else None, "values")
        return f"comma-separated {plural}" + ("" if args and args[-1] is Ellipsis else f" ({len(args)} of them)")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a word"}.get(tp, getattr(tp, "__name__", str(tp)))


def parse_value(text: str, tp):
    """`text` as a value of type `tp` (bool, int, float, str, None, their unions and tuples); ValueError otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    s = text.strip()
    if origin in (typing.Union, types.UnionType):
        if s.lower() in ("none", "null") and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return parse_value(s, a)
                except ValueError:
                    pass
        raise ValueError
    if origin is tuple:
        body = s.strip("()[] ")
        items = [i for i in (x.strip() for x in body.split(",")) if i] if body else []
        if args and args[-1] is Ellipsis:
            return tuple(parse_value(i, args[0]) for i in items)
        if len(items) != len(args):
            raise ValueError
        return tuple(parse_value(i, a) for i, a in zip(items, args))
    if tp is bool:
        table = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        if s.lower() not in table:
            raise ValueError
        return table[s.lower()]
    if tp is int:
        return int(s)
    if tp is float:
        value = float(s)
        if value != value:  # nan: never a useful setting
            raise ValueError
        return value
    if tp is str:
        if not s:
            raise ValueError
        return s
    raise ValueError


def parse_settings(items: list[str], config_class, option: str) -> dict:
    """['lr=2e-3', ...] -> {'lr': 0.002, ...}, each value parsed by the field's type; UsageError on a bad one."""
    hints = typing.get_type_hints(config_class)
    fields = [f.name for f in dataclasses.fields(config_class)]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{option} {item!r}: expected FIELD=VALUE, e.g. {option} {fields[0]}=...")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{option} {item!r}: {config_class.__name__} has no field {key!r}; {hint}its fields: {', '.join(fields)}")
        try:
            out[key] = parse_value(value, hints[key])
        except ValueError:
            raise UsageError(f"{option} {item!r}: {key} takes {_describe(hints[key])}, not {value!r}") from None
    return out


# ---- the run ----

def resolve(a: argparse.Namespace) -> tuple[ModelArgs | CNNArgs, TrainConfig]:
    """The recipe's configs with the command line's changes, checked (UsageError, one line per problem)."""
    args, cfg = recipe(a.recipe)
    changes = parse_settings(a.settings, TrainConfig, "--set")
    model_changes = parse_settings(a.model_settings, type(args), "--model-set")
    for name, value in (("epochs", a.epochs), ("budget_minutes", a.budget_minutes)):
        if value is not None:
            if name in changes:
                raise UsageError(f"--{name.replace('_', '-')} and --set {name}= both given; keep one")
            changes[name] = value
    try:
        args = args.replace(**model_changes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        cfg = cfg.replace(**changes)
    except ValueError as e:
        raise UsageError("\n".join(line for line in str(e).splitlines()[1:])) from None  # one line per problem
    if cfg.distill == "none" and a.teacher_checkpoint:
        raise UsageError(f"--teacher-checkpoint is for distilled recipes; {a.recipe!r} trains without a teacher (distill='none')")
    if cfg.distill != "none" and not a.teacher_checkpoint and a.recipe not in TEACHER_RECIPES:
        raise UsageError(f"recipe {a.recipe!r} distills (distill={cfg.distill!r}) but has no teacher recipe: give --teacher-checkpoint PATH")
    if a.stop_after is not None and (a.stop_after < 1 or a.stop_after % cfg.checkpoint_every):
        raise UsageError(f"--stop-after {a.stop_after}: give a positive multiple of checkpoint_every={cfg.checkpoint_every} "
                         "(last.pt is written only then), or change it with --set checkpoint_every=N")
    return args, cfg


def _with_classes(args, n_classes: int, who: str = "the model"):
    """The model config with one output per class of the data (the recipes are written for CIFAR-10's 10)."""
    if args.n_classes != n_classes:
        print(f"the data has {n_classes} classes: {who} gets {n_classes} outputs (the recipe says {args.n_classes})")
        return args.replace(n_classes=n_classes)
    return args


def _load_teacher(path: Path, device: torch.device) -> torch.nn.Module:
    from .cnn import build_model

    state = ckpt_io.load(path, keys=ckpt_io.CHECKPOINT_KEYS)
    d = state["model_args"] or {}
    kind = CNNArgs if "stem_width" in d else ModelArgs
    try:
        args = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except TypeError as e:
        raise UsageError(f"--teacher-checkpoint {path}: its model_args fit neither a ViT nor a CNN ({e})") from None
    model = build_model(args)
    model.load_state_dict(state["model"])
    return model.to(device)


def _test_accuracy(model: torch.nn.Module, data, cfg: TrainConfig, device: torch.device) -> float:
    """Accuracy on the test images, each rank evaluating its shard (the sums are added up)."""
    from .data import GPUBatches
    from .train import evaluate

    r, n = distributed.rank(), distributed.world_size()
    test = GPUBatches(data.test_x[r::n], data.test_y[r::n], cfg.eval_batch_size, device=device)
    return evaluate(model, test, device, cfg.precision, across_ranks=True)[1]


# The teacher trains on the student's split of the data (it must never have seen the student's validation images), on
# the same training images, as many times per epoch.
SPLIT_FIELDS = ("val_size", "seed", "train_subset", "balanced_subset", "subset_repeat")


def _train_teacher(a, cfg: TrainConfig, data, device: torch.device, n_classes: int, checkpoint_dir: Path) -> dict:
    """The distilled recipe's teacher: loaded from --teacher-checkpoint, or trained (once) with its own recipe on the
    student's split (SPLIT_FIELDS follow the student's config)."""
    from .cnn import build_model
    from .train import load_or_train

    if a.teacher_checkpoint:
        print(f"teacher: {_where(a.teacher_checkpoint)}")
        return {"model": _load_teacher(a.teacher_checkpoint, device), "checkpoint": str(a.teacher_checkpoint)}
    name = TEACHER_RECIPES[a.recipe]
    targs, tcfg = recipe(name)
    tcfg = tcfg.replace(**{k: getattr(cfg, k) for k in SPLIT_FIELDS})
    distributed.check_batch_size(tcfg.batch_size)
    targs = _with_classes(targs, n_classes, "the teacher")
    torch.manual_seed(tcfg.seed)
    teacher = build_model(targs)
    print(f"teacher: the {name!r} recipe, in {_where(checkpoint_dir / 'teacher')}")
    t0 = time.perf_counter()
    result = load_or_train(teacher, data, tcfg, checkpoint_dir / "teacher", device=device)
    acc = _test_accuracy(teacher, data, tcfg, device)
    print(f"teacher test accuracy {acc:.4f}")
    return {"model": teacher, "recipe": name, "history": result.history, "train_seconds": result.train_seconds,
            "wall_seconds": time.perf_counter() - t0, "test_acc": acc}


def _where(path) -> str:
    """A path for the terminal: relative to the working folder when inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


class _Stop(Exception):
    pass


def run(a: argparse.Namespace, args, cfg: TrainConfig, setup: distributed.Setup) -> int:
    from .cnn import build_model
    from .data import load_cifar10
    from .train import NonFiniteLossError, train

    device = setup.device
    distributed.check_batch_size(cfg.batch_size)
    checkpoint_dir = a.checkpoint_dir or paths.checkpoint_dir() / a.recipe
    last = checkpoint_dir / "last.pt"
    if not a.resume and last.is_file():
        raise UsageError(f"{_where(checkpoint_dir)} already holds a run (last.pt): continue it with --resume, or "
                         "choose another --checkpoint-dir (or delete that one) to train anew")
    if a.resume and not last.is_file():
        raise UsageError(f"--resume, but {_where(checkpoint_dir)} holds no last.pt: leave out --resume to start the run")
    if not distributed.is_main():
        distributed.barrier()  # rank 0 decodes the images (and caches them) first; the others then read the cache
    try:
        data = load_cifar10(a.data)
    except (RuntimeError, OSError, ValueError) as e:  # no data, a bad folder, unreadable images: the message says what to do
        _fail(str(e), status=1)
    if distributed.is_main():
        distributed.barrier()
    print(f"{a.recipe}: {data!r}; {setup.world_size} process(es) on {device.type}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    n_classes = len(data.classes)
    args = _with_classes(args, n_classes)
    teacher = _train_teacher(a, cfg, data, device, n_classes, checkpoint_dir) if cfg.distill != "none" else None

    def stop(record: dict) -> None:
        if a.stop_after is not None and record["epoch"] == a.stop_after and record["epoch"] < cfg.epochs:
            raise _Stop

    torch.manual_seed(cfg.seed)
    model = build_model(args)
    t0 = time.perf_counter()
    try:
        result = train(model, data, cfg, teacher=teacher and teacher["model"], checkpoint_dir=checkpoint_dir,
                       resume=a.resume, device=device, on_epoch_end=stop)
    except _Stop:
        print(f"stopped after epoch {a.stop_after} as asked; continue with the same command and --resume "
              f"(checkpoints in {_where(checkpoint_dir)})")
        return 0
    except ckpt_io.ResumeError as e:
        _fail(str(e))
    except NonFiniteLossError as e:
        _fail(str(e), status=1)
    wall = time.perf_counter() - t0
    test_acc = _test_accuracy(model, data, cfg, device)
    print(f"test accuracy {test_acc:.4f} (final weights, {len(data.test_x):,} test images); best validation accuracy "
          f"{result.best_val_acc:.4f} at epoch {result.best_epoch}")
    print(f"checkpoints: {_where(checkpoint_dir / 'best.pt')} (best validation accuracy), "
          f"{_where(last)} (the run's end, resumable)")
    if a.out and distributed.is_main():
        out = {"recipe": a.recipe, "command": sys.argv, "world_size": setup.world_size,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "model_args": args.to_dict(),
               "train_config": cfg.to_dict(), "epochs": result.epochs, "history": result.history,
               "train_seconds": result.train_seconds, "wall_seconds": wall, "best_val_acc": result.best_val_acc,
               "best_epoch": result.best_epoch, "test_acc": test_acc, "checkpoint_dir": str(checkpoint_dir),
               "teacher": None if teacher is None else {k: v for k, v in teacher.items() if k != "model"}}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))
        print(f"results: {_where(a.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and train; bad options end with one line each and exit status 2."""
    a = build_parser().parse_args(argv)
    try:
        args, cfg = resolve(a)
    except UsageError as e:
        _fail(str(e), each_line=True)
    setup = distributed.setup()
    try:
        code = run(a, args, cfg, setup)
        # Every rank leaves together: rank 0 still writing its results while another rank already tore its process group
        # down and exited aborted that rank now and then on the CPU ("terminate called without an active exception").
        distributed.barrier()
        return code
    except (UsageError, distributed.BatchSplitError) as e:
        _fail(str(e))
    finally:
        distributed.teardown()
