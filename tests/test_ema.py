"""The moving average of the weights (TrainConfig.ema_decay): it is the lerp computed by hand, it is what train()
validates, keeps as best.pt and ends with, a resumed run continues it exactly; and the attention-kernel switch."""
import pytest
import torch

from conftest import synthetic_data
from vit_helpers import VisionTransformer
from vit_helpers import checkpoint as C
from vit_helpers.cnn import ConvNet
from vit_helpers.config import CNNArgs
from vit_helpers.data import GPUBatches
from vit_helpers.train import TrainConfig, TrainStep, evaluate, load_or_train, lr_at, make_batches, train

CFG = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05, schedule="cosine",
                  warmup_epochs=1, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="crop_flip",
                  mix_prob=0.5, val_size=64, eval_batch_size=64, ema_decay=0.9)


def batches(data, mix_prob=0.5):
    return GPUBatches(data.train_x[:128], data.train_y[:128], 32, shuffle=True, drop_last=True, policy="crop_flip",
                      mix_prob=mix_prob, n_classes=5)


def test_the_average_is_the_lerp_computed_by_hand(tiny_args):
    model = VisionTransformer(tiny_args)
    step = TrainStep(model, CFG, torch.device("cpu"))
    by_hand = {k: v.clone() for k, v in model.state_dict().items()}  # the average starts at the initial weights
    assert all(torch.equal(by_hand[k], v) for k, v in step.ema.state_dict().items())
    data = synthetic_data()
    for i, batch in enumerate(batches(data)):
        step(batch, lr_at(i, CFG, 4))
        for k, w in model.state_dict().items():
            by_hand[k] = 0.9 * by_hand[k] + 0.1 * w
    moved = 0
    for k, v in step.ema.state_dict().items():
        torch.testing.assert_close(v, by_hand[k], rtol=1e-5, atol=1e-6, msg=k)
        moved += not torch.equal(v, model.state_dict()[k])
    assert moved > 0 and not any(p.requires_grad for p in step.ema.parameters())


def test_off_by_default_and_the_step_is_unchanged(tiny_args):
    """Without ema_decay there is no average, and the weights train exactly as with one (it never feeds back)."""
    torch.manual_seed(3)
    a, b = VisionTransformer(tiny_args), VisionTransformer(tiny_args)
    b.load_state_dict(a.state_dict())
    plain = TrainStep(a, CFG.replace(ema_decay=None), torch.device("cpu"))
    averaged = TrainStep(b, CFG, torch.device("cpu"))
    assert plain.ema is None and "ema" not in plain.state_dict() and "ema" in averaged.state_dict()
    for i, batch in enumerate(batches(synthetic_data())):
        plain(batch, lr_at(i, CFG, 4))
        averaged(batch, lr_at(i, CFG, 4))
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_a_cnn_averages_its_batchnorm_statistics_and_copies_its_counters():
    cfg = CFG.replace(optimizer="sgd", betas=(0.9, 0.999), mix_prob=0.0)
    net = ConvNet(CNNArgs(stem_width=8, widths=(16, 16), residual=(True, False), n_classes=5))
    step = TrainStep(net, cfg, torch.device("cpu"))
    for i, batch in enumerate(batches(synthetic_data(), mix_prob=0.0)):
        step(batch, lr_at(i, cfg, 4))
    ema, now = step.ema.state_dict(), net.state_dict()
    assert torch.equal(ema["stem.1.num_batches_tracked"], now["stem.1.num_batches_tracked"])
    assert int(now["stem.1.num_batches_tracked"]) == 4
    assert not torch.equal(ema["stem.1.running_mean"], now["stem.1.running_mean"])


def test_train_validates_keeps_and_ends_with_the_average(tiny_args, tmp_path):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)
    result = train(model, data, CFG.replace(epochs=2), checkpoint_dir=tmp_path, progress=False, device="cpu")
    _, val, _ = make_batches(data, CFG, torch.device("cpu"), 5)
    assert evaluate(model, val)[1] == result.history[-1]["val_acc"]  # the model now holds what was validated last
    last = C.load(tmp_path / "last.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in last["step"]["ema"].items())
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in last["model"].items())  # last.pt: the raw weights
    if result.best_epoch == 2:
        best = C.load(tmp_path / "best.pt")
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in best["model"].items())
    again = VisionTransformer(tiny_args)
    load_or_train(again, data, CFG.replace(epochs=2), tmp_path, progress=False, device="cpu")  # the finished run
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_resume_continues_the_average_exactly(tiny_args, tmp_path):
    data, cfg = synthetic_data(), CFG.replace(epochs=4)
    torch.manual_seed(1)
    straight = VisionTransformer(tiny_args)
    r1 = train(straight, data, cfg, checkpoint_dir=tmp_path / "a", progress=False, device="cpu")

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        train(VisionTransformer(tiny_args), data, cfg, checkpoint_dir=tmp_path / "b", progress=False, device="cpu",
              on_epoch_end=stop_after_two)
    torch.manual_seed(12345)
    resumed = VisionTransformer(tiny_args)
    r2 = train(resumed, data, cfg, checkpoint_dir=tmp_path / "b", resume=True, progress=False, device="cpu")
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n  # the averages (train() ends with them in the model)
    assert [h["val_acc"] for h in r1.history] == [h["val_acc"] for h in r2.history]
    a, b = C.load(tmp_path / "a" / "last.pt"), C.load(tmp_path / "b" / "last.pt")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())  # and the raw weights


def test_a_run_with_an_average_is_not_resumed_as_one_without(tiny_args, tmp_path):
    train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(C.ResumeError, match="ema_decay: checkpoint has 0.9, given None"):
        train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=2, ema_decay=None), checkpoint_dir=tmp_path,
              resume=True, progress=False)


@pytest.mark.parametrize("changes, message", [
    (dict(ema_decay=1.0), "ema_decay must be a number in"), (dict(ema_decay=0), "ema_decay must be a number in"),
    (dict(attention="fast"), "attention='fast' is not one of")])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        CFG.replace(**changes)


@pytest.mark.parametrize("kernel", ["math", "flash", "efficient"])
def test_the_attention_kernel_changes_no_result(tiny_args, kernel):
    """cfg.attention picks the kernel (falling back to the plain math where it can't run): the loss is the same."""
    torch.manual_seed(0)
    model = VisionTransformer(tiny_args)
    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 5, (8,))
    with torch.no_grad():
        auto, _ = TrainStep(model, CFG.replace(attention="auto", ema_decay=None), torch.device("cpu")).loss(x, y)
        chosen, _ = TrainStep(model, CFG.replace(attention=kernel, ema_decay=None), torch.device("cpu")).loss(x, y)
    torch.testing.assert_close(chosen, auto, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the whole-step CUDA graph needs a CUDA GPU")
def test_the_graphed_step_keeps_the_same_average_and_resumes_it(tiny_args, tmp_path):
    """Inside the recorded step the average moves as in the plain one (the warm-up's moves are undone), and a graphed
    run resumed from last.pt ends with the average of an uninterrupted one."""
    data = synthetic_data()
    cfg = CFG.replace(precision="fp32", cuda_graph=True, mix_prob=0.0)
    torch.manual_seed(0)
    plain_model = VisionTransformer(tiny_args)
    graphed_model = VisionTransformer(tiny_args)
    graphed_model.load_state_dict(plain_model.state_dict())
    plain = train(plain_model, data, cfg.replace(cuda_graph=False), progress=False, device="cuda")
    graphed = train(graphed_model, data, cfg, checkpoint_dir=tmp_path / "a", progress=False, device="cuda")
    for (n, a), b in zip(plain_model.state_dict().items(), graphed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=n)  # GPU kernels may sum in another order
    assert len(plain.history) == len(graphed.history) == cfg.epochs

    def stop_after_one(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(VisionTransformer(tiny_args), data, cfg, checkpoint_dir=tmp_path / "b", progress=False, device="cuda",
              on_epoch_end=stop_after_one)
    resumed = VisionTransformer(tiny_args)
    train(resumed, data, cfg, checkpoint_dir=tmp_path / "b", resume=True, progress=False, device="cuda")
    for (n, a), b in zip(graphed_model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
