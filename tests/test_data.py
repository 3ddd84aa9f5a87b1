"""Data: the split, the GPU augmentations, the folder source and its errors."""
import os
import re
import time

import pytest
import torch

from conftest import cifar_dir
from vit_helpers import data as D
from vit_helpers.augment import augment_batch


def test_split_is_deterministic_disjoint_and_complete():
    a_train, a_val = D.train_val_split(1000, 100, seed=1)
    b_train, b_val = D.train_val_split(1000, 100, seed=1)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert len(a_val) == 100 and len(a_train) == 900
    assert sorted(torch.cat([a_train, a_val]).tolist()) == list(range(1000))
    assert not torch.equal(D.train_val_split(1000, 100, seed=2)[1], a_val)


def test_split_rejects_bad_sizes():
    with pytest.raises(ValueError, match="val_size"):
        D.train_val_split(10, 10)


def test_validation_batches_are_not_augmented():
    from vit_helpers.train import TrainConfig, make_batches
    from conftest import synthetic_data

    data = synthetic_data()
    cfg = TrainConfig(pipeline="gpu", augment="trivial", mix_prob=1.0, val_size=64, batch_size=32, eval_batch_size=64)
    _, val, _ = make_batches(data, cfg, torch.device("cpu"), 5)
    _, val_idx = D.train_val_split(len(data.train_x), 64, cfg.seed)
    (x1, y1), = list(val)
    (x2, y2), = list(val)
    assert torch.equal(x1, x2)  # the same every time: no randomness
    assert torch.equal(x1, D.to_model_input(data.train_x[val_idx]))  # exactly the test transform
    assert y1.dtype == torch.long and torch.equal(y1, data.train_y[val_idx])


def test_classic_validation_uses_the_test_transform():
    from vit_helpers.train import TrainConfig, make_batches
    from conftest import synthetic_data

    data = synthetic_data(size=32)
    cfg = TrainConfig(pipeline="classic", val_size=16, batch_size=8, eval_batch_size=16, num_workers=0)
    _, val, _ = make_batches(data, cfg, torch.device("cpu"), 5)
    _, val_idx = D.train_val_split(len(data.train_x), 16, cfg.seed)
    x, _ = next(iter(val))
    torch.testing.assert_close(x, D.to_model_input(data.train_x[val_idx]))


@pytest.mark.parametrize("policy", ["none", "crop_flip", "trivial"])
def test_augment_keeps_shape_dtype_range(policy):
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(0), policy)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("policy", ["crop_flip", "trivial"])
def test_augment_differs_per_sample(policy):
    one = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(one.expand(32, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0), policy)
    distinct = {tuple(o.flatten()[:200].tolist()) for o in out}
    assert len(distinct) > 8


def test_crop_flip_moves_whole_pixels():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(0), "crop_flip")
    # every output pixel is either padding (0) or an exact input value
    vals = (out * 255).round()
    assert torch.allclose(out * 255, vals, atol=1e-3)


def test_augment_is_reproducible_from_the_generator():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(5), "trivial")
    b = augment_batch(x, torch.Generator().manual_seed(5), "trivial")
    assert torch.equal(a, b)


def test_augment_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        augment_batch(torch.rand(2, 3, 32, 32))


def test_gpu_batches_mixup_gives_soft_labels():
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 5, (64,))
    b = D.GPUBatches(x, y, 16, shuffle=True, drop_last=True, policy="crop_flip", mix_prob=1.0, n_classes=5)
    xb, yb = next(iter(b))
    assert yb.shape == (16, 5)
    torch.testing.assert_close(yb.sum(-1), torch.ones(16))


def test_gpu_batches_soft_labels_for_every_batch_when_mixing():
    # Unmixed batches get one-hot targets too, so the compiled step sees one kind of target.
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 5, (64,))
    b = D.GPUBatches(x, y, 16, shuffle=True, drop_last=True, policy="none", mix_prob=1e-9, n_classes=5)
    for xb, yb in b:
        assert yb.shape == (16, 5)
        assert torch.equal(yb.sum(-1), torch.ones(16)) and torch.equal(yb.max(-1).values, torch.ones(16))


def test_augment_from_draws_is_a_function_of_the_draws():
    from vit_helpers.augment import DRAWS, augment_from_draws, draw

    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    u = draw(8, torch.Generator().manual_seed(3))
    assert torch.equal(augment_from_draws(x, u), augment_from_draws(x, u.clone()))
    assert torch.equal(augment_from_draws(x, u), augment_batch(x, torch.Generator().manual_seed(3)))
    # draws in [0.5, 1) for the flip column never flip, [0, 0.5) always do (crop off, identity op)
    u = torch.zeros(8, u.shape[1])
    u[:, DRAWS["shift"]] = 0.5  # shift 0
    keep = augment_from_draws(x, u.index_fill(1, torch.tensor([DRAWS["flip"]]), 0.9), "crop_flip")
    flip = augment_from_draws(x, u, "crop_flip")
    torch.testing.assert_close(keep, x.float() / 255)
    torch.testing.assert_close(flip, x.flip(-1).float() / 255)


def test_erase_mask_one_rectangle_in_bounds_for_the_chosen_images():
    from vit_helpers.augment import draw, drawn, erase_mask

    u = draw(2000, torch.Generator().manual_seed(0))
    m = erase_mask(u, 32, 32, prob=0.25)
    assert m.shape == (2000, 1, 32, 32) and m.dtype == torch.bool
    chosen = drawn(u, "erase") < 0.25
    assert not m[~chosen].any() and m[chosen].flatten(1).any(1).all()
    frac = m[chosen].float().mean((1, 2, 3))
    assert frac.min() >= 0.5 / 1024 and frac.max() <= 0.45  # about 2%-33% of the image, after rounding
    # each mask is one axis-aligned rectangle: its area is rows x columns it touches
    mc = m[chosen, 0]
    rows, cols = mc.any(2).sum(1), mc.any(1).sum(1)
    assert torch.equal(mc.sum((1, 2)), rows * cols)
    assert 0.2 < chosen.float().mean() < 0.3


def test_gpu_batches_erasing_fills_the_mean_colour():
    x = torch.full((32, 3, 16, 16), 200, dtype=torch.uint8)
    y = torch.zeros(32, dtype=torch.long)
    b = D.GPUBatches(x, y, 32, shuffle=True, drop_last=True, policy="none", erase_prob=1.0)
    xb, _ = next(iter(b))
    zero = (xb == 0).all(1)  # normalised 0 = the dataset mean, in every channel
    assert zero.flatten(1).any(1).all()  # every image has an erased patch
    kept = D.normalize(torch.full((1, 3, 1, 1), 200 / 255))
    torch.testing.assert_close(torch.where(zero.unsqueeze(1), kept, xb), kept.expand_as(xb))  # the rest untouched


def test_repeated_augmentation_batches():
    x = torch.arange(48, dtype=torch.uint8).view(48, 1, 1, 1).expand(48, 3, 8, 8).contiguous()
    y = torch.arange(48)
    b = D.GPUBatches(x, y, 12, shuffle=True, drop_last=True, policy="crop_flip", repeats=3)
    assert len(b) == 4
    seen = []
    for xb, yb in b:
        labels = yb.tolist()
        assert all(labels[i] == labels[i + 1] == labels[i + 2] for i in range(0, 12, 3))  # copies sit together
        assert len(set(labels)) == 4
        seen += labels[::3]
        assert not torch.equal(xb[0], xb[1]) or not torch.equal(xb[1], xb[2])  # augmented separately
    assert len(set(seen)) == 16  # 48 / 3 distinct images per epoch, none twice


@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": 5}, "repeats"), ({"repeats": 2, "shuffle": False}, "shuffle"), ({"erase_prob": 1.5}, "erase_prob"),
    ({"policy": "autoaugment"}, "policy"), ({"batch_size": 0}, "batch_size"),
])
def test_gpu_batches_rejects_bad_settings(kwargs, match):
    args = {"batch_size": 12, "shuffle": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        D.GPUBatches(torch.zeros(24, 3, 8, 8, dtype=torch.uint8), torch.zeros(24, dtype=torch.long), args.pop("batch_size"), **args)


def test_beta_sampler_matches_the_distribution():
    from vit_helpers.augment import sample_beta

    for a in (0.8, 1.0, 2.0):
        x = sample_beta(20000, a, torch.Generator().manual_seed(0))
        assert x.min() >= 0 and x.max() <= 1
        assert x.mean().item() == pytest.approx(0.5, abs=0.01)
        assert x.var().item() == pytest.approx(1 / (4 * (2 * a + 1)), rel=0.05)  # var of Beta(a, a)


def test_mix_plan_rows():
    from vit_helpers.augment import mix_plan

    rows = mix_plan(4000, 0.8, (32, 32), torch.Generator().manual_seed(0))
    kind, lam, x1, y1, x2, y2 = rows.T
    assert (kind == 0).float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert (kind == 1).float().mean().item() == pytest.approx(0.4, abs=0.03)
    assert torch.equal(lam[kind == 0], torch.ones(int((kind == 0).sum())))
    cut = kind == 2
    assert ((x1 >= 0) & (x2 <= 32) & (x1 <= x2) & (y1 >= 0) & (y2 <= 32) & (y1 <= y2))[cut].all()
    torch.testing.assert_close(lam[cut], 1 - ((x2 - x1) * (y2 - y1) / 1024)[cut])  # lam = the share not pasted over


def test_mix_batch_equals_a_slicing_reference():
    from vit_helpers.augment import mix_batch

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 4).float()
    out, t = mix_batch(x, y, torch.tensor([0.0, 1.0, 0, 0, 0, 0]), 4)  # no mixing
    assert torch.equal(out, x) and torch.equal(t, onehot)
    out, t = mix_batch(x, y, torch.tensor([1.0, 0.3, 0, 0, 0, 0]), 4)  # MixUp with the previous image
    torch.testing.assert_close(out, 0.3 * x + 0.7 * x.roll(1, 0))
    torch.testing.assert_close(t, 0.3 * onehot + 0.7 * onehot.roll(1, 0))
    out, t = mix_batch(x, y, torch.tensor([2.0, 1 - 12 / 64, 2, 1, 5, 5]), 4)  # CutMix: x 2:5, y 1:5
    ref = x.clone()
    ref[:, :, 1:5, 2:5] = x.roll(1, 0)[:, :, 1:5, 2:5]
    assert torch.equal(out, ref)
    torch.testing.assert_close(t, (52 / 64) * onehot + (12 / 64) * onehot.roll(1, 0))


def test_gpu_batches_epochs_are_reproducible_and_resumable():
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 5, (64,))
    make = lambda: D.GPUBatches(x, y, 16, shuffle=True, drop_last=True, policy="trivial", mix_prob=0.5, erase_prob=0.3, n_classes=5)
    a, b = make(), make()
    list(a)
    state = a.state_dict()
    first = [t.clone() for t, _ in a]  # epoch 2 of a
    list(b)
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, (q, _) in zip(first, b))


def test_folder_source_reads_and_caches(tmp_path, monkeypatch):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / "ds" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), colour).save(tmp_path / "ds" / split / c / f"{i}.png")
    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    d = D.load_cifar10(tmp_path / "ds")
    assert d.classes == ("cat", "dog") and d.train_x.shape == (6, 3, 8, 8) and d.train_x.dtype == torch.uint8
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.train_x[0, 0].eq(255).all() and d.train_x[5, 2].eq(255).all()
    assert list((tmp_path / "cache").glob("*.pt"))
    assert "cached" in D.load_cifar10(tmp_path / "ds").source


def test_missing_data_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    with pytest.raises(RuntimeError) as e:
        D.load_cifar10(tmp_path / "nowhere")
    assert D.DATA_DIR_ENV in str(e.value) and "internet" in str(e.value)


def test_failed_download_names_both_fixes(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("VIT_DATA_ROOT", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(RuntimeError) as e:
        D.load_cifar10()
    assert D.DATA_DIR_ENV in str(e.value) and "internet" in str(e.value)


def test_folder_missing_split_is_explained(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="test"):
        D.load_cifar10(tmp_path)


@pytest.mark.skipif(cifar_dir() is None, reason="needs VIT_DATA_DIR (CI unpacks ../shared/data)")
def test_real_cifar10_folder():
    d = D.load_cifar10()
    assert d.classes == D.CIFAR10_CLASSES
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(d.test_y).tolist() == [1000] * 10


# ---- the folder source under faults: edits, hidden files, damaged images and caches ----

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def _image_folder(root, n=(("train", 3), ("test", 2)), suffix="bmp"):
    """A tiny folder-per-class dataset of solid 8x8 images (BMP: a pixel edit keeps the file size)."""
    from PIL import Image

    for split, k in n:
        for c, colour in COLOURS.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                Image.new("RGB", (8, 8), colour).save(root / split / c / f"{i}.{suffix}")
    return root


def test_cache_notices_an_edit_that_keeps_size_and_mtime(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "ds")
    assert D.load_cifar10(root).train_x[0, 0, 0, 0] == 255
    assert "cached" in D.load_cifar10(root).source
    f = root / "train" / "cat" / "0.bmp"
    st = f.stat()
    Image.new("RGB", (8, 8), (7, 7, 7)).save(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or an rsync would leave it
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    d = D.load_cifar10(root)
    assert "cached" not in d.source and d.train_x[0].eq(7).all()
    assert "cached" in D.load_cifar10(root).source


def test_cache_keeps_one_decode_per_folder_and_no_temp_files(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "ds")
    D.load_cifar10(root)
    cache = tmp_path / "cache"
    (first,) = cache.glob("images-*.pt")
    killed = cache / f".{first.name}.otherhost.4242.abcd.tmp"  # a decode save killed midway, hours ago
    killed.write_bytes(b"x" * 1000)
    old = time.time() - 3 * 3600
    os.utime(killed, (old, old))
    Image.new("RGB", (8, 8), (0, 0, 255)).save(root / "train" / "dog" / "9.bmp")
    assert len(D.load_cifar10(root).train_x) == 7
    assert [p.name for p in cache.iterdir()] == [next(cache.glob("images-*.pt")).name]  # the old decode went


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "ds")
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()  # what Jupyter leaves where it ran
        Image.new("RGB", (8, 8)).save(root / split / ".ipynb_checkpoints" / "x.bmp")
        (root / split / "__MACOSX").mkdir()
        (root / split / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        for c in COLOURS:
            (root / split / c / "._0.bmp").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # macOS AppleDouble
    d = D.load_cifar10(root)
    assert d.classes == ("cat", "dog")
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1] and d.test_y.tolist() == [0, 0, 1, 1]


def test_damaged_images_are_all_named_with_the_fix(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "ds", suffix="jpg")
    g = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()).save(
        root / "test" / "dog" / "1.jpg", quality=95)
    noisy = (root / "test" / "dog" / "1.jpg").read_bytes()
    (root / "test" / "dog" / "1.jpg").write_bytes(noisy[: len(noisy) * 7 // 10])  # a copy cut short
    (root / "train" / "cat" / "2.jpg").write_text("not an image")
    with pytest.raises(ValueError) as e:
        D.load_cifar10(root)
    msg = str(e.value)
    assert "2 of 10" in msg and str(root / "test" / "dog" / "1.jpg") in msg and "truncated" in msg
    assert str(root / "train" / "cat" / "2.jpg") in msg and "Delete or replace" in msg


def test_image_of_another_size_is_named(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "ds")
    Image.new("RGB", (6, 5)).save(root / "train" / "dog" / "1.bmp")
    with pytest.raises(ValueError, match=r"most are 8x8.*dog/1\.bmp \(6x5\).*Resize them to 8x8"):
        D.load_cifar10(root)


@pytest.mark.parametrize("damage", ["empty", "truncated", "another file"])
def test_damaged_cache_is_reported_and_rebuilt(tmp_path, damage):
    root = _image_folder(tmp_path / "ds")
    want = D.load_cifar10(root)
    (cache_file,) = (tmp_path / "cache").glob("images-*.pt")
    if damage == "empty":
        cache_file.write_bytes(b"")
    elif damage == "truncated":
        cache_file.write_bytes(cache_file.read_bytes()[:300])
    else:  # a readable torch file of something else: wrong shapes and labels under the right name
        torch.save({"key": "?", "train_x": torch.zeros(1), "train_y": torch.zeros(1), "test_x": torch.zeros(1),
                    "test_y": torch.zeros(1), "classes": ["x"], "train_mean": 0}, cache_file)
    with pytest.warns(UserWarning, match=f"decode cache {re.escape(str(cache_file))} can't be used"):
        d = D.load_cifar10(root)
    assert torch.equal(d.train_x, want.train_x) and torch.equal(d.test_y, want.test_y)
    assert "cached" in D.load_cifar10(root).source  # rewritten


def test_cache_that_cannot_be_written_only_warns(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "ds")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match="could not write the decode cache.*No space left"):
        d = D.load_cifar10(root)  # the decode is not lost to a full disk
    assert d.classes == ("cat", "dog") and len(d.train_x) == 6


def test_ranks_take_their_share_of_one_global_batch():
    """Several processes: each rank's batches are its slice of the one seeded global batch (same order, same draws)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 10, (100,), generator=g)
    kw = dict(shuffle=True, drop_last=True, policy="crop_flip", mix_prob=0.5, seed=3)
    whole = list(D.GPUBatches(x, y, 20, **kw).plan())
    shares = [list(D.GPUBatches(x, y, 20, rank=r, world_size=4, **kw).plan()) for r in range(4)]
    assert all(len(s) == len(whole) == 5 for s in shares)
    for i, (idx, u, mix) in enumerate(whole):
        assert torch.equal(torch.cat([s[i][0] for s in shares]), idx)
        assert torch.equal(torch.cat([s[i][1] for s in shares]), u)
        assert all(torch.equal(s[i][2], mix) for s in shares)
    with pytest.raises(ValueError, match="must divide evenly among world_size=3"):
        D.GPUBatches(x, y, 20, rank=0, world_size=3, **kw)
    with pytest.raises(ValueError, match="need drop_last=True"):
        D.GPUBatches(x, y, 20, rank=0, world_size=2)


# ---- the pieces notebook 05 writes out by hand, against the policy's own code ----

def test_crop_flip_equals_a_slicing_reference():
    """The affine path (one grid_sample) copies whole pixels: a crop of the zero-padded image, then a mirror."""
    from vit_helpers.augment import augment_from_draws, crop_flip_from_draws, draw

    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    u = draw(32, torch.Generator().manual_seed(1))
    flip, shift = crop_flip_from_draws(u, pad=4)
    assert flip.any() and (~flip).any() and shift.min() == -4 and shift.max() == 4
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    ref = torch.stack([padded[b, :, 4 + dy:4 + dy + 16, 4 + dx:4 + dx + 16] for b, (dx, dy) in enumerate(shift.long().tolist())])
    ref = torch.where(flip.view(-1, 1, 1, 1), ref.flip(-1), ref)
    torch.testing.assert_close(augment_from_draws(x, u, "crop_flip"), ref, atol=1e-6, rtol=0)


def test_apply_op_is_the_op_the_policy_draws():
    """With no flip and no shift, the trivial policy's image for a drawn op equals apply_op with that op."""
    from vit_helpers.augment import DRAWS, TRIVIAL_OPS, apply_op, augment_from_draws, draw

    x = torch.randint(40, 200, (8, 3, 32, 32), dtype=torch.uint8)  # not the full range, so autocontrast changes it
    for k, name in enumerate(TRIVIAL_OPS):
        u = draw(8, torch.Generator().manual_seed(k))
        u[:, DRAWS["op"]] = (k + 0.5) / len(TRIVIAL_OPS)
        u[:, DRAWS["flip"]] = 0.9  # no flip
        u[:, DRAWS["shift"]] = 0.5  # shift 0
        sign = torch.where(u[:, DRAWS["sign"]] < 0.5, -1.0, 1.0)
        expected = apply_op(x.float() / 255, name, u[:, DRAWS["strength"]], sign)
        torch.testing.assert_close(augment_from_draws(x, u, "trivial"), expected, atol=1e-5, rtol=0, msg=name)
        if name != "identity":
            assert not torch.allclose(expected, x.float() / 255), f"{name} left the images unchanged"


def test_trivial_ops_table_covers_every_op_and_unknown_ops_are_named():
    from vit_helpers.augment import TRIVIAL_OPS, apply_op, trivial_ops

    table = trivial_ops()
    assert [name for name, _, _ in table] == list(TRIVIAL_OPS)
    assert dict((n, k) for n, k, _ in table)["rotate"] == "geometric" and "30" in dict((n, e) for n, _, e in table)["rotate"]
    with pytest.raises(ValueError, match="unknown operation 'equalize'"):
        apply_op(torch.rand(2, 3, 8, 8), "equalize", 0.5)
