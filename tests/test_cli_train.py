"""``moderncnn train | eval | demo``: recipes, flags, data errors, and eval against the run's own metrics."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from moderncnn.cli import build_parser, main
from moderncnn.data.transforms import TIMM_OPS, rand_augment
from moderncnn.errors import ConfigError
from moderncnn.training.cli import config_from_args
from moderncnn.training.config import from_dict, list_recipes, load_recipe

RECIPES = ["convnext", "convnext_in22k_ft_in1k", "efficientnetv2_l", "efficientnetv2_m", "efficientnetv2_s",
           "fashion-mnist", "mobilenext", "replknet", "repvgg", "repvgg_200ep"]


def parse(*argv: str):
    return config_from_args(build_parser("train").parse_args(["train", *argv]))


def test_every_recipe_loads_and_matches_the_reference_numbers():
    assert list_recipes() == RECIPES
    cfgs = {name: from_dict(load_recipe(name)) for name in RECIPES}

    def lr_at(cfg, batch):  # the linear scaling rule the trainer applies when --lr is not given
        return cfg.lr_base * batch / cfg.lr_base_size

    s = cfgs["efficientnetv2_s"]  # docs/training.md, "Recipes: EfficientNetV2"
    assert (s.epochs, s.opt, s.opt_eps, s.momentum, s.weight_decay) == (350, "rmsproptf", 1e-3, 0.9, 1e-5)
    assert lr_at(s, 4096) == pytest.approx(0.256)
    assert (s.sched, s.decay_epochs, s.decay_rate, s.warmup_epochs) == ("step", 2.4, 0.97, 5)
    assert (s.model_ema, s.model_ema_decay, s.smoothing, s.progressive) == (True, 0.9999, 0.1, "official")
    assert [cfgs[f"efficientnetv2_{v}"].drop for v in "sml"] == [0.2, 0.3, 0.4]  # dropout per model
    c = cfgs["convnext"]  # "Recipes: ConvNeXt"
    assert (c.epochs, c.opt, c.weight_decay, c.warmup_epochs, c.min_lr) == (300, "adamw", 0.05, 20, 1e-6)
    assert lr_at(c, 4096) == pytest.approx(4e-3)
    assert (c.mixup, c.cutmix, c.smoothing, c.reprob, c.aa) == (0.8, 1.0, 0.1, 0.25, "rand-m9-mstd0.5-inc1")
    assert c.drop_path == {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5, "convnext_large": 0.5}
    r = cfgs["repvgg"]  # "Recipes: RepVGG"
    assert (r.epochs, r.opt, r.sched, r.weight_decay, r.aa, r.smoothing) == (120, "momentum", "cosine", 1e-4, None, 0)
    assert lr_at(r, 256) == pytest.approx(0.1)
    lk = cfgs["replknet"]  # "Recipes: RepLKNet"
    assert (lk.epochs, lk.warmup_epochs, lk.drop_path, lk.min_lr) == (300, 10, 0.5, 1e-6)
    assert lr_at(lk, 2048) == pytest.approx(4e-3)
    ra = rand_augment(c.aa)  # m9, n2 (timm's default), mstd 0.5, inc1; p and mmax at timm's defaults
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.increasing) == (9.0, 2, 0.5, True)
    assert (ra.prob, ra.max_magnitude, ra.ops) == (0.5, 10.0, TIMM_OPS)
    # the EfficientNetV2 recipes clip at their largest progressive magnitude, not timm's default 10
    assert [rand_augment(cfgs[f"efficientnetv2_{v}"].aa).max_magnitude for v in "sml"] == [10, 15, 20]


def test_flags_override_the_recipe_and_drop_path_follows_the_model_size():
    cfg = parse("--recipe", "convnext", "--model", "convnext_small", "--lr", "0.5", "-b", "64",
                "--model-kwargs", "kernel_size=5", "depths=[1,1,3,1]", "--no-model-ema", "--progressive")
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.model_ema) == (0.5, 64, 0.05, False)
    assert cfg.model_kwargs == {"kernel_size": 5, "depths": [1, 1, 3, 1]}
    assert cfg.progressive == "official"
    from moderncnn.training.config import resolve_drop_path

    assert resolve_drop_path(cfg.drop_path, cfg.model) == 0.4
    with pytest.raises(ConfigError, match="drop_path is given per model .* not for 'convnext_atto'"):
        resolve_drop_path(cfg.drop_path, "convnext_atto")
    plain = parse("--epochs", "3")
    assert plain.epochs == 3 and plain.model == "convnext_atto"  # dataclass defaults without a recipe


def test_unknown_recipe_key_and_flag_list_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown recipe 'convnxt'. Did you mean convnext.*Valid recipes:.*repvgg"):
        load_recipe("convnxt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: convnext_tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'.*Valid options: model, model_kwargs"):
        load_recipe(str(bad))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--modle", "convnext_tiny"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option --modle (did you mean --model" in err and "Valid options:" in err and "--drop-path" in err
    assert main(["train", "--recipe", "nope"]) == 2
    assert "Valid recipes: convnext" in capsys.readouterr().err


def _write_png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), value).save(path)


TINY = ["--model", "convnext_atto", "--model-kwargs", "depths=[1,1]", "dims=[8,16]", "--img-size", "16",
        "-b", "2", "--epochs", "1", "-j", "0", "--no-progress", "--no-plots", "--no-fuse"]


def test_missing_empty_and_corrupt_data_name_the_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(missing),
                 "--output", str(tmp_path / "r1")]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    assert main(["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(empty),
                 "--output", str(tmp_path / "r2")]) == 2
    assert str(empty / "train") in capsys.readouterr().err
    root = tmp_path / "corrupt"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            _write_png(root / split / cls / "ok.png")
    bad = root / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    assert main(["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(root), "--train-crop", "pad",
                 "--mean", "0.5", "--std", "0.5", "-b", "3", "--output", str(tmp_path / "r3")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_train_then_eval_reports_the_runs_own_top1(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", *TINY, "-b", "32", "--lr", "0.004", "--opt", "adamw", "--train-samples", "256",
               "--val-samples", "96", "--model-ema", "--model-ema-decay", "0.5", "--img-size", "28",
               "--train-crop", "pad", "--crop-pct", "1.0", "--output", str(run)])
    assert rc == 0
    row = list(csv.DictReader(open(run / "metrics.csv")))[-1]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--val-samples", "96"]) == 0
    out = capsys.readouterr().out
    raw = next(line for line in out.splitlines() if line.strip().startswith("raw"))
    ema = next(line for line in out.splitlines() if line.strip().startswith("ema"))
    assert f"top-1 {float(row['eval_top1']):.2f}%" in raw and f"top-5 {float(row['eval_top5']):.2f}%" in raw
    assert f"top-1 {float(row['ema_eval_top1']):.2f}%" in ema


def test_demo_runs_end_to_end_and_says_where_it_wrote(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--max-steps", "4", "--train-samples", "1024", "--val-samples", "64",
                 "-j", "0", "--no-progress", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"everything is in {out_dir}/" in out and "fused deploy model" in out
    for name in ("config.yaml", "metrics.csv", "log.jsonl", "last.safetensors", "model_deploy.safetensors",
                 "model_deploy.json"):
        assert (out_dir / name).is_file(), name
    assert torch.load(out_dir / "last.state.pt", weights_only=True)["global_step"] == 4
    # the run folder alone rebuilds its model for fuse/export (config.json names model and overrides)
    from moderncnn.deploy.export import load_checkpoint_model
    from moderncnn.interop import read_state_dict

    model = load_checkpoint_model(out_dir)
    best = read_state_dict(out_dir / "best.safetensors")
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert main(["fuse", str(out_dir), "--out", str(tmp_path / "fused.safetensors")]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "fashion-mnist"])
def test_each_recipe_takes_a_training_step(tmp_path, recipe):
    """Full-size models, one optimizer step at 64 px on 8 Fashion-MNIST images (progressive sizes ignore it)."""
    import moderncnn

    model = load_recipe(recipe)["model"]
    if model not in moderncnn.list_models():
        pytest.skip(f"{model} is not registered yet")
    rc = main(["train", "--recipe", recipe, "--dataset", "fashion-mnist", "--max-steps", "1", "-b", "2",
               "--grad-accum-steps", "1", "--train-samples", "8", "--val-samples", "2", "-j", "0", "--no-progress",
               "--no-plots", "--no-fuse", "--img-size", "64", "--eval-img-size", "64", "--output", str(tmp_path)])
    assert rc == 0
    state = torch.load(tmp_path / "last.state.pt", weights_only=True)
    assert state["global_step"] == 1 and state["model"] == model
