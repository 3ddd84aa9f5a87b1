"""What only a GPU can check: the compiled paths agree with the eager ones. Skipped without CUDA (CI)."""
import pytest
import torch

from vit_helpers import data as D
from vit_helpers.augment import draw

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("policy, erase", [("crop_flip", 0.0), ("trivial", 0.0), ("trivial", 0.5)])
def test_compiled_augmentation_equals_eager(policy, erase):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g).cuda()
    u = draw(256, torch.Generator(device="cuda").manual_seed(1), "cuda")
    mean = torch.tensor(D.CIFAR10_MEAN, device="cuda").view(1, -1, 1, 1)
    std = torch.tensor(D.CIFAR10_STD, device="cuda").view(1, -1, 1, 1)
    y = torch.randint(0, 10, (256,), device="cuda")
    row = torch.tensor([2.0, 0.75, 3, 5, 19, 21], device="cuda")  # a CutMix box
    eager = D._make_batch(x, y, u, row, mean, std, policy, erase, 10)
    compiled = torch.compile(D._make_batch, dynamic=False)(x, y, u, row, mean, std, policy, erase, 10)
    # 1/255 after normalisation is about 0.016: allow rounding differences, not different pixels
    assert (compiled[0] - eager[0]).abs().max() < 1e-3
    torch.testing.assert_close(compiled[1], eager[1])


@cuda
def test_drop_path_draws_new_masks_inside_cuda_graphs():
    from vit_helpers.block import DropPath

    f = torch.compile(DropPath(0.5).train(), mode="reduce-overhead")
    x = torch.ones(64, 4, 8, device="cuda")
    masks = [f(x)[:, 0, 0].clone() for _ in range(6)]
    assert len({tuple(m.tolist()) for m in masks[2:]}) > 1  # after warm-up and capture: still random


@cuda
def test_patch_dropout_draws_new_tokens_inside_cuda_graphs(tiny_args):
    from vit_helpers import VisionTransformer

    model = VisionTransformer(tiny_args.replace(patch_dropout=0.5)).cuda().train()
    f = torch.compile(model.embed, mode="reduce-overhead")
    x = torch.randn(16, 3, tiny_args.image_size, tiny_args.image_size, device="cuda")
    outs = [f(x).clone() for _ in range(6)]
    assert outs[-1].shape == (16, 1 + tiny_args.replace(patch_dropout=0.5).kept_patches, tiny_args.dim)
    assert len({o.sum().item() for o in outs[2:]}) > 1  # after warm-up and capture: a new choice at every replay


@cuda
def test_graphed_training_with_patch_dropout_learns(tiny_args):
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers.train import TrainConfig, train

    cfg = TrainConfig(epochs=6, batch_size=32, optimizer="adamw", lr=2e-3, schedule="cosine", warmup_epochs=1,
                      pipeline="gpu", augment="crop_flip", precision="auto", compile=True, compile_scope="blocks",
                      cuda_graph=True, val_size=64, eval_batch_size=64)
    torch.manual_seed(0)
    h = train(VisionTransformer(tiny_args.replace(patch_dropout=0.25)), synthetic_data(), cfg, progress=False).history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and h[-1]["val_acc"] > 0.3


@cuda
def test_compiled_training_learns(tiny_args):
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers.train import TrainConfig, train

    data = synthetic_data()
    cfg = TrainConfig(epochs=6, batch_size=32, optimizer="adamw", lr=2e-3, schedule="cosine", warmup_epochs=1,
                      pipeline="gpu", augment="crop_flip", mix_prob=0.5, erase_prob=0.25, precision="auto",
                      compile=True, compile_mode="reduce-overhead", val_size=64, eval_batch_size=64)
    torch.manual_seed(0)
    result = train(VisionTransformer(tiny_args.replace(drop_path=0.1)), data, cfg, progress=False)
    h = result.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]


@cuda
@pytest.mark.parametrize("compile", [False, True])
def test_whole_step_cuda_graph_trains_like_the_plain_loop(tiny_args, compile):
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers.train import TrainConfig, train

    data = synthetic_data()
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
                      warmup_epochs=1, grad_clip=1.0, pipeline="gpu", augment="trivial", mix_prob=0.5, erase_prob=0.25,
                      label_smoothing=0.1, precision="fp32", compile=compile, val_size=64, eval_batch_size=64)
    runs = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = VisionTransformer(tiny_args)
        result = train(model, data, cfg.replace(cuda_graph=graphed), progress=False)
        runs.append((model.state_dict(), result.history))
    (w0, h0), (w1, h1) = runs
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=2e-4, rtol=1e-3)  # same batches, same updates
    for a, b in zip(h0, h1):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=0.02)


@cuda
def test_regional_compilation_trains_like_the_whole_compiled_step(tiny_args):
    """compile_scope="blocks" (each block and the teacher compiled on their own) inside the whole-step graph, with a
    teacher: the same updates as compile_scope="step", and the modules leave train() uncompiled."""
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers.cnn import ConvNet
    from vit_helpers.config import CNN_PRESETS
    from vit_helpers.train import TrainConfig, train

    data = synthetic_data()
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=2e-3, schedule="cosine", warmup_epochs=1,
                      grad_clip=1.0, pipeline="gpu", augment="crop_flip", mix_prob=0.5, precision="fp32", compile=True,
                      cuda_graph=True, distill="soft", distill_weight=0.7, distill_temperature=2.0, val_size=64,
                      eval_batch_size=64)
    torch.manual_seed(1)
    teacher = ConvNet(CNN_PRESETS["teacher_small"].replace(n_classes=tiny_args.n_classes)).cuda().eval()
    runs = []
    for scope in ("step", "blocks"):
        torch.manual_seed(0)
        model = VisionTransformer(tiny_args)
        result = train(model, data, cfg.replace(compile_scope=scope), teacher=teacher, progress=False)
        runs.append((model.state_dict(), result.history))
        assert all(getattr(m, "_compiled_call_impl", None) is None for m in [*model.transformer, teacher])
    (w0, h0), (w1, h1) = runs
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=2e-4, rtol=1e-3)
    for a, b in zip(h0, h1):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


@cuda
def test_the_graph_records_the_plain_step_and_resumes_exactly(tiny_args, tmp_path, monkeypatch):
    """GraphedStep runs TrainStep.update (the step notebook 05 prints); a graphed run resumed from last.pt
    ends with the weights of an uninterrupted one (the lr lives in a device tensor the graph reads)."""
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers import train as T

    data = synthetic_data()
    cfg = T.TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
                        warmup_epochs=1, grad_clip=1.0, pipeline="gpu", augment="trivial", mix_prob=0.5,
                        label_smoothing=0.1, precision="fp32", cuda_graph=True, val_size=64, eval_batch_size=64)
    calls = []
    original = T.TrainStep.update
    monkeypatch.setattr(T.TrainStep, "update", lambda self, x, y: (calls.append(1), original(self, x, y)))
    torch.manual_seed(0)
    straight = VisionTransformer(tiny_args)
    T.train(straight, data, cfg, checkpoint_dir=tmp_path / "a", progress=False)
    assert len(calls) == 4  # 3 warm-up calls and the recording: every later step is a replay of that graph

    def stop_after_one(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        T.train(VisionTransformer(tiny_args), data, cfg, checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=stop_after_one)
    resumed = VisionTransformer(tiny_args)
    T.train(resumed, data, cfg, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=k)


@cuda
@pytest.mark.parametrize("kind", ["hard", "soft", "cnn_sgd"])
def test_the_graph_trains_a_distilled_student_and_an_sgd_cnn_like_the_plain_loop(tiny_args, kind, monkeypatch):
    """The teacher runs inside the recorded step; SGD (a device-tensor lr, no capturable flag) replays correctly."""
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers.cnn import ConvNet
    from vit_helpers.config import CNNArgs
    from vit_helpers.train import TrainConfig, train

    cnn = CNNArgs(stem_width=8, widths=(16, 16), residual=(True, False), n_classes=5)
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
                      warmup_epochs=1, grad_clip=1.0, pipeline="gpu", augment="crop_flip", mix_prob=0.5,
                      label_smoothing=0.1, precision="fp32", val_size=64, eval_batch_size=64)
    if kind == "cnn_sgd":
        cfg, teacher = cfg.replace(optimizer="sgd", lr=0.05, weight_decay=5e-4, grad_clip=None, mix_prob=0.0), None
    else:
        cfg = cfg.replace(distill=kind, **({"distill_temperature": 2.0} if kind == "soft" else {}))
        torch.manual_seed(1)
        teacher = ConvNet(cnn).cuda()
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
    runs = []
    # cuDNN's default convolution algorithms add in a varying order, and SGD on BatchNorm amplifies that over three
    # epochs; deterministic algorithms leave only what the graph itself could change
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for graphed in (False, True):
        torch.manual_seed(0)
        model = ConvNet(cnn) if kind == "cnn_sgd" else VisionTransformer(tiny_args)
        result = train(model, synthetic_data(), cfg.replace(cuda_graph=graphed), teacher=teacher, progress=False)
        runs.append((model.state_dict(), result.history))
    (w0, h0), (w1, h1) = runs
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=2e-4, rtol=1e-3, msg=k)
    for a, b in zip(h0, h1):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    if teacher is not None:
        for k, v in teacher.state_dict().items():
            assert torch.equal(v, before[k]), k


@cuda
def test_a_leftover_autograd_graph_gives_a_clear_recording_error(tiny_args):
    """A loss kept from before training (made on the default stream) breaks the CUDA-graph recording; the error must
    say so and what to do, not only CUDA's 'operation failed due to a previous error during capture'."""
    from conftest import synthetic_data
    from vit_helpers import VisionTransformer
    from vit_helpers.train import TrainConfig, TrainStep, train

    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adamw", lr=1e-3, pipeline="gpu", augment="crop_flip",
                      precision="fp32", cuda_graph=True, val_size=64, eval_batch_size=64)
    model = VisionTransformer(tiny_args).cuda()
    kept, _ = TrainStep(model, cfg, torch.device("cuda")).loss(torch.randn(4, 3, 16, 16, device="cuda"),
                                                               torch.zeros(4, dtype=torch.long, device="cuda"))
    with pytest.raises(RuntimeError, match="torch.no_grad"):
        train(model, synthetic_data(), cfg, progress=False)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@two_gpus
@pytest.mark.parametrize("graphed, compiled", [(True, False), (True, True), (False, True)],
                         ids=["graphed", "graphed_compiled", "compiled_eager"])
def test_ddp_on_two_gpus_trains_like_one_gpu_and_resumes(tmp_path, graphed, compiled):
    """torchrun on 2 GPUs (NCCL): the whole-step CUDA graph with DDP's all-reduce recorded inside it, or the compiled
    eager step under DDP (the fallback), stopped after an epoch and resumed, ends with the weights of one GPU's run."""
    from test_cli import tiny_args, write_image_folder
    from test_distributed import launch, ok

    args = tiny_args(write_image_folder(tmp_path / "images")) + ["--set", f"cuda_graph={graphed}", "--set", f"compile={compiled}"]
    two = args + ["--checkpoint-dir", str(tmp_path / "two")]
    ok(launch(two + ["--stop-after", "1"], 2, tmp_path, cpu=False))
    ok(launch(two + ["--resume"], 2, tmp_path, cpu=False))
    ok(launch(args + ["--checkpoint-dir", str(tmp_path / "one")], None, tmp_path, cpu=False))
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert b["world_size"] == 2 and b["epoch"] == 3
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=2e-4, rtol=1e-3, msg=k)
