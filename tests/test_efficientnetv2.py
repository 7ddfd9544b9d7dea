"""EfficientNetV2 (Tan & Le, ICML 2021): sizes, timm parity, block details, padding, drop path.

Reference numbers are the ``[count]`` values of architectures.md §2.7.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomize_bn, rel_err
from moderncnn import create_model
from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params
from moderncnn.deploy import count_batchnorms, fuse
from moderncnn.errors import ConfigError
from moderncnn.interop import load_weights
from moderncnn.layers import DropPath
from moderncnn.models.efficientnetv2 import (
    Conv2dSame,
    FusedMBConv,
    MBConv,
    SqueezeExcite,
    conv_bn,
    same_padding,
)
from moderncnn.registry import get_entry


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # on a busy machine two OpenMP threads wait on each other at every op: 10-100x slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name suffix: (exact params, GMACs, at size)  -- architectures.md §2.7 (GMACs at the eval size)
REFERENCE_SIZES = {
    "s": (21_458_488, 8.37, 384),
    "m": (54_139_356, 24.58, 480),
    "l": (118_515_272, 56.08, 480),
    "xl": (208_119_808, 93.35, 512),
    "b0": (7_139_704, 0.718, 224),
    "b1": (8_141_052, 1.197, 240),
    "b2": (10_096_086, 1.698, 260),
    "b3": (14_358_406, 3.011, 300),
}
ALL_NAMES = [p + s for s in REFERENCE_SIZES for p in ("efficientnetv2_", "tf_efficientnetv2_")]
BIG = ("m", "l", "xl")  # counting MACs of these on the meta device takes seconds each


def _size_params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n.rsplit("_", 1)[1] in BIG else n for n in names]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_params_match_reference(name):
    assert count_params(build_meta(name)) == REFERENCE_SIZES[name.rsplit("_", 1)[1]][0]


@pytest.mark.parametrize("name", _size_params(ALL_NAMES))
def test_gmacs_match_reference(name):
    _, gmacs, size = REFERENCE_SIZES[name.rsplit("_", 1)[1]]
    assert count_gmacs(build_meta(name), size) == pytest.approx(gmacs, rel=0.01)


def test_s_gmacs_at_train_size():
    # §2.7: V2-S is 5.31 GMACs at its 300 px train size
    assert count_gmacs(build_meta("tf_efficientnetv2_s"), 300) == pytest.approx(5.31, rel=0.01)


# -- timm parity ----------------------------------------------------------------------------------------
# (ours, timm model, timm kwargs, input sizes). Every name timm has is built on both sides with its own
# defaults (efficientnetv2_*: BN eps 1e-5, as timm; tf_efficientnetv2_*: 1e-3, the paper's).
# timm has no efficientnetv2_b*: its tf_efficientnetv2_b* with symmetric padding (pad_type="") is that
# network. Odd size 67 rather than 65: 65 halves to 33, 17, 9, 5, 3 (all odd, where TF 'same' is symmetric,
# so both paddings agree); 67 halves to 34, so an asymmetric stride-2 pad is hit mid-network.
# Default cases run in float32 (both sides run the same kernels in the same order: rel err 0.0 measured);
# the slow ones in float64 at 32/35 px (35 halves to 18, even) so a deep random net cannot hide behind
# float32 rounding -- float64 depthwise convs on CPU take a slow per-channel path, hence the small inputs.
F32, F64 = torch.float32, torch.float64
PARITY = [
    ("tf_efficientnetv2_b0", "tf_efficientnetv2_b0", {}, F32, (64, 67)),
    ("efficientnetv2_b0", "tf_efficientnetv2_b0", {"pad_type": ""}, F32, (64,)),
    ("efficientnetv2_s", "efficientnetv2_s", {}, F32, (64,)),
    ("tf_efficientnetv2_s", "tf_efficientnetv2_s", {}, F32, (64, 67)),
]
_B, _MLXL = ("b1", "b2", "b3"), ("m", "l", "xl")
PARITY_SLOW = [
    *[(f"tf_efficientnetv2_{s}", f"tf_efficientnetv2_{s}", {}, F64, (32, 35)) for s in _B + _MLXL],
    *[(f"efficientnetv2_{s}", f"tf_efficientnetv2_{s}", {"pad_type": ""}, F64, (32,)) for s in _B],
    *[(f"efficientnetv2_{s}", f"efficientnetv2_{s}", {}, F64, (32,)) for s in _MLXL],
]


def _timm_and_ours(name, timm_name, timm_kwargs, dtype=F32, layout="timm"):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(timm_name, **timm_kwargs).to(dtype)
    randomize_bn(theirs, batches=2, input_size=64)
    ours = create_model(name).to(dtype).eval()
    load_weights(ours, theirs.state_dict(), layout=layout)
    return theirs, ours


@pytest.mark.parametrize(
    "name,timm_name,timm_kwargs,dtype,sizes",
    PARITY + [pytest.param(*case, marks=pytest.mark.slow) for case in PARITY_SLOW],
    ids=[c[0] for c in PARITY + PARITY_SLOW],
)
def test_timm_parity(name, timm_name, timm_kwargs, dtype, sizes, plain_torch):
    theirs, ours = _timm_and_ours(name, timm_name, timm_kwargs, dtype)
    tol = 1e-5 if dtype == F32 else 1e-7
    for size in sizes:
        x = torch.randn(2, 3, size, size, dtype=dtype)
        with torch.no_grad():
            expected = theirs(x)
            assert rel_err(ours(x), expected) <= tol, f"{name} at {size}px"
            assert rel_err(ours.forward_head(ours.forward_features(x), pre_logits=True),
                           theirs.forward_head(theirs.forward_features(x), pre_logits=True)) <= tol


def test_official_layout_is_timm_tf_port():
    """"official" = timm's tf_ port of the TF checkpoints; "auto" recognises it too."""
    theirs, ours = _timm_and_ours("tf_efficientnetv2_b0", "tf_efficientnetv2_b0", {}, layout="official")
    auto = load_weights(create_model("tf_efficientnetv2_b0").eval(), theirs.state_dict(), layout="auto")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(x)
        assert rel_err(ours(x), expected) <= 1e-5
        assert rel_err(auto(x), expected) <= 1e-5


def test_padding_flavour_changes_logits_only_on_even_sizes():
    """The same weights in both paddings: different logits at 32 px (TF pads stride-2 convs right/bottom
    only), identical at 33 px (every strided conv then sees an odd size, where TF 'same' is symmetric)."""
    tf = create_model("tf_efficientnetv2_b0", num_classes=10).eval()
    randomize_bn(tf, batches=2, input_size=32)
    pt = create_model("efficientnetv2_b0", num_classes=10).eval()
    pt.load_state_dict(tf.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert rel_err(pt(x), tf(x)) > 1e-3
        x = torch.randn(2, 3, 33, 33)
        assert rel_err(pt(x), tf(x)) < 1e-6


# -- block details (§3.2, official effnetv2_model.py) -----------------------------------------------------


def _bn_eval(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_se_width_comes_from_block_input():
    # (model, stage, block): (in, expanded, SE width); SE width = int(in * 0.25), not expanded * 0.25
    cases = {
        ("efficientnetv2_s", 3, 0): (64, 256, 16),
        ("efficientnetv2_s", 3, 1): (128, 512, 32),
        ("efficientnetv2_s", 4, 0): (128, 768, 32),
        ("efficientnetv2_s", 5, 0): (160, 960, 40),
        ("tf_efficientnetv2_b0", 3, 0): (48, 192, 12),
        ("tf_efficientnetv2_b3", 5, 1): (232, 1392, 58),
    }
    models = {}
    for (name, i, j), (in_chs, mid, rd) in cases.items():
        blk = models.setdefault(name, build_meta(name)).stages[i][j]
        assert isinstance(blk, MBConv)
        assert blk.expand.conv.weight.shape == (mid, in_chs, 1, 1)
        assert blk.se.reduce.weight.shape == (rd, mid, 1, 1)
        assert blk.se.expand.weight.shape == (mid, rd, 1, 1)
    # no SE in any fused stage, SE in every MBConv block
    s = models["efficientnetv2_s"]
    assert all(isinstance(b.se, nn.Identity) for st in s.stages[:3] for b in st)
    assert all(isinstance(b.se, SqueezeExcite) for st in s.stages[3:] for b in st)


S_CFG = get_entry("efficientnetv2_s").cfg


def _random_bn(block: nn.Module) -> nn.Module:
    """Random BN affine and statistics, eval mode: a block checked by hand needs no calibration."""
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return block.eval()


def test_fused_mbconv_by_hand():
    # e = 1, stride 1, 24 -> 24 (V2-S stage 1): x + SiLU(BN(conv3x3(x))), the activation kept
    blk = _random_bn(FusedMBConv(S_CFG, 24, 24, expand=1, kernel=3, stride=1))
    x = torch.randn(2, 24, 16, 16)
    expected = x + F.silu(_bn_eval(F.conv2d(x, blk.fused.conv.weight, padding=1), blk.fused.bn))
    with torch.no_grad():
        assert rel_err(blk(x), expected) < 1e-6
    # e = 4, stride 1, 48 -> 48 (V2-S stage 2): x + BN(conv1x1(SiLU(BN(conv3x3(x))))), no final activation
    blk = _random_bn(FusedMBConv(S_CFG, 48, 48, expand=4, kernel=3, stride=1))
    x = torch.randn(2, 48, 8, 8)
    h = F.silu(_bn_eval(F.conv2d(x, blk.fused.conv.weight, padding=1), blk.fused.bn))
    expected = x + _bn_eval(F.conv2d(h, blk.project.conv.weight), blk.project.bn)
    with torch.no_grad():
        assert rel_err(blk(x), expected) < 1e-6


def test_fused_e1_without_residual_keeps_activation():
    # B0's first block is 32 -> 16: no shortcut, so the output is SiLU(BN(conv)), never below -0.2785
    blk = _random_bn(FusedMBConv(S_CFG, 32, 16, expand=1, kernel=3, stride=1))
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        out = blk(x)
    assert rel_err(out, F.silu(_bn_eval(F.conv2d(x, blk.fused.conv.weight, padding=1), blk.fused.bn))) < 1e-6
    assert out.min() >= -0.2785


def test_mbconv_by_hand():
    # V2-S stage 5: 160 -> 960 (e6) -> dw3x3 -> SE(960 -> 40 -> 960) -> 160, stride 1, residual
    blk = _random_bn(MBConv(S_CFG, 160, 160, expand=6, kernel=3, stride=1, se_ratio=0.25))
    x = torch.randn(2, 160, 4, 4)
    h = F.silu(_bn_eval(F.conv2d(x, blk.expand.conv.weight), blk.expand.bn))
    h = F.silu(_bn_eval(F.conv2d(h, blk.dw.conv.weight, padding=1, groups=960), blk.dw.bn))
    s = F.conv2d(h.mean((2, 3), keepdim=True), blk.se.reduce.weight, blk.se.reduce.bias)
    assert s.shape[1] == 40
    s = F.conv2d(F.silu(s), blk.se.expand.weight, blk.se.expand.bias)
    h = h * torch.sigmoid(s)
    expected = x + _bn_eval(F.conv2d(h, blk.project.conv.weight), blk.project.bn)
    with torch.no_grad():
        assert rel_err(blk(x), expected) < 1e-5


def test_residual_only_on_stride1_same_width():
    model = build_meta("efficientnetv2_s", drop_path_rate=0.2)  # the recipe's rate (timm's default is 0)
    flags = [[b.has_residual for b in st] for st in model.stages]
    # stage 0 (24 -> 24, s1) keeps every shortcut; stages 1, 2, 3, 5 open with a stride-2 block; stage 4
    # opens with 128 -> 160 at stride 1: none of those first blocks has a shortcut
    assert [f[0] for f in flags] == [True, False, False, False, False, False]
    assert all(all(f[1:]) for f in flags)
    assert sum(map(sum, flags)) == 35
    for st in model.stages:
        for b in st:
            first, last = (b.fused, b.project) if isinstance(b, FusedMBConv) else (b.expand, b.project)
            last = first if isinstance(last, nn.Identity) else last
            stride = (b.fused if isinstance(b, FusedMBConv) else b.dw).conv.stride[0]
            same_width = first.conv.in_channels == last.conv.out_channels
            assert b.has_residual == (stride == 1 and same_width)
            assert isinstance(b.drop_path, DropPath) or not b.has_residual or b is model.stages[0][0]


# -- stochastic depth (§2.4) ----------------------------------------------------------------------------


def test_drop_path_schedule():
    """Block idx of N gets 0.2 * idx / N (official survival 1 - 0.2·idx/N), on residual blocks only."""
    model = build_meta("efficientnetv2_s", drop_path_rate=0.2)  # the recipe's rate (timm's default is 0)
    blocks = [b for st in model.stages for b in st]
    n = len(blocks)
    assert n == 40  # 2 + 4 + 4 + 6 + 9 + 15
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    for idx, (b, rate) in enumerate(zip(blocks, rates)):
        assert rate == pytest.approx(0.2 * idx / n if b.has_residual else 0.0)
    # a few by value: the last block drops 0.195 (not 0.2, as linspace(0, 0.2, N) would give)
    assert rates[39] == pytest.approx(0.195) and rates[20] == pytest.approx(0.1) and rates[1] == 0.005
    assert rates[2] == 0.0 and not blocks[2].has_residual  # stage 2 opens with stride 2: nothing to drop
    assert rates[10] == 0.0 and not blocks[10].has_residual  # stage 4 opens with 64 -> 128, stride 2
    # the rate is a config field like any other
    scaled = build_meta("efficientnetv2_s", drop_path_rate=0.3)
    assert scaled.stages[5][14].drop_path.drop_prob == pytest.approx(0.3 * 39 / 40)


def test_dropout_defaults():
    """Same name, same function: a name timm has takes timm's defaults (no dropout, no drop path; BN eps
    1e-5 for efficientnetv2_s/m/l/xl, 1e-3 for the tf_ ports) and the recipes set the paper's; our own
    PyTorch-padded B0-B3 keep the paper's §2.4 defaults (dropout B0 0.2, B1 0.2, B2 0.3, B3 0.3)."""
    timm = pytest.importorskip("timm")
    for prefix in ("efficientnetv2_", "tf_efficientnetv2_"):
        for size in ("s", "m", "l", "xl"):
            cfg = get_entry(prefix + size).cfg
            with torch.device("meta"):
                theirs = timm.create_model(prefix + size)
            bn = theirs.bn1
            assert (cfg.drop_rate, cfg.drop_path_rate, cfg.bn_eps) == (theirs.drop_rate, 0.0, bn.eps)
            assert not any(type(m).__name__ == "DropPath" for m in theirs.modules())  # timm's default 0
    assert get_entry("efficientnetv2_s").cfg.bn_eps == 1e-5 and get_entry("tf_efficientnetv2_s").cfg.bn_eps == 1e-3
    for size, p in {"b0": 0.2, "b1": 0.2, "b2": 0.3, "b3": 0.3}.items():
        cfg = get_entry("efficientnetv2_" + size).cfg
        assert (cfg.drop_rate, cfg.drop_path_rate, cfg.bn_eps) == (p, 0.2, 1e-3)


def test_recipes_set_the_papers_regularization():
    """§2.4: S 0.2, M 0.3, L 0.4 dropout and survival 0.8 come from the recipes, not the timm names."""
    from importlib import resources

    import yaml

    for size, p in {"s": 0.2, "m": 0.3, "l": 0.4}.items():
        recipe = yaml.safe_load((resources.files("moderncnn") / "recipes" / f"efficientnetv2_{size}.yaml").read_text())
        assert (recipe["drop"], recipe["drop_path"]) == (p, 0.2)


# -- TensorFlow 'same' padding ----------------------------------------------------------------------------


# (input size, kernel, stride): (pad before, pad after), worked out by hand from TF's rule
# out = ceil(in / s), total = max((out - 1)·s + k - in, 0), before = total // 2, after = the rest
TF_PADS = {
    (64, 3, 2): (0, 1),  # out 32: 62 + 3 - 64 = 1 -> all of it after
    (65, 3, 2): (1, 1),  # out 33: 64 + 3 - 65 = 2
    (64, 5, 2): (1, 2),  # out 32: 62 + 5 - 64 = 3
    (65, 5, 2): (2, 2),  # out 33: 64 + 5 - 65 = 4
    (64, 3, 1): (1, 1),
    (65, 3, 1): (1, 1),
    (2, 3, 2): (0, 1),  # a 2×2 map (V2-S's last stride at 64 px)
}


@pytest.mark.parametrize("size,kernel,stride", list(TF_PADS))
def test_conv2d_same_is_tf_same(size, kernel, stride):
    before, after = TF_PADS[(size, kernel, stride)]
    conv = Conv2dSame(4, 6, kernel, stride, bias=False)
    x = torch.randn(2, 4, size, size + 1)  # non-square: width gets its own padding
    _, after_w = TF_PADS.get((size + 1, kernel, stride), (None, None))
    w_pads = same_padding(size + 1, kernel, stride)
    if after_w is not None:
        assert w_pads == TF_PADS[(size + 1, kernel, stride)]
    expected = F.conv2d(F.pad(x, [*w_pads, before, after]), conv.weight, stride=stride)
    with torch.no_grad():
        out = conv(x)
    assert out.shape[-2] == -(-size // stride)  # TF 'same': output is ceil(in / stride)
    assert torch.equal(out, expected)


def test_tf_model_convs_pad_like_tf():
    """Every conv of a tf_ model, at an even and an odd size, equals F.pad(TF pads) + unpadded conv;
    in particular the stride-2 stem at 64 px pads only right/bottom."""
    model = create_model("tf_efficientnetv2_b0", num_classes=10).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
    assert any(m.stride[0] == 2 for m in convs) and all(isinstance(m, Conv2dSame) for m in convs if m.stride[0] > 1)
    for size in (64, 65):
        for conv in convs:
            x = torch.randn(1, conv.in_channels, size, size)
            k, s = conv.kernel_size[0], conv.stride[0]
            before, after = TF_PADS[(size, k, s)]
            expected = F.conv2d(F.pad(x, [before, after, before, after]), conv.weight, stride=s, groups=conv.groups)
            with torch.no_grad():
                assert rel_err(conv(x), expected) < 1e-6


def test_bn_folding_keeps_tf_padding():
    """The BN folds into the conv's weight and bias, so a folded Conv2dSame still pads the TF way."""
    cb = _random_bn(conv_bn(get_entry("tf_efficientnetv2_s").cfg, 8, 16, kernel=3, stride=2, act=False))
    fused = fuse(cb)
    assert isinstance(fused.conv, Conv2dSame) and count_batchnorms(fused) == 0
    for size in (16, 17):
        x = torch.randn(2, 8, size, size)
        with torch.no_grad():
            assert rel_err(fused(x), cb(x)) < 1e-5


# -- model face -------------------------------------------------------------------------------------------


def test_feature_info_and_features_only():
    # timm's levels: one per stride, the stride-1 stages (4 of S; 4 and 6 of M) merged into the next level
    assert [f["reduction"] for f in build_meta("efficientnetv2_s").feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in build_meta("efficientnetv2_s").feature_info] == [24, 48, 64, 160, 256]
    m = build_meta("efficientnetv2_m", features_only=True)
    assert m.feature_info.reduction() == [2, 4, 8, 16, 32] and m.feature_info.channels() == [24, 48, 80, 176, 512]
    assert m.feature_info.module_name() == ["stages.0", "stages.1", "stages.2", "stages.4", "stages.6"]
    assert isinstance(m.conv_head, nn.Identity) and isinstance(m.head, nn.Identity)  # the 1×1 head conv too
    model = create_model("tf_efficientnetv2_b0", features_only=True, out_indices=(1, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16), (1, 192, 2, 2)]
    assert not any(k.startswith("conv_head") for k in model.state_dict())


def test_neck_and_head():
    model = create_model("tf_efficientnetv2_b2", num_classes=7).eval()
    assert model.num_features == 1408 and model.conv_head.conv.weight.shape == (1408, 208, 1, 1)
    assert isinstance(model.conv_head.act, nn.SiLU)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)  # includes the 1×1 head conv, as timm's does
        assert feats.shape == (1, 1408, 1, 1)
        pooled = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(model.forward_head(feats), model.head.fc(pooled))
        assert torch.equal(pooled, feats.mean((2, 3)))
    model.reset_classifier(0)
    assert model(x).shape == (1, 1408)


def test_bad_padding_is_an_error():
    with pytest.raises(ConfigError, match="padding must be 'same'"):
        create_model("efficientnetv2_b0", padding="valid")
