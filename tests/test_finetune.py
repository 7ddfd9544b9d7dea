"""Fine-tuning and weights as a timm 1.0 user does it, side by side with timm (issue 12).

``create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))`` loads local weights and adapts
them as timm's ``load_pretrained`` (classifier for another class count, first conv for another
``in_chans``); ``global_pool``/``reset_classifier`` as timm's; ``moderncnn convert --to timm|official``
writes weights the other code base loads; ``moderncnn train --pretrained`` fine-tunes from a converted
checkpoint and ``moderncnn eval`` reads it. timm is always built with its own defaults.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import official_file, rel_err
from moderncnn import create_model
from moderncnn.cli import main
from moderncnn.errors import CheckpointError, ConfigError
from moderncnn.interop import adapt_input_conv, export_state_dict, load_weights
from moderncnn.interop.spec import ModelSpec, save_weights

timm = pytest.importorskip("timm")

NAMES = ["convnext_atto", "tf_efficientnetv2_b0", "repvgg_a0", "mobilenetv2_050"]  # one per family timm has
SIZE = 32


def _timm_file(tmp_path, name="convnext_atto", **kw):
    """timm's own model of ``name`` (its defaults, 1000 classes), saved as timm saves safetensors."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kw)
    path = tmp_path / f"{name}_timm.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _random_bn_statistics(model, seed=0):
    """Random BatchNorm statistics and affine parameters (a fresh BatchNorm is an identity, under which a
    mis-mapped BN key would go unnoticed); cheaper than calibrating, enough for a key-mapping test."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            for t, lo in ((bn.weight, 0.5), (bn.running_var, 0.5)):
                t.copy_(torch.rand(t.shape, generator=gen) + lo)
            for t in (bn.bias, bn.running_mean):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def _x(chans=3, seed=1, dtype=torch.float32):
    return torch.randn(2, chans, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- create_model(pretrained=True) -------------------------------------------------------------------
def test_pretrained_file_loads_bit_identical_weights_and_overlays_the_cfg(tmp_path):
    src = _timm_file(tmp_path)
    ours = create_model("convnext_atto")
    native = save_weights(ours, tmp_path / "ours.safetensors")
    for path in (src, native):  # timm's layout and ours
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to adapt: not a word
            model = create_model("convnext_atto", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path), crop_pct=0.9))
        want = load_file(str(path))
        got = model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert model.pretrained_cfg["file"] == str(path) and model.pretrained_cfg["crop_pct"] == 0.9
        assert model.pretrained_cfg["first_conv"] == "stem.0"  # the rest of the table stays
    # a pretrained_cfg carrying the file works the same; pretrained=False ignores the file (as timm)
    model = create_model("convnext_atto", pretrained=True, pretrained_cfg=dict(file=str(native)))
    assert torch.equal(model.stem[0].weight, ours.stem[0].weight)
    assert not torch.equal(create_model("convnext_atto", pretrained_cfg_overlay=dict(file=str(native))).stem[0].weight,
                           ours.stem[0].weight)


def test_pretrained_without_a_local_file_says_nothing_downloads():
    with pytest.raises(ConfigError, match=r"downloads nothing.*pretrained_cfg_overlay=dict\(file=PATH\).*"
                                          r"moderncnn convert SRC convnext_atto.safetensors --model convnext_atto"):
        create_model("convnext_atto", pretrained=True)
    with pytest.raises(ConfigError, match="Hugging Face Hub; moderncnn downloads nothing"):
        create_model("hf-hub:timm/convnext_atto.d2_in1k", pretrained=True)
    tagged = create_model("convnext_atto.d2_in1k")  # timm's name.tag spelling
    assert tagged.model_name == "convnext_atto" and tagged.pretrained_cfg["tag"] == "d2_in1k"


@pytest.mark.parametrize("name, cases", [("convnext_atto", ((10, 1), (0, 5))),
                                         ("repvgg_a0", ((10, 1),))])  # one stem conv; RepVGG's two branches
def test_class_count_and_in_chans_adapt_as_timm(tmp_path, name, cases):
    """Same file, same arguments: timm's create_model and ours give the same backbone function."""
    src = _timm_file(tmp_path, name)
    for num_classes, in_chans in cases:
        kw = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(src)), num_classes=num_classes,
                  in_chans=in_chans)
        theirs = timm.create_model(name, **kw).eval()
        with pytest.warns(UserWarning) as record:
            ours = create_model(name, **kw).eval()
        messages = [str(w.message) for w in record]
        if in_chans != 3:
            assert any(f"adapted from 3 to {in_chans} input channels" in m for m in messages), messages
        assert any(f"classifier head.fc has 1000 classes, the model {num_classes}" in m for m in messages), messages
        x = _x(in_chans)
        with torch.no_grad():
            assert rel_err(ours.forward_features(x), theirs.forward_features(x)) <= 1e-6
            assert rel_err(ours.forward_head(ours.forward_features(x), pre_logits=True),
                           theirs.forward_head(theirs.forward_features(x), pre_logits=True)) <= 1e-6
        if num_classes:  # the new classifier is fresh, with the family's initialisation
            assert ours.get_classifier().weight.shape == (num_classes, ours.num_features)


def test_adapt_input_conv_equals_timms():
    from timm.models._manipulate import adapt_input_conv as timm_adapt

    w = torch.randn(16, 3, 3, 3)
    for chans in (1, 2, 3, 4, 7):
        assert torch.equal(adapt_input_conv(chans, w), timm_adapt(chans, w))
    half = w.half()
    assert torch.equal(adapt_input_conv(5, half), timm_adapt(5, half)) and adapt_input_conv(5, half).dtype == half.dtype
    with pytest.raises(CheckpointError, match="expected a 4-D conv weight"):
        adapt_input_conv(2, torch.randn(16, 3))


def test_checkpoint_path_stays_strict(tmp_path):
    src = _timm_file(tmp_path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: head.fc.weight: checkpoint \(1000, 320\) vs model "
                                              r"\(10, 320\)"):
        create_model("convnext_atto", num_classes=10, checkpoint_path=src)
    model = create_model("convnext_atto", checkpoint_path=src)
    assert torch.equal(model.head.fc.weight, load_file(str(src))["head.fc.weight"])


# -- global_pool and reset_classifier ----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_global_pool_and_reset_classifier_as_timm(name):
    """Every pooling type: built with ``global_pool`` (structure on the meta device, one whole forward), and
    through ``reset_classifier(num_classes, global_pool)``: the same head width and the same function of a
    feature map as timm's model given the same call."""
    pools = ("avg", "max", "avgmax", "catavgmax", "")
    with torch.device("meta"):  # construction alone: widths and refusals, no initialisation cost
        for pool in pools:
            kw = dict(global_pool=pool, num_classes=0 if pool == "" else 7)
            if pool == "catavgmax" and name == "convnext_atto":  # a LayerNorm after pooling: timm refuses too
                with pytest.raises(AssertionError):
                    timm.create_model(name, **kw)
                with pytest.raises(ConfigError, match="catavgmax.*doubles the pooled width"):
                    create_model(name, **kw)
                continue
            theirs, ours = timm.create_model(name, **kw), create_model(name, **kw)
            assert ours.num_features == theirs.num_features and ours.num_classes == theirs.num_classes
            if pool:
                assert ours.get_classifier().in_features == theirs.get_classifier().in_features
    theirs = timm.create_model(name, global_pool="max").eval()
    ours = load_weights(create_model(name, global_pool="max"), theirs.state_dict(), layout="timm").eval()
    with torch.no_grad():  # one whole forward with a pooling other than avg
        assert rel_err(ours(_x()), theirs(_x())) <= 1e-5
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(2, ours.num_features, 3, 3, generator=gen)
    for pool in pools:
        if pool == "catavgmax" and name == "convnext_atto":
            continue
        num_classes = 0 if pool == "" else 5
        ours.reset_classifier(num_classes, pool)
        theirs.reset_classifier(num_classes, pool)
        if num_classes:
            theirs.get_classifier().load_state_dict(ours.get_classifier().state_dict())
        assert ours.num_classes == theirs.num_classes == num_classes
        with torch.no_grad():
            for pre_logits in (False, True):
                got, want = ours.forward_head(f, pre_logits=pre_logits), theirs.forward_head(f, pre_logits=pre_logits)
                assert got.shape == want.shape and rel_err(got, want) <= 1e-6, (pool, pre_logits)
    ours.reset_classifier(3, "avgmax")
    ours.reset_classifier(4)  # None keeps the pooling, as timm
    assert ours.head.pool_type == "avgmax" and ours.get_classifier().out_features == 4
    spec = ModelSpec.from_model(ours)  # the saved description rebuilds the new head
    assert spec.num_classes == 4 and spec.overrides["global_pool"] == "avgmax"


def test_bad_global_pool_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"global_pool 'mean' is not one of timm's pooling types 'avg', 'max'"):
        create_model("repvgg_a0", global_pool="mean")
    with pytest.raises(ConfigError, match=r"global_pool='' .* build it with num_classes=0 \(got 1000\)"):
        create_model("repvgg_a0", global_pool="")
    model = create_model("replknet_31b", global_pool="catavgmax", num_classes=4)  # its BN comes before pooling
    assert model.get_classifier().in_features == 2 * model.num_features
    with pytest.raises(ConfigError, match="no pooling"):
        model.reset_classifier(4, "")


# -- convert --to timm | official --------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_convert_to_timm_loads_into_timms_own_model(tmp_path, name):
    ours = create_model(name)
    _random_bn_statistics(ours)
    src = save_weights(ours, tmp_path / "ours.safetensors")
    dst = tmp_path / "timm.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "timm"]) == 0
    theirs = timm.create_model(name)  # timm's defaults for the name
    theirs.load_state_dict(load_file(str(dst)), strict=True)
    theirs, ours = theirs.double().eval(), ours.double().eval()
    with torch.no_grad():
        assert rel_err(theirs(_x(dtype=torch.float64)), ours(_x(dtype=torch.float64))) <= 1e-10


@pytest.mark.parametrize("golden", ["convnext_tiny_cfg", "repvgg_tiny", "replknet_tiny", "mobilenext_050_div2"])
def test_export_to_official_gives_back_the_official_state_dict(golden):
    """Official weights -> our model -> the official layout: the same tensors under the same keys (train and
    deploy forms), i.e. what the official code computed its golden outputs from."""
    from safetensors import safe_open

    from moderncnn import from_official_config

    path = official_file(f"{golden}.safetensors")
    meta = safe_open(str(path), "pt").metadata()
    tensors = load_file(str(path))
    forms = 0
    for form in ("state_dict", "deploy"):
        sd = {k[len(form) + 1:]: v for k, v in tensors.items() if k.startswith(form + ".")}
        if not sd:
            continue
        kw = {"deploy": True} if form == "deploy" else {}
        model = load_weights(from_official_config(meta["official_class"], meta["config"], **kw), sd, layout="official")
        back = export_state_dict(model, "official")
        keys = {k for k in sd if not k.endswith("num_batches_tracked")}
        assert keys == {k for k in back if not k.endswith("num_batches_tracked")}
        assert all(torch.equal(back[k], sd[k]) for k in keys)
        forms += 1
    assert forms >= 1


def test_convert_to_official_writes_a_plain_pth(tmp_path):
    ours = create_model("repvgg_a0")
    src = save_weights(ours, tmp_path / "ours.safetensors")
    dst = tmp_path / "official.pth"
    assert main(["convert", str(src), str(dst), "--to", "official"]) == 0
    sd = torch.load(dst, weights_only=True)
    assert "stage0.rbr_dense.conv.weight" in sd and "linear.weight" in sd
    again = load_weights(create_model("repvgg_a0"), dst, layout="official")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))
    assert main(["convert", str(src), str(tmp_path / "x.onnx"), "--to", "timm"]) == 2  # suffix named
    assert main(["convert", str(src), str(tmp_path / "m.pth"), "--to", "official", "--model", "mobilenetv2_050"]) == 2


# -- the trainer and eval -----------------------------------------------------------------------------
def test_load_initial_weights_pretrained_or_strict(tmp_path):
    from moderncnn.training.build import load_initial_weights
    from moderncnn.training.config import TrainConfig

    src = _timm_file(tmp_path)
    want = load_file(str(src))
    for cfg in (TrainConfig(pretrained=True, initial_checkpoint=str(src)), TrainConfig(pretrained_path=str(src))):
        model = create_model("convnext_atto", num_classes=10)
        with pytest.warns(UserWarning, match="left freshly initialised"):
            load_initial_weights(model, cfg)
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items() if not k.startswith("head.fc."))
    with pytest.raises(CheckpointError, match="shape mismatch: head.fc.weight"):
        load_initial_weights(create_model("convnext_atto", num_classes=10), TrainConfig(initial_checkpoint=str(src)))
    with pytest.raises(ConfigError, match="--pretrained needs the weights as a local file"):
        load_initial_weights(create_model("convnext_atto"), TrainConfig(pretrained=True))


def test_finetune_from_converted_timm_weights_end_to_end(tmp_path, capsys):
    """timm model (1000 classes) -> convert -> train --pretrained to 10 classes on gray Fashion-MNIST ->
    eval. A learning rate of 1e-9 leaves the first step's result within 1e-6 of where it started: the
    saved backbone is the converted one (stem summed to one channel), the head the new 10-class one."""
    src = _timm_file(tmp_path)
    conv = tmp_path / "atto.safetensors"
    assert main(["convert", str(src), str(conv), "--model", "convnext_atto"]) == 0
    run = tmp_path / "run"
    rc = main(["train", "--model", "convnext_atto", "--pretrained", "--initial-checkpoint", str(conv),
               "--num-classes", "10", "--img-size", "32", "-b", "4", "--epochs", "1", "--max-steps", "1",
               "--train-samples", "8", "--val-samples", "8", "--opt", "adamw", "--lr", "1e-9",
               "-j", "0", "--no-progress", "--no-plots", "--no-fuse", "--output", str(run)])
    assert rc == 0
    err = capsys.readouterr().err  # the CLI prints warnings as one line each
    assert "first conv stem.0 adapted from 3 to 1 input channels" in err
    assert "classifier head.fc has 1000 classes, the model 10; it is left freshly initialised" in err
    want, got = load_file(str(src)), load_file(str(run / "last.safetensors"))
    assert got["head.fc.weight"].shape == (10, 320)
    assert torch.allclose(got["stem.0.weight"], want["stem.0.weight"].sum(1, keepdim=True), atol=1e-6, rtol=0)
    backbone = [k for k in want if not k.startswith(("head.fc.", "stem.0.weight"))]
    assert max((got[k].float() - want[k].float()).abs().max().item() for k in backbone) <= 1e-6
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--val-samples", "8"]) == 0
    assert "top-1" in capsys.readouterr().out
    # the converted file (its .json describes it) and timm's own file plus --model evaluate too
    assert main(["eval", "--checkpoint", str(conv), "--val-samples", "4", "--img-size", "32"]) == 0
    assert main(["eval", "--checkpoint", str(src), "--model", "convnext_atto", "--val-samples", "4",
                 "--img-size", "32"]) == 0
    out, err = capsys.readouterr()
    assert out.count("top-1") == 2 and err.count("1000 classes but the evaluation data set has 10") == 2
