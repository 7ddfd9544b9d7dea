"""Every registered model: forward and backward at a small input, and features-only shapes."""

import pytest
import torch

from moderncnn import create_model, list_models
from moderncnn.analysis.complexity import build_meta, count_params

ALL = list_models()
# the largest variants cost seconds each on 2 cores; they still run, in the slow suite
BIG = {n for n in ALL if count_params(build_meta(n, num_classes=10)) > 60e6}


def _mark(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


@pytest.mark.parametrize("name", _mark(ALL))
def test_forward_backward(name):
    model = create_model(name, num_classes=10)
    size = model.min_input_size * 2
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter receives a gradient"
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", _mark(ALL))
def test_features_only(name):
    model = create_model(name, features_only=True).eval()
    size = model.min_input_size * 2
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size))
    assert len(feats) == len(model.feature_info)
    for f, info in zip(feats, model.feature_info):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[-1] == size // info["reduction"]
