"""LoRA: starts equal to the base, trains only what it should, merges, saves, and refuses bad input."""
import copy
import warnings

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
    train(model, synthetic_data(), cfg, progress=False)  # on the GPU where there is one
    for k, v in frozen.items():
        assert torch.equal(v, model.state_dict()[k].cpu()), k  # (compared on the CPU)
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


# ---- adapters meet the wrong base, half-failed add_lora, damaged adapter files ----

def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model, state, flags):
    return (not lora.lora_layers(model) and [p.requires_grad for p in model.parameters()] == flags
            and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()) and state.keys() == model.state_dict().keys())


def test_adapters_refuse_another_base_of_the_same_config(base, tiny_args, tmp_path):
    model = _trained_adapters(base)
    x = torch.randn(2, 3, 16, 16)
    want = model(x)
    lora.merge_lora(model)  # the fingerprint is the base's as it was before merging
    path = lora.save_adapters(model, tmp_path / "a.pt")
    other = VisionTransformer(tiny_args).eval()  # same config, another initialisation
    state, flags = _state(other), [p.requires_grad for p in other.parameters()]
    with pytest.raises(ValueError, match="trained on another base model.*check_base=False"):
        lora.load_adapters(other, path)
    assert _untouched(other, state, flags)
    with pytest.warns(UserWarning, match="another base model"):
        lora.load_adapters(other, path, check_base=False)
    assert not torch.allclose(other(x), want, atol=1e-3)  # what the check guards against
    fresh = copy.deepcopy(base)
    with torch.no_grad():
        fresh.head.weight.add_(1)  # the head comes from the file: a base that differs only there is the same base
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lora.load_adapters(fresh, path)
    torch.testing.assert_close(fresh(x), want, rtol=1e-4, atol=1e-5)


def test_adapter_file_without_fingerprint_loads_with_a_warning(base, tmp_path):
    path = lora.save_adapters(_trained_adapters(base), tmp_path / "a.pt")
    saved = torch.load(path, weights_only=True)
    saved.pop("base_fingerprint", None)  # as older vit_helpers wrote them
    torch.save(saved, path)
    with pytest.warns(UserWarning, match="no base-model fingerprint"):
        lora.load_adapters(copy.deepcopy(base), path)


def test_failed_add_lora_leaves_the_model_as_it_was(base):
    model = copy.deepcopy(base)
    state, flags = _state(model), [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 5") as e:
        add_lora(model, ("attn.wq", "head"), r=8)  # fine for attn.wq, too big for the 5-class head
    assert _untouched(model, state, flags)
    assert "for head" in str(e.value)
    assert len(add_lora(model, ("attn.wq",), r=8)) == base.args.n_layers  # and a retry works


def test_add_lora_rolls_back_a_failure_midway(base, monkeypatch):
    model = copy.deepcopy(base)
    model.pos_embedding.requires_grad_(False)  # restored as it was, not to True
    state, flags = _state(model), [p.requires_grad for p in model.parameters()]
    wq = model.transformer[0].attn.wq
    made, real_init = [], LoRALinear.__init__

    def out_of_memory_on_the_third(self, *a, **k):
        if len(made) == 2:
            raise RuntimeError("CUDA out of memory")
        real_init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(LoRALinear, "__init__", out_of_memory_on_the_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        add_lora(model, ATTENTION_TARGETS, r=2)
    assert _untouched(model, state, flags) and model.transformer[0].attn.wq is wq


def test_trainable_prefix_that_matches_nothing_is_refused(base):
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"trainable prefixes \['haed'\] match no parameter"):
        add_lora(model, ATTENTION_TARGETS, r=2, trainable=("haed",))  # the head would silently stay frozen
    assert not lora.lora_layers(model)


def test_model_checkpoint_given_as_adapters_says_what_it_is(base, tmp_path):
    from vit_helpers.checkpoint import atomic_save

    path = atomic_save({"model_args": base.args.to_dict(), "model": base.state_dict()}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match="is a model checkpoint; load it with") as e:
        lora.load_adapters(copy.deepcopy(base), path)
    assert str(path) in str(e.value)
    good = lora.save_adapters(_trained_adapters(base), tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut short") as e:
        lora.load_adapters(copy.deepcopy(base), tmp_path / "cut.pt")
    assert str(tmp_path / "cut.pt") in str(e.value)


def test_adapter_file_missing_a_matrix_is_refused_and_leaves_the_model_as_it_was(base, tmp_path):
    path = lora.save_adapters(_trained_adapters(base), tmp_path / "a.pt")
    saved = torch.load(path, weights_only=True)
    del saved["state"]["transformer.1.attn.wv.lora_B"]  # strict=False loading left it at zero: no error, wrong outputs
    torch.save(saved, path)
    model = copy.deepcopy(base)
    state, flags = _state(model), [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match=r"lacks \['transformer.1.attn.wv.lora_B'\]"):
        lora.load_adapters(model, path)
    assert _untouched(model, state, flags)
