"""Data sets and transforms as a timm user expects them (issue 12), checked against timm 1.0.31 itself:
ImageFolder class order and class maps, split names, AutoAugment policies, transforms resolved from the
model's pretrained_cfg, Hugging Face datasets folders and WebDataset shards (small data made here)."""

from __future__ import annotations

import io
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from moderncnn import create_model
from moderncnn.cli import main
from moderncnn.data.datasets import ImageFolderDataset, load_class_map, load_dataset, load_splits
from moderncnn.data.readers import expand_braces
from moderncnn.data.transforms import _AA_OPS, _OPS, AA_POLICIES, AutoAugment, parse_aa
from moderncnn.errors import ConfigError, DataError
from moderncnn.registry import default_pretrained_cfg
from moderncnn.training.build import build_data
from moderncnn.training.config import TrainConfig

timm = pytest.importorskip("timm")

TINY = ["--model", "convnext_atto", "--model-kwargs", "depths=[1,1]", "dims=[8,16]", "--img-size", "16",
        "-b", "4", "--epochs", "1", "-j", "0", "--no-progress", "--no-plots", "--no-fuse", "--max-steps", "3",
        "--train-crop", "pad"]


def _image(seed: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, classes, per_class=2, split="train"):
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_image(hash((c, i)) % 1000)).save(root / split / c / f"img{i}.png")


# -- ImageFolder order, class maps, split names ---------------------------------------------------------------
NUMBERED = ["class1", "class2", "class10", "Class3", "class21b", "class21a", "x"]


def test_imagefolder_class_order_is_timms_natural_order(tmp_path):
    from timm.data.readers.reader_image_folder import ReaderImageFolder

    _folder(tmp_path, NUMBERED, per_class=1)
    for name in ("img10.png", "IMG3.png"):
        Image.fromarray(_image(7)).save(tmp_path / "train" / "class2" / name)
    ours = ImageFolderDataset(tmp_path / "train")
    timms = ReaderImageFolder(str(tmp_path / "train"))
    assert {c: i for i, c in enumerate(ours.classes)} == timms.class_to_idx
    assert [(str(p), t) for p, t in ours.samples] == timms.samples  # same samples in the same order
    assert ours.classes.index("class2") < ours.classes.index("class10")  # plain sorting puts class10 first
    assert sorted(NUMBERED).index("class10") < sorted(NUMBERED).index("class2")


def test_class_map_restricts_and_orders_classes_like_timm(tmp_path):
    from timm.data.readers.reader_image_folder import ReaderImageFolder

    _folder(tmp_path, ["cat", "dog", "eel", "fox"], per_class=3)
    class_map = tmp_path / "classes.txt"
    class_map.write_text("fox\ncat\neel\n")
    ours = ImageFolderDataset(tmp_path / "train", class_map=str(class_map))
    timms = ReaderImageFolder(str(tmp_path / "train"), class_map=str(class_map))
    assert {c: i for i, c in enumerate(ours.classes)} == timms.class_to_idx
    assert [(str(p), t) for p, t in ours.samples] == timms.samples
    assert len(ours) == 9 and ours.classes == ("fox", "cat", "eel")  # dog's folder is left out
    with pytest.raises(DataError, match="line 2 is empty"):
        bad = tmp_path / "bad.txt"
        bad.write_text("fox\n\ncat\n")
        load_class_map(bad)
    with pytest.raises(DataError, match=r"\.txt file"):
        load_class_map(tmp_path / "classes.pkl")


def test_split_names_are_timms_and_old_layouts_still_load(tmp_path):
    _folder(tmp_path / "a", ["x", "y"])
    _folder(tmp_path / "a", ["x", "y"], split="val")  # the earlier train/ + val/ layout, default names
    train, val = load_splits("imagefolder", data_dir=str(tmp_path / "a"))
    assert train.root.name == "train" and val.root.name == "val"
    _folder(tmp_path / "b", ["x", "y"], split="training")
    _folder(tmp_path / "b", ["x", "y"], split="validation")
    _folder(tmp_path / "b", ["x", "y"], split="holdout")
    _, val = load_splits("imagefolder", data_dir=str(tmp_path / "b"))
    assert val.root.name == "validation"
    _, val = load_splits("imagefolder", data_dir=str(tmp_path / "b"), val_split="holdout")
    assert val.root.name == "holdout"
    with pytest.raises(DataError, match="no nowhere/ sub-folder"):
        load_splits("imagefolder", data_dir=str(tmp_path / "b"), val_split="nowhere")


# -- AutoAugment --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["v0", "v0r", "original", "originalr"])
def test_autoaugment_policies_equal_timms(policy):
    from timm.data.auto_augment import auto_augment_policy

    timms = [[(op.name, op.prob, op.magnitude) for op in sub] for sub in auto_augment_policy(policy)]
    assert [list(sub) for sub in AA_POLICIES[policy]] == timms
    image = torch.from_numpy(_image(0, 24)).permute(2, 0, 1).contiguous()
    aa = parse_aa(policy)
    assert isinstance(aa, AutoAugment)
    torch.manual_seed(0)
    outs = [aa(image) for _ in range(20)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(o, image) for o in outs)
    pil = aa(Image.fromarray(_image(1, 24)))
    assert isinstance(pil, Image.Image) and pil.size == (24, 24)


@pytest.mark.parametrize("op, magnitude", [("Posterize", 6), ("PosterizeIncreasing", 6), ("PosterizeOriginal", 5),
                                           ("Solarize", 3), ("SolarizeAdd", 7), ("Invert", 4),
                                           ("AutoContrast", 5)])
def test_autoaugment_ops_compute_timms_pixels(op, magnitude):
    """The deterministic ops of the policies, at their level mappings, give timm's pixels exactly."""
    from timm.data.auto_augment import AugmentOp

    array = _image(3, 16)
    expected = np.asarray(AugmentOp(op, prob=1.0, magnitude=magnitude)(Image.fromarray(array)))
    name, increasing = _AA_OPS[op]
    ours = _OPS[name](torch.from_numpy(array).permute(2, 0, 1).contiguous(), magnitude / 10, increasing)
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), expected)


def test_autoaugment_strings_are_checked():
    assert parse_aa("original-mstd0.5").magnitude_std == 0.5
    with pytest.raises(ConfigError, match="takes mstd<std> only"):
        parse_aa("v0-m9")
    assert TrainConfig(aa="originalr").aa == "originalr"


# -- transforms from the model's pretrained_cfg --------------------------------------------------------------
@pytest.mark.parametrize("name, args", [
    ("convnext_atto", {}), ("convnext_tiny", {}), ("repvgg_a0", {}), ("tf_efficientnetv2_b3", {}),
    ("repvgg_a0", {"img_size": 64, "interpolation": "bicubic", "crop_pct": 0.9}),
    ("convnext_atto", {"mean": (0.5,), "std": (0.25,)}),
])
def test_imagefolder_run_resolves_timms_data_config(tmp_path, name, args):
    from timm.data import resolve_data_config

    _folder(tmp_path, ["a", "b"])
    _folder(tmp_path, ["a", "b"], split="val")
    cfg = TrainConfig(model=name, dataset="imagefolder", data_dir=str(tmp_path), **args)
    run = build_data(cfg)
    with torch.device("meta"):  # the models' pretrained_cfg without allocating weights
        theirs, ours = timm.create_model(name), create_model(name)
    expected = resolve_data_config(args=dict(args), model=theirs)
    assert default_pretrained_cfg(name) == ours.pretrained_cfg  # what build_data read
    ev = run.data.val_set.transform
    got = dict(input_size=(3, run.data.train_transform.img_size, ev.img_size), interpolation=ev.interpolation,
               mean=run.mean, std=run.std, crop_pct=ev.crop_pct, crop_mode=ev.crop_mode)
    assert got == {**expected, "input_size": (3, expected["input_size"][1], expected["input_size"][2])}
    image, _ = run.data.val_set[0]
    assert image.shape == (3, *expected["input_size"][1:])


def test_fashion_mnist_keeps_its_own_statistics_and_size():
    run = build_data(TrainConfig(model="convnext_atto", train_samples=8, val_samples=8))
    assert run.mean == (0.2860,) and run.data.train_transform.img_size == 28 and run.eval_img_size == 28


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_transform_resizes_and_crops_like_timm(interpolation):
    """Each crop mode's geometry and the interpolation against timm's eval transform (PIL) on a non-square
    image: within a level or so of resampling rounding (mean < 0.5 of 255); a wrong scale or crop window
    moves most pixels by tens of levels."""
    from timm.data import create_transform

    from moderncnn.data.transforms import build_eval_transform

    array = np.random.default_rng(5).integers(0, 256, (48, 36, 3)).astype(np.uint8)
    for mode, pct in (("center", 0.75), ("center", 1.0), ("squash", 0.9), ("border", 0.9)):
        stats = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        timms = create_transform(24, crop_pct=pct, crop_mode=mode, interpolation=interpolation,
                                 **stats)(Image.fromarray(array))
        ours = build_eval_transform(24, in_chans=3, source_chans=3, crop_pct=pct, crop_mode=mode,
                                    interpolation=interpolation, **stats)(
            torch.from_numpy(array).permute(2, 0, 1).contiguous())
        diff = (ours - timms).abs().mul(255)
        assert ours.shape == timms.shape == (3, 24, 24)
        assert diff.mean() < 0.5 and diff.max() <= 16, (mode, pct, diff.mean().item(), diff.max().item())


# -- Hugging Face datasets ----------------------------------------------------------------------------------
def _hf_folder(path, image_col="image", label_col="label", n=24):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({image_col: datasets.Image(),
                                  label_col: datasets.ClassLabel(names=["ant", "bee", "cow"])})

    def split(offset):
        return datasets.Dataset.from_dict(
            {image_col: [{"bytes": _png(_image(offset + i)), "path": None} for i in range(n)],
             label_col: [i % 3 for i in range(n)]}, features=features)

    datasets.DatasetDict({"train": split(0), "validation": split(1000)}).save_to_disk(str(path))


def test_hfds_folder_reads_images_labels_and_trains(tmp_path, capsys):
    _hf_folder(tmp_path / "hf")
    train, val = load_splits("hfds", data_dir=str(tmp_path / "hf"))
    assert len(train) == 24 and train.classes == ("ant", "bee", "cow") and val.classes == train.classes
    image, label = train[4]
    assert torch.equal(image, torch.from_numpy(_image(4)).permute(2, 0, 1)) and label == 4 % 3
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "hfds", "--data-dir", str(tmp_path / "hf"), "-j", "1",
                 "--output", str(run)]) == 0
    assert (run / "last.safetensors").is_file()
    head, tail = (load_dataset("hfds", data_dir=str(tmp_path / "hf"), split=s) for s in ("train[:75%]", "train[75%:]"))
    assert (len(head), len(tail)) == (18, 6) and torch.equal(tail[0][0], train[18][0])
    assert len(load_dataset("hfds", data_dir=str(tmp_path / "hf"), split="train[:4]+validation")) == 28
    with pytest.raises(DataError, match="slices .* are read for hfds data sets only"):
        load_dataset("imagefolder", data_dir=str(tmp_path), split="train[:50%]")
    cm = tmp_path / "map.txt"
    cm.write_text("cow\nant\n")
    mapped = load_dataset(f"hfds/{tmp_path / 'hf'}", split="train", class_map=str(cm))
    assert mapped.classes == ("cow", "ant") and len(mapped) == 16 and int(mapped.labels[0]) == 1  # sample 0: ant


def test_hfds_columns_are_detected_or_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    _hf_folder(tmp_path / "hf", image_col="img", label_col="fine_label", n=6)
    ds = load_dataset("hfds", data_dir=str(tmp_path / "hf"), split="validation")  # first Image / ClassLabel
    assert ds.image_key == "img" and len(ds) == 6
    with pytest.raises(DataError, match="no column 'pixels'"):
        load_dataset("hfds", data_dir=str(tmp_path / "hf"), split="train", input_key="pixels")
    # plain integer and string labels, under other names, chosen with --input-key/--target-key
    rows = {"picture": [_png(_image(i)) for i in range(4)], "y": [3, 1, 3, 0], "name": ["b", "a10", "a2", "b"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "plain"))
    ints = load_dataset("hfds", data_dir=str(tmp_path / "plain"), split="train", input_key="picture", target_key="y")
    assert ints.classes == ("0", "1", "2", "3") and ints.labels.tolist() == [3, 1, 3, 0]
    assert torch.equal(ints[2][0], torch.from_numpy(_image(2)).permute(2, 0, 1))
    names = load_dataset(f"hfds/{tmp_path / 'plain'}", split="train", input_key="picture", target_key="name")
    assert names.classes == ("a2", "a10", "b") and names.labels.tolist() == [2, 1, 0, 2]
    with pytest.raises(DataError, match="holds one split"):
        load_dataset("hfds", data_dir=str(tmp_path / "plain"), split="validation", input_key="picture")
    datasets.Dataset.from_dict({"image": rows["picture"], "label": [0, -1, 1, 0]}).save_to_disk(
        str(tmp_path / "unlabelled"))
    with pytest.raises(DataError, match="negative labels"):
        load_dataset("hfds", data_dir=str(tmp_path / "unlabelled"), split="train")


def test_hfds_reads_a_local_folder_of_data_files_through_the_cache(tmp_path):
    """``hfds/PATH`` with Parquet files in the Hub's layout (not save_to_disk) goes through
    ``datasets.load_dataset`` with the cache in --data-dir, offline; ``val`` finds the validation split."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for split, offset in (("train", 0), ("validation", 100)):
        datasets.Dataset.from_dict({"image": [{"bytes": _png(_image(offset + i)), "path": None} for i in range(6)],
                                    "label": [i % 2 for i in range(6)]}, features=features).to_parquet(
            str(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet"))
    ds = load_dataset(f"hfds/{tmp_path / 'pq'}", data_dir=str(tmp_path / "cache"), split="val")
    assert len(ds) == 6 and ds.classes == ("a", "b")
    image, label = ds[3]
    assert torch.equal(image, torch.from_numpy(_image(103)).permute(2, 0, 1)) and label == 1
    assert (tmp_path / "cache").is_dir()  # the cache named by --data-dir is the one used


def test_hfds_is_offline_and_names_the_missing_extra(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"(?s)OfflineModeIsEnabled.*Nothing is downloaded"):
        load_dataset("hfds/someone/not-cached", data_dir=str(tmp_path / "cache"), split="train")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'moderncnn\[hfds\]'"):
        load_dataset("hfds", data_dir=str(tmp_path), split="train")


# -- WebDataset shards --------------------------------------------------------------------------------------
def _shards(root, prefix, shards, per_shard, offset=0):
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(root / f"{prefix}-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                n = offset + s * per_shard + i
                for ext, data in (("png", _png(_image(n))), ("cls", str(n % 3).encode())):
                    info = tarfile.TarInfo(f"sample{n:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..9}.tar") == ["a-8.tar", "a-9.tar", "b-8.tar", "b-9.tar"]


def test_wds_shards_read_by_pattern_or_name_and_train(tmp_path):
    _shards(tmp_path / "wds", "train", shards=3, per_shard=8)
    _shards(tmp_path / "wds", "val", shards=1, per_shard=9, offset=500)
    by_pattern = load_dataset("wds", data_dir=str(tmp_path / "wds"), split="train-{000..002}.tar")
    by_name = load_dataset("wds", data_dir=str(tmp_path / "wds"), split="train")
    assert len(by_pattern) == len(by_name) == 24 and by_name.classes == ("0", "1", "2")
    image, label = by_name[13]
    assert torch.equal(image, torch.from_numpy(_image(13)).permute(2, 0, 1)) and label == 13 % 3
    val = load_dataset("wds", data_dir=str(tmp_path / "wds"), split="validation")  # finds val-*.tar
    assert len(val) == 9
    assert len(load_dataset(f"wds/{tmp_path / 'wds'}", split="val")) == 9  # wds/DIR without --data-dir
    cm = tmp_path / "map.txt"
    cm.write_text("2\n0\n")
    mapped = load_dataset("wds", data_dir=str(tmp_path / "wds"), split="train", class_map=str(cm))
    assert mapped.classes == ("2", "0") and len(mapped) == 16 and mapped.labels.tolist()[:3] == [1, 0, 1]
    with pytest.raises(DataError, match="2 of 4 shards do not exist"):
        load_dataset("wds", data_dir=str(tmp_path / "wds"), split="train-{001..004}.tar")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "wds", "--data-dir", str(tmp_path / "wds"), "-j", "1",
                 "--train-split", "train-{000..001}.tar", "--val-split", "val", "--aa", "v0",
                 "--output", str(run)]) == 0
    assert (run / "last.safetensors").is_file()


def test_repvgg_200_epoch_recipe_uses_the_papers_autoaugment_policy():
    from moderncnn.training.config import from_dict, load_recipe

    cfg = from_dict(load_recipe("repvgg_200ep"))
    assert cfg.aa == "original" and isinstance(parse_aa(cfg.aa), AutoAugment)


def test_autoaugment_and_a_progressive_randaugment_schedule_are_refused_together():
    from moderncnn.data.datasets import TensorImageDataset

    data = TensorImageDataset(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4) % 2, ("a", "b"))
    cfg = TrainConfig(model="efficientnetv2_s", progressive="official", epochs=4, aa="v0")
    with pytest.raises(ConfigError, match="is AutoAugment: the run would apply both"):
        build_data(cfg, data, data)


def test_large_in_memory_data_is_not_resized_up_front(monkeypatch):
    """CIFAR at a pretrained_cfg's 224 px would be a 7.5 GB copy if resized once; above the limit the
    transforms resize per sample instead (same pixels)."""
    import moderncnn.data.assembly as assembly
    from moderncnn.data.datasets import TensorImageDataset

    data = TensorImageDataset(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.arange(4) % 2, ("a", "b"))
    cfg = TrainConfig(model="convnext_atto", dataset="cifar10", img_size=16, train_crop="pad", crop_pct=1.0)
    resized = build_data(cfg, data, data)
    assert resized.data.val_set.base.image_size == 16 and resized.data.train_set.base.image_size == 16
    monkeypatch.setattr(assembly, "_RESIZE_ONCE_BYTES", 4 * 3 * 16 * 16 - 1)
    per_sample = build_data(cfg, data, data)
    assert per_sample.data.val_set.base is data and per_sample.data.train_set.base is data
    assert torch.equal(per_sample.data.val_set[1][0], resized.data.val_set[1][0])


def test_timm_data_flags_reach_the_config():
    from moderncnn.cli import build_parser
    from moderncnn.training.cli import config_from_args

    args = build_parser("train").parse_args(
        ["train", "--dataset", "hfds/user/set", "--train-split", "train[:90%]", "--val-split", "test",
         "--class-map", "map.txt", "--input-key", "img", "--target-key", "fine_label", "--interpolation", "bicubic",
         "--aa", "v0r"])
    cfg = config_from_args(args)
    assert (cfg.dataset, cfg.train_split, cfg.val_split, cfg.class_map, cfg.input_key, cfg.target_key,
            cfg.interpolation, cfg.aa) == ("hfds/user/set", "train[:90%]", "test", "map.txt", "img", "fine_label",
                                           "bicubic", "v0r")
    with pytest.raises(ConfigError, match=r"interpolation \(--interpolation\) must be one of bilinear, bicubic"):
        TrainConfig(interpolation="lanczos")


def test_eval_reads_another_split_and_transform_settings(tmp_path, capsys):
    _folder(tmp_path / "data", ["a", "b"], per_class=4)
    _folder(tmp_path / "data", ["a", "b"], per_class=2, split="val")
    _folder(tmp_path / "data", ["a", "b"], per_class=3, split="holdout")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                 "--output", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert "(4 imagefolder val images at 16 px)" in capsys.readouterr().out  # the run's split: val/
    assert main(["eval", "--checkpoint", str(run), "--split", "holdout", "--interpolation", "nearest"]) == 0
    assert "(6 imagefolder val images at 16 px)" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run), "--crop-pct", "1.5"]) == 2
    assert "crop_pct (--crop-pct) must be a number in (0, 1]" in capsys.readouterr().err
