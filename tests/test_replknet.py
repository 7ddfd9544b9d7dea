"""RepLKNet (Ding et al., CVPR 2022): reference counts, official parity, large-kernel merging."""

import dataclasses
import json

import pytest
import torch

import moderncnn.kernels
from conftest import official_file, randomize_bn, rel_err
from moderncnn import (
    CheckpointError,
    ConfigError,
    create_model,
    from_official_config,
    load_weights,
    reparameterize_model,
)
from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params
from moderncnn.interop import convert_state_dict
from moderncnn.models.replknet import ReparamLargeKernelConv, RepLKBlock, RepLKNet
from moderncnn.registry import get_entry

SMALL = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), large_kernel_sizes=(13, 11, 9, 7))


def small_model(name: str = "replknet_31b", **overrides) -> RepLKNet:
    return create_model(name, num_classes=10, **{**SMALL, **overrides})


# -- 1. reference numbers (architectures.md §4.3, [count]) ------------------------------------------
@pytest.mark.parametrize(
    "name, train, deploy",
    [
        ("replknet_31b", 79_864_168, 79_527_272),
        ("replknet_31l", 172_671_016, 172_165_672),
        ("replknet_xl", 335_435_752, 335_399_656),
    ],
)
def test_param_counts(name, train, deploy):
    assert count_params(build_meta(name)) == train
    assert count_params(build_meta(name, deploy=True)) == deploy


@pytest.mark.parametrize(
    "name, deploy, size, gmacs",
    [
        ("replknet_31b", False, 224, 15.43),
        ("replknet_31b", True, 224, 15.35),
        ("replknet_31l", False, 384, 96.33),
        ("replknet_31l", True, 224, 32.66),
        ("replknet_xl", False, 320, 128.73),
    ],
)
def test_gmacs(name, deploy, size, gmacs):
    assert count_gmacs(build_meta(name, deploy=deploy), size) == pytest.approx(gmacs, rel=0.01)


@pytest.mark.parametrize(
    "kernels, params_m, gmacs",
    [
        ((3, 3, 3, 3), 71.89, 12.94),
        ((7, 7, 7, 7), 72.38, 13.06),
        ((13, 13, 13, 13), 73.82, 13.44),
        ((25, 25, 25, 13), 78.37, 14.81),
        ((31, 29, 27, 13), 79.53, 15.35),
    ],
)
def test_kernel_size_family(kernels, params_m, gmacs):
    """Paper Table 5 style: 31B widths with growing kernels, merged form, to the table's two decimals."""
    model = build_meta("replknet_31b", deploy=True, large_kernel_sizes=kernels)
    assert count_params(model) / 1e6 == pytest.approx(params_m, abs=0.005)
    assert count_gmacs(model, 224) == pytest.approx(gmacs, abs=0.005)


def test_variant_configs():
    """§4.2: XL uses kernel 27 in stages 1–3, no small kernel and 1.5× depthwise width."""
    xl = get_entry("replknet_xl").cfg
    assert (xl.large_kernel_sizes, xl.small_kernel, xl.dw_ratio) == ((27, 27, 27, 13), None, 1.5)
    model = build_meta("replknet_xl")
    block = model.stages[0].blocks[0]
    assert isinstance(block, RepLKBlock) and block.large_kernel.small_conv is None
    assert block.large_kernel.large_conv.conv.weight.shape == (384, 1, 27, 27)
    assert get_entry("replknet_31b").cfg.drop_path_rate == 0.3  # the official factories' default
    blocks = [m for m in build_meta("replknet_31b").modules() if hasattr(m, "drop_path")]
    rates = [getattr(m.drop_path, "drop_prob", 0.0) for m in blocks]
    assert rates[:4] == pytest.approx([0.0, 0.0, 0.3 / 23, 0.3 / 23])  # pairs share linspace(0, 0.3, 24)
    assert rates[-1] == pytest.approx(0.3) and len(rates) == 48


# -- 2. golden file of the official implementation ----------------------------------------------------
def _golden():
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = official_file("replknet_tiny.safetensors")
    meta = safe_open(str(path), "pt").metadata()
    tensors = load_file(str(path))
    train = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    deploy = {k[len("deploy."):]: v for k, v in tensors.items() if k.startswith("deploy.")}
    return meta, tensors, train, deploy


def test_official_golden():
    meta, t, train, deploy = _golden()
    assert meta["official_class"] == "replknet.RepLKNet"
    model = from_official_config(meta["official_class"], meta["config"]).eval()
    load_weights(model, train, layout="official")
    with torch.no_grad():
        assert rel_err(model(t["input"]), t["output"]) <= 1e-5
        fused = reparameterize_model(model)
        assert rel_err(fused(t["input"]), t["deploy_output"]) <= 1e-5
        # our merged kernels are the official ones
        ours = fused.stages[0].blocks[0].large_kernel.reparam_conv
        assert rel_err(ours.weight, deploy["stages.0.blocks.0.large_kernel.lkb_reparam.weight"]) <= 1e-6
        assert rel_err(ours.bias, deploy["stages.0.blocks.0.large_kernel.lkb_reparam.bias"]) <= 1e-6

        merged = from_official_config(meta["official_class"], meta["config"], deploy=True).eval()
        load_weights(merged, deploy, layout="official")
        assert rel_err(merged(t["input"]), t["deploy_output"]) <= 1e-5
        # layout="auto" recognizes the official layout too
        load_weights(merged, deploy)
        assert rel_err(merged(t["input"]), t["deploy_output"]) <= 1e-5


def test_official_form_mismatch_is_explained():
    meta, _, train, deploy = _golden()
    merged = from_official_config(meta["official_class"], meta["config"], small_kernel_merged=True)
    with pytest.raises(CheckpointError, match="deploy=False"):
        load_weights(merged, train, layout="official")
    with pytest.raises(CheckpointError, match="deploy=True"):
        load_weights(from_official_config(meta["official_class"], meta["config"]), deploy, layout="official")


def test_official_constructor_arguments():
    config = json.dumps(dict(
        large_kernel_sizes=[13, 11, 9, 7], layers=[1, 1, 1, 1], channels=[16, 32, 64, 128], drop_path_rate=0.1,
        small_kernel=None, dw_ratio=1.5, ffn_ratio=2, num_classes=None, out_indices=[1, 3], in_channels=1,
        use_checkpoint=True, use_sync_bn=True, norm_intermediate_features=True,
    ))
    model = from_official_config("replknet.RepLKNet", config)
    assert model.cfg.dw_ratio == 1.5 and model.cfg.ffn_ratio == 2 and model.cfg.in_chans == 1
    assert model.grad_checkpointing and model.features_only and model.out_indices == (1, 3)
    assert [f["reduction"] for f in model.feature_info] == [8, 32]
    model.eval()
    with torch.no_grad():
        for bn in model.feature_norms:
            bn.running_mean.uniform_(-1, 1)
        x = torch.randn(1, 1, 64, 64)
        feats = model(x)
        plain = model.stages[1](model.stages[0](model.stem(x)))
        assert rel_err(feats[0], model.feature_norms[1](plain)) < 1e-6
    with pytest.raises(ConfigError, match="unsupported"):
        from_official_config("replknet.RepLKNet", dict(json.loads(config), width=2))


# -- 3. full-size official key layouts ---------------------------------------------------------------
def _read_keys(path):
    sd = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        sd[key] = torch.empty(json.loads(shape), device="meta")
    return sd


@pytest.mark.parametrize("variant", ["31b", "31l", "xl"])
def test_official_keys_map_completely(variant):
    path = official_file(f"keys/official_replknet_{variant}.keys.txt")  # 31l: full reference data only
    model = build_meta(f"replknet_{variant}")
    converted, layout = convert_state_dict(_read_keys(path), model, layout="official")
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == target
    # the detected layout is the official one as well
    assert convert_state_dict(_read_keys(path), model)[1] == "official"


def test_official_intermediate_norm_keys():
    """XL's downstream checkpoints add ``stages.i.norm`` (norm_intermediate_features) and drop the head."""
    path = official_file("keys/official_replknet_xl.keys.txt")
    sd = {k: v for k, v in _read_keys(path).items() if not k.startswith(("norm.", "head."))}
    for i, c in enumerate((256, 512, 1024, 2048)):
        for name in ("weight", "bias", "running_mean", "running_var"):
            sd[f"stages.{i}.norm.{name}"] = torch.empty(c, device="meta")
        sd[f"stages.{i}.norm.num_batches_tracked"] = torch.empty((), device="meta")
    model = build_meta("replknet_xl", norm_intermediate_features=True, features_only=True)
    converted, _ = convert_state_dict(sd, model, layout="official")
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == target


# -- 4. large-kernel merging --------------------------------------------------------------------------
@pytest.mark.parametrize("small_kernel", [5, None])
@pytest.mark.parametrize("kernel_size", [13, 17, 21, 25, 27, 29, 31])
def test_large_kernel_merge_exact(kernel_size, small_kernel):
    conv = ReparamLargeKernelConv(4, kernel_size, small_kernel).double()
    conv.in_chans = 4  # what randomize_bn feeds
    randomize_bn(conv, batches=2, input_size=16)  # images smaller than the kernel: borders matter
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)
        kernel, bias = conv.equivalent_kernel_bias()
        conv.reparameterize()
        assert conv.large_conv is None and conv.small_conv is None
        assert conv.reparam_conv.weight.shape == (4, 1, kernel_size, kernel_size)
        assert torch.equal(conv.reparam_conv.weight, kernel) and torch.equal(conv.reparam_conv.bias, bias)
        assert rel_err(conv(x), expected) < 1e-12


def test_merge_math_by_hand():
    """Merged kernel = BN-scaled large kernel + centred BN-scaled small kernel; biases add."""
    conv = ReparamLargeKernelConv(2, 7, 3).eval()
    with torch.no_grad():
        for branch in (conv.large_conv, conv.small_conv):
            branch.conv.weight.normal_()
            branch.bn.weight.uniform_(0.5, 2)
            branch.bn.bias.normal_()
            branch.bn.running_mean.normal_()
            branch.bn.running_var.uniform_(0.5, 2)
    kernel, bias = conv.equivalent_kernel_bias()

    def scale(bn):
        return bn.weight / (bn.running_var + bn.eps).sqrt()

    lg, sm = conv.large_conv, conv.small_conv
    want = lg.conv.weight * scale(lg.bn)[:, None, None, None]
    want[:, :, 2:5, 2:5] += sm.conv.weight * scale(sm.bn)[:, None, None, None]
    want_bias = lg.bn.bias - lg.bn.running_mean * scale(lg.bn) + sm.bn.bias - sm.bn.running_mean * scale(sm.bn)
    assert torch.allclose(kernel, want) and torch.allclose(bias, want_bias)
    assert kernel.requires_grad  # differentiable, so usable in regularizers


def test_reparameterize_rules():
    conv = ReparamLargeKernelConv(4, 13, 5)
    with pytest.raises(RuntimeError, match="eval"):
        conv.reparameterize()
    conv.eval().reparameterize()
    fused = conv.reparam_conv
    conv.reparameterize()  # second call: no-op
    assert conv.reparam_conv is fused
    with pytest.raises(ConfigError, match="cannot be"):
        ReparamLargeKernelConv(4, 3, 5)
    with pytest.raises(ConfigError, match="odd"):
        ReparamLargeKernelConv(4, 12, 5)
    with pytest.raises(ConfigError, match="one entry per stage"):
        small_model(layers=(1, 1, 1))


@pytest.mark.parametrize("small_kernel", [5, None])
def test_whole_model_merge(small_kernel):
    model = small_model(small_kernel=small_kernel).double()
    randomize_bn(model, batches=2, input_size=48)  # 48 px: stage 3 still has 2×2 pixels
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        fused = reparameterize_model(model)
        assert rel_err(fused(x), expected) < 1e-10
    assert not any(".large_conv." in k or ".small_conv." in k for k in fused.state_dict())
    # a merged checkpoint loads into a model built merged (deploy=True), which computes the same
    deployed = small_model(small_kernel=small_kernel, deploy=True).double().eval()
    deployed.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert rel_err(deployed(x), expected) < 1e-10
    assert count_params(deployed) == count_params(fused)


def test_no_small_kernel():
    model = small_model(small_kernel=None)
    lk = [m for m in model.modules() if isinstance(m, ReparamLargeKernelConv)]
    assert lk and all(m.small_conv is None for m in lk)
    assert not any("small_conv" in k for k in model.state_dict())
    # the merge is then a pure BN fold: params lose the large BN (2D) and gain a bias (D)
    d = sum(m.channels for m in lk)
    assert count_params(reparameterize_model(model.eval())) == count_params(model) - d


# -- the large depthwise convolutions go through moderncnn.kernels -------------------------------------
@pytest.mark.parametrize("deploy", [False, True])
def test_large_kernels_use_dispatch(monkeypatch, deploy):
    seen = []
    original = moderncnn.kernels.depthwise_conv2d

    def spy(x, weight, bias=None, impl="auto", *, stride=1):
        seen.append(weight.shape[-1])
        return original(x, weight, bias, impl, stride=stride)

    monkeypatch.setattr(moderncnn.kernels, "depthwise_conv2d", spy)
    model = small_model(deploy=deploy).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert [k for k in seen if k > 5] == [13, 11, 9, 7]  # one large kernel per RepLK block
    # and every other depthwise conv (stem, small kernels, transitions) too, each once (docs/kernels.md)
    dw = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels == m.out_channels]
    assert len(seen) == len(dw) > 4


# -- model face ---------------------------------------------------------------------------------------
def test_features_and_checkpointing():
    model = small_model(drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)  # 64 px: stage 3 has 2×2 pixels, so BN statistics are not degenerate
    model.train()
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.square().sum().backward()
    assert rel_err(out_ckpt, out) < 1e-6
    assert max(rel_err(p.grad, g) for p, g in zip(model.parameters(), grads)) < 1e-5

    backbone = small_model(features_only=True).eval()
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    model.eval()
    with torch.no_grad():
        feats = backbone(x)
        assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
        assert [64 // f.shape[-1] for f in feats] == [i["reduction"] for i in backbone.feature_info] == [4, 8, 16, 32]
        assert rel_err(feats[-1], model.forward_features(x)) < 1e-6
        assert rel_err(model.forward_head(feats[-1]), model(x)) < 1e-6
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)


def test_overrides_are_dataclass_fields():
    cfg = dataclasses.replace(get_entry("replknet_31b").cfg, **SMALL)
    assert RepLKNet(cfg).stages[3].blocks[0].large_kernel.kernel_size == 7
    with pytest.raises(ConfigError):
        create_model("replknet_31b", small_kernal=3)
