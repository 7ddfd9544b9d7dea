"""MobileNeXt (Zhou et al., ECCV 2020): reference counts and widths (architectures.md §1), official
golden outputs and key layouts, and the identity tensor multiplier (§1.2)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import OFFICIAL, official_file, randomize_bn, rel_err
from moderncnn import create_model, from_official_config, load_weights
from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params
from moderncnn.errors import CheckpointError, ConfigError
from moderncnn.interop import convert_state_dict
from moderncnn.models.mobilenext import SandglassBlock

# §1.5 [count]: exact params, MAdds (M) @224
COUNTS = {
    "mobilenext_140": (6_126_168, 588.3),
    "mobilenext_100": (3_535_416, 311.3),
    "mobilenext_075": (2_766_168, 207.9),
    "mobilenext_050": (2_152_304, 103.3),
    "mobilenext_035": (1_913_976, 75.1),
}

# §1.4 [count]: stem, row outputs (rows 1-8), classifier input
WIDTHS = {
    "mobilenext_035": (16, (32, 48, 64, 104, 136, 200, 336, 1280), 1280),
    "mobilenext_050": (16, (48, 72, 96, 144, 192, 288, 480, 1280), 1280),
    "mobilenext_075": (24, (72, 112, 144, 216, 288, 432, 720, 1280), 1280),
    "mobilenext_100": (32, (96, 144, 192, 288, 384, 576, 960, 1280), 1280),
    "mobilenext_140": (48, (136, 200, 272, 400, 536, 808, 1344, 1792), 1792),
}
ROW_SIZES = (1, 1, 3, 3, 4, 4, 3, 1)

# §1.3 expanded per-block plan at width 1.0, printed from the official module
PLAN_100 = """
dw32/s1-pw16-pw96-dw96/s2          dw384/s1-pw64-pw384-dw384/s1+id
dw96/s1-pw32-pw144-dw144/s1        dw384/s1-pw64-pw384-dw384/s1+id
pw32-pw192-dw192/s2                pw96-pw576-dw576/s2
dw192/s1-pw32-pw192-dw192/s1+id    dw576/s1-pw96-pw576-dw576/s1+id
dw192/s1-pw32-pw192-dw192/s1+id    dw576/s1-pw96-pw576-dw576/s1+id
pw48-pw288-dw288/s2                dw576/s1-pw96-pw576-dw576/s1+id
dw288/s1-pw48-pw288-dw288/s1+id    pw160-pw960
dw288/s1-pw48-pw288-dw288/s1+id    dw960/s1-pw160-pw960-dw960/s1+id
pw64-pw384                         dw960/s1-pw160-pw960-dw960/s1+id
dw384/s1-pw64-pw384-dw384/s1+id    dw960/s1-pw208-pw1280-dw1280/s1
"""


def _blocks(model):
    return [b for stage in model.stages for b in stage]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_params_and_madds(name):
    params, madds = COUNTS[name]
    model = build_meta(name)
    assert count_params(model) == params
    assert count_gmacs(model, 224) * 1000 == pytest.approx(madds, rel=0.01)


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_width_table(name):
    stem, rows, fc_in = WIDTHS[name]
    model = build_meta(name)
    assert model.stem.conv.out_channels == stem
    outs = [b.pw_expand.conv.out_channels for b in _blocks(model)]
    starts = [sum(ROW_SIZES[:i]) for i in range(len(ROW_SIZES))]
    assert tuple(outs[i] for i in starts) == rows
    assert model.head.in_features == fc_in == model.num_features


def _describe(block: SandglassBlock) -> str:
    parts = []
    if block.dw1 is not None:
        parts.append(f"dw{block.dw1.conv.in_channels}/s{block.dw1.conv.stride[0]}")
    parts += [f"pw{block.pw_reduce.conv.out_channels}", f"pw{block.pw_expand.conv.out_channels}"]
    if block.dw2 is not None:
        parts.append(f"dw{block.dw2.conv.in_channels}/s{block.dw2.conv.stride[0]}")
    return "-".join(parts) + ("+id" if block.has_shortcut else "")


def test_block_plan_matches_official_module():
    lines = [line.split() for line in PLAN_100.strip().splitlines()]
    expected = [c[0] for c in lines] + [c[1] for c in lines]  # the listing is in two columns
    assert [_describe(b) for b in _blocks(build_meta("mobilenext_100"))] == expected


def test_feature_levels():
    model = build_meta("mobilenext_100")
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == [(144, 4), (192, 8), (384, 16), (1280, 32)]


def _golden(stem: str):
    path = official_file(f"{stem}.safetensors")  # mobilenext_100 (9 MB): full reference data only
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    sd = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    return meta, sd, tensors["input"], tensors["output"]


@pytest.mark.parametrize("stem", ["mobilenext_100", "mobilenext_050_div2"])
def test_official_golden_files(stem):
    meta, sd, x, expected = _golden(stem)
    assert meta["official_class"] == "mnext.MXNet"
    model = from_official_config(meta["official_class"], meta["config"]).eval()
    load_weights(model, sd, layout="official")
    with torch.no_grad():
        assert rel_err(model(x), expected) <= 1e-5


def test_golden_div2_needs_the_partial_shortcut():
    """The α = 1/2 golden output is not reproduced with a full shortcut: the file tests the multiplier."""
    meta, sd, x, expected = _golden("mobilenext_050_div2")
    config = dict(json.loads(meta["config"]), identity_div=1)
    model = from_official_config(meta["official_class"], config).eval()
    load_weights(model, sd, layout="official")
    with torch.no_grad():
        assert rel_err(model(x), expected) > 1e-3


KEY_FILES = {
    "official_mobilenext_035": "mobilenext_035",
    "official_mobilenext_05": "mobilenext_050",
    "official_mobilenext_075": "mobilenext_075",
    "official_mobilenext_10": "mobilenext_100",
    "official_mobilenext_14": "mobilenext_140",
}


def test_every_key_file_is_covered():
    assert {p.name.removesuffix(".keys.txt") for p in (OFFICIAL / "keys").glob("official_mobilenext_*")} == set(
        KEY_FILES
    )


@pytest.mark.parametrize("stem", sorted(KEY_FILES))
def test_official_keys_map_completely(stem):
    sd = {}
    for line in official_file(f"keys/{stem}.keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        sd[key] = torch.empty(json.loads(shape), device="meta")
    model = build_meta(KEY_FILES[stem])
    converted, _ = convert_state_dict(sd, model, "official")
    target = model.state_dict()
    assert set(converted) == set(target)
    assert all(tuple(converted[k].shape) == tuple(target[k].shape) for k in target)
    assert convert_state_dict(sd, model, "auto")[1] == "official"


def test_wrong_width_checkpoint_is_refused():
    _, sd, _, _ = _golden("mobilenext_100")
    model = create_model("mobilenext_050", num_classes=10)
    with pytest.raises(CheckpointError):
        load_weights(model, sd, layout="official")


# -- identity tensor multiplier (§1.2) --------------------------------------------------------------------


def _block(ratio: float, channels: int = 48) -> SandglassBlock:
    block = SandglassBlock(channels, channels, 1, 6, identity_ratio=ratio)
    block.in_chans = channels  # randomize_bn feeds it random batches
    randomize_bn(block, input_size=8)
    return block.eval()


def _branch(block: SandglassBlock, x: torch.Tensor) -> torch.Tensor:
    return block.dw2(block.pw_expand(block.pw_reduce(block.dw1(x))))


def test_half_ratio_adds_shortcut_to_first_half_only():
    block = _block(0.5)
    assert block.identity_channels == 24
    x = torch.randn(2, 48, 8, 8)
    with torch.no_grad():
        out, y = block(x), _branch(block, x)
    assert torch.allclose(out[:, :24], y[:, :24] + x[:, :24], atol=1e-6)
    assert torch.allclose(out[:, 24:], y[:, 24:], atol=1e-6)
    # a full shortcut or none would each break one of the two halves
    assert not torch.allclose(out[:, 24:], y[:, 24:] + x[:, 24:], atol=1e-3)
    assert not torch.allclose(out[:, :24], y[:, :24], atol=1e-3)


def test_full_ratio_is_a_plain_residual():
    block = _block(1.0)
    x = torch.randn(2, 48, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), _branch(block, x) + x, atol=1e-6)


@pytest.mark.parametrize("div,channels", [(2, 96), (3, 96), (3, 1280), (4, 336), (3, 200)])
def test_ratio_matches_official_identity_div(div, channels):
    block = SandglassBlock(channels, channels, 1, 6, identity_ratio=1 / div)
    assert block.identity_channels == channels // div


def test_gradients_flow_through_both_halves():
    block = _block(0.5)
    x = torch.randn(2, 48, 8, 8, requires_grad=True)
    (g_first,) = torch.autograd.grad(block(x)[:, :24].sum(), x)
    (g_branch,) = torch.autograd.grad(_branch(block, x)[:, :24].sum(), x)
    # the shortcut contributes exactly 1 to the first half, nothing to the second
    shortcut = g_first - g_branch
    assert torch.allclose(shortcut[:, :24], torch.ones_like(shortcut[:, :24]), atol=1e-5)
    assert torch.allclose(shortcut[:, 24:], torch.zeros_like(shortcut[:, 24:]), atol=1e-5)
    (g_second,) = torch.autograd.grad(block(x)[:, 24:].sum(), x)  # branch-only half still reaches x
    assert g_second.abs().sum() > 0
    model = create_model("mobilenext_035", num_classes=4, identity_ratio=0.5)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.ndim > 1)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_invalid_ratio_is_config_error(ratio):
    with pytest.raises(ConfigError, match="identity_ratio"):
        create_model("mobilenext_100", identity_ratio=ratio)


def _export_model():
    model = create_model("mobilenext_035", num_classes=10, identity_ratio=0.5)
    # statistics from enough pixels that float32 rounding is not amplified (~4e-6 vs float64), so a
    # different runtime's kernels can be compared at 1e-4
    randomize_bn(model, batches=4, input_size=96)
    return model.eval(), torch.randn(2, 3, 64, 64)


def test_torch_export_with_partial_shortcut():
    model, x = _export_model()
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
        assert rel_err(program.module()(x), expected) <= 1e-4


@pytest.mark.slow
def test_onnx_export_with_partial_shortcut(tmp_path):
    import onnxruntime as ort

    model, x = _export_model()
    torch.onnx.export(model, (x,), dynamo=True).save(str(tmp_path / "mobilenext.onnx"))
    session = ort.InferenceSession(str(tmp_path / "mobilenext.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(out), model(x)) <= 1e-4
