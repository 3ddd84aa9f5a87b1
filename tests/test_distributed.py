"""Several processes, one model (torchrun, gloo on the CPU): the same weights as one process with the same global
batch, an exact resume, a refused change of the number of processes, distillation, and the batch-split check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_cli import ROOT, tiny_args, write_image_folder
from vit_helpers import distributed
from vit_helpers.cli import main
from vit_helpers.config import recipe


# What the multi-GPU machines need (NVLink multicast off); harmless elsewhere.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def launch(argv: list[str], nproc: int | None, tmp: Path, cpu: bool = True) -> subprocess.CompletedProcess:
    """`python -m vit_helpers.train ARGV`, under torchrun with `nproc` processes (None: plain python), on the CPU
    (gloo) or, with cpu=False, on the GPUs (NCCL)."""
    env = {**os.environ, **NCCL_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "VIT_PROGRESS": "0",
           "VIT_CACHE_DIR": str(tmp / "cache")}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    # --standalone: a free port on this machine, so parallel test runs never meet
    head = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return subprocess.run([sys.executable, *head, "-m", "vit_helpers.train", *argv], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=300)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


def test_two_processes_train_like_one_resume_exactly_and_refuse_another_count(folder, tmp_path, capsys):
    args = tiny_args(folder)
    two = args + ["--checkpoint-dir", str(tmp_path / "two")]
    shown = ok(launch(two + ["--stop-after", "1"], 2, tmp_path)).stdout
    assert shown.count("1/3") == 1  # rank 0 alone prints the table
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 1

    with pytest.raises(SystemExit) as refused:  # one process may not continue a run of two
        main(two + ["--resume"])
    assert refused.value.code == 2 and "run of 2 process(es), and this one has 1" in capsys.readouterr().err
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["epoch"] == 1  # untouched

    ok(launch(two + ["--resume", "--out", str(tmp_path / "two.json")], 2, tmp_path))
    # one process, on the CPU like the two (in this process, train() would pick a GPU where there is one)
    ok(launch(args + ["--checkpoint-dir", str(tmp_path / "one"), "--out", str(tmp_path / "one.json")], None, tmp_path))
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for k in a:  # same global batches, gradients averaged over the two halves: the same steps, up to rounding
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    one, two_ = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two_["world_size"] == 2 and len(two_["history"]) == 3
    for h1, h2 in zip(one["history"], two_["history"]):  # evaluation covers the whole validation split once
        assert h1["val_acc"] == h2["val_acc"] and h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-5)
    assert one["test_acc"] == two_["test_acc"]

    # benchmarks/ddp_speed.py builds release/ddp.json from such --out files
    speed = ddp_speed()
    report = speed.summarize(speed.plan(2, 3, tiny=True, eager_on_1=False, distilled=False),
                             {"fast_1_eager": one, "fast_2_eager": two_}, "CPU", "test")
    assert [r["gpus"] for r in report["rows"]] == [1, 2] and report["n_gpus"] == 2 and report["global_batch"] == 32
    assert report["scaling"] == pytest.approx(report["rows"][1]["images_per_s"] / report["rows"][0]["images_per_s"])
    assert "scaling, 2 GPUs over 1" in speed.table(report)


def ddp_speed():
    """benchmarks/ddp_speed.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_speed", ROOT / "benchmarks" / "ddp_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_speed_benchmark_launches_torchrun_with_the_nccl_settings(capsys):
    """What the lead runs on the 2-GPU machine: every run under torchrun, NVLink multicast off in every process."""
    speed = ddp_speed()
    assert speed.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1"
    assert all(k in speed.environment(False) for k in speed.NCCL_ENV)
    runs = lines[1:]
    assert len(runs) == 4 and all("-m torch.distributed.run --standalone" in r and "-m vit_helpers.train" in r for r in runs)
    assert "--nproc_per_node=1" in runs[0] and "--recipe fast" in runs[0] and "--nproc_per_node=2" in runs[1]
    assert "cuda_graph=False" in runs[2] and "--recipe distilled " in runs[3]


def test_distilled_recipe_on_two_processes(folder, tmp_path):
    from conftest import synthetic_data
    from vit_helpers.checkpoint import save_model
    from vit_helpers.cnn import ConvNet
    from vit_helpers.config import CNNArgs
    from vit_helpers.train import TrainConfig, train

    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, pipeline="gpu", augment="crop_flip", val_size=64)
    data = synthetic_data()
    teacher = ConvNet(CNNArgs(stem_width=8, widths=(16, 16), residual=(True, False), n_classes=5))
    result = train(teacher, data, cfg, progress=False)
    save_model(tmp_path / "teacher.pt", teacher, cfg, data, result)

    argv = tiny_args(folder, "distilled_quick", epochs=2) + ["--teacher-checkpoint", str(tmp_path / "teacher.pt")]
    ok(launch(argv + ["--checkpoint-dir", str(tmp_path / "d"), "--out", str(tmp_path / "d.json")], 2, tmp_path))
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["world_size"] == 2 and out["train_config"]["distill"] == recipe("distilled_quick")[1].distill and len(out["history"]) == 2
    assert torch.load(tmp_path / "d" / "last.pt", weights_only=True)["teacher"] is not None


def test_the_global_batch_must_split_evenly(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as under torchrun --nproc_per_node=2
    with pytest.raises(SystemExit) as e:
        main(tiny_args(folder) + ["--set", "batch_size=33", "--checkpoint-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "batch_size=33 is the global batch" in err[0] and "divisible by 2" in err[0]
