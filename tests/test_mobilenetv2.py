"""MobileNetV2 (Sandler et al., CVPR 2018): timm parity with timm's default constructor arguments, weight
loading, and the switches RepLKNet's guidelines use (shortcut, depthwise kernel per stage, a parallel
small kernel merged into the large one)."""

import pytest
import torch
from torch import nn

from conftest import randomize_bn, rel_err
from moderncnn import ConfigError, create_model, load_weights, reparameterize_model
from moderncnn.analysis.complexity import build_meta, count_params
from moderncnn.models.mobilenetv2 import DepthwiseConvBN, InvertedResidual

NAMES = ["mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140"]
F64 = torch.float64


@pytest.mark.parametrize("name", [NAMES[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in NAMES[1:]])
def test_timm_parity(name):
    """timm built with its own defaults, BN calibrated, float64: our model with its weights gives its logits."""
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(name).double()
    randomize_bn(theirs, input_size=48)
    ours = create_model(name).double().eval()
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters())
    load_weights(ours, theirs.state_dict())  # layout detected as timm's
    x = torch.randn(2, 3, 64, 64, dtype=F64)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-12
        assert rel_err(ours.forward_features(x), theirs.forward_features(x)) <= 1e-12


def test_timm_widths():
    timm = pytest.importorskip("timm")
    for name in NAMES:
        with torch.device("meta"):
            theirs = timm.create_model(name)
        ours = build_meta(name)
        assert [s[-1].project.conv.out_channels for s in ours.stages] == [
            s[-1].conv_pwl.out_channels if hasattr(s[-1], "conv_pwl") else s[-1].conv_pw.out_channels
            for s in theirs.blocks
        ]
        assert ours.num_features == theirs.num_features and ours.stem.conv.out_channels == theirs.conv_stem.out_channels


def _mid_widths(model):
    return [[b.dw.chs for b in stage] for stage in model.stages]


def test_shortcut_switch():
    on, off = build_meta("mobilenetv2_100"), build_meta("mobilenetv2_100", shortcut=False)
    blocks = [b for s in on.stages for b in s]
    # MobileNetV2-1.0 has 17 blocks; the 10 repeated ones (stride 1, same width) carry the shortcut
    assert len(blocks) == 17 and sum(b.has_shortcut for b in blocks) == 10
    assert not any(b.has_shortcut for s in off.stages for b in s)
    assert count_params(on) == count_params(off)  # a shortcut has no parameters
    m_on = create_model("mobilenetv2_050").eval()
    m_off = create_model("mobilenetv2_050", shortcut=False).eval()
    m_off.load_state_dict(m_on.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(m_on(x), m_off(x)) > 1e-3


def test_kernel_size_per_stage_by_hand():
    """RepLKNet's experiment: stage 4 (the 96-wide row, index 4) with 13×13 depthwise kernels."""
    base = build_meta("mobilenetv2_100")
    big = build_meta("mobilenetv2_100", kernel_sizes=(3, 3, 3, 3, 13, 3, 3))
    extra = sum(mid * (13 * 13 - 9) for mid in _mid_widths(base)[4])
    assert count_params(big) - count_params(base) == extra
    assert [b.dw.conv.kernel_size for b in big.stages[4]] == [(13, 13)] * 3
    assert all(b.dw.conv.kernel_size == (3, 3) for i, s in enumerate(big.stages) if i != 4 for b in s)
    with pytest.raises(ConfigError, match="kernel_sizes"):
        create_model("mobilenetv2_100", kernel_sizes=(3, 5))
    with pytest.raises(ConfigError, match="odd"):
        create_model("mobilenetv2_100", kernel_sizes=(3, 3, 3, 3, 4, 3, 3))


def test_small_kernel_branch_by_hand_and_exact_merge():
    kernels = (3, 3, 3, 3, 13, 3, 3)
    big = build_meta("mobilenetv2_100", kernel_sizes=kernels)
    rep = build_meta("mobilenetv2_100", kernel_sizes=kernels, small_kernel=5)
    mids = _mid_widths(big)[4]
    # a 5×5 depthwise conv-BN beside each 13×13 only (no branch where the kernel is not larger)
    assert count_params(rep) - count_params(big) == sum(m * (25 + 2) for m in mids)
    assert sum(isinstance(b.dw.small, nn.Module) for s in rep.stages for b in s) == 3

    m = create_model("mobilenetv2_050", num_classes=10, kernel_sizes=(3, 3, 7, 3, 13, 3, 3), small_kernel=3).double()
    randomize_bn(m)
    x = torch.randn(2, 3, 64, 64, dtype=F64)
    fused = reparameterize_model(m)
    with torch.no_grad():
        assert rel_err(fused(x), m(x)) <= 1e-10
    dws = [b.dw for s in fused.stages for b in s]
    merged = [d for d in dws if d.reparam_conv is not None]
    assert len(merged) == 3 + 3 and all(d.small is None for d in dws)
    # per channel the merge removes the 3×3 small kernel (9), both BNs (2 + 2) and adds one bias
    assert count_params(fused) == count_params(m) - sum(d.chs * (9 + 2 + 2 - 1) for d in merged)
    assert reparameterize_model(fused).state_dict().keys() == fused.state_dict().keys()  # twice: no-op


def test_depthwise_block_stride_alignment():
    """The small kernel is centred in the large one for stride 2 too."""
    dw = DepthwiseConvBN(4, 7, 2, small_kernel=3).double()
    block = nn.Sequential(dw)
    block.in_chans = 4
    randomize_bn(block, input_size=9)
    x = torch.randn(1, 4, 9, 9, dtype=F64)
    with torch.no_grad():
        ref = dw(x)
        dw.reparameterize()
        assert rel_err(dw(x), ref) <= 1e-12


def test_block_structure():
    b = InvertedResidual(16, 24, 2, 6, 3)
    assert b.expand.conv.out_channels == 96 and b.dw.conv.stride == (2, 2) and not b.has_shortcut
    first = InvertedResidual(32, 16, 1, 1, 3)
    assert first.expand is None  # t = 1: depthwise separable, no expansion
