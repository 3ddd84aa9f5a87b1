"""The compile cache (vit_helpers.compile_cache): its key, its file, and that nothing wrong with it stops training.
torch's own serialisation is replaced by a stand-in here (compiling on two CPU cores would take minutes); on a GPU,
benchmarks/perf_ablation.py measures the real thing (a cold first epoch against one after loading the cache)."""
import pytest
import torch

from vit_helpers import compile_cache as CC
from vit_helpers.config import ModelArgs, recipe


class FakeInfo:
    def __init__(self, n):
        self.artifacts = {"inductor": ["k"] * n}


@pytest.fixture
def torch_cache(monkeypatch):
    """torch.compiler's save/load, recorded: `saved` is what the process 'compiled', `loaded` what was loaded."""
    box = {"saved": b"compiled graphs", "loaded": []}

    def load(blob):
        if not blob.startswith(b"compiled"):
            raise RuntimeError("unpickling failed: invalid load key")
        box["loaded"].append(blob)
        return FakeInfo(3)

    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (box["saved"], FakeInfo(3)) if box["saved"] else None)
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    return box


def test_the_key_names_torch_and_the_device_and_ignores_the_runs_length_and_seed():
    args, cfg = recipe("distilled")
    key = CC.cache_key(args, cfg, torch.device("cpu"))
    assert key.startswith(f"torch{torch.__version__}-cpu-".replace("+", "-"))
    assert CC.cache_key(args, cfg.replace(epochs=300, seed=1, budget_minutes=None, ema_decay=0.999), torch.device("cpu")) == key
    assert CC.cache_key(args, cfg.replace(batch_size=1024), torch.device("cpu")) != key
    assert CC.cache_key(args.replace(dim=128), cfg, torch.device("cpu")) != key
    assert CC.cache_key(args, cfg.replace(distill_temperature=2.0), torch.device("cpu")) != key
    assert CC.cache_key(args, cfg.replace(compile_scope="step"), torch.device("cpu")) != key


def test_the_folder_follows_the_environment(tmp_path):
    assert CC.folder({"VIT_COMPILE_CACHE": "off"}) is None
    assert CC.folder({"VIT_COMPILE_CACHE": str(tmp_path)}) == tmp_path
    assert CC.folder({}).name == "compile_cache"


def test_inactive_without_compilation_on_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("VIT_COMPILE_CACHE", str(tmp_path))
    _, cfg = recipe("distilled")
    from vit_helpers import VisionTransformer

    model = VisionTransformer(ModelArgs(dim=32, hidden_dim=64, n_heads=2, n_layers=1))
    assert CC.CompileCache.for_run(model, cfg, torch.device("cpu")).path is None  # no GPU: nothing is compiled
    cache = CC.CompileCache(None)
    assert cache.load() is None and cache.save() is None and not list(tmp_path.iterdir())


def test_save_then_load_round_trips(tmp_path, torch_cache):
    path = tmp_path / "k.bin"
    first = CC.CompileCache(path, "k")
    assert first.load() is None  # no file yet: nothing to say
    assert "saved" in first.save() and path.is_file()
    assert first.save() is None  # once per run
    second = CC.CompileCache(path, "k")
    line = second.load()
    assert line.startswith("compile cache: loaded 3 compiled artifacts") and torch_cache["loaded"] == [b"compiled graphs"]
    assert second.save() is None  # it compiled nothing new: the file stays as it is
    torch_cache["saved"] = b"compiled graphs and more"
    third = CC.CompileCache(path, "k")
    third.load()
    assert "saved" in third.save() and path.read_bytes().endswith(b"compiled graphs and more")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[: len(CC.MAGIC) // 2], "not a vit_helpers compile cache"),
    (lambda b: b.replace(b'"key": "k"', b'"key": "other"'), "made for other"),
    (lambda b: b.replace(b"compiled graphs", b"garbage bytes!!"), "RuntimeError: unpickling failed"),
    (lambda b: b"", "not a vit_helpers compile cache"),
])
def test_a_damaged_or_foreign_cache_is_ignored_with_one_line(tmp_path, torch_cache, damage, reason):
    path = tmp_path / "k.bin"
    CC.CompileCache(path, "k").save()
    path.write_bytes(damage(path.read_bytes()))
    cache = CC.CompileCache(path, "k")
    line = cache.load()
    assert line.startswith("compile cache: ignored") and reason in line and line.endswith("compiling from scratch")
    assert "\n" not in line and cache.loaded is None
    assert "saved" in cache.save()  # and the run's own compilation replaces it


def test_a_failed_save_says_so_and_does_not_raise(tmp_path, torch_cache):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = CC.CompileCache(blocker / "k.bin", "k").save()
    assert line.startswith("compile cache: not saved to") and "\n" not in line
    torch_cache["saved"] = None
    assert CC.CompileCache(tmp_path / "none.bin", "k").save() is None  # nothing was compiled
    assert not (tmp_path / "none.bin").exists()
