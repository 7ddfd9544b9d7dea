"""The papers' ablation switches (issue 13): each changes the structure as stated (parameter and module
counts against hand computation), defaults reproduce the paper's model, and the switched models still
fuse exactly and export cleanly."""

import itertools

import pytest
import torch
from torch import nn

from conftest import randomize_bn, rel_err
from moderncnn import ConfigError, create_model, reparameterize_model
from moderncnn.analysis.complexity import build_meta, count_params
from moderncnn.models.efficientnetv2 import FusedMBConv, MBConv
from moderncnn.models.mobilenext import SandglassBlock
from moderncnn.models.replknet import KERNEL_SIZE_STUDY, RepLKBlock
from moderncnn.models.repvgg import BRANCHES, RepVGGBlock

F64 = torch.float64


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count(m: nn.Module, cls) -> int:
    return sum(isinstance(x, cls) for x in m.modules())


class _Wrap(nn.Module):
    """A block with the ``in_chans`` attribute randomize_bn reads."""

    def __init__(self, block: nn.Module, chans: int) -> None:
        super().__init__()
        self.block, self.in_chans = block, chans

    def forward(self, x):
        return self.block(x)


# -- RepVGG: branches and the identity's BatchNorm (paper Tables 6 and 7) ------------------------------
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(BRANCHES, r) if set(s) != {"identity"}]


@pytest.mark.parametrize("branches", SUBSETS)
@pytest.mark.parametrize("identity_bn", [True, False])
def test_repvgg_block_branches_by_hand(branches, identity_bn):
    c = 8
    block = RepVGGBlock(c, c, branches=branches, identity_bn=identity_bn)
    expected = 0
    if "3x3" in branches:
        expected += 9 * c * c + 2 * c  # 3×3 conv, BN weight and bias
    if "1x1" in branches:
        expected += c * c + 2 * c
    if "identity" in branches and identity_bn:
        expected += 2 * c
    assert n_params(block) == expected
    assert count(block, nn.BatchNorm2d) == len(set(branches) - {"identity"}) + ("identity" in branches and identity_bn)
    assert (block.identity is not None) == ("identity" in branches)
    assert isinstance(block.identity, nn.Identity) == ("identity" in branches and not identity_bn)

    # every combination fuses exactly (float64, calibrated BN)
    block = block.double()
    randomize_bn(_Wrap(block, c), input_size=8)
    x = torch.randn(2, c, 8, 8, dtype=F64)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        assert block.conv_3x3 is None and block.conv_1x1 is None and block.identity is None
        assert rel_err(block(x), ref) <= 1e-12


def test_repvgg_switches_reach_every_block_and_keep_defaults():
    default = build_meta("repvgg_a0")
    assert default.cfg.branches == BRANCHES and default.cfg.identity_bn
    m = build_meta("repvgg_a0", branches=("3x3", "identity"), identity_bn=False)
    blocks = [b for b in m.modules() if isinstance(b, RepVGGBlock)]
    identity_blocks = [b for b in blocks if b.identity is not None]
    assert all(b.conv_1x1 is None for b in blocks)
    assert len(identity_blocks) == 22 - 5  # 22 layers, the first of each of the 5 levels has no identity
    assert all(isinstance(b.identity, nn.Identity) for b in identity_blocks)
    saved = sum(b.in_chs * b.out_chs + 2 * b.out_chs for b in blocks) + sum(2 * b.in_chs for b in identity_blocks)
    assert count_params(default) - count_params(m) == saved


def test_repvgg_switched_model_fuses_exactly():
    m = create_model("repvgg_a0", num_classes=10, num_blocks=(1, 2, 2, 1), branches=("3x3", "identity"),
                     identity_bn=False).double()
    randomize_bn(m)
    x = torch.randn(2, 3, 64, 64, dtype=F64)
    with torch.no_grad():
        assert rel_err(reparameterize_model(m)(x), m(x)) <= 1e-10
    deploy = create_model("repvgg_a0", num_classes=10, num_blocks=(1, 2, 2, 1), deploy=True)
    deploy.load_state_dict(reparameterize_model(m).float().state_dict())  # the deploy form is the same


@pytest.mark.parametrize("bad", [("identity",), ("3x3", "3x3"), ("5x5",), ()])
def test_repvgg_bad_branches_are_explained(bad):
    with pytest.raises(ConfigError, match="branches"):
        create_model("repvgg_a0", branches=bad)


# -- MobileNeXt: where the depthwise convs go, how many, and their activation (paper §3.2) ------------
def _sandglass(**kw) -> SandglassBlock:
    return SandglassBlock(96, 96, 1, 6, **kw)  # hidden = 96 // 6 = 16, a shortcut block (path 4)


@pytest.mark.parametrize("dw_position", ["ends", "middle"])
@pytest.mark.parametrize("second_dw", [True, False])
@pytest.mark.parametrize("last_dw_act", [False, True])
def test_sandglass_switches_by_hand(dw_position, second_dw, last_dw_act):
    c, h = 96, 16
    block = _sandglass(dw_position=dw_position, second_dw=second_dw, last_dw_act=last_dw_act)
    dw_c = h if dw_position == "middle" else c
    n_dw = 2 if second_dw else 1
    pw = (c * h + 2 * h) + (h * c + 2 * c)  # reduce (linear) + expand, each with BN
    assert n_params(block) == pw + n_dw * (9 * dw_c + 2 * dw_c)
    dws = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dws) == n_dw and all(m.in_channels == dw_c for m in dws)
    # ReLU6 after dw1 and after the expanding 1×1; one more after dw2 with last_dw_act
    assert count(block, nn.ReLU6) == 2 + (second_dw and last_dw_act)
    x = torch.randn(2, c, 8, 8)
    assert block(x).shape == x.shape


def test_sandglass_middle_runs_dw_on_the_bottleneck():
    block = _sandglass(dw_position="middle").eval()
    seen = []
    block.dw1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    block(torch.randn(1, 96, 8, 8))
    assert seen == [16]


def test_sandglass_without_second_dw_moves_the_stride():
    block = SandglassBlock(32, 96, 2, 2, second_dw=False)  # path 1: both dws, stride 2 in the last
    assert block.dw2 is None and block.dw1.conv.stride == (2, 2)
    assert block(torch.randn(1, 32, 16, 16)).shape == (1, 96, 8, 8)


def test_mobilenext_switch_model_counts():
    default, middle = build_meta("mobilenext_100"), build_meta("mobilenext_100", dw_position="middle")
    blocks = [b for b in default.modules() if isinstance(b, SandglassBlock)]
    mids = [b for b in middle.modules() if isinstance(b, SandglassBlock)]
    # every depthwise conv-BN (9 + 2 parameters per channel) moves from its wide tensor to `hidden`
    diff = 0
    for b, mb in zip(blocks, mids):
        assert mb.middle and mb.hidden == b.hidden
        if b.dw1 is not None:
            diff += 11 * (b.dw1.conv.in_channels - b.hidden)
        if b.dw2 is not None:
            diff += 11 * (b.dw2.conv.in_channels - b.hidden)
    assert count_params(default) - count_params(middle) == diff
    single = build_meta("mobilenext_100", second_dw=False)
    removed = sum(11 * b.dw2.conv.in_channels for b in blocks if b.dw1 is not None and b.dw2 is not None)
    assert count_params(default) - count_params(single) == removed
    with pytest.raises(ConfigError, match="dw_position"):
        create_model("mobilenext_100", dw_position="wide")


@pytest.mark.parametrize("ratio", [1.0, 0.5, 1 / 3, 0.25])
def test_partial_shortcut_in_place_in_inference(ratio):
    block = _sandglass(identity_ratio=ratio).double()
    randomize_bn(_Wrap(block, 96), input_size=8)
    x = torch.randn(2, 96, 8, 8, dtype=F64)
    k = block.identity_channels
    captured = {}
    block.dw2.register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
    with torch.no_grad():
        out = block(x)
    y = captured["y"]
    assert out.data_ptr() == y.data_ptr(), "inference adds into the last conv's output in place"
    # the pure form (autograd on) gives the same numbers, in a new tensor, and differentiates
    xg = x.clone().requires_grad_(True)
    pure = block(xg)
    assert pure.data_ptr() != captured["y"].data_ptr()
    assert rel_err(out, pure.detach()) <= 1e-14
    pure.sum().backward()
    # the shortcut reaches exactly the first k channels: their gradient has the extra identity term
    y0 = block.dw2(block.pw_expand(block.pw_reduce(block.dw1(x))))
    assert torch.equal(out[:, k:], y0[:, k:]) and rel_err(out[:, :k], y0[:, :k] + x[:, :k]) <= 1e-14


def test_partial_shortcut_pure_under_export():
    model = create_model("mobilenext_035", identity_ratio=0.5, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    program = torch.export.export(model, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.cat.default" in ops and not any(o.endswith("_.Tensor") or "scatter" in o for o in ops), ops
    with torch.no_grad():
        assert rel_err(program.module()(x), model(x)) <= 1e-5


# -- EfficientNetV2: which stages use Fused-MBConv (§3.2) --------------------------------------------
def test_fused_stages_switch():
    cases = ((None, [True] * 3 + [False] * 3), (0, [False] * 6), (6, [True] * 6), (2, [True] * 2 + [False] * 4))
    for fused, expect in cases:
        m = build_meta("efficientnetv2_b0", fused_stages=fused)
        kinds = [all(isinstance(b, FusedMBConv) for b in st) for st in m.stages]
        assert kinds == expect
        assert all(all(isinstance(b, (FusedMBConv, MBConv)) for b in st) for st in m.stages)
    with pytest.raises(ConfigError, match="fused_stages"):
        create_model("efficientnetv2_b0", fused_stages=7)


def test_fused_stages_block_params_by_hand():
    """Stage 3 of B0 (48 -> 96, e=4, k=3, s=2, SE 0.25) as MBConv (table) and as Fused-MBConv (fused_stages=4)."""
    i, o, e, k = 48, 96, 4, 3
    mid, rd = i * e, int(i * 0.25)
    se = (mid * rd + rd) + (rd * mid + mid)
    project = mid * o + 2 * o
    mbconv = (i * mid + 2 * mid) + (k * k * mid + 2 * mid) + se + project
    fused = (k * k * i * mid + 2 * mid) + se + project
    assert n_params(build_meta("efficientnetv2_b0").stages[3][0]) == mbconv
    assert n_params(build_meta("efficientnetv2_b0", fused_stages=4).stages[3][0]) == fused
    # stage 0 (32 -> 16, e=1) as MBConv: depthwise 3×3 + 1×1 projection, no expansion
    assert n_params(build_meta("efficientnetv2_b0", fused_stages=0).stages[0][0]) == (9 * 32 + 64) + (32 * 16 + 32)


def test_fused_stages_model_runs_and_folds():
    from moderncnn.deploy.fuse import fuse

    m = create_model("efficientnetv2_b0", num_classes=10, fused_stages=0, depth_mult=0.25, width_mult=0.25,
                     head_chs=64).double()
    randomize_bn(m, input_size=32)
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    with torch.no_grad():
        assert rel_err(fuse(m)(x), m(x)) <= 1e-10


# -- RepLKNet: the kernel-size study (§5.1, Table 5) and the small kernel --------------------------
RB_PARAMS = 79_864_168  # RepLKNet-31B, training form (the official module's count)
RB_KERNELS = (31, 29, 27, 13)
LAYERS, WIDTHS = (2, 2, 18, 2), (128, 256, 512, 1024)


@pytest.mark.parametrize("kernels", KERNEL_SIZE_STUDY)
def test_kernel_size_variants_by_hand(kernels):
    m = build_meta("replknet_31b_k" + "_".join(map(str, kernels)))
    assert m.cfg.large_kernel_sizes == kernels
    small = m.cfg.small_kernel
    assert small == (None if kernels == (3, 3, 3, 3) else 5)
    # from 31B: each RepLK block's depthwise kernel changes size; without a small kernel the 5×5 conv-BN goes
    expected = RB_PARAMS
    for n, d, k, k31 in zip(LAYERS, WIDTHS, kernels, RB_KERNELS):
        expected += n * d * (k * k - k31 * k31)
        if small is None:
            expected -= n * (25 * d + 2 * d)
    assert count_params(m) == expected
    blocks = [b for b in m.modules() if isinstance(b, RepLKBlock)]
    assert [b.large_kernel.kernel_size for b in blocks] == [k for n, k in zip(LAYERS, kernels) for _ in range(n)]


def test_small_kernel_on_off():
    on = build_meta("replknet_31b")
    off = build_meta("replknet_31b", small_kernel=None)
    lk_on = [b.large_kernel for b in on.modules() if isinstance(b, RepLKBlock)]
    assert all(lk.small_conv is not None for lk in lk_on)
    assert all(b.large_kernel.small_conv is None for b in off.modules() if isinstance(b, RepLKBlock))
    assert count_params(on) - count_params(off) == sum(n * 27 * d for n, d in zip(LAYERS, WIDTHS))
    # both fuse exactly (tiny widths, float64)
    for small in (5, None):
        m = create_model("replknet_31b_k13_13_13_13", channels=(8, 8, 16, 16), layers=(1, 1, 1, 1), num_classes=5,
                         small_kernel=small).double()
        randomize_bn(m)
        x = torch.randn(2, 3, 64, 64, dtype=F64)
        with torch.no_grad():
            assert rel_err(reparameterize_model(m)(x), m(x)) <= 1e-10


# -- ConvNeXt roadmap: each step's recipe differences are fields ----------------------------------
@pytest.mark.parametrize("step", ["0_resnet50", "6_move_up_dwconv", "11_layernorm", "12_convnext"])
def test_roadmap_stochastic_depth_and_layer_scale_are_fields(step):
    name = f"convnext_roadmap_{step}"
    base = build_meta(name, drop_path_rate=0.0, layer_scale_init_value=0.0)
    m = build_meta(name, drop_path_rate=0.1, layer_scale_init_value=1e-6)
    depths, dims = m.cfg.depths, m.cfg.dims
    # every block but the first (rate 0 on the linear schedule) drops its residual branch
    from moderncnn.layers import DropPath

    assert count(m, DropPath) == sum(depths) - 1 and count(base, DropPath) == 0
    assert count_params(m) - count_params(base) == sum(n * d for n, d in zip(depths, dims))  # one γ per channel
    rates = [x.drop_prob for x in m.modules() if isinstance(x, DropPath)]
    assert rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


# -- export of switched models (ONNX, onnxruntime) ------------------------------------------------
SWITCHED = {
    "repvgg": ("repvgg_a0", dict(num_blocks=(1, 1, 1, 1), branches=("3x3", "identity"), identity_bn=False)),
    "mobilenext": ("mobilenext_035", dict(dw_position="middle", second_dw=False, last_dw_act=True,
                                          identity_ratio=0.5)),
    "mobilenetv2": ("mobilenetv2_050", dict(kernel_sizes=(3, 3, 3, 7, 3, 3, 3), small_kernel=3, shortcut=False)),
    "efficientnetv2": ("efficientnetv2_b0", dict(fused_stages=0, depth_mult=0.25)),
    "replknet": ("replknet_31b_k7_7_7_7", dict(channels=(8, 8, 16, 16), layers=(1, 1, 1, 1))),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SWITCHED))
def test_switched_models_export_to_onnx(family, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    name, kw = SWITCHED[family]
    model = create_model(name, num_classes=10, **kw)
    randomize_bn(model, batches=4, input_size=96)
    model = reparameterize_model(model)
    x = torch.randn(2, 3, 64, 64)
    torch.onnx.export(model, (x,), dynamo=True).save(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(out), model(x)) <= 1e-4
