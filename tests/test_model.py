"""The model's pieces against references: shapes, equalities, equivariance, gradients, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_helpers import (MODEL_PRESETS, AttentionBlock, ModelArgs, MultiHeadAttention, VisionTransformer,
                         count_parameters, flops_per_image, img_to_patch, patch_to_img)
from vit_helpers.model import parameter_table


def test_img_to_patch_shapes_and_inverse():
    x = torch.randn(2, 3, 32, 32)
    p = img_to_patch(x, 4)
    assert p.shape == (2, 64, 48)
    assert img_to_patch(x, 4, flatten_channels=False).shape == (2, 64, 3, 4, 4)
    assert torch.equal(patch_to_img(p, 4, 32), x)


def test_img_to_patch_equals_unfold_and_strided_conv():
    x = torch.randn(2, 3, 32, 32)
    ref = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, C*P*P, N) -> (B, N, C*P*P)
    assert torch.equal(img_to_patch(x, 4), ref)
    lin = nn.Linear(48, 8)
    conv = nn.Conv2d(3, 8, 4, stride=4)
    conv.weight.data = lin.weight.data.view(8, 3, 4, 4)
    conv.bias.data = lin.bias.data
    torch.testing.assert_close(lin(img_to_patch(x, 4)), conv(x).flatten(2).transpose(1, 2))


def test_patch_order_is_row_by_row():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    p = img_to_patch(x, 2)
    assert p[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]  # second patch: top row, second column


def test_mha_plain_equals_fused(tiny_args):
    mha = MultiHeadAttention(tiny_args)
    x = torch.randn(3, 17, tiny_args.dim)
    fused = mha(x)
    mha.fused = False
    torch.testing.assert_close(mha(x), fused, rtol=1e-5, atol=1e-6)


def test_mha_equals_torch_multihead_attention(tiny_args):
    mha = MultiHeadAttention(tiny_args)
    ref = nn.MultiheadAttention(tiny_args.dim, tiny_args.n_heads, bias=False, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.wq.weight, mha.wk.weight, mha.wv.weight]))
        ref.out_proj.weight.copy_(mha.wo.weight)
    x = torch.randn(2, 10, tiny_args.dim)
    out, attn = mha(x, return_attn=True)
    ref_out, ref_attn = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-5, atol=1e-6)


def article_mha_forward(mha, x):
    """The article's forward, bug included: heads merged with .view straight from (B, H, N, hd)."""
    b, n, _ = x.shape
    q, k, v = (mha.split_heads(w(x)) for w in (mha.wq, mha.wk, mha.wv))
    attn = (q @ k.transpose(2, 3) / math.sqrt(mha.head_dim)).softmax(-1)
    out = (attn @ v).contiguous().view(b, n, -1)
    return mha.wo(out)


def permutation_error(fn, x):
    perm = torch.randperm(x.shape[1])
    return (fn(x[:, perm]) - fn(x)[:, perm]).abs().max().item()


def test_attention_is_permutation_equivariant_and_the_article_bug_is_not(tiny_args):
    mha = MultiHeadAttention(tiny_args)
    x = torch.randn(2, 9, tiny_args.dim)
    assert permutation_error(mha, x) < 1e-5
    assert permutation_error(lambda t: article_mha_forward(mha, t), x) > 1e-2


def test_block_shapes_and_prenorm_residual(tiny_args):
    block = AttentionBlock(tiny_args)
    x = torch.randn(2, 17, tiny_args.dim)
    y, attn = block(x, return_attn=True)
    assert y.shape == x.shape and attn.shape == (2, tiny_args.n_heads, 17, 17)
    h = x + block.attn(block.layer_norm_1(x))
    torch.testing.assert_close(y, h + block.ffn(block.layer_norm_2(h)))


def test_block_parameter_count_by_hand(tiny_args):
    D, Hd = tiny_args.dim, tiny_args.hidden_dim
    by_hand = 4 * D * D + 2 * 2 * D + (D * Hd + Hd) + (Hd * D + D)
    assert count_parameters(AttentionBlock(tiny_args)) == by_hand


@pytest.mark.parametrize("name,expected", [("small", 309_802), ("article", 3_189_002), ("large", 11_869_834)])
def test_preset_parameter_counts(name, expected):
    model = VisionTransformer(MODEL_PRESETS[name])
    assert count_parameters(model) == expected
    assert sum(n for _, n in parameter_table(model)) == expected


def test_vit_forward_shapes_and_attention_maps(tiny_args):
    model = VisionTransformer(tiny_args)
    x = torch.randn(3, 3, 16, 16)
    assert model(x).shape == (3, tiny_args.n_classes)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 1 + tiny_args.n_patches, tiny_args.dim)
    maps = model.attention_maps(x)
    assert maps.shape == (tiny_args.n_layers, 3, tiny_args.n_heads, 17, 17)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    torch.testing.assert_close(model.forward_head(tokens), model(x))


def test_fused_and_plain_models_agree(tiny_args):
    model = VisionTransformer(tiny_args).eval()
    x = torch.randn(2, 3, 16, 16)
    fused = model(x)
    for b in model.transformer:
        b.attn.fused = False
    torch.testing.assert_close(model(x), fused, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter(tiny_args):
    model = VisionTransformer(tiny_args)
    model(torch.randn(4, 3, 16, 16)).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_deterministic_under_seed(tiny_args):
    torch.manual_seed(3)
    a = VisionTransformer(tiny_args)
    torch.manual_seed(3)
    b = VisionTransformer(tiny_args)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))


def test_position_embedding_init_is_small():
    model = VisionTransformer()
    assert model.pos_embedding.std().item() < 0.03


def test_flops_count_matches_a_hand_count_for_the_article():
    a = ModelArgs()
    per_block = 2 * 65 * (4 * 256 * 256 + 2 * 256 * 512) + 2 * 2 * 65 * 65 * 256
    assert flops_per_image(a) == 6 * per_block + 2 * 64 * 48 * 256 + 2 * 256 * 10


@pytest.mark.parametrize("x,err,match", [
    (torch.randn(2, 3, 30, 30), ValueError, "built for 32x32"),
    (torch.randn(2, 1, 32, 32), ValueError, "expected 3 channels"),
    (torch.randn(3, 32, 32), ValueError, "3-D tensor"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point"),
    (torch.randint(0, 255, (2, 3, 32, 32)), TypeError, "floating-point"),
    (torch.randn(2, 3, 32, 32, dtype=torch.float64), TypeError, "got dtype torch.float64; convert them with x.float()"),
])
def test_bad_model_input(x, err, match):
    with pytest.raises(err, match=match):
        VisionTransformer(ModelArgs(n_layers=1))(x)


def test_a_float64_model_takes_float64_images():
    model = VisionTransformer(ModelArgs(n_layers=1)).double()
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_bad_patching_input():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        img_to_patch(torch.randn(1, 3, 30, 30), 4)
    with pytest.raises(ValueError, match="4-D|3-D"):
        img_to_patch(torch.randn(3, 32, 32), 4)
    with pytest.raises(TypeError):
        img_to_patch([[1.0]], 4)


@pytest.mark.parametrize("changes,match", [
    ({"dim": 100, "n_heads": 8}, "not divisible by n_heads"),
    ({"image_size": 30}, "not divisible by patch_size"),
    ({"dropout": 1.5}, "dropout"),
    ({"n_layers": 0}, "positive integer"),
    ({"patch_dropout": 1.0}, "patch_dropout must be in"),
    ({"patch_dropout": 0.995}, "leaves no patch token"),
])
def test_bad_model_args(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelArgs(**changes)


def test_no_silent_truncation_of_positions():
    model = VisionTransformer(ModelArgs(n_layers=1, image_size=32))
    with pytest.raises(ValueError, match="positional embedding"):
        model(torch.randn(1, 3, 16, 16))  # the article would have sliced pos_embedding[:, :17] silently


def test_drop_path_rates_and_behaviour(tiny_args):
    from vit_helpers.block import DropPath

    model = VisionTransformer(tiny_args.replace(n_layers=3, drop_path=0.2))
    assert [b.drop_path.p for b in model.transformer] == pytest.approx([0.0, 0.1, 0.2])
    assert count_parameters(model) == count_parameters(VisionTransformer(tiny_args.replace(n_layers=3)))
    x = torch.randn(4, 3, 16, 16)
    plain = VisionTransformer(tiny_args.replace(n_layers=3))
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # no effect at evaluation
    assert not torch.allclose(model.train()(x), plain.train()(x))  # but it acts while training
    d = DropPath(0.5).train()
    torch.manual_seed(0)
    out = d(torch.ones(1000, 5, 7))
    per_image = out.flatten(1)
    assert ((per_image == 0).all(1) | (per_image == 2).all(1)).all()  # whole images dropped, kept ones scaled by 2
    assert 0.4 < (per_image[:, 0] == 0).float().mean() < 0.6
    assert torch.equal(DropPath(0.5).eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_patch_dropout_keeps_a_random_share_of_patches_while_training_only(tiny_args):
    """Training: [CLS] first, then kept_patches of the image's own patch tokens (positions added), a different choice per
    image; evaluation, and patch_dropout=0, see every token, so the same weights give the plain model's outputs."""
    from vit_helpers.speed import train_flops_per_image

    args = tiny_args.replace(patch_dropout=0.5)
    assert args.kept_patches == args.n_patches // 2
    model, plain = VisionTransformer(args), VisionTransformer(tiny_args)
    plain.load_state_dict(model.state_dict())  # the rate changes no weight
    x = torch.randn(3, 3, tiny_args.image_size, tiny_args.image_size)
    full = plain.embed(x)
    kept = model.train().embed(x)
    assert kept.shape == (3, 1 + args.kept_patches, args.dim)
    torch.testing.assert_close(kept[:, 0], full[:, 0])  # [CLS] stays first
    for b in range(3):  # every kept token is one of this image's patch tokens, none twice
        match = (kept[b, 1:, None, :] == full[b, None, 1:, :]).all(-1)  # (K, N)
        assert (match.sum(1) == 1).all() and (match.sum(0) <= 1).all()
    picks = [set(((kept[b, 1:, None] == full[b, None, 1:]).all(-1).nonzero()[:, 1]).tolist()) for b in range(3)]
    assert len({frozenset(p) for p in picks}) > 1  # drawn per image
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # evaluation keeps every patch
    assert model.train()(x).shape == (3, args.n_classes)
    assert train_flops_per_image(args) < train_flops_per_image(tiny_args)  # fewer tokens, less work per step
