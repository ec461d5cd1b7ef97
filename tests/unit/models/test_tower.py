import pytest
import torch

from nearline.models.tower import FeatureSpec, HadamardHead, MaskedMeanEmbedding, PyramidTower, TowerConfig

FEATS = (FeatureSpec("title", "title", 10), FeatureSpec("skills", "skills", 20, max_len=4, weighted=True))


def test_layers_widen_and_see_every_earlier_output():
    t = PyramidTower(TowerConfig(FEATS, emb_dim=4, widths=(8, 16, 32), dim=6))
    ins = [layer[0].in_features for layer in t.layers]
    assert ins == [8, 8 + 8, 8 + 8 + 16]           # tower input + all previous layers (skip connections)
    assert t.out.in_features == 8 + 8 + 16 + 32
    with pytest.raises(ValueError, match="grow"):
        TowerConfig(FEATS, widths=(32, 16))


def test_masked_weighted_mean_ignores_padding():
    m = MaskedMeanEmbedding(FeatureSpec("s", "s", 10, max_len=3, weighted=True), 2)
    with torch.no_grad():
        m.emb.weight.copy_(torch.arange(20, dtype=torch.float32).view(10, 2))
    ids = torch.tensor([[2, 3, 0]])
    out = m(ids, torch.tensor([[1.0, 3.0, 5.0]]))
    expected = (1 * m.emb.weight[2] + 3 * m.emb.weight[3]) / 4   # pad (id 0) ignored, its weight too
    assert torch.allclose(out[0], expected)


def test_hadamard_logistic_regression():
    h = HadamardHead(3)
    m, j = torch.randn(5, 3), torch.randn(5, 3)
    expected = (m * j) @ h.lin.weight.squeeze(0) + h.lin.bias
    assert torch.allclose(h(m, j), expected)


def test_forward_shape_and_l2():
    t = PyramidTower(TowerConfig(FEATS, emb_dim=4, widths=(8, 8), dim=5, l2_normalize=True))
    feats = {"title": torch.randint(0, 10, (7, 1)), "skills": torch.randint(0, 20, (7, 4)),
             "skills__weight": torch.ones(7, 4)}
    out = t(feats)
    assert out.shape == (7, 5) and torch.allclose(out.norm(dim=1), torch.ones(7), atol=1e-5)
