"""ConvNeXt (Liu et al., CVPR 2022): reference counts (architectures.md §5.1), timm parity, official weights."""

import json
import re

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import official_file, official_key_files, rel_err
from moderncnn import create_model, from_official_config, list_models, load_weights
from moderncnn.analysis.complexity import build_meta, count_gmacs, count_params
from moderncnn.errors import CheckpointError
from moderncnn.interop import convert_state_dict

# architectures.md §5.1 [count]: exact params, GMACs @224 and @384 (1000 classes)
REFERENCE = {
    "convnext_tiny": (28_589_128, 4.456, 13.092),
    "convnext_small": (50_223_688, 8.684, 25.518),
    "convnext_base": (88_591_464, 15.355, 45.122),
    "convnext_large": (197_767_336, 34.361, 100.978),
    "convnext_xlarge": (350_196_968, 60.921, 179.029),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_and_gmacs(name):
    params, gmacs224, gmacs384 = REFERENCE[name]
    model = build_meta(name)
    assert count_params(model) == params
    assert count_gmacs(model, 224) == pytest.approx(gmacs224, rel=0.01)
    assert count_gmacs(model, 384) == pytest.approx(gmacs384, rel=0.01)


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random, layer scale included (timm's 1e-6 init would make each block ~identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or (p.ndim == 1 and "norm" in name and name.endswith("weight")):
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
            elif p.ndim == 1:  # biases small, so the logits depend on the input
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)


# (name, input size, dtype, tolerance): the 27-block-deep ones in float64 (STYLE.md)
PARITY = [
    ("convnext_atto", 64, torch.float32, 1e-5),
    ("convnext_femto", 64, torch.float32, 1e-5),
    ("convnext_pico", 64, torch.float32, 1e-5),
    ("convnext_nano", 64, torch.float32, 1e-5),
    ("convnext_tiny", 64, torch.float32, 1e-5),
    ("convnext_small", 32, torch.float64, 1e-7),
    pytest.param("convnext_base", 32, torch.float64, 1e-7, marks=pytest.mark.slow),
    pytest.param("convnext_large", 32, torch.float64, 1e-7, marks=pytest.mark.slow),
    pytest.param("convnext_xlarge", 32, torch.float64, 1e-7, marks=pytest.mark.slow),
]


def test_parity_covers_every_registered_convnext():
    names = {getattr(p, "values", p)[0] for p in PARITY}
    assert names == set(list_models("convnext_*", family="convnext"))


@pytest.mark.parametrize("name,size,dtype,tol", PARITY)
def test_timm_parity(name, size, dtype, tol):
    ref = timm.create_model(name, num_classes=10)
    _randomize(ref)
    ref = ref.to(dtype).eval()
    model = create_model(name, num_classes=10).to(dtype).eval()
    load_weights(model, ref.state_dict(), layout="timm")
    x = torch.randn(2, 3, size, size, dtype=dtype)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= tol
        # the feature maps too: global pooling of random images averages most differences away
        assert rel_err(model.forward_features(x), ref.forward_features(x)) <= tol


def test_auto_layout_detects_timm_and_official():
    ref = timm.create_model("convnext_atto", num_classes=10)
    model = create_model("convnext_atto", num_classes=10)
    _, used = convert_state_dict(ref.state_dict(), model, "auto")
    assert used == "native"  # timm keys are ours
    official = {k: v for k, v in load_file(official_file("convnext_tiny_cfg.safetensors")).items()}
    sd = {k[len("state_dict."):]: v for k, v in official.items() if k.startswith("state_dict.")}
    model = from_official_config("convnext.ConvNeXt", json.loads(_meta("convnext_tiny_cfg")["config"]))
    _, used = convert_state_dict(sd, model, "auto")
    assert used == "official"


def test_timm_head_norm_first_is_refused():
    model = create_model("convnext_atto", num_classes=10)
    sd = dict(model.state_dict())
    sd["norm_pre.weight"] = sd.pop("head.norm.weight")
    sd["norm_pre.bias"] = sd.pop("head.norm.bias")
    with pytest.raises(CheckpointError, match="norm_pre"):
        load_weights(model, sd, layout="timm")


def _meta(stem: str) -> dict:
    with safe_open(str(official_file(f"{stem}.safetensors")), "pt") as f:
        return f.metadata()


def test_official_golden_file():
    meta = _meta("convnext_tiny_cfg")
    assert meta["official_class"] == "convnext.ConvNeXt"
    tensors = load_file(official_file("convnext_tiny_cfg.safetensors"))
    sd = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    model = from_official_config(meta["official_class"], meta["config"]).eval()
    load_weights(model, sd, layout="official")
    with torch.no_grad():
        out = model(tensors["input"])
    assert rel_err(out, tensors["output"]) <= 1e-5


def _keys_file_state_dict(path) -> dict[str, torch.Tensor]:
    sd = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        sd[key] = torch.empty(json.loads(shape), device="meta")
    return sd


KEY_FILES = official_key_files("official_convnext_")


def test_key_files_present():
    assert len(KEY_FILES) == 5


@pytest.mark.parametrize("path", KEY_FILES, ids=lambda p: p.name)
def test_official_keys_map_completely(path):
    name = re.match(r"official_(convnext_\w+)\.keys\.txt", path.name).group(1)
    model = build_meta(name)
    converted, _ = convert_state_dict(_keys_file_state_dict(path), model, "official")
    target = model.state_dict()
    assert set(converted) == set(target)
    assert all(tuple(converted[k].shape) == tuple(target[k].shape) for k in target)


def test_official_builder_maps_arguments():
    model = from_official_config(
        "convnext.ConvNeXt",
        dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768], num_classes=7, layer_scale_init_value=0.0),
    )
    assert model.model_name == "convnext_tiny"
    assert model.head.fc.out_features == 7
    assert all(b.gamma is None for s in model.stages for b in s.blocks)
