"""Analysis helpers against hand computations."""
import pytest
import torch

from vit_helpers import analysis as A


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    targets = torch.tensor([0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = A.confusion_matrix(targets, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert A.per_class_accuracy(cm).tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert A.most_confused_pairs(cm, ["a", "b", "c"], 2) == [("a", "b", 1), ("b", "a", 1)] or \
        A.most_confused_pairs(cm, ["a", "b", "c"], 2) == [("b", "a", 1), ("a", "b", 1)]


def test_wilson_interval():
    p, lo, hi = A.accuracy_with_ci(7507, 10000)
    assert p == 0.7507 and lo < p < hi and hi - lo == pytest.approx(0.0170, abs=5e-4)


def test_rollout_rows_sum_to_one_and_shape():
    maps = torch.rand(3, 2, 4, 5, 5).softmax(-1)
    out = A.attention_rollout(maps)
    assert out.shape == (2, 5, 5)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 5))


def test_rollout_of_identity_attention_is_identity():
    maps = torch.eye(5).expand(3, 2, 4, 5, 5)
    torch.testing.assert_close(A.attention_rollout(maps), torch.eye(5).expand(2, 5, 5))


def test_mean_attention_distance_self_attention_is_zero():
    g = 4
    attn = torch.eye(1 + g * g).expand(2, 3, 17, 17)
    assert A.mean_attention_distance(attn, g, patch_size=4).abs().max() == 0


def test_mean_attention_distance_hand_case():
    # 2x2 grid, patch 4: every patch attends only to its right/left neighbour (4 px away);
    # head 1 attends uniformly: distances to the 4 patches are 0, 4, 4, 4*sqrt(2) -> mean (8 + 4*sqrt(2)) / 4.
    g, T = 2, 5
    a0 = torch.zeros(T, T)
    a0[0, 0] = 1
    for i, j in ((1, 2), (2, 1), (3, 4), (4, 3)):
        a0[i, j] = 1
    a1 = torch.full((T, T), 1 / T)
    attn = torch.stack([a0, a1])[None]  # (B=1, H=2, T, T)
    d = A.mean_attention_distance(attn, g, patch_size=4)
    assert d.tolist() == pytest.approx([4.0, (8 + 4 * 2**0.5) / 4])


def test_ece_zero_for_perfect_calibration():
    # 80% confident and 80% right, 50% confident and 50% right
    conf = torch.tensor([0.8] * 10 + [0.5] * 10)
    correct = torch.tensor([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5)
    assert A.expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.0, abs=1e-6)  # float32 0.8 is 0.80000001
    assert A.expected_calibration_error(torch.ones(4), torch.tensor([1, 0, 0, 0]), n_bins=10) == pytest.approx(0.75)


def test_pos_embedding_similarity_shape_and_diagonal():
    sim = A.pos_embedding_similarity(torch.randn(1, 17, 8), 4)
    assert sim.shape == (4, 4, 4, 4)
    assert all(sim[i, j, i, j] == pytest.approx(1.0, abs=1e-6) for i in range(4) for j in range(4))
