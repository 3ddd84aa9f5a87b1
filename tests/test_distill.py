"""Distillation and the teacher CNN: the step with weight 0 is the plain step, the teacher is never trained,
hard and soft losses match a hand computation, bad teachers and configs are refused, the CNN learns."""
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_data
from vit_helpers import VisionTransformer
from vit_helpers import checkpoint as C
from vit_helpers.cnn import ConvNet
from vit_helpers.config import CNNArgs, recipe
from vit_helpers.data import GPUBatches
from vit_helpers.train import TrainConfig, TrainStep, lr_at, teacher_loss, train

CFG = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05, schedule="cosine",
                  warmup_epochs=1, label_smoothing=0.1, grad_clip=1.0, pipeline="gpu", augment="crop_flip",
                  val_size=64, eval_batch_size=64)
TINY_CNN = CNNArgs(stem_width=8, widths=(16, 16), residual=(True, False), n_classes=5)


def teacher(seed=0, args=TINY_CNN):
    torch.manual_seed(seed)
    return ConvNet(args)


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("mix_prob", [0.0, 1.0])  # int labels, and MixUp/CutMix soft targets
@pytest.mark.parametrize("distill", ["hard", "soft"])
def test_weight_zero_is_the_plain_step_bitwise(tiny_args, distill, mix_prob):
    data = synthetic_data()
    plain_cfg = CFG.replace(mix_prob=mix_prob)
    cfg = plain_cfg.replace(distill=distill, distill_weight=0.0)
    torch.manual_seed(3)
    a, b = VisionTransformer(tiny_args), VisionTransformer(tiny_args)
    b.load_state_dict(a.state_dict())
    plain = TrainStep(a, plain_cfg, torch.device("cpu"))
    distilled = TrainStep(b, cfg, torch.device("cpu"), teacher=teacher())
    batches = GPUBatches(data.train_x[:256], data.train_y[:256], 32, shuffle=True, drop_last=True, policy="crop_flip",
                         mix_prob=mix_prob, n_classes=5)
    for i, batch in enumerate(batches):
        plain(batch, lr_at(i, cfg, len(batches)))
        distilled(batch, lr_at(i, cfg, len(batches)))
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    # the loss, correct predictions and labels' term; the teacher's term is recorded (and nonzero) but weighs 0
    assert torch.equal(plain.totals[:3], distilled.totals[:3])
    assert plain.totals[3] == 0 and distilled.totals[3] > 0


@pytest.mark.parametrize("distill", ["hard", "soft"])
def test_the_teacher_is_never_trained(tiny_args, distill):
    t = teacher()
    t.train()  # train() must put it in eval mode, or its BatchNorm statistics would move
    before = state(t)
    cfg = CFG.replace(distill=distill, distill_weight=0.7, **({"distill_temperature": 3.0} if distill == "soft" else {}))
    train(VisionTransformer(tiny_args), synthetic_data(), cfg, teacher=t, device="cpu", progress=False)  # a CPU test, on a GPU too
    after = t.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_hard_distillation_is_the_label_mixed_with_the_teachers_class():
    torch.manual_seed(0)
    logits, t_logits = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w, eps = 0.3, 0.1
    cfg = TrainConfig(label_smoothing=eps, distill="hard", distill_weight=w)
    total = (1 - w) * F.cross_entropy(logits, y, label_smoothing=eps) + w * teacher_loss(logits, t_logits, cfg)
    # by hand: target = (1 - w) * smoothed one_hot(y) + w * one_hot(teacher's top class) (DeiT smooths the true label
    # only), then cross-entropy
    target = (1 - w) * (F.one_hot(y, 4).float() * (1 - eps) + eps / 4) + w * F.one_hot(t_logits.argmax(-1), 4).float()
    by_hand = -(target * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(total, by_hand)


def test_soft_distillation_is_hintons_kl_at_a_temperature():
    torch.manual_seed(0)
    logits, t_logits = torch.randn(6, 4), torch.randn(6, 4)
    T = 2.5
    cfg = TrainConfig(distill="soft", distill_weight=0.5, distill_temperature=T)
    p = (t_logits / T).softmax(-1)  # the teacher's softened probabilities
    q = (logits / T).softmax(-1)
    by_hand = T * T * (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(teacher_loss(logits, t_logits, cfg), by_hand)
    assert teacher_loss(t_logits, t_logits, cfg).abs() < 1e-6  # agreeing with the teacher costs nothing


@pytest.mark.parametrize("distill", ["hard", "soft"])
def test_the_step_sums_the_loss_and_its_two_terms(tiny_args, distill):
    """TrainStep.loss hands `totals` the batch's sums of the loss, the correct predictions and the loss's two terms
    before weighting (notebook 09 plots them), each equal to its own computation, and the loss is their weighted sum."""
    cfg = CFG.replace(distill=distill, distill_weight=0.7, **({"distill_temperature": 3.0} if distill == "soft" else {}))
    torch.manual_seed(0)
    model, t = VisionTransformer(tiny_args).eval(), teacher()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    with torch.no_grad():
        loss, sums = TrainStep(model, cfg, torch.device("cpu"), teacher=t).loss(x, y)
        logits, t_logits = model(x), t.eval()(x)
    labels_term = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    teacher_term = teacher_loss(logits, t_logits, cfg)
    torch.testing.assert_close(loss, 0.3 * labels_term + 0.7 * teacher_term)
    torch.testing.assert_close(sums, torch.stack([8 * loss, (logits.argmax(-1) == y).sum().float(), 8 * labels_term, 8 * teacher_term]))
    with torch.no_grad():
        plain_loss, plain_sums = TrainStep(model, CFG, torch.device("cpu")).loss(x, y)
    torch.testing.assert_close(plain_sums, torch.stack([8 * plain_loss, sums[1], 8 * plain_loss, torch.tensor(0.0)]))


def test_a_distilled_history_records_both_terms(tiny_args):
    """train() keeps each epoch's mean of the two terms when distilling (and only then); they make up train_loss."""
    cfg = CFG.replace(distill="soft", distill_weight=0.7, distill_temperature=3.0)
    h = train(VisionTransformer(tiny_args), synthetic_data(), cfg, teacher=teacher(), device="cpu", progress=False).history
    for r in h:
        assert r["train_teacher_loss"] > 0 and r["train_labels_loss"] > 0
        assert r["train_loss"] == pytest.approx(0.3 * r["train_labels_loss"] + 0.7 * r["train_teacher_loss"], rel=1e-5)
    plain = train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(epochs=1), device="cpu", progress=False).history
    assert not {"train_labels_loss", "train_teacher_loss"} & plain[0].keys()


def test_a_teacher_with_other_classes_is_refused_before_training(tiny_args):
    wrong = teacher(args=TINY_CNN.replace(n_classes=10))
    with pytest.raises(ValueError, match=re.escape("outputs of shape (2, 10) for 2 images; expected (2, 5)")):
        train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(distill="hard"), teacher=wrong, progress=False)


def test_a_teacher_that_cannot_take_the_images_is_refused(tiny_args):
    vit32 = VisionTransformer(tiny_args.replace(image_size=32))  # the data is 16x16
    with pytest.raises(ValueError, match=re.escape("can't take the data's images: it was given a batch of shape (2, 3, 16, 16)")):
        train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(distill="hard"), teacher=vit32, progress=False)


def test_distill_and_teacher_come_together(tiny_args):
    with pytest.raises(ValueError, match="distill='soft' needs a teacher"):
        train(VisionTransformer(tiny_args), synthetic_data(), CFG.replace(distill="soft"), progress=False)
    with pytest.raises(ValueError, match="a teacher was given but distill='none'"):
        train(VisionTransformer(tiny_args), synthetic_data(), CFG, teacher=teacher(), progress=False)


def test_resume_with_another_teacher_is_refused(tiny_args, tmp_path):
    data, cfg = synthetic_data(), CFG.replace(epochs=1, distill="hard")
    train(VisionTransformer(tiny_args), data, cfg, teacher=teacher(0), checkpoint_dir=tmp_path, progress=False)
    assert C.load(tmp_path / "last.pt")["teacher"] == C.teacher_fingerprint(teacher(0))
    with pytest.raises(C.ResumeError, match=r"teacher: checkpoint has \w+ \(ConvNet, \d+ tensors\), given \w+"):
        train(VisionTransformer(tiny_args), data, cfg, teacher=teacher(1), checkpoint_dir=tmp_path, resume=True, progress=False)
    train(VisionTransformer(tiny_args), data, cfg.replace(epochs=2), teacher=teacher(0), checkpoint_dir=tmp_path / "b", progress=False)


def test_a_config_saved_before_a_field_existed_still_resumes():
    saved = CFG.to_dict()
    del saved["distill"], saved["momentum"]  # a checkpoint from before these fields: they had their defaults
    assert C.train_config_differences(saved, CFG) == []
    assert C.train_config_differences(saved, CFG.replace(distill="hard")) == ["distill: checkpoint has 'none', given 'hard'"]


def test_the_cnn_learns_with_sgd():
    data = synthetic_data()
    _, cfg = recipe("teacher_quick")
    cfg = cfg.replace(epochs=3, batch_size=32, lr=0.05, train_subset=None, val_size=64, eval_batch_size=64)
    torch.manual_seed(0)
    model = ConvNet(TINY_CNN)
    h = train(model, data, cfg, device="cpu", progress=False).history
    assert h[-1]["train_loss"] < h[0]["train_loss"] * 0.9  # (label smoothing 0.2 keeps the loss well above 0)
    assert h[-1]["val_acc"] > 0.8  # 5 classes: chance is 0.2
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)  # any size the pooling divides


def test_cnn_presets_and_recipes():
    from vit_helpers import count_parameters
    from vit_helpers.config import CNN_PRESETS, MODEL_PRESETS, RECIPES, TEACHER_RECIPES

    assert not set(CNN_PRESETS) & set(MODEL_PRESETS)  # a recipe's preset name says which kind of model it is
    assert count_parameters(ConvNet(CNN_PRESETS["teacher"])) == 6_573_120
    assert count_parameters(ConvNet(CNN_PRESETS["teacher_small"])) == 412_944
    _, fast = recipe("fast")
    args, distilled = recipe("distilled")
    # the distilled recipe is the fast one with soft distillation, regional compilation and a time budget (issue 21)
    assert (distilled.distill, distilled.distill_weight, distilled.distill_temperature) == ("soft", 0.9, 3.0)
    assert distilled.replace(distill="none", distill_weight=0.5, distill_temperature=1.0, epochs=fast.epochs,
                             budget_minutes=None, compile_scope="step") == fast and args == recipe("fast")[0]
    # the sprint's teacher is the teacher recipe, shorter
    assert recipe("teacher_sprint")[1] == recipe("teacher")[1].replace(epochs=10) and TEACHER_RECIPES["distilled_sprint"] == "teacher_sprint"
    quick = recipe("distilled_quick")[1]
    assert quick.replace(distill="none", distill_weight=0.5, distill_temperature=1.0) == recipe("quick")[1]
    for student, teacher_name in TEACHER_RECIPES.items():
        assert isinstance(recipe(teacher_name)[0], CNNArgs) and student in RECIPES
    with pytest.raises(ValueError, match="one residual flag per stage"):
        CNNArgs(widths=(8, 16), residual=(True,))


def test_load_best_takes_a_runs_best_weights_and_refuses_another_model(tiny_args, tmp_path):
    """load_best (notebook 09) loads best.pt into a ViT or a CNN; dropout may differ (not the architecture), the rest not."""
    from vit_helpers.checkpoint import CheckpointError, load_best

    data, cfg = synthetic_data(), CFG.replace(epochs=2)
    result = train(VisionTransformer(tiny_args), data, cfg, checkpoint_dir=tmp_path / "vit", device="cpu", progress=False)
    other_dropout = VisionTransformer(tiny_args.replace(dropout=0.3))
    state = load_best(other_dropout, tmp_path / "vit")
    assert state["best_epoch"] == result.best_epoch and len(state["history"]) == result.best_epoch
    with pytest.raises(CheckpointError, match=r"holds another model \(dim: checkpoint has 32, model has 64"):
        load_best(VisionTransformer(tiny_args.replace(dim=64, hidden_dim=128)), tmp_path / "vit")
    t_cfg = recipe("teacher_quick")[1].replace(epochs=1, batch_size=32, train_subset=None, val_size=64, eval_batch_size=64)
    train(ConvNet(TINY_CNN), data, t_cfg, checkpoint_dir=tmp_path / "cnn", device="cpu", progress=False)
    load_best(ConvNet(TINY_CNN), tmp_path / "cnn")
    with pytest.raises(CheckpointError, match="stem_width"):
        load_best(ConvNet(TINY_CNN.replace(stem_width=16)), tmp_path / "cnn")
