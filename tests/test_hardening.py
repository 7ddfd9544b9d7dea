"""Bad input is answered before any work starts: the one validation layer of the training options, and the
data sets' checks (class lists matched by name, unreadable images named or skipped, 16-bit PNGs, one class)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from moderncnn.data.datasets import check_eval_classes, check_splits, load_dataset, load_splits
from moderncnn.errors import ConfigError, DataError, ModernCNNError
from moderncnn.training.config import TrainConfig, from_dict, list_recipes, load_recipe

# (options, what the message must say): every number is checked once, with the valid range in the message
BAD_OPTIONS = [
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be an integer >= 1, got 0"),
    ({"batch_size": -5}, r"batch_size .* >= 1, got -5"),
    ({"img_size": -32}, r"img_size \(--img-size\) must be an integer in \[1, 16384\] \(or unset\), got -32"),
    ({"workers": -1}, r"workers \(--workers\) must be an integer >= 0, got -1"),
    ({"threads": -1}, r"threads \(--threads\) must be an integer >= 1"),
    ({"lr": -1.0}, r"lr \(--lr\) must be a number in \(0, 1000\] \(or unset\), got -1"),
    ({"lr": 1e38}, r"lr \(--lr\) must be a number in \(0, 1000\] \(or unset\), got 1e\+38"),
    ({"lr": "fast"}, r"lr \(--lr\) must be a number in \(0, 1000\] \(or unset\), got 'fast'"),
    ({"drop": 1.5}, r"drop \(--drop\) must be a number in \[0, 1\) \(or unset\), got 1.5"),
    ({"drop_path": 2.0}, r"drop_path \(--drop-path\) must be a number in \[0, 1\)"),
    ({"drop_path": -0.1}, r"drop_path \(--drop-path\) must be a number in \[0, 1\)"),
    ({"drop_path": {"convnext_atto": 1.0}}, r"drop_path\[convnext_atto\] must be a number in \[0, 1\)"),
    ({"smoothing": 2.0}, r"smoothing \(--smoothing\) must be a number in \[0, 1\), got 2"),
    ({"scale": [1.0, 0.0]}, r"scale \(--scale\) must be 2 values, each a number in \(0, 1\].*got \[1.0, 0.0\]"),
    ({"scale": [0.9, 0.5]}, r"scale .*the first not above the second, got \[0.9, 0.5\]"),
    ({"opt": "bogus"}, r"opt \(--opt\) must be one of sgd, momentum, rmsproptf, adamw, adam, lamb, .*, got 'bogus'"),
    ({"opt": "admw"}, r"did you mean adamw\?"),
    ({"sched": "cosin"}, r"sched \(--sched\) must be one of cosine.*did you mean cosine\?"),
    ({"lr_base_size": 0}, r"lr_base_size \(--lr-base-size\) must be an integer >= 1, got 0"),
    ({"seed": 2**70}, r"seed \(--seed\) must be an integer in \[0, 9223372036854775807\]"),
    ({"seed": "2^70"}, r"seed .* got '2\^70'"),
    ({"model_ema_decay": 5.0}, r"model_ema_decay \(--model-ema-decay\) must be a number in \[0, 1\), got 5"),
    ({"opt_betas": [2.0, 2.0]}, r"opt_betas \(--opt-betas\) must be 2 values, each a number in \[0, 1\)"),
    ({"val_samples": 0}, r"val_samples \(--val-samples\) must be an integer >= 1 \(or unset\), got 0"),
    ({"max_steps": 0}, r"max_steps \(--max-steps\) must be an integer >= 1 \(or unset\), got 0"),
    ({"mixup": -1.0}, r"mixup \(--mixup\) must be a number >= 0, got -1"),
    ({"hflip": 5.0}, r"hflip \(--hflip\) must be a number in \[0, 1\], got 5"),
    ({"clip_grad": -1.0}, r"clip_grad \(--clip-grad\) must be a number > 0 \(or unset\), got -1"),
    ({"epochs": 0}, r"epochs \(--epochs\) must be an integer >= 1, got 0"),
    ({"grad_accum_steps": 0}, r"grad_accum_steps .* >= 1"),
    ({"num_classes": 0}, r"num_classes \(--num-classes\) must be an integer >= 1"),
    ({"num_classes": "3"}, None),  # a number written as a string is read as the number (argparse does too)
    ({"mean": [0.5, 0.5], "std": [0.5]}, r"--mean has 2 values but --std has 1"),
    ({"std": [0.0]}, r"std \(--std\) must be 1 or more values, each a number > 0"),
    ({"mean": [0.5]}, r"go together: give both or neither"),
    ({"device": "bogus"}, r"device \(--device\) must be cpu, cuda or cuda:N, got 'bogus'"),
    ({"device": "mps"}, r"device \(--device\) must be cpu, cuda or cuda:N, got 'mps'"),
    ({"dataset": "imagenett"}, r"dataset \(--dataset\) must be one of fashion-mnist, imagefolder"),
    ({"model_kwargs": {"num_classes": 5}}, r"--model-kwargs num_classes=\.\.\. duplicates --num-classes"),
    ({"model_kwargs": {"drop_path_rate": 0.1}}, r"drop_path_rate=\.\.\. duplicates --drop-path"),
    ({"model_kwargs": "dims=3"}, r"model_kwargs \(--model-kwargs\) must be a mapping"),
    ({"prog_stages": 2, "prog_batch_sizes": [8]}, r"prog_batch_sizes has 1 values for 2 progressive stages"),
    ({"aa": "auto"}, r"--aa 'auto': only RandAugment \(.*\) and the AutoAugment policies v0, v0r, original"),
    ({"amp": "yes"}, r"amp \(--amp\) must be true or false, got 'yes'"),
    ({"crop_pct": 0.0}, r"crop_pct \(--crop-pct\) must be a number in \(0, 1\]"),
    ({"eval_interval": 0}, r"eval_interval .* >= 1"),
    ({"checkpoint_interval": 0}, r"checkpoint_interval .* >= 1"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_every_training_option_is_checked_with_its_range(options, message):
    if message is None:
        cfg = from_dict(options)
        assert all(isinstance(getattr(cfg, k), int) for k in options)
        return
    with pytest.raises(ModernCNNError, match=message) as err:
        from_dict(options)
    assert "\n" not in str(err.value)
    # the same check runs however the config is made: the dataclass itself, or replace()
    with pytest.raises(ModernCNNError, match=message):
        TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    with pytest.raises(ModernCNNError, match=message):
        TrainConfig().replace(**options)


def test_several_bad_options_are_reported_together_and_recipes_pass():
    with pytest.raises(ConfigError, match=r"^epochs .*; lr .*; smoothing "):
        from_dict({"lr": -1, "epochs": 0, "smoothing": 3})
    cfg = from_dict({"lr": "1e-3", "scale": [0.5, 1], "sched": "exponential"})  # YAML reads 1e-3 as a string
    assert cfg.lr == 0.001 and cfg.scale == (0.5, 1.0) and cfg.sched == "exponential_staircase"
    for name in list_recipes():
        from_dict(load_recipe(name))


# -- data sets -------------------------------------------------------------------------------------------
def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _folder(root, split, classes, n=2, size=8):
    for c in classes:
        for i in range(n):
            _png(root / split / c / f"{i}.png", np.full((size, size, 3), 40 * i + 7, dtype=np.uint8))


def test_sixteen_bit_png_keeps_its_gray_levels(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    _png(tmp_path / "train" / "a" / "g16.png", ramp)  # PIL writes uint16 arrays as 16-bit gray PNGs
    assert Image.open(tmp_path / "train" / "a" / "g16.png").mode.startswith("I")
    image, _ = load_dataset("imagefolder", data_dir=str(tmp_path))[0]
    expected = torch.from_numpy(np.rint(ramp / 257.0).astype(np.uint8))
    assert image.shape == (3, 8, 8) and all(torch.equal(image[c], expected) for c in range(3))
    assert len(image.unique()) == 64


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named_in_one_line_or_skipped_and_counted(tmp_path, workers):
    _folder(tmp_path, "train", ["a", "b"], n=3)
    for name in ("a/1.png", "b/0.png"):
        (tmp_path / "train" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = load_dataset("imagefolder", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"^cannot decode image .*a/1.png \(.*\); .*--skip-bad-images") as err:
        ds[1]
    assert "\n" not in str(err.value)
    ds = load_dataset("imagefolder", data_dir=str(tmp_path), skip_bad_images=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 6 and labels.tolist() == [0, 0, 0, 1, 1, 1]  # replaced by the next readable file
    assert [p.rsplit("/", 2)[-2:] for p in ds.bad_images()] == [["a", "1.png"], ["b", "0.png"]]


CLASS_CASES = [
    # (train classes, val classes, expected val labels or an error)
    (["cat", "dog"], ["cat", "dog"], [0, 0, 1, 1]),
    (["cat", "dog", "fox"], ["dog", "fox"], [1, 1, 2, 2]),  # matched by name, not by position
    (["cat", "dog"], ["cat", "emu"], "class folders that the training split does not have: emu"),
]


@pytest.mark.parametrize("train,val,expected", CLASS_CASES)
def test_validation_classes_are_matched_by_name(tmp_path, train, val, expected):
    _folder(tmp_path, "train", train)
    _folder(tmp_path, "val", val)
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            load_splits("imagefolder", data_dir=str(tmp_path))
        return
    tr, va = load_splits("imagefolder", data_dir=str(tmp_path))
    assert va.classes == tr.classes and [va[i][1] for i in range(len(va))] == expected


class _Named(torch.utils.data.Dataset):
    def __init__(self, classes):
        self.classes, self.num_classes = tuple(classes), len(classes)


def test_class_lists_and_counts_that_disagree_are_refused_or_warned():
    check_splits(_Named("abc"), _Named("ab"))  # a prefix labels alike
    with pytest.raises(DataError, match=r"validation split's classes \(b, a\) are not the training split's"):
        check_splits(_Named("ab"), _Named("ba"))
    with pytest.warns(UserWarning, match="single class"):
        check_splits(_Named("a"), _Named("a"))
    with pytest.warns(UserWarning, match="the model has 10 classes but the evaluation data set has 2"):
        check_eval_classes(10, _Named("ab"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_eval_classes(2, _Named("ab"))


# -- weights: EMA asked for where there is none, pickles that would run code ------------------------------
def _tiny(seed):
    from moderncnn import create_model

    torch.manual_seed(seed)
    return create_model("convnext_atto", depths=(1, 1), dims=(8, 16), num_classes=3).eval()


def test_fuse_ema_uses_the_ema_weights_and_refuses_a_run_without_them(tmp_path, capsys):
    from moderncnn.cli import main
    from moderncnn.deploy.export import load_checkpoint_model
    from moderncnn.interop.spec import save_weights

    raw, ema = _tiny(0), _tiny(1)
    save_weights(raw, tmp_path / "run" / "best.safetensors")
    save_weights(ema, tmp_path / "run" / "best_ema.safetensors")
    x = torch.randn(2, 3, 32, 32)
    outputs = {}
    for flags in ([], ["--ema"]):
        out = tmp_path / f"fused{len(flags)}.safetensors"
        assert main(["fuse", str(tmp_path / "run"), "--out", str(out), "--bench-rounds", "0", *flags]) == 0
        with torch.no_grad():
            outputs[bool(flags)] = load_checkpoint_model(out).eval()(x)
    with torch.no_grad():
        assert torch.allclose(outputs[False], raw(x), atol=1e-5) and torch.allclose(outputs[True], ema(x), atol=1e-5)
    assert not torch.allclose(outputs[False], outputs[True], atol=1e-3)
    (tmp_path / "run" / "best_ema.safetensors").unlink()
    capsys.readouterr()
    assert main(["fuse", str(tmp_path / "run"), "--out", str(tmp_path / "f.safetensors"), "--ema"]) == 2
    err = capsys.readouterr().err
    assert "no EMA weights beside" in err and "leave out --ema" in err and not (tmp_path / "f.safetensors").exists()


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.parametrize("content,message", [
    ({"state_dict": {"w": torch.zeros(1)}, "hook": _RunsCode()}, "holds pickled Python objects besides tensors"),
    ({"state_dict": {"w": torch.zeros(1)}}, "holds no EMA weights"),
])
def test_weight_files_that_hold_code_or_lack_ema_are_refused_with_what_to_do(tmp_path, capsys, content, message):
    from moderncnn.interop import read_state_dict

    path = tmp_path / "w.pth"
    torch.save(content, path)
    with pytest.raises(ModernCNNError, match=message) as err:
        read_state_dict(path, use_ema=True)
    assert "this would have run" not in capsys.readouterr().out
    if "pickled" in message:
        assert "moderncnn never runs code from a checkpoint" in str(err.value)
        assert "safetensors" in str(err.value)
    with pytest.raises(ModernCNNError, match="is a folder; expected one checkpoint file"):
        read_state_dict(tmp_path)


def test_eval_of_a_model_on_data_with_another_class_count_warns_in_one_line(tmp_path, capsys):
    from moderncnn.cli import main
    from moderncnn.interop.spec import save_weights

    save_weights(_tiny(0), tmp_path / "run" / "best.safetensors")  # 3 classes
    _folder(tmp_path / "data", "val", ["a", "b"], size=32)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--dataset", "imagefolder", "--data-dir",
                 str(tmp_path / "data"), "--img-size", "32"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "moderncnn eval: warning: best.safetensors (convnext_atto) has 3 classes but the evaluation data set has 2; "
        "the accuracy compares labels with outputs that may not mean the same classes"]


# -- the Python API: create_model's options and what a model accepts as input -----------------------------
MODEL_OPTIONS = [
    ({"num_classes": "5"}, r"num_classes must be an integer \(default 1000\), got '5'"),
    ({"num_classes": 5.0}, r"num_classes must be an integer \(default 1000\), got 5.0"),
    ({"drop_path_rate": -0.1}, r"drop_path_rate must be a number in \[0, 1\), got -0.1"),
    ({"drop_path_rate": 1.0}, r"drop_path_rate must be a number in \[0, 1\), got 1.0"),
    ({"dims": (-8, 16, 32, 64)}, r"dims must not be negative or infinite, got \(-8, 16, 32, 64\)"),
    ({"depths": (1, -1, 1, 1)}, r"depths must not be negative"),
    ({"layer_scale_init_value": "small"}, r"layer_scale_init_value must be a number"),
]


@pytest.mark.parametrize("options,message", MODEL_OPTIONS, ids=[str(o) for o, _ in MODEL_OPTIONS])
def test_create_model_checks_every_option(options, message):
    from moderncnn import create_model

    with pytest.raises(ConfigError, match=r"^invalid options for convnext_atto: " + message):
        create_model("convnext_atto", **options)


INPUTS = [
    ("uint8 images", dict(dtype=torch.uint8), False, r"float32 weights but got torch.uint8 input .*x.float\(\) / 255"),
    ("float16", dict(dtype=torch.float16), False, r"float32 weights but got torch.float16 input"),
    ("batch 1 while training BatchNorm", dict(batch=1), True, r"training mode and has BatchNorm.*batches of 2"),
]


@pytest.mark.parametrize("what,kw,training,message", INPUTS, ids=[c[0] for c in INPUTS])
def test_input_a_model_cannot_take_is_refused_saying_what_to_do(what, kw, training, message):
    from moderncnn import create_model

    model = create_model("repvgg_a0", num_blocks=(1, 1, 1, 1)).train(training)
    x = torch.zeros(kw.get("batch", 2), 3, 32, 32, dtype=kw.get("dtype", torch.float32))
    with pytest.raises(ModernCNNError, match=message):
        model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast takes float32 or bfloat16 input as it is
        model.eval()(torch.zeros(2, 3, 32, 32, dtype=torch.bfloat16))


def test_batch_1_trains_where_batchnorm_can():
    """One image whose last feature map is 2×2 gives BatchNorm 4 values per channel: PyTorch trains it,
    and so must we (only a 1×1 last map is refused, above)."""
    from moderncnn import create_model

    model = create_model("repvgg_a0", num_blocks=(1, 1, 1, 1)).train()
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
