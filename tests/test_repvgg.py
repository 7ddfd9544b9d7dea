"""RepVGG (Ding et al., CVPR 2021): sizes, timm parity, exact fusion, official golden file and key layouts."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import SHARED_OFFICIAL, official_file, official_key_files, randomize_bn, rel_err
from moderncnn import create_model, from_official_config, list_models, load_weights, reparameterize_model
from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params
from moderncnn.errors import CheckpointError, ConfigError
from moderncnn.interop import convert_state_dict
from moderncnn.models.repvgg import RepVGG, RepVGGBlock, RepVGGConfig
from moderncnn.registry import get_entry

ALL = list_models("repvgg*")
IN_TIMM = [n for n in ALL if get_entry(n).in_timm]
# A-models (22 layers) compare in float32; the deeper B/D models in float64 (STYLE.md: a deep random
# network amplifies float32 rounding)
SHALLOW = {"repvgg_a0", "repvgg_a1", "repvgg_a2"}
# cheap enough for the default run on a shared 2-core machine; the rest run with -m slow
FAST = {"repvgg_a0", "repvgg_b1g4"}

# architectures.md §3.4 [count]: deploy params, deploy GMACs, train params, train GMACs (224², 1000 classes)
REFERENCE = {
    "repvgg_a0": (8_309_384, 1.361, 9_108_968, 1.513),
    "repvgg_a1": (12_789_864, 2.364, 14_092_264, 2.626),
    "repvgg_b0": (14_339_048, 3.058, 15_817_960, 3.397),
    "repvgg_a2": (25_499_944, 5.117, 28_210_600, 5.685),
    "repvgg_b1g4": (36_125_416, 7.307, 39_966_056, 8.119),
    "repvgg_b1g2": (41_360_104, 8.810, 45_782_376, 9.788),
    "repvgg_b1": (51_829_480, 11.815, 57_415_016, 13.128),
    "repvgg_b2g4": (55_777_512, 11.332, 61_758_376, 12.591),
    "repvgg_b2": (80_315_112, 18.377, 89_022_376, 20.418),
    "repvgg_b3g4": (75_626_728, 16.064, 83_825_128, 17.849),
    "repvgg_b3": (110_960_872, 26.209, 123_085_288, 29.121),
    "repvgg_b2g2": (63_956_712, 13.680, 70_846_376, 15.200),
    "repvgg_b3g2": (87_404_776, 19.446, 96_911_848, 21.606),
    "repvgg_d2se": (120_387_572, 32.830, 133_334_836, 36.477),
}


def _mark(names):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _setup(name: str):
    dtype = torch.float32 if name in SHALLOW else torch.float64
    tol = 1e-5 if name in SHALLOW else 1e-7
    return dtype, tol


# -- 1. sizes ----------------------------------------------------------------------------------------
def test_registry_matches_timm():
    timm = pytest.importorskip("timm")
    assert set(IN_TIMM) == set(timm.list_models("repvgg*"))
    assert set(ALL) == set(REFERENCE)


@pytest.mark.parametrize("name", ALL)
def test_params_and_gmacs(name):
    deploy_p, deploy_g, train_p, train_g = REFERENCE[name]
    train, deploy = build_meta(name), build_meta(name, deploy=True)
    assert count_params(train) == train_p
    assert count_params(deploy) == deploy_p
    assert count_gmacs(train, 224) == pytest.approx(train_g, rel=0.01)
    assert count_gmacs(deploy, 224) == pytest.approx(deploy_g, rel=0.01)


def test_stage_widths_follow_paper_rounding():
    # int() truncation and stage 0 = min(64, 64a) (architectures.md §3.3)
    assert get_entry("repvgg_a0").cfg.stage_widths() == (48, 48, 96, 192, 1280)
    assert get_entry("repvgg_a2").cfg.stage_widths() == (64, 96, 192, 384, 1408)
    assert get_entry("repvgg_b3").cfg.stage_widths() == (64, 192, 384, 768, 2560)
    model = build_meta("repvgg_b1g4")
    # official optional_groupwise_layers 2, 4, ..., 26: 2nd/4th block of stage 1, every other of 2 and 3
    blocks = [b for stage in model.stages for b in stage]
    assert [i for i, b in enumerate(blocks) if b.groups == 4] == list(range(2, 27, 2))
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        (64, 2), (128, 4), (256, 8), (512, 16), (2048, 32)
    ]


def test_config_errors_speak():
    with pytest.raises(ConfigError, match="groups"):
        RepVGG(RepVGGConfig(num_blocks=(1, 1, 1, 1), width_multiplier=(0.75, 1), group_layers=(1,), groups=5))
    with pytest.raises(ConfigError, match="out of range"):
        create_model("repvgg_a0", group_layers=(40,), groups=2)
    with pytest.raises(ConfigError, match="width_multiplier"):
        create_model("repvgg_a0", width_multiplier=(1.0, 1.0, 1.0))


# -- 2. timm parity ----------------------------------------------------------------------------------
def _timm_parity(timm_model, ours, dtype, tol, size=32):
    timm_model = timm_model.to(dtype)
    randomize_bn(timm_model, input_size=size)
    ours = ours.to(dtype).eval()  # before loading: load_weights casts to the model's dtype
    load_weights(ours, timm_model.state_dict(), layout="timm")
    x = torch.randn(2, 3, size, size, dtype=dtype)
    with torch.no_grad():
        err = rel_err(ours(x), timm_model(x))
    assert err <= tol, err


@pytest.mark.parametrize("name", _mark(IN_TIMM))
def test_timm_parity(name):
    timm = pytest.importorskip("timm")
    dtype, tol = _setup(name)
    _timm_parity(timm.create_model(name), create_model(name), dtype, tol)


def test_timm_parity_se_and_groups_small():
    """D2se's SE (before the ReLU, reduction 16, in every block) and timm's grouping, on a shrunk net."""
    pytest.importorskip("timm")
    from timm.models.byobnet import ByobNet, ByoModelCfg, _rep_vgg_bcfg

    tcfg = ByoModelCfg(
        blocks=_rep_vgg_bcfg(d=(2, 2, 2, 1), wf=(0.5, 0.5, 0.5, 1.0), groups=4),
        stem_type="rep",
        stem_chs=32,
        attn_layer="se",
        attn_kwargs=dict(rd_ratio=0.0625, rd_divisor=1),
    )
    # timm groups every 2nd block of a stage: global layers 2, 4, 6 here
    ours = RepVGG(RepVGGConfig(num_blocks=(2, 2, 2, 1), width_multiplier=(0.5, 1.0), group_layers=(2, 4, 6),
                               groups=4, use_se=True, num_classes=10))
    _timm_parity(ByobNet(tcfg, num_classes=10), ours, torch.float32, 1e-5)


def test_drop_path_like_timm():
    """Same per-block drop rates as timm, on identity blocks only (stage 0 and stride-2 blocks never drop)."""
    timm = pytest.importorskip("timm")
    from timm.layers import DropPath as TimmDropPath

    from moderncnn.layers import DropPath

    def rates(model, cls):
        return [m.drop_prob for m in model.modules() if isinstance(m, cls)]

    with torch.device("meta"):
        theirs = timm.create_model("repvgg_b0", drop_path_rate=0.2)
        ours = create_model("repvgg_b0", drop_path_rate=0.2)
    assert rates(ours, DropPath) == pytest.approx(rates(theirs, TimmDropPath))
    assert len(rates(ours, DropPath)) == sum(1 for m in ours.modules() if getattr(m, "identity", None) is not None)


# -- 3. fusion ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("se", [False, True])
def test_block_fusion_exact(groups, se):
    block = RepVGGBlock(16, 16, stride=1, groups=groups, se_hidden=4 if se else 0).double()
    randomize_bn(_Wrap(block), input_size=8)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        assert block.conv_1x1 is None and block.identity is None and block.conv_3x3 is None
        assert rel_err(block(x), ref) <= 1e-12


def test_equivalent_kernel_is_differentiable():
    block = RepVGGBlock(8, 8, groups=2).eval()
    kernel, bias = block.equivalent_kernel_bias()
    (kernel.square().sum() + bias.sum()).backward()
    assert block.identity.weight.grad is not None and block.identity.weight.grad.abs().sum() > 0
    assert block.conv_1x1.conv.weight.grad.abs().sum() > 0


class _Wrap(torch.nn.Module):
    """A single block with the attribute randomize_bn reads."""

    def __init__(self, block: RepVGGBlock) -> None:
        super().__init__()
        self.block, self.in_chans = block, block.in_chs

    def forward(self, x):
        return self.block(x)


def _check_fused(model: torch.nn.Module) -> None:
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for name, m in model.named_modules():
        if isinstance(m, RepVGGBlock):
            assert m.reparam_conv is not None and m.conv_1x1 is None and m.identity is None
        if isinstance(m, torch.nn.Conv2d) and ".se." not in f".{name}.":
            assert m.kernel_size == (3, 3), name


@pytest.mark.parametrize("name", _mark(ALL))
def test_fusion(name):
    dtype, tol = _setup(name)
    model = create_model(name).to(dtype)
    randomize_bn(model, input_size=32)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
        assert rel_err(out, ref) <= tol
        _check_fused(fused)
        # fusing twice is a no-op
        weights = {k: v.data_ptr() for k, v in fused.state_dict().items()}
        reparameterize_model(fused, inplace=True)
        assert {k: v.data_ptr() for k, v in fused.state_dict().items()} == weights
        # the fused state dict is exactly the deploy form's
        deploy = create_model(name, deploy=True).to(dtype).eval()
        deploy.load_state_dict(fused.state_dict(), strict=True)
        assert torch.equal(deploy(x), out)


def test_fusion_in_training_mode_raises():
    model = create_model("repvgg_a0", num_classes=10)
    with pytest.raises(RuntimeError, match="eval"):
        reparameterize_model(model)
    with pytest.raises(RuntimeError, match="eval"):
        model.stages[1][1].reparameterize()
    assert model.stages[1][1].reparam_conv is None


# -- 4. official golden file ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden():
    path = official_file("repvgg_tiny.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return meta, load_file(str(path))


def _prefixed(tensors, prefix):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def test_official_golden_train_and_fused(golden):
    meta, t = golden
    model = from_official_config(meta["official_class"], meta["config"])
    load_weights(model, _prefixed(t, "state_dict."), layout="official")
    model.eval()
    with torch.no_grad():
        assert rel_err(model(t["input"]), t["output"]) <= 1e-5
        fused = reparameterize_model(model)
        assert rel_err(fused(t["input"]), t["deploy_output"]) <= 1e-5


def test_official_golden_deploy(golden):
    meta, t = golden
    model = from_official_config(meta["official_class"], meta["config"], deploy=True)
    load_weights(model, _prefixed(t, "deploy."), layout="official")
    model.eval()
    with torch.no_grad():
        assert rel_err(model(t["input"]), t["deploy_output"]) <= 1e-5


def test_official_builder_maps_groups_and_se():
    cfg = dict(num_blocks=[1, 2, 2, 1], num_classes=10, width_multiplier=[0.25, 0.25, 0.25, 0.5],
               override_groups_map={"2": 4, "4": 4}, use_se=True)
    model = from_official_config("repvgg.RepVGG", cfg)
    blocks = [b for stage in model.stages for b in stage]
    assert [b.groups for b in blocks] == [1, 1, 4, 1, 4, 1, 1]
    assert all(isinstance(b.se, torch.nn.Module) and hasattr(b.se, "reduce") for b in blocks)
    with pytest.raises(ConfigError, match="no argument"):
        from_official_config("repvgg.RepVGG", {**cfg, "widht_multiplier": [1, 1, 1, 1]})


def test_official_form_mismatch_is_explained(golden):
    meta, t = golden
    model = from_official_config(meta["official_class"], meta["config"])  # train form
    with pytest.raises(CheckpointError, match="deploy=True"):
        load_weights(model, _prefixed(t, "deploy."), layout="official")


# -- 5. full-size official key layouts ---------------------------------------------------------------
KEY_FILES = official_key_files("official_repvgg_")


def _read_keys(path) -> dict[str, torch.Tensor]:
    sd = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            sd[key] = torch.empty(json.loads(shape), device="meta")
    return sd


@pytest.mark.parametrize("path", KEY_FILES, ids=lambda p: p.name.split(".")[0])
def test_official_key_layout(path):
    variant, form = re.match(r"official_(repvgg_\w+?)_(train|deploy)\.keys", path.name).groups()
    model = build_meta(variant, deploy=form == "deploy")
    converted, layout = convert_state_dict(_read_keys(path), model, layout="official")
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == target


def test_key_files_cover_variants():
    # shipped with the tests: both forms, grouped convs (b1g4) and squeeze-excite (d2se)
    shipped = {"a0_train", "a0_deploy", "b1g4_train", "b1g4_deploy", "d2se_train"}
    assert {f"official_repvgg_{s}.keys.txt" for s in shipped} <= {p.name for p in KEY_FILES}
    if not (SHARED_OFFICIAL / "keys").is_dir():
        pytest.skip(f"the full reference data with every RepVGG layout is absent ({SHARED_OFFICIAL / 'keys'})")
    assert len(KEY_FILES) >= 16


# -- 6. layout detection -----------------------------------------------------------------------------
def test_auto_detects_timm_and_official(golden):
    timm = pytest.importorskip("timm")
    from timm.utils.model import reparameterize_model as timm_reparameterize

    with torch.device("meta"):
        ours = create_model("repvgg_a0")
        ours_deploy = create_model("repvgg_a0", deploy=True)
    theirs = timm.create_model("repvgg_a0").eval()
    assert convert_state_dict(theirs.state_dict(), ours, "auto")[1] == "timm"
    # timm's own fused (deploy) form reads as timm too
    assert convert_state_dict(timm_reparameterize(theirs).state_dict(), ours_deploy, "auto")[1] == "timm"

    meta, t = golden
    tiny = from_official_config(meta["official_class"], meta["config"])
    tiny_deploy = from_official_config(meta["official_class"], meta["config"], deploy=True)
    assert convert_state_dict(_prefixed(t, "state_dict."), tiny, "auto")[1] == "official"
    assert convert_state_dict(_prefixed(t, "deploy."), tiny_deploy, "auto")[1] == "official"
    assert convert_state_dict(tiny.state_dict(), tiny, "auto")[1] == "native"
    # and load_weights with auto gives the golden logits
    load_weights(tiny, _prefixed(t, "state_dict."))
    with torch.no_grad():
        assert rel_err(tiny.eval()(t["input"]), t["output"]) <= 1e-5

