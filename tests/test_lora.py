"""LoRA: starts equal to the base, trains only what it should, merges, saves, and refuses bad input."""
import copy

import pytest
import torch

from conftest import synthetic_data
from vit_helpers import VisionTransformer, lora
from vit_helpers.lora import ATTENTION_TARGETS, MLP_TARGETS, LoRALinear, add_lora
from vit_helpers.train import TrainConfig, train


@pytest.fixture
def base(tiny_args):
    return VisionTransformer(tiny_args).eval()


def test_zero_init_adapters_leave_outputs_unchanged(base):
    x = torch.randn(3, 3, 16, 16)
    before = base(x)
    adapted = copy.deepcopy(base)
    layers = add_lora(adapted, ATTENTION_TARGETS + MLP_TARGETS, r=4)
    assert len(layers) == base.args.n_layers * 6
    assert torch.equal(adapted(x), before)


def test_only_adapters_and_named_params_train_and_base_is_bit_identical(base, tiny_args):
    model = copy.deepcopy(base)
    add_lora(model, ATTENTION_TARGETS, r=2, trainable=("head",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(model.named_parameters()) if "lora_" in n or n.startswith("head.")}
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k and not k.startswith("head.")}
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=1e-2, weight_decay=0.05, schedule="cosine",
                      pipeline="gpu", augment="none", val_size=64, eval_batch_size=64)
    train(model, synthetic_data(), cfg, progress=False)
    for k, v in frozen.items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert any(m.lora_B.abs().sum() > 0 for m in lora.lora_layers(model).values())


def _trained_adapters(base, **kw):
    model = copy.deepcopy(base)
    add_lora(model, ATTENTION_TARGETS, r=3, alpha=6, **kw)
    with torch.no_grad():
        for m in lora.lora_layers(model).values():
            m.lora_B.normal_()
    return model


def test_merge_equals_adapted_and_unmerge_restores(base):
    model = _trained_adapters(base)
    x = torch.randn(2, 3, 16, 16)
    w0 = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("base.weight")}
    adapted = model(x)
    lora.merge_lora(model)
    torch.testing.assert_close(model(x), adapted, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(w0[k], model.state_dict()[k]) for k in w0)
    lora.unmerge_lora(model)
    for k, v in w0.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-6)


def test_save_and_load_adapters(base, tmp_path):
    model = _trained_adapters(base)
    x = torch.randn(2, 3, 16, 16)
    path = lora.save_adapters(model, tmp_path / "a.pt")
    fresh = copy.deepcopy(base)
    lora.load_adapters(fresh, path)
    torch.testing.assert_close(fresh(x), model(x))
    full = sum(v.numel() for v in base.state_dict().values())
    saved = sum(v.numel() for v in torch.load(path, weights_only=True)["state"].values())
    assert saved < full / 3


def test_rank_out_of_range(base):
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 32"):
        add_lora(copy.deepcopy(base), ATTENTION_TARGETS, r=0)
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 32"):
        add_lora(copy.deepcopy(base), ATTENTION_TARGETS, r=33)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(4, 8), r=5)


def test_target_matching_nothing(base):
    with pytest.raises(ValueError, match="matches no linear layer"):
        add_lora(copy.deepcopy(base), ("attn.wz",), r=2)


def test_adding_twice(base):
    model = copy.deepcopy(base)
    add_lora(model, ATTENTION_TARGETS, r=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, ATTENTION_TARGETS, r=2)


def test_loading_into_another_config(base, tiny_args, tmp_path):
    path = lora.save_adapters(_trained_adapters(base), tmp_path / "a.pt")
    other = VisionTransformer(tiny_args.replace(n_layers=3))
    with pytest.raises(ValueError, match="n_layers: checkpoint has 2, model has 3"):
        lora.load_adapters(other, path)


def test_new_head_for_another_task(base):
    model = copy.deepcopy(base)
    model.reset_head(7)
    add_lora(model, ATTENTION_TARGETS, r=2, trainable=("head",))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert model.head.weight.requires_grad
