"""CIFAR-10 (Krizhevsky, 2009): loading, the train/validation split, and two input pipelines.

Sources, in order: a folder-per-class tree (`train/<class>/*`, `test/<class>/*`) given as
`data_dir` or by the environment variable VIT_DATA_DIR; otherwise torchvision's download.
Either way the images are decoded once into uint8 tensors and cached on disk.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths
from .augment import MIX_COLUMNS, N_DRAWS, POLICIES, augment_from_draws, check_images, draw, erase_mask, mix_batch, mix_plan

DATA_DIR_ENV = "VIT_DATA_DIR"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set (the article's numbers).
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class ImageData:
    """A labelled image dataset held as uint8 tensors (N, C, H, W) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str  # where it came from, for printing

    def __repr__(self) -> str:
        return (f"ImageData({len(self.train_x)} train + {len(self.test_x)} test images of shape "
                f"{tuple(self.train_x.shape[1:])}, {len(self.classes)} classes, from {self.source})")


def _missing_data_error(cause: BaseException | None) -> RuntimeError:
    return RuntimeError(
        "CIFAR-10 is not available. Fix it one of two ways:\n"
        "  1. connect to the internet, so torchvision can download it (the default), or\n"
        f"  2. point the project at a folder-per-class copy (train/<class>/*.jpg, test/<class>/*.jpg):\n"
        f"     export {DATA_DIR_ENV}=/path/to/cifar10   (or pass data_dir=... to load_cifar10)\n"
        f"     An offline copy unpacks with: python ../shared/data/cifar10.py unpack data/cifar10\n"
        f"(download attempted into {paths.data_root()}; cause: {cause!r})"
    )


class DataError(ValueError):
    """Image files that can't be used as they are; the message names them and says what to do."""


# Part of the cache key: bump it whenever decoding or listing changes, so no cache of the old way is served.
CACHE_FORMAT = 2
_CACHE_KEYS = ("key", "train_x", "train_y", "test_x", "test_y", "classes")
_SKIPPED_NAMES = {"__MACOSX"}  # the resource-fork folder macOS's zip adds


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in _SKIPPED_NAMES


def _list_folder(root: Path) -> dict[str, list[tuple[str, list[Path]]]]:
    """{split: [(class, sorted image files), ...]} for a folder-per-class tree, checked.

    Hidden names (starting with ".") and __MACOSX are skipped, folders and files alike: Jupyter's
    .ipynb_checkpoints is not a class, and macOS's ._name.jpg (AppleDouble) and .DS_Store are not images.
    """
    tree = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise FileNotFoundError(
                f"{root} is not a folder-per-class dataset: {d} is missing. Expected "
                f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg"
            )
        classes = sorted(e.name for e in os.scandir(d) if _visible(e) and e.is_dir())
        if not classes:
            raise FileNotFoundError(f"{d} has no class folders; expected {d}/<class>/*.jpg")
        tree[split] = []
        for c in classes:
            names = sorted(e.name for e in os.scandir(d / c)
                           if _visible(e) and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file())
            if not names:
                raise FileNotFoundError(f"{d / c} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            tree[split].append((c, [d / c / n for n in names]))
    train_classes = [c for c, _ in tree["train"]]
    if train_classes != [c for c, _ in tree["test"]]:
        raise ValueError(f"train and test of {root} have different class folders: {train_classes} vs {[c for c, _ in tree['test']]}")
    return tree


def _bad_files_error(root: Path, bad: list[str], n: int, doing: str) -> DataError:
    shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
    return DataError(f"{len(bad)} of {n} image files in {root} can't be {doing}:\n  {shown}\n"
                     f"Delete or replace them (or move them out of the class folders), then load again.")


def _scan(root: Path, tree: dict, decode: bool) -> tuple[str, ImageData | None]:
    """(key, images): the key hashes every listed file's split/class/name and bytes, so any edit, addition,
    removal or rename changes it; with `decode`, also the images decoded from those same bytes."""
    from PIL import Image, UnidentifiedImageError

    h = hashlib.sha256(f"vit_helpers image cache, format {CACHE_FORMAT}\0".encode())
    bad, out, n = [], {}, 0
    for split, entries in tree.items():
        images, labels, files = [], [], []
        for label, (c, paths_) in enumerate(entries):
            for f in paths_:
                n += 1
                try:
                    raw = f.read_bytes()
                except OSError as e:
                    bad.append(f"{f}: can't read it ({e.strerror or e})")
                    continue
                h.update(f"{split}/{c}/{f.name}\0{len(raw)}\0".encode())
                h.update(raw)
                if not decode:
                    continue
                try:
                    with Image.open(io.BytesIO(raw)) as im:
                        images.append(np.asarray(im.convert("RGB")))
                except UnidentifiedImageError:
                    bad.append(f"{f}: not an image PIL can read ({len(raw):,} bytes)")
                    continue
                except Exception as e:  # PIL raises many kinds (OSError for truncated files, ValueError, SyntaxError...)
                    bad.append(f"{f}: {type(e).__name__}: {e}")
                    continue
                labels.append(label)
                files.append(f)
        if decode and not bad:
            sizes = Counter(a.shape for a in images)
            if len(sizes) > 1:
                (hh, ww, _), _ = sizes.most_common(1)[0]
                odd = [f"{f} ({a.shape[1]}x{a.shape[0]})" for f, a in zip(files, images) if a.shape[:2] != (hh, ww)]
                raise DataError(f"images in {root / split} differ in size: most are {ww}x{hh}, but {len(odd)} are not, "
                                f"e.g. {', '.join(odd[:3])}. Resize them to {ww}x{hh} or remove them.")
            out[split] = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels))  # (N,H,W,C)->(N,C,H,W)
    if bad:
        raise _bad_files_error(root, bad, n, "decoded" if decode else "read")
    data = ImageData(*out["train"], *out["test"], classes=tuple(c for c, _ in tree["train"]), source=f"folder {root}") if decode else None
    return h.hexdigest()[:32], data


def _cache_problem(d: dict, key: str, classes: tuple[str, ...]) -> str | None:
    """What is wrong with a loaded cache dict, or None."""
    if d["key"] != key:
        return "it was made from other files"
    if tuple(d["classes"]) != classes:
        return f"its classes {d['classes']} are not the folder's {list(classes)}"
    for split in ("train", "test"):
        x, y = d[f"{split}_x"], d[f"{split}_y"]
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4
                and isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (len(x),)):
            return f"its {split} tensors are malformed"
    return None


def _read_cache(cache_file: Path, key: str, root: Path, classes: tuple[str, ...]) -> ImageData | None:
    """The cached decode, or None when there is none or it can't be used (then it is removed, with a warning)."""
    from .checkpoint import load

    try:
        d = load(cache_file, keys=_CACHE_KEYS)
        problem = _cache_problem(d, key, classes)
    except FileNotFoundError:  # none yet, or another process replaced it meanwhile
        return None
    except Exception as e:  # CheckpointError (empty, cut short, not a torch file), odd contents: it is only a cache
        problem = str(e)
    if problem:
        warnings.warn(f"the decode cache {cache_file} can't be used ({problem}); decoding {root} again and "
                      f"rewriting it", stacklevel=3)
        try:
            cache_file.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    return ImageData(d["train_x"], d["train_y"], d["test_x"], d["test_y"], tuple(d["classes"]), source=f"folder {root} (cached decode)")


def _write_cache(cache_file: Path, key: str, data: ImageData, folder_id: str) -> None:
    """Save the decode; a failure only warns (the images are decoded), and older decodes of the folder are removed."""
    from .checkpoint import _remove_stale_temps, atomic_save

    try:
        atomic_save({"key": key, "train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x,
                     "test_y": data.test_y, "classes": list(data.classes)}, cache_file)
    except (OSError, RuntimeError) as e:  # disk full, read-only folder (torch reports failed writes as RuntimeError)
        warnings.warn(f"could not write the decode cache {cache_file} ({type(e).__name__}: {str(e).strip()[:200]}); "
                      f"the images are decoded, but the next load decodes them again. Free some disk space, or point "
                      f"VIT_CACHE_DIR at a writable folder.", stacklevel=3)
        return
    # One cache per data folder: each edit of the images would otherwise leave a full-size decode behind.
    for old in cache_file.parent.glob(f"images-{folder_id}-*.pt"):
        if old != cache_file:
            try:
                old.unlink()
            except OSError:
                pass
    _remove_stale_temps(cache_file.parent, f".images-{folder_id}-")  # of killed writes under an older key


def _download(name: str = "CIFAR10") -> ImageData:
    import torchvision

    cls = getattr(torchvision.datasets, name)
    root = paths.data_root()
    try:
        train = cls(root=str(root), train=True, download=True)
        test = cls(root=str(root), train=False, download=True)
    except Exception as e:  # no network, blocked host, disk full...
        raise _missing_data_error(e) from e
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # (N,H,W,C)->(N,C,H,W)
    return ImageData(to_t(train.data), torch.tensor(train.targets), to_t(test.data), torch.tensor(test.targets),
                     classes=tuple(train.classes), source=f"torchvision {name} in {root}")


def load_cifar10(data_dir: str | os.PathLike | None = None, cache: bool = True) -> ImageData:
    """CIFAR-10 as uint8 tensors, from `data_dir`, else $VIT_DATA_DIR, else torchvision's download.

    A folder's decode is cached under the hash of its image files' names and bytes: any change to them is
    noticed (and decoded afresh); a damaged cache is reported and rebuilt.
    """
    origin = "data_dir" if data_dir else DATA_DIR_ENV
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return _download("CIFAR10")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise _missing_data_error(FileNotFoundError(f"{root} (from {origin}) is not a folder"))
    tree = _list_folder(root)
    if not cache:
        return _scan(root, tree, decode=True)[1]
    folder_id = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    key, _ = _scan(root, tree, decode=False)
    data = _read_cache(paths.cache_dir() / f"images-{folder_id}-{key}.pt", key, root, tuple(c for c, _ in tree["train"]))
    if data is None:
        key, data = _scan(root, tree, decode=True)  # the key of the bytes decoded, should a file change meanwhile
        _write_cache(paths.cache_dir() / f"images-{folder_id}-{key}.pt", key, data, folder_id)
    return data


def load_torchvision_dataset(name: str) -> ImageData:
    """Another torchvision dataset with the same layout (e.g. "CIFAR100"); needs the internet."""
    return _download(name)


def train_val_split(n: int, val_size: int = 5000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) into (train indices, validation indices), each in random order.

    Random order matters: the first k training indices are then a random subset of k images
    (a folder-per-class copy lists images class by class).
    """
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} for {n} images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def normalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """Float images in [0, 1] (B, C, H, W) -> standardised per channel. mean/std: sequences or tensors."""
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def to_model_input(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the normalised float tensor the model takes (what the test transform does)."""
    return normalize(x_uint8.float() / 255)


class GPUBatches:
    """Shuffled mini-batches from uint8 images that live on one device, augmented there.

    Yields (inputs, targets): normalised float images, and int labels or, when mix_prob > 0, soft
    labels (B, n_classes) for every batch (one-hot where a batch is not mixed). All randomness is
    drawn once per epoch from `generator` (on the device) and `host_generator` (MixUp/CutMix rows),
    so a run can be resumed exactly, and each batch is a pure function of its draws (`make_batch`),
    which is what lets the training step be captured as one CUDA graph.

    policy: "none", "crop_flip" or "trivial" (see `augment.augment_batch`).
    erase_prob: chance an image gets a Random Erasing rectangle (filled with the mean colour).
    repeats: repeated augmentation (Hoffer et al., 2020): each batch holds batch_size / repeats
        distinct images, each `repeats` times with its own augmentation; an epoch still has as many
        images as the data.
    compile: torch.compile `make_batch`'s work (a CUDA device only; a few kernels instead of ~100).
    rank, world_size: for several processes training one model (`vit_helpers.distributed`): batch_size stays the
        global batch; every rank draws the same epoch order and augmentation and keeps its share of each batch,
        batch_size / world_size images (the rank-th slice). MixUp/CutMix pairs each image with its neighbour
        within the share, so only those pairings differ from one process.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device=None, shuffle: bool = False,
                 drop_last: bool = False, policy: str = "none", mix_prob: float = 0.0, n_classes: int = 10,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, seed: int = 0, erase_prob: float = 0.0,
                 repeats: int = 1, compile: bool = False, rank: int = 0, world_size: int = 1):
        device = torch.device(device or x.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} (the global batch) must divide evenly among world_size={world_size} "
                             f"processes, and rank={rank} must be one of them")
        if world_size > 1 and not drop_last:
            raise ValueError("several processes need drop_last=True (a last, smaller batch would not split evenly); "
                             "to evaluate on several processes, give each rank its own shard of the images instead")
        if not isinstance(repeats, int) or repeats < 1 or batch_size % repeats:
            raise ValueError(f"repeats must be a positive integer that divides batch_size={batch_size}, got {repeats!r}")
        if repeats > 1 and not shuffle:
            raise ValueError("repeats > 1 needs shuffle=True: repeated augmentation is for training batches")
        if not 0.0 <= erase_prob <= 1.0 or not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"erase_prob and mix_prob are probabilities in [0, 1], got {erase_prob} and {mix_prob}")
        if policy not in POLICIES:
            raise ValueError(f"unknown augmentation policy {policy!r}; use one of {POLICIES}")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.policy, self.mix_prob, self.erase_prob, self.repeats = policy, mix_prob, erase_prob, repeats
        self.n_classes, self.mixup_alpha, self.cutmix_alpha = n_classes, mixup_alpha, cutmix_alpha
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.host_generator = torch.Generator().manual_seed(seed + 1)  # MixUp/CutMix rows
        # Made once: a host-to-device copy per batch would stall the CPU until the GPU caught up.
        self.mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(CIFAR10_STD, device=device).view(1, -1, 1, 1)
        self._make = _make_batch
        if compile and device.type == "cuda":
            # Fixed shapes (drop_last batches): compiled once; static settings are baked in.
            self._make = torch.compile(_make_batch, dynamic=False)

    def _n_used(self) -> int:
        return len(self.x) // self.repeats * self.repeats

    def __len__(self) -> int:
        n = self._n_used()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def plan(self):
        """Yield, for each batch of one epoch, its draws: (image indices, augmentation draws, mix row); with several
        processes, this rank's share of each global batch."""
        n, device = len(self.x), self.x.device
        if self.shuffle:
            order = torch.randperm(n, device=device, generator=self.generator)
            if self.repeats > 1:  # n / repeats distinct images, each repeated next to itself
                order = order[: n // self.repeats].repeat_interleave(self.repeats)
        else:
            order = torch.arange(n, device=device)
        steps = len(self)
        if self.policy == "none" and self.erase_prob == 0:  # nothing random: no draws (all-zero stand-ins)
            draws = torch.zeros(1, N_DRAWS, device=device).expand(len(order), -1)
        else:
            draws = draw(len(order), self.generator, device)
        mix = torch.zeros(steps, MIX_COLUMNS)
        if self.mix_prob > 0:
            mix = mix_plan(steps, self.mix_prob, tuple(self.x.shape[-2:]), self.host_generator, self.mixup_alpha, self.cutmix_alpha)
        mix = mix.to(device)  # one copy per epoch
        share = self.batch_size // self.world_size
        for i in range(steps):
            start = i * self.batch_size + self.rank * share
            span = slice(start, start + share)
            yield order[span], draws[span], mix[i]

    def make_batch(self, idx: torch.Tensor, u: torch.Tensor, mix: torch.Tensor):
        """(inputs, targets) of one batch from its draws (see `plan`)."""
        return self._make(self.x[idx], self.y[idx], u, mix, self.mean, self.std, self.policy, self.erase_prob,
                          self.n_classes if self.mix_prob > 0 else 0)

    def __iter__(self):
        for draws in self.plan():
            yield self.make_batch(*draws)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "host_generator": self.host_generator.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
        self.host_generator.set_state(s["host_generator"])


def _make_batch(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, mix: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor, policy: str, erase_prob: float, mix_classes: int):
    """uint8 batch -> augmented, normalised, optionally erased (erased pixels become 0, the mean colour)
    and mixed (when mix_classes > 0: soft labels over that many classes)."""
    check_images(x, policy)
    out = augment_from_draws(x, u, policy)
    out = (out - mean) / std
    if erase_prob > 0:
        out = out.masked_fill(erase_mask(u, x.shape[-2], x.shape[-1], erase_prob), 0.0)
    if mix_classes:
        out, y = mix_batch(out, y, mix, mix_classes)
    return out, y


# ---- the article's classic pipeline: PIL transforms in DataLoader worker processes ----

def classic_transforms():
    """The article's (train, test) transforms."""
    from torchvision import transforms

    norm = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    test = transforms.Compose([transforms.ToTensor(), norm])
    train = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomResizedCrop((32, 32), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
        transforms.ToTensor(),
        norm,
    ])
    return train, test


class TensorImageDataset(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images served as PIL images through a transform, as torchvision's CIFAR10 does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.x[i].permute(1, 2, 0).numpy())  # (C,H,W)->(H,W,C)
        return (self.transform(img) if self.transform else img), int(self.y[i])


def classic_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool, num_workers: int = 4, seed: int = 0):
    """A DataLoader with the article's transforms; `train` picks augmentation, shuffling and drop_last."""
    train_tf, test_tf = classic_transforms()
    ds = TensorImageDataset(x, y, train_tf if train else test_tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)


def rotate90(data: ImageData) -> ImageData:
    """Every image turned 90 degrees counter-clockwise: a camera mounted sideways."""
    rot = lambda x: torch.rot90(x, 1, dims=(2, 3))  # (N, C, H, W), rotating the H, W plane
    return ImageData(rot(data.train_x), data.train_y, rot(data.test_x), data.test_y, data.classes, f"{data.source}, rotated 90 degrees")


FINETUNE_TASKS = ("cifar10-rot90", "cifar100")


def load_task(name: str) -> ImageData:
    """A fine-tuning task: 'cifar10-rot90' (offline, derived from CIFAR-10) or 'cifar100' (torchvision download)."""
    if name == "cifar10-rot90":
        return rotate90(load_cifar10())
    if name == "cifar100":
        return load_torchvision_dataset("CIFAR100")
    raise ValueError(f"unknown task {name!r}; choose one of {FINETUNE_TASKS}")
