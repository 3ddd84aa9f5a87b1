"""Training: the loop learns, checkpoints round-trip, resume is exact, NaN stops, configs are checked."""
import math

import pytest
import torch

from conftest import synthetic_data
from vit_helpers import VisionTransformer
from vit_helpers import checkpoint as C
from vit_helpers.train import NonFiniteLossError, TrainConfig, evaluate, lr_at, param_groups, recipe, train

CFG = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05, schedule="cosine",
                  warmup_epochs=1, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="crop_flip",
                  mix_prob=0.5, val_size=64, eval_batch_size=64)


def test_train_lowers_the_loss(tiny_args):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)
    result = train(model, data, CFG.replace(mix_prob=0.0, epochs=4), progress=False)
    h = result.history
    assert len(h) == 4
    assert h[-1]["train_loss"] < h[0]["train_loss"] * 0.8
    assert h[-1]["val_acc"] > 0.6  # 5 classes: chance is 0.2


def test_lr_schedules():
    cos = TrainConfig(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=2)
    assert lr_at(0, cos, 10) == pytest.approx(0.05)
    assert lr_at(19, cos, 10) == pytest.approx(1.0)
    assert lr_at(99, cos, 10) < 0.01
    assert all(lr_at(s + 1, cos, 10) <= lr_at(s, cos, 10) + 1e-12 for s in range(20, 99))
    art = TrainConfig(lr=3e-4)
    assert lr_at(79 * 10, art, 10) == pytest.approx(3e-4)
    assert lr_at(80 * 10, art, 10) == pytest.approx(3e-5)
    assert lr_at(130 * 10, art, 10) == pytest.approx(3e-6)


def test_no_weight_decay_on_norms_biases_embeddings(tiny_args):
    model = VisionTransformer(tiny_args)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embedding", "norm.weight", "head.bias", "transformer.0.layer_norm_1.weight"} <= no
    assert all(names[id(p)].endswith("weight") and p.ndim == 2 for p in decay["params"])


def test_checkpoint_round_trip_and_config_check(tiny_args, tmp_path):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)
    train(model, data, CFG.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    loaded, ckpt = C.load_model(tmp_path / "best.pt")
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert ckpt["history"][0]["epoch"] == 1
    other = VisionTransformer(tiny_args.replace(dim=64, hidden_dim=64))
    with pytest.raises(ValueError, match="dim: checkpoint has 32, model has 64"):
        C.load_weights(other, tmp_path / "best.pt")
    # dropout is a training-time setting: the same weights load with another rate
    C.load_weights(VisionTransformer(tiny_args.replace(dropout=0.3)), tmp_path / "best.pt")


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    C.atomic_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        C.atomic_save({"a": Boom()}, path)
    assert torch.equal(C.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resume_equals_uninterrupted_run(tiny_args, tmp_path):
    data = synthetic_data()
    cfg = CFG.replace(epochs=4)
    torch.manual_seed(1)
    straight = VisionTransformer(tiny_args.replace(dropout=0.1))
    r1 = train(straight, data, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    torch.manual_seed(1)
    first = VisionTransformer(tiny_args.replace(dropout=0.1))

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, data, cfg, checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=stop_after_two)
    torch.manual_seed(12345)  # a different global RNG state: resume must restore it
    resumed = VisionTransformer(tiny_args.replace(dropout=0.1))
    r2 = train(resumed, data, cfg, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]


def test_resume_refuses_another_config(tiny_args, tmp_path):
    data = synthetic_data()
    train(VisionTransformer(tiny_args), data, CFG.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train(VisionTransformer(tiny_args), data, CFG.replace(epochs=1, lr=1.0), checkpoint_dir=tmp_path, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_args, tmp_path):
    data = synthetic_data()
    model = VisionTransformer(tiny_args)

    def poison(record):
        if record["epoch"] == 1:
            model.head.register_forward_hook(lambda m, i, o: o * float("nan"))

    with pytest.raises(NonFiniteLossError, match="epoch 2.*last good checkpoint"):
        train(model, data, CFG, checkpoint_dir=tmp_path, progress=False, on_epoch_end=poison)
    ckpt = C.load(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_evaluate_counts_correctly(tiny_args):
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float() * 10

    x = torch.zeros(4, 1, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 0.0])
    loss, acc = evaluate(Fixed(), [(x, torch.tensor([0, 1, 0, 0]))], "cpu")
    assert acc == 0.75 and math.isfinite(loss)


def test_recipes_exist_and_article_is_exact():
    args, cfg = recipe("article")
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.milestones, cfg.pipeline) == ("adam", 3e-4, 16, 150, (80, 130), "classic")
    assert args.dropout == 0.2
    for name in ("fast", "large", "quick"):
        recipe(name)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("turbo")


def test_released_weights_are_the_fast_recipe():
    """The shipped model was trained with the fast recipe as it stands (config and schedule length)."""
    from vit_helpers import paths
    from vit_helpers.checkpoint import load_model
    from vit_helpers.train import _plain, recipe

    model, ckpt = load_model(paths.RELEASED_WEIGHTS)
    args, cfg = recipe("fast")
    assert model.args == args
    assert ckpt["train_config"] == _plain(cfg)
    assert len(ckpt["history"]) == cfg.epochs
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
