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


# -- the timm-facing face: data config, layer-decay groups, torch.fx -----------------------------------
from moderncnn.registry import get_entry  # noqa: E402

IN_TIMM = [n for n in ALL if get_entry(n).in_timm]
# one small model per family (and both EfficientNetV2 paddings)
ONE_PER_FAMILY = ["convnext_atto", "convnext_roadmap_12_convnext", "efficientnetv2_b0", "tf_efficientnetv2_b0",
                  "mobilenetv2_050", "mobilenext_035", "repvgg_a0", "replknet_31b_k3_3_3_3"]


@pytest.mark.parametrize("name", IN_TIMM)
def test_data_config_is_timms(name):
    """timm's resolve_model_data_config reads the same mean/std, crop, interpolation and sizes from our
    model as from timm's of the same name."""
    timm_data = pytest.importorskip("timm.data")
    import timm

    with torch.device("meta"):
        theirs = timm.create_model(name)
    ours = _cfg_only(name)
    assert timm_data.resolve_model_data_config(ours) == timm_data.resolve_model_data_config(theirs)
    assert timm_data.resolve_model_data_config(ours, use_test_size=True) == \
        timm_data.resolve_model_data_config(theirs, use_test_size=True)


def _cfg_only(name):
    """A meta-device model with the pretrained_cfg the factory gives (building big models costs seconds)."""
    with torch.device("meta"):
        return create_model(name)


@pytest.mark.parametrize("name", [n for n in ALL if not get_entry(n).in_timm])
def test_own_names_have_a_data_config(name):
    cfg = _cfg_only(name).pretrained_cfg
    assert cfg["architecture"] == name and cfg["mean"] and cfg["std"] and 0 < cfg["crop_pct"] <= 1
    assert cfg["interpolation"] in ("bilinear", "bicubic") and cfg["input_size"][0] == 3


@pytest.mark.parametrize("name", ALL)
def test_layer_decay_groups(name):
    """timm's layer-decay grouping works on every model: stem first, classifier last, every parameter
    grouped, and no group between stem and classifier is empty."""
    optim = pytest.importorskip("timm.optim")
    model = build_meta(name)
    groups = optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scales = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            scales[names[id(p)]] = g["lr_scale"]
    assert len(scales) == len(names)
    stem_prefix = "stages.0." if model.family == "repvgg" else "stem"  # RepVGG's stage 0 is timm's stem
    stem = [s for n, s in scales.items() if n.startswith(stem_prefix)]
    head = [s for n, s in scales.items() if n.startswith("head")]
    assert stem and max(stem) == min(scales.values()) < 1.0
    assert head and min(head) == 1.0
    coarse = model.group_matcher(coarse=True)
    assert set(coarse) == {"stem", "blocks"}


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_torch_fx_trace(name):
    """torch.fx traces every family (torchvision's create_feature_extractor too); eager input checks stay."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    traced = torch.fx.symbolic_trace(model)
    extractor = create_feature_extractor(model, {model.feature_info[1]["module"]: "f"})
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        feats = model.forward_intermediates(x, [1], intermediates_only=True)
        assert torch.equal(extractor(x)["f"], feats[0])
    from moderncnn.errors import InputShapeError

    with pytest.raises(InputShapeError, match="input channels"):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("name", IN_TIMM)
def test_feature_levels_are_timms(name):
    """The same out_indices mean the same maps: channels and reductions of every level as timm's."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        theirs = timm.create_model(name)
    ours = build_meta(name)
    assert [(f["num_chs"], f["reduction"]) for f in ours.feature_info] == \
        [(f["num_chs"], f["reduction"]) for f in theirs.feature_info]


@pytest.mark.parametrize("name", ALL)
def test_pretrained_cfg_names_real_modules(name):
    model = _cfg_only(name)
    cfg = model.pretrained_cfg
    first = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    assert all(model.get_submodule(m).in_channels == 3 for m in first)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
