"""Shifted Patch Tokenization, Locality Self-Attention (Lee et al., 2021) and the small-data subsets (notebook 10)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vit_helpers as vh
from vit_helpers import checkpoint as ckpt_io
from vit_helpers.config import TrainConfig
from vit_helpers.patching import ShiftedPatchTokenization, shift
from vit_helpers.train import subset_indices, train_val_split

TINY = vh.ModelArgs(dim=32, hidden_dim=64, n_heads=4, n_layers=2, dropout=0.0)


def test_shift_moves_the_picture_and_fills_the_border_with_zeros():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1  # no zeros in the picture
    s = shift(x, 2, -1)  # 2 right, 1 up
    assert s.shape == x.shape
    assert torch.equal(s[..., 0:7, 2:8], x[..., 1:8, 0:6])
    assert (s[..., :, :2] == 0).all() and (s[..., 7, :] == 0).all()
    assert torch.equal(shift(x, 0, 0), x)


def test_spt_concatenates_the_image_and_its_four_diagonal_half_patch_shifts():
    spt = ShiftedPatchTokenization(3, 4, 16)
    x = torch.rand(2, 3, 8, 8) + 0.1
    stacked = spt.shifted(x)
    assert stacked.shape == (2, 15, 8, 8)
    assert torch.equal(stacked[:, :3], x)
    # Each group is the image moved by 2 pixels (half of patch 4) along one diagonal, written out with slices.
    left_up, right_up, left_down, right_down = (stacked[:, 3 * i:3 * i + 3] for i in range(1, 5))
    assert torch.equal(left_up[..., :6, :6], x[..., 2:, 2:]) and (left_up[..., 6:, :] == 0).all()
    assert torch.equal(right_up[..., :6, 2:], x[..., 2:, :6]) and (right_up[..., :, :2] == 0).all()
    assert torch.equal(left_down[..., 2:, :6], x[..., :6, 2:]) and (left_down[..., :2, :] == 0).all()
    assert torch.equal(right_down[..., 2:, 2:], x[..., :6, :6]) and (right_down[..., :2, :] == 0).all()


def test_spt_tokens_are_layernormed_patches_of_the_stack_projected():
    spt = ShiftedPatchTokenization(3, 4, 16)
    x = torch.randn(2, 3, 8, 8)
    tokens = spt(x)
    assert tokens.shape == (2, 4, 16)
    patches = vh.img_to_patch(spt.shifted(x), 4)  # (B, N, 5*C*P*P)
    assert patches.shape == (2, 4, 5 * 3 * 16)
    ref = F.linear(F.layer_norm(patches, (240,), spt.norm.weight, spt.norm.bias), spt.proj.weight, spt.proj.bias)
    torch.testing.assert_close(tokens, ref)
    with pytest.raises(ValueError, match="even"):
        ShiftedPatchTokenization(3, 3, 16)
    with pytest.raises(ValueError, match="even"):
        vh.ModelArgs(patch_size=1, spt=True)


def _lsa_reference(attn: vh.MultiHeadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LSA written independently: per-head learned scale on the scores, the diagonal set to -inf before the softmax."""
    B, N, D = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, v = (w(x).view(B, N, H, hd).permute(0, 2, 1, 3) for w in (attn.wq, attn.wk, attn.wv))
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * attn.log_scale.exp()[None, :, None, None]
    scores = scores + torch.diag(torch.full((N,), float("-inf")))
    weights = scores.softmax(-1)
    out = torch.einsum("bhnm,bhmd->bnhd", weights, v).reshape(B, N, D)
    return attn.wo(out), weights


@pytest.mark.parametrize("fused", [True, False])
def test_lsa_masks_the_diagonal_and_uses_the_learned_temperature(fused):
    torch.manual_seed(0)
    attn = vh.MultiHeadAttention(TINY.replace(lsa=True))
    attn.fused = fused
    with torch.no_grad():
        attn.log_scale.copy_(torch.randn(4))  # any temperature, one per head
    x = torch.randn(3, 5, 32)
    ref_out, ref_w = _lsa_reference(attn, x)
    torch.testing.assert_close(attn(x), ref_out, atol=1e-5, rtol=1e-4)
    out, w = attn(x, return_attn=True)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    assert (w.diagonal(dim1=-2, dim2=-1) == 0).all()  # no token attends to itself
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 5))


def test_lsa_starts_at_the_usual_scale_and_learns_it():
    attn = vh.MultiHeadAttention(TINY.replace(lsa=True))
    torch.testing.assert_close(attn.log_scale.exp(), torch.full((4,), 1 / math.sqrt(8)))
    attn(torch.randn(2, 5, 32)).square().sum().backward()
    assert attn.log_scale.grad is not None and attn.log_scale.grad.abs().sum() > 0
    assert not hasattr(vh.MultiHeadAttention(TINY), "log_scale")  # off: the article's attention, no new parameter


def test_spt_lsa_model_shapes_parameters_and_paths_agree():
    torch.manual_seed(0)
    args = TINY.replace(spt=True, lsa=True, image_size=16)
    model = vh.VisionTransformer(args).eval()
    x = torch.randn(2, 3, 16, 16)
    fused = model(x)
    assert fused.shape == (2, 10) and fused.isfinite().all()
    for block in model.transformer:
        block.attn.fused = False
    torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-4)
    maps = model.attention_maps(x)
    assert maps.shape == (2, 2, 4, 17, 17) and (maps.diagonal(dim1=-2, dim2=-1) == 0).all()
    plain = vh.VisionTransformer(args.replace(spt=False, lsa=False))
    extra = vh.count_parameters(model) - vh.count_parameters(plain)
    patch_dim = 3 * 4 * 4
    assert extra == (5 * patch_dim * 32 - patch_dim * 32) + 2 * 5 * patch_dim + 2 * 4  # wider projection, LayerNorm, scales
    assert vh.flops_per_image(args) > vh.flops_per_image(args.replace(spt=False))


def test_training_with_spt_and_lsa_lowers_the_loss():
    torch.manual_seed(0)
    model = vh.VisionTransformer(TINY.replace(spt=True, lsa=True, image_size=16))
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_an_old_checkpoint_loads_unchanged(tmp_path):
    """A checkpoint written before spt/lsa existed (its model_args lack them) loads as the plain model."""
    model = vh.VisionTransformer(TINY)
    old_args = {k: v for k, v in TINY.to_dict().items() if k not in ("spt", "lsa")}
    path = ckpt_io.atomic_save({"model_args": old_args, "model": model.state_dict()}, tmp_path / "old.pt")
    loaded, _ = ckpt_io.load_model(path)
    assert loaded.args == TINY
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    ckpt_io.load_weights(vh.VisionTransformer(TINY), path)  # the same architecture: accepted
    with pytest.raises(ValueError, match="spt: checkpoint has False, model has True"):
        ckpt_io.load_weights(vh.VisionTransformer(TINY.replace(spt=True)), path)


def test_the_released_weights_load_into_the_default_model():
    from vit_helpers import paths

    model, ckpt = ckpt_io.load_model(paths.RELEASED_WEIGHTS)
    assert model.args == vh.ModelArgs(dropout=model.args.dropout) and not model.args.spt and not model.args.lsa
    ckpt_io.load_weights(vh.VisionTransformer(vh.ModelArgs()), paths.RELEASED_WEIGHTS)


def test_balanced_subsets_are_balanced_nested_and_checked():
    labels = torch.arange(1000) % 10
    train_idx, _ = train_val_split(1000, 200, seed=0)
    small, large = subset_indices(train_idx, labels, 100, balanced=True), subset_indices(train_idx, labels, 300, balanced=True)
    assert torch.bincount(labels[small], minlength=10).tolist() == [10] * 10
    assert torch.bincount(labels[large], minlength=10).tolist() == [30] * 10
    assert set(small.tolist()) <= set(large.tolist())
    order = {int(i): n for n, i in enumerate(train_idx)}
    assert [order[int(i)] for i in small] == sorted(order[int(i)] for i in small)  # the split's order is kept
    assert torch.equal(subset_indices(train_idx, labels, 100), train_idx[:100])  # unbalanced: the first 100
    with pytest.raises(ValueError, match="multiple of 10"):
        subset_indices(train_idx, labels, 105, balanced=True)
    rare_nine = torch.cat([torch.arange(990) % 9, torch.full((10,), 9)])  # class 9: 10 images in all
    with pytest.raises(ValueError, match="needs 20 of class 9"):
        subset_indices(train_idx, rare_nine, 200, balanced=True)
    with pytest.raises(ValueError, match="needs train_subset"):
        TrainConfig(balanced_subset=True)
    with pytest.raises(ValueError, match="subset_repeat"):
        TrainConfig(subset_repeat=0)


def test_subset_repeat_gives_an_epoch_of_repeated_passes():
    from vit_helpers.data import ImageData
    from vit_helpers.train import make_batches

    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(300) % 10,
                     torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.arange(10), tuple("abcdefghij"), "test")
    cfg = TrainConfig(pipeline="gpu", augment="none", batch_size=20, val_size=100, train_subset=50, balanced_subset=True,
                      subset_repeat=4)
    train, _, n = make_batches(data, cfg, torch.device("cpu"), 10)
    assert n == 200 and len(train) == 10
    seen = torch.cat([y for _, y in train])
    assert torch.bincount(seen, minlength=10).tolist() == [20] * 10  # every image four times, each class alike
