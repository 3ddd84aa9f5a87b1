"""Checkpoints: atomic writes, `weights_only=True` loads, a refusal when the model config differs, and the
training state (what `train()` saves and resumes from), which has its one home here."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from .config import ModelArgs
from .model import VisionTransformer

# Fields that change the weights' shapes or meaning. Dropout and drop_path are training-time knobs:
# the same weights run with any rate, so a checkpoint trained with another rate still loads.
ARCHITECTURE_FIELDS = ("dim", "hidden_dim", "n_heads", "n_layers", "patch_size", "n_channels", "image_size", "n_classes",
                       "spt", "lsa")


class CheckpointError(ValueError):
    """A file that exists but can't be read as what was asked for: empty, cut short, another format, missing keys."""


# What a model checkpoint holds (what load_weights and load_model read): load(path, keys=CHECKPOINT_KEYS).
CHECKPOINT_KEYS = ("model_args", "model")
# A temporary file whose writer can't be checked (another host, an older name) counts as abandoned after this long
# unmodified: torch.save writes without pause, so a live writer keeps its file's mtime fresh.
STALE_TEMP_SECONDS = 3600.0
_writing: set[str] = set()  # names of the temporary files this process is writing now (other threads' saves)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would signal the process there; fall back on the age rule
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def _stale_temps(folder: Path, prefix: str, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """The `<prefix>*.tmp` files in `folder` that atomic_save writers left behind and no live process still writes."""
    host, now = _host(), time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    stale = []
    for e in entries:
        if not (e.name.startswith(prefix) and e.name.endswith(".tmp")) or e.name in _writing:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:  # gone meanwhile
            continue
        # Our names end .<host>.<pid>.<random>.tmp; the writer is known dead if it ran on this host and its pid is
        # gone, or the pid is ours (reused after a restart: this process's live saves are in _writing).
        parts = e.name[: -len(".tmp")].rsplit(".", 3)
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit():
            pid = int(parts[2])
            if pid == os.getpid() or not _pid_alive(pid):
                stale.append(Path(e.path))
                continue
        if age > max_age:
            stale.append(Path(e.path))
    return stale


def _remove_stale_temps(folder: Path, prefix: str) -> None:
    for stale in _stale_temps(folder, prefix):
        try:
            stale.unlink()
        except OSError:  # best effort: another cleaner got there first, or we may not
            pass


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # makes the rename itself durable; without it a power cut can bring the old file back
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file.

    Temporary files that killed writers of the same path left behind (`.<name>.<host>.<pid>.<random>.tmp`) are
    removed first, once their writer is known dead (same host, pid gone) or they are over an hour old.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent, f".{path.name}.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp")
    _writing.add(os.path.basename(tmp))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if hasattr(e, "add_note"):  # Python 3.11+
            e.add_note(f"while saving {path}; the file there before (if any) is unchanged")
        raise
    finally:
        _writing.discard(os.path.basename(tmp))
    _fsync_dir(path.parent)
    return path


_REDO = ("It was probably cut short by an interrupted save, copy or download, or a full disk: copy or download it "
         "again, or use another checkpoint (training keeps best.pt and last.pt).")


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours some messages
    found = re.search(r"WeightsUnpickler error: (.*)", text)  # the one line of the refusal that says what it met
    line = found.group(1) if found else (text.splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:200]}"


def _load_error(path: Path, e: BaseException) -> CheckpointError:
    """Why torch.load failed on `path`, in words, with what to do."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        return CheckpointError(f"{path} is a Git LFS pointer, not the weights themselves. Fetch them: `git lfs pull` "
                               f"in the repository (or download the file again).")
    if head.lstrip().startswith(b"<"):
        return CheckpointError(f"{path} is a web page (HTML or XML), not a checkpoint: a download saved an error or "
                               f"login page. Download the file itself again.")
    if head.startswith(b"PK\x03\x04"):  # torch's zip format
        if not zipfile.is_zipfile(path):
            return CheckpointError(f"{path} is cut short: a PyTorch archive without its end ({path.stat().st_size:,} "
                                   f"bytes). {_REDO}")
    elif not head.startswith(b"\x80"):  # neither zip nor pickle (torch's legacy format)
        return CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {head[:16]!r}). Check the path: "
                               f"it should be a .pt file written by torch.save or vit_helpers.")
    if "Weights only load failed" in str(e):
        return CheckpointError(
            f"{path} holds Python objects besides tensors and plain values, which load() refuses to unpickle because "
            f"that can run arbitrary code. If you trust the file, read it with torch.load(path, weights_only=False) "
            f"and save only its tensors and plain values. ({_first_line(e)})")
    return CheckpointError(f"{path} is damaged: torch can't read it ({_first_line(e)}). {_REDO}")


def _missing_keys_error(path: Path, obj: dict, missing: list[str]) -> CheckpointError:
    if {"targets", "state"} <= obj.keys():
        what = "a LoRA adapter file; add it to its base model with vit_helpers.lora.load_adapters(model, path)"
    elif {"model_args", "model"} <= obj.keys():
        what = "a model checkpoint; load it with vit_helpers.checkpoint.load_model(path) or load_weights(model, path)"
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = ("a bare state_dict (parameter name -> tensor), not a vit_helpers checkpoint; build the model yourself "
                "and call model.load_state_dict(torch.load(path, weights_only=True)), or re-save it with "
                "atomic_save({'model_args': model.args.to_dict(), 'model': model.state_dict()}, path)")
    else:
        what = f"not the kind of file expected here (its keys: {sorted(map(str, obj))[:8]}); check the path"
    return CheckpointError(f"{path} lacks {missing}: it is {what}.")


def load(path: str | os.PathLike, map_location="cpu", keys: Iterable[str] = ()) -> dict:
    """Read a checkpoint safely (tensors and plain values only); a file that isn't one raises CheckpointError.

    keys: top-level keys the file must have, e.g. CHECKPOINT_KEYS (default: none, any dict).
    The error names the file, says what is wrong with it (empty, cut short, another format, missing keys)
    and what to do.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file; pass a file in it"
                                + (f", e.g. {path / inside[0]} (it holds {inside[:4]})" if inside else " (it holds no .pt files)"))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes). {_REDO}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError... for a bad file
        raise _load_error(path, e) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint (a dict); check the path, or "
                              f"save checkpoints with vit_helpers.checkpoint.atomic_save({{'model_args': ..., 'model': ...}}, path).")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _missing_keys_error(path, obj, missing)
    return obj


def config_differences(saved: dict, args) -> list[str]:
    """How a checkpoint's model_args differ from `args`: a ViT's architecture fields (dropout may differ), or every
    field of a CNN's CNNArgs (all of them are architecture)."""
    want, default = args.to_dict(), type(args)().to_dict()  # a field the checkpoint lacks is newer than it: its default
    fields = ARCHITECTURE_FIELDS if isinstance(args, ModelArgs) else tuple(want)
    return [f"{k}: checkpoint has {saved.get(k, default[k])!r}, model has {want[k]!r}" for k in fields
            if saved.get(k, default[k]) != want[k]]


def check_config(ckpt: dict, args: ModelArgs, path="checkpoint") -> None:
    diffs = config_differences(ckpt["model_args"], args)
    if diffs:
        raise ValueError(
            f"{path} was saved from a model with another configuration:\n  " + "\n  ".join(diffs)
            + "\nBuild the model from the checkpoint instead: vit_helpers.checkpoint.load_model(path)"
        )


def load_weights(model: VisionTransformer, path: str | os.PathLike) -> dict:
    """Load a checkpoint's weights into `model` after checking its config; returns the checkpoint."""
    ckpt = load(path, keys=CHECKPOINT_KEYS)
    check_config(ckpt, model.args, path)
    model.load_state_dict(ckpt["model"])
    return ckpt


def load_model(path: str | os.PathLike, device=None) -> tuple[VisionTransformer, dict]:
    """Build the model a checkpoint describes and load its weights (in eval mode)."""
    ckpt = load(path, keys=CHECKPOINT_KEYS)
    model = VisionTransformer(ModelArgs(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device or "cpu").eval(), ckpt


def trained_model(recipe_name: str, device=None) -> tuple[VisionTransformer, dict, str]:
    """The best model notebook 05 trained with `recipe_name`, else the released one.

    Returns (model in eval mode, checkpoint dict, a sentence saying where it came from).
    """
    from . import paths

    local = paths.checkpoint_dir() / recipe_name / "best.pt"
    if local.is_file():
        model, ckpt = load_model(local, device)
        return model, ckpt, f"checkpoint from notebook 05 ({recipe_name} recipe): {shown(local)}"
    if not paths.RELEASED_WEIGHTS.is_file():
        raise FileNotFoundError(f"no checkpoint at {shown(local)} and no released weights at {shown(paths.RELEASED_WEIGHTS)}; run notebook 05 first")
    model, ckpt = load_model(paths.RELEASED_WEIGHTS, device)
    made_by = ckpt.get("made_by") or "the release"  # e.g. "notebook 05_training, release on <GPU> (<date>)"
    return model, ckpt, (f"released weights ({paths.RELEASED_WEIGHTS.name}, {made_by}), because "
                         f"notebook 05 has not saved {shown(local)} yet")


# ---- the training state: written and read here, and nowhere else ----
# last.pt holds everything a run needs to continue exactly: weights, the step's optimizer and scaler, the batch
# generators, the RNG, the configs, the history, the chosen length and a fingerprint of the training data.
# best.pt holds the same description with the weights of the best validation accuracy (no optimizer state).
# With several processes (vit_helpers.distributed) rank 0 writes both; last.pt also records the number of processes
# and every rank's RNG state, so a resume with the same number continues exactly and another number is refused.

TRAINING_STATE_KEYS = ("model_args", "train_config", "data", "history", "epoch", "epochs", "model", "step", "batches", "rng")


class ResumeError(ValueError):
    """A checkpoint belongs to another run (model, training config or data)."""


def _tensors_hash(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # 1-D first: a 0-dim tensor (BatchNorm's step count) has no byte view
    return h.hexdigest()


def data_fingerprint(data) -> str:
    """A short hash of the training images and labels: a resume on other data is refused."""
    return f"{_tensors_hash((data.train_x, data.train_y))} ({len(data.train_x)} images)"


def teacher_fingerprint(teacher: torch.nn.Module | None) -> str | None:
    """A short hash of a distillation teacher's weights and buffers (None: no teacher): a resume with another is refused."""
    if teacher is None:
        return None
    state = teacher.state_dict()
    return f"{_tensors_hash(state.values())} ({type(teacher).__name__}, {len(state)} tensors)"


def shown(path: str | os.PathLike) -> str:
    """A path as people should see it: relative to the repository (or the working folder), never a machine's absolute path."""
    from . import paths

    path = Path(path).resolve()
    for base in (paths.project_root(), Path.cwd()):
        if base is not None and path.is_relative_to(base.resolve()):
            return str(path.relative_to(base.resolve())) or "."
    return path.name


def train_config_differences(saved: dict, cfg) -> list[str]:
    """What differs between a saved training config (a dict) and `cfg`, one line per field. A field the saved config
    lacks counts as its default: fields are added with the default that keeps the old behaviour."""
    default = type(cfg)().to_dict()
    return [f"{k}: checkpoint has {saved.get(k, default[k])!r}, given {v!r}" for k, v in cfg.to_dict().items()
            if saved.get(k, default[k]) != v]


def run_differences(state: dict, args: ModelArgs | None, cfg, fingerprint: str, teacher: str | None = None) -> list[str]:
    """What differs between a saved run and the one asked for, one line per field (`teacher`: its fingerprint)."""
    diffs = []
    if args is not None and state.get("model_args") is not None:
        saved, default = state["model_args"], type(args)().to_dict()  # (fields added later: their default, as above)
        diffs += [f"model {k}: checkpoint has {saved.get(k, default[k])!r}, given {v!r}" for k, v in args.to_dict().items()
                  if saved.get(k, default[k]) != v]
    diffs += train_config_differences(state.get("train_config", {}), cfg)
    if state.get("data") != fingerprint:
        diffs.append(f"training data: checkpoint has {state.get('data')}, given {fingerprint}")
    if state.get("teacher") != teacher:
        diffs.append(f"teacher: checkpoint has {state.get('teacher') or 'none'}, given {teacher or 'none'}")
    return diffs


def _check_same_run(state: dict, path: Path, args, cfg, fingerprint: str, teacher: str | None = None) -> None:
    diffs = run_differences(state, args, cfg, fingerprint, teacher)
    if diffs:
        raise ResumeError(f"{shown(path)} belongs to another run, so it cannot be resumed or loaded as this one:\n  "
                          + "\n  ".join(diffs[:8]) + (f"\n  ... and {len(diffs) - 8} more" if len(diffs) > 8 else "")
                          + "\nUse the same model, config, data and teacher, or train anew (retrain=True, or another checkpoint_dir).")


def _rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if "cuda" in s and device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], device)


def _cpu_weights(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def describe_run(model: torch.nn.Module, cfg, fingerprint: str, result, teacher: str | None = None) -> dict:
    """What is saved beside the weights: configs, data (and teacher) fingerprint, history and the run's chosen length."""
    args = getattr(model, "args", None)
    return {"model_args": args.to_dict() if args else None, "train_config": cfg.to_dict(), "data": fingerprint,
            "teacher": teacher, "history": result.history, "epoch": len(result.history), "epochs": result.epochs,
            "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch}


def save_model(path: str | os.PathLike, model: torch.nn.Module, cfg, data, result, **extra) -> Path:
    """A trained model as one file for `load_model`: its weights now and the run's description (no optimizer)."""
    return atomic_save({**describe_run(model, cfg, data_fingerprint(data), result), **extra, "model": _cpu_weights(model)}, path)


class TrainingRun:
    """One run's checkpoints in `directory` (None: nothing is written): save after an epoch, resume from last.pt.
    With several processes each calls `save` and `resume` (they exchange RNG states); only rank 0 writes."""

    def __init__(self, directory: str | os.PathLike | None, model: torch.nn.Module, cfg, data, step, batches,
                 device: torch.device, teacher: torch.nn.Module | None = None):
        directory = Path(directory) if directory else None
        self.directory, self.model, self.cfg, self.step, self.batches, self.device = directory, model, cfg, step, batches, device
        self.args: ModelArgs | None = getattr(model, "args", None)
        self.fingerprint = data_fingerprint(data) if directory is not None else ""
        # The teacher is not saved (it is its own run's best.pt), only its fingerprint: resuming with another is refused.
        self.teacher = teacher_fingerprint(teacher) if directory is not None else None
        self.last = directory / "last.pt" if directory is not None else None
        self.last_epoch: int | None = None

    def save(self, result, improved: bool, write_last: bool) -> None:
        from . import distributed

        if self.directory is None:
            return
        meta = describe_run(self.model, self.cfg, self.fingerprint, result, self.teacher)
        # every rank's own RNG state (dropout draws differ by rank); a collective, so every rank takes part
        rng = distributed.gather(_rng_state(self.device)) if write_last else []
        if not distributed.is_main():
            self.last_epoch = meta["epoch"] if write_last else self.last_epoch
            return
        if improved:  # the weights that were validated: their moving average where the step keeps one (cfg.ema_decay)
            validated = self.model if getattr(self.step, "ema", None) is None else self.step.ema
            atomic_save({**meta, "model": _cpu_weights(validated)}, self.directory / "best.pt")
        if write_last:
            atomic_save({**meta, "model": _cpu_weights(self.model), "step": self.step.state_dict(),
                         "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else {},
                         "rng": rng[0], "rank_rng": rng, "world_size": len(rng)}, self.last)
            self.last_epoch = meta["epoch"]

    def resume(self, result) -> None:
        """Continue from last.pt exactly where it stopped: weights, optimizer, batch order, RNG, history."""
        if self.last is None or not self.last.is_file():
            raise FileNotFoundError(f"resume=True but there is no last.pt in {shown(self.directory or '.')}; train without resume first")
        from . import distributed

        state = load(self.last, keys=TRAINING_STATE_KEYS)  # on the CPU: RNG states must be; the optimizer moves its own
        _check_same_run(state, self.last, self.args, self.cfg, self.fingerprint, self.teacher)
        saved, now = state.get("world_size", 1), distributed.world_size()
        if saved != now:
            raise ResumeError(f"{shown(self.last)} was written by a run of {saved} process(es), and this one has {now}: "
                              f"resume it with the same number (torchrun --nproc_per_node={saved}; plain python for 1), "
                              "so that every batch is split and every random draw made as before, or train anew "
                              "in another checkpoint directory.")
        self.model.load_state_dict(state["model"])
        self.step.load_state_dict(state["step"])
        if hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["batches"])
        _set_rng_state(state["rank_rng"][distributed.rank()] if "rank_rng" in state else state["rng"], self.device)
        result.history, result.best_val_acc, result.best_epoch = state["history"], state["best_val_acc"], state["best_epoch"]
        result.epochs = state["epochs"]
        self.last_epoch = state["epoch"]

    def kept(self) -> str:
        """Where a stopped run can be resumed from, in words."""
        if self.last is not None and self.last.is_file():
            return f"{shown(self.last)} (epoch {self.last_epoch or load(self.last)['epoch']}) is kept and resumable"
        return "no checkpoint was written"


def load_best(model: torch.nn.Module, checkpoint_dir: str | os.PathLike) -> dict:
    """Put a run's best weights (checkpoint_dir/best.pt, the epoch of the best validation accuracy) into `model`, a
    ViT or a CNN; returns the run's description (history, best_epoch, ...). Refuses a checkpoint of another model."""
    path = Path(checkpoint_dir) / "best.pt"
    state = load(path, keys=("model_args", "model", "history", "best_epoch"))
    args = getattr(model, "args", None)
    if args is not None:
        diffs = config_differences(state["model_args"] or {}, args)
        if diffs:
            raise CheckpointError(f"{shown(path)} holds another model ({'; '.join(diffs)}); build the model from the "
                                  "checkpoint's own config instead: its 'model_args' entry")
    model.load_state_dict(state["model"])
    return state


def load_finished_run(last: Path, model: torch.nn.Module, cfg, data, teacher: torch.nn.Module | None = None) -> dict | None:
    """If `last` (a last.pt) is a finished run of this model, config, data and teacher, load its final weights into
    `model` and return its description; None if it is unfinished; ResumeError if it belongs to another run."""
    state = load(last, keys=TRAINING_STATE_KEYS)
    _check_same_run(state, last, getattr(model, "args", None), cfg, data_fingerprint(data), teacher_fingerprint(teacher))
    if state["epoch"] < state["epochs"]:
        return None
    model.load_state_dict(state["step"].get("ema", state["model"]))  # a run with an average ends holding it (train())
    return state
