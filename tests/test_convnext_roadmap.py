"""The ConvNeXt modernization roadmap (Liu et al., CVPR 2022, Figure 2; architectures.md §5.4)."""

from dataclasses import replace

import pytest
import torch

from conftest import rel_err
from moderncnn import list_models
from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params
from moderncnn.cli import main as cli_main
from moderncnn.errors import ConfigError
from moderncnn.models.convnext import VARIANTS, ConvNeXt
from moderncnn.models.convnext_roadmap import ROADMAP, ConvNeXtRoadmap, ConvNeXtRoadmapConfig

# architectures.md §5.4 [count]: params (M, 2 decimals) and GMACs @224 (3 decimals)
TABLE = {
    "0_resnet50": (25.56, 4.089),
    "1_stage_ratio": (28.63, 4.526),
    "2_patchify_stem": (28.62, 4.418),
    "3_depthwise": (15.72, 2.350),
    "4_width": (33.76, 5.268),
    "5_inverted_bottleneck": (25.85, 4.644),
    "6_move_up_dwconv": (25.63, 4.065),
    "7_kernel5": (25.72, 4.097),
    "7_kernel7": (25.86, 4.146),
    "7_kernel9": (26.05, 4.210),
    "7_kernel11": (26.29, 4.291),
    "8_gelu": (25.86, 4.146),
    "9_fewer_activations": (25.86, 4.146),
    "10_fewer_norms": (25.84, 4.146),
    "11_layernorm": (25.84, 4.146),
    "12_convnext": (28.58, 4.456),  # the table's count is without layer scale; see the step-12 tests
}


def test_every_step_registered():
    assert set(list_models("convnext_roadmap_*")) == {f"convnext_roadmap_{s}" for s in TABLE}


@pytest.mark.parametrize("step", list(TABLE))
def test_params_and_gmacs(step):
    params_m, gmacs = TABLE[step]
    overrides = {"layer_scale_init_value": 0.0} if step == "12_convnext" else {}
    model = build_meta(f"convnext_roadmap_{step}", **overrides)
    assert round(count_params(model) / 1e6, 2) == params_m
    assert count_gmacs(model, 224) == pytest.approx(gmacs, rel=0.005)
    assert round(count_gmacs(model, 224), 3) == gmacs


def test_step12_with_layer_scale_is_convnext_tiny_count():
    assert count_params(build_meta("convnext_roadmap_12_convnext")) == count_params(build_meta("convnext_tiny"))
    assert count_params(build_meta("convnext_tiny")) == 28_589_128  # §5.1, "official T: 28.59M"


def test_step12_computes_convnext():
    """Step 12 is ConvNeXt: the same weights (a shrunken T) give the same logits."""
    small = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=10)
    ref = ConvNeXt(replace(VARIANTS["convnext_tiny"], **small)).eval()
    ours = ConvNeXtRoadmap(replace(ROADMAP["12_convnext"], stem_width=16, **small)).eval()
    g = torch.Generator().manual_seed(0)
    src, dst = list(ref.parameters()), list(ours.parameters())
    assert len(src) == len(dst)
    with torch.no_grad():
        for p, q in zip(src, dst):
            assert p.numel() == q.numel()  # same structure, parameter by parameter
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel() if p.ndim > 1 else 4) ** 0.5))
            q.copy_(p.reshape(q.shape))  # Linear (out, in) -> 1×1 conv (out, in, 1, 1)
        x = torch.randn(2, 3, 64, 64, generator=g)
        expected = ref(x)
        assert rel_err(ours(x), expected) <= 1e-5
        assert rel_err(ours.forward_features(x), ref.forward_features(x)) <= 1e-5


SMALL = dict(depths=(1, 1, 2, 1), num_classes=5)


def _small(step: str) -> ConvNeXtRoadmap:
    cfg = ROADMAP[step]
    dims = tuple(d // 8 for d in cfg.dims)
    return ConvNeXtRoadmap(replace(cfg, dims=dims, stem_width=cfg.stem_width // 8, **SMALL))


@pytest.mark.parametrize("step", list(TABLE))
def test_forward_backward_shrunken(step):
    model = _small(step)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    final, feats = model.forward_intermediates(x)  # timm's (final, intermediates)
    assert torch.equal(final, model.forward_features(x))
    assert [f.shape[1] for f in feats] == [i["num_chs"] for i in model.feature_info]
    assert [64 // f.shape[-1] for f in feats] == [i["reduction"] for i in model.feature_info]


def _count(model, kinds) -> int:
    return sum(isinstance(m, kinds) for m in model.stages[0].blocks[0].modules())


def test_block_switches_do_what_the_steps_say():
    act, norm = (torch.nn.ReLU, torch.nn.GELU), (torch.nn.BatchNorm2d, torch.nn.LayerNorm)
    assert (_count(_small("8_gelu"), act), _count(_small("8_gelu"), norm)) == (3, 3)
    assert (_count(_small("9_fewer_activations"), act), _count(_small("9_fewer_activations"), norm)) == (1, 3)
    assert (_count(_small("10_fewer_norms"), act), _count(_small("10_fewer_norms"), norm)) == (1, 1)
    block = _small("6_move_up_dwconv").stages[1].blocks[0]
    assert block.conv1.groups == block.conv1.in_channels and block.conv1.stride == (2, 2)  # dw first, strided
    block = _small("12_convnext").stages[1]
    assert isinstance(block.blocks[0].shortcut, torch.nn.Identity)  # no projection once downsampling is separate
    assert block.downsample[1].kernel_size == (2, 2)


def test_invalid_switches_are_config_errors():
    with pytest.raises(ConfigError, match="norm"):
        ConvNeXtRoadmapConfig(norm="gn")
    with pytest.raises(ConfigError, match="fewer_acts"):
        ConvNeXtRoadmapConfig(fewer_acts=True)  # defined only for the dw-first block
    with pytest.raises(ConfigError, match="odd"):
        ConvNeXtRoadmapConfig(kernel_size=4)


def test_cli_info_prints_params_and_gmacs(capsys):
    assert cli_main(["info", "convnext_roadmap_3_depthwise"]) == 0
    out = capsys.readouterr().out
    assert "15,722,664" in out  # §5.4: 15.72M
    assert "2.350" in out  # §5.4: 2.350 GMACs
