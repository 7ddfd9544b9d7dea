"""The same calls against timm and moderncnn, side by side, for one model of each family timm has.

timm is built with its own defaults; our model of the same name gets timm's weights, so every call can be
compared by value: model API, ``resolve_model_data_config``, ``forward_intermediates``, ``feature_info``,
``create_optimizer_v2`` with layer decay, torchvision's ``create_feature_extractor``, and the state dict
both ways (timm -> ours -> timm). The smallest variant of each family at 64 px keeps it fast.
"""

import pytest
import torch

from conftest import randomize_bn, rel_err
from moderncnn import create_model
from moderncnn.interop import convert_state_dict, load_weights

timm = pytest.importorskip("timm")
timm_data = pytest.importorskip("timm.data")
timm_optim = pytest.importorskip("timm.optim")

NAMES = ["convnext_atto", "tf_efficientnetv2_b0", "repvgg_a0", "mobilenetv2_050"]
SIZE = 64


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    """(name, timm model, our model with timm's weights), float64, BN calibrated, eval mode."""
    name = request.param
    torch.manual_seed(0)
    theirs = timm.create_model(name).double()
    randomize_bn(theirs, batches=2, input_size=SIZE)
    ours = create_model(name).double().eval()
    load_weights(ours, theirs.state_dict(), layout="timm")
    return name, theirs.eval(), ours


def _x(seed=1):
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_model_api(pair):
    name, theirs, ours = pair
    x = _x()
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-10
        f_ours, f_theirs = ours.forward_features(x), theirs.forward_features(x)
        assert rel_err(f_ours, f_theirs) <= 1e-10
        assert rel_err(ours.forward_head(f_ours, pre_logits=True),
                       theirs.forward_head(f_theirs, pre_logits=True)) <= 1e-10
    assert ours.num_features == theirs.num_features and ours.num_classes == theirs.num_classes
    assert ours.get_classifier().weight.shape == theirs.get_classifier().weight.shape
    assert ours.pretrained_cfg["classifier"] == "head.fc"
    assert isinstance(ours.get_submodule(ours.pretrained_cfg["classifier"]), torch.nn.Linear)


@pytest.mark.parametrize("name", NAMES)
def test_resolve_model_data_config(name):
    with torch.device("meta"):
        theirs = timm.create_model(name)
    ours = create_model(name)
    assert timm_data.resolve_model_data_config(ours) == timm_data.resolve_model_data_config(theirs)
    for key in ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "interpolation", "mean", "std",
                "crop_mode", "license"):
        assert ours.pretrained_cfg.get(key) == theirs.pretrained_cfg.get(key), key
    # the first conv the cfg names is the one that takes the image
    first = ours.pretrained_cfg["first_conv"]
    first = first if isinstance(first, str) else first[0]
    assert ours.get_submodule(first).in_channels == 3


def test_forward_intermediates(pair):
    name, theirs, ours = pair
    x = _x(2)
    n = len(theirs.feature_info)
    assert len(ours.feature_info) == n
    cases = [dict(), dict(indices=2), dict(indices=[0, -1]), dict(indices=[1], stop_early=True),
             dict(indices=(0, 2), intermediates_only=True), dict(indices=[n - 1], stop_early=True)]
    with torch.no_grad():
        for kw in cases:
            got, want = ours.forward_intermediates(x, **kw), theirs.forward_intermediates(x, **kw)
            if kw.get("intermediates_only"):
                got, want = (None, got), (None, want)
            else:
                assert rel_err(got[0], want[0]) <= 1e-10, kw
            assert len(got[1]) == len(want[1]), kw
            for a, b in zip(got[1], want[1]):
                assert a.shape == b.shape and rel_err(a, b) <= 1e-10, kw


def test_prune_intermediate_layers():
    for name in NAMES:
        theirs, ours = timm.create_model(name).eval(), create_model(name).eval()
        load_weights(ours, theirs.state_dict(), layout="timm")
        assert ours.prune_intermediate_layers([1, 2]) == theirs.prune_intermediate_layers([1, 2])
        assert ours.num_features == theirs.num_features
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
        x = torch.randn(1, 3, SIZE, SIZE)
        with torch.no_grad():
            got, want = ours.forward_intermediates(x, [1, 2]), theirs.forward_intermediates(x, [1, 2])
        assert rel_err(got[0], want[0]) <= 1e-5
        assert all(rel_err(a, b) <= 1e-5 for a, b in zip(got[1], want[1]))


@pytest.mark.parametrize("name", NAMES)
def test_feature_info(name):
    out_indices = (1, 2, 4) if name != "convnext_atto" else (1, 3)
    theirs = timm.create_model(name, features_only=True, out_indices=out_indices)
    ours = create_model(name, features_only=True, out_indices=out_indices).eval()
    for method in ("channels", "reduction"):
        assert getattr(ours.feature_info, method)() == getattr(theirs.feature_info, method)()
        assert getattr(ours.feature_info, method)(idx=0) == getattr(theirs.feature_info, method)(idx=0)
    assert len(ours.feature_info.module_name()) == len(theirs.feature_info.module_name())
    # the named modules exist and produce the maps the features are
    for mod in ours.feature_info.module_name():
        ours.get_submodule(mod)
    with torch.no_grad():
        feats = ours(torch.randn(1, 3, SIZE, SIZE))
    assert [f.shape[1] for f in feats] == theirs.feature_info.channels()
    assert [SIZE // f.shape[-1] for f in feats] == theirs.feature_info.reduction()


@pytest.mark.parametrize("name", NAMES)
def test_create_optimizer_layer_decay(name):
    """timm's optimizer factory groups our parameters as it groups its own: the same lr scale and weight
    decay for every parameter (matched through the weight-layout converter)."""
    theirs, ours = timm.create_model(name), create_model(name)
    key_map = _timm_to_ours_keys(theirs, ours)
    opt_ours = timm_optim.create_optimizer_v2(ours, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    opt_theirs = timm_optim.create_optimizer_v2(theirs, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)

    def per_param(model, opt):
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}

    got, want = per_param(ours, opt_ours), per_param(theirs, opt_theirs)
    assert len(got) == len(want)
    assert {t: got[o] for t, o in key_map.items() if t in want} == want
    assert len({s for s, _ in want.values()}) > 3  # layer decay really spreads the scales


@pytest.mark.parametrize("name", NAMES)
def test_create_feature_extractor(name):
    from torchvision.models.feature_extraction import create_feature_extractor

    theirs, ours = timm.create_model(name).eval(), create_model(name).eval()
    load_weights(ours, theirs.state_dict(), layout="timm")
    level = ours.feature_info[2]
    extractor = create_feature_extractor(ours, {level["module"]: "feat"})
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        got = extractor(x)["feat"]
        want = theirs.forward_intermediates(x, [2], intermediates_only=True)[0]
    assert rel_err(got, want) <= 1e-5


def _timm_to_ours_keys(theirs, ours) -> dict[str, str]:
    """timm key -> our key, read off the converter: every timm tensor is tagged with its own index."""
    tagged = {k: torch.full_like(v, i, dtype=torch.float64) for i, (k, v) in enumerate(theirs.state_dict().items())}
    converted, _ = convert_state_dict(tagged, ours, layout="timm")
    keys = list(tagged)
    out = {keys[int(v.flatten()[0])]: k for k, v in converted.items() if v.numel()}
    assert len(out) == len(converted) == len(keys)
    return out


def test_state_dict_round_trip_both_ways(pair):
    """timm -> ours (load_weights) -> timm (the inverse key map): both reloaded models compute the same."""
    name, theirs, ours = pair
    key_map = _timm_to_ours_keys(theirs, ours)
    ours_sd = ours.state_dict()
    back = {t: ours_sd[o].reshape(theirs.state_dict()[t].shape) for t, o in key_map.items()}
    again = timm.create_model(name).double().eval()
    again.load_state_dict(back, strict=True)
    x = _x(3)
    with torch.no_grad():
        assert rel_err(again(x), theirs(x)) == 0.0
        assert rel_err(again(x), ours(x)) <= 1e-10
