"""Datasets, transforms, RandAugment and mixup/cutmix on real Fashion-MNIST images and tiny PNG trees."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from moderncnn.data.datasets import DATASETS, FASHION_MNIST_DIR, load_dataset
from moderncnn.data.mixup import MixupCutmix, smooth_one_hot
from moderncnn.data.transforms import RandAugment, build_eval_transform, build_train_transform, resolve_mean_std
from moderncnn.errors import DataError

HAVE_FASHION = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file()
NO_FASHION = f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason=NO_FASHION)


@pytest.fixture(scope="module")
def fashion_train():
    if not HAVE_FASHION:
        pytest.skip(NO_FASHION)
    return load_dataset("fashion-mnist", split="train")


def write_png(img: torch.Tensor, path: str) -> None:
    """uint8 (C, H, W) -> PNG with PIL (lossless)."""
    array = img.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def _images(ds, n=32):
    return [ds[i][0] for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST


@needs_fashion
def test_fashion_mnist_loads_balanced(fashion_train):
    val = load_dataset("fashion-mnist", split="test")
    assert (len(fashion_train), len(val)) == (60000, 10000)
    assert fashion_train.num_classes == 10 and fashion_train.in_chans == 1 and fashion_train.image_size == 28
    assert fashion_train.classes[0] == "T-shirt/top" and fashion_train.classes[9] == "Ankle boot"
    image, label = fashion_train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and isinstance(label, int)
    assert torch.bincount(fashion_train.targets).tolist() == [6000] * 10
    assert torch.bincount(val.targets).tolist() == [1000] * 10
    # the published statistics in resolve_mean_std are those of the training images
    x = fashion_train.images.float() / 255
    (mean,), (std,) = resolve_mean_std("fashion-mnist")
    assert x.mean().item() == pytest.approx(mean, abs=1e-4) and x.std().item() == pytest.approx(std, abs=1e-4)


def test_fashion_mnist_missing_dir_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", data_dir=str(missing))
    assert str(missing) in str(err.value)


def test_cifar_missing_files_says_how_to_fix(tmp_path):
    pytest.importorskip("torchvision.datasets")
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar100")


def test_unknown_dataset_and_split():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet22k")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(DataError, match="split"):
        load_dataset("fashion-mnist", split="holdout")


# ----------------------------------------------------------------------------------------------------------------
# Image folders


def _write_tree(root: Path, classes=("cat", "dog"), per_class=2, size=(10, 12)):
    written = {}
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
                write_png(img, str(d / f"{i}.png"))
                written[(split, c, i)] = img
    return written


def test_imagefolder_reads_pixels_exactly(tmp_path):
    written = _write_tree(tmp_path)
    ds = load_dataset("imagefolder", data_dir=str(tmp_path), split="train")
    assert ds.classes == ("cat", "dog") and ds.num_classes == 2 and ds.in_chans == 3 and len(ds) == 4
    image, label = ds[2]
    assert label == 1 and torch.equal(image, written[("train", "dog", 0)])  # PNG is lossless
    val = load_dataset("imagefolder", data_dir=str(tmp_path), split="val")
    assert len(val) == 4 and torch.equal(val[1][0], written[("val", "cat", 1)])


def test_imagefolder_gray_png_becomes_rgb(tmp_path):
    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    gray = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    write_png(gray, str(d / "g.png"))
    image, _ = load_dataset("imagefolder", data_dir=str(tmp_path))[0]
    assert image.shape == (3, 8, 8) and all(torch.equal(image[c], gray[0]) for c in range(3))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        load_dataset("imagefolder", data_dir=str(tmp_path / "missing"))
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        load_dataset("imagefolder", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="val"):
        load_dataset("imagefolder", data_dir=str(tmp_path), split="val")
    bad = tmp_path / "train" / "empty_class" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = load_dataset("imagefolder", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="broken.png"):
        ds[0]


# ----------------------------------------------------------------------------------------------------------------
# Transforms


@needs_fashion
@pytest.mark.parametrize("crop", ["pad", "rrc"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_train_transform_size_channels_and_mutation(fashion_train, crop, in_chans):
    mean, std = resolve_mean_std("fashion-mnist")
    t = build_train_transform(32, in_chans=in_chans, source_chans=1, crop=crop, scale=(0.5, 1.0),
                              ra_magnitude=9, re_prob=0.5, mean=mean, std=std)
    x = t(fashion_train[0][0])
    assert x.dtype == torch.float32 and x.shape == (in_chans, 32, 32)
    t.img_size, t.ra_magnitude, t.re_prob = 24, 20.0, 0.0
    assert t.randaugment.magnitude == 20.0
    x = t(fashion_train[1][0])
    assert x.shape == (in_chans, 24, 24)
    if in_chans == 3:  # gray expanded to 3 identical channels (no erasing noise now)
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


@needs_fashion
def test_eval_transform_normalizes_to_zero_mean_unit_std(fashion_train):
    mean, std = resolve_mean_std("fashion-mnist")
    t = build_eval_transform(28, in_chans=3, source_chans=1, crop_pct=1.0, mean=mean, std=std)
    x = torch.stack([t(img) for img in _images(fashion_train, 2000)])
    assert x.shape == (2000, 3, 28, 28)
    assert x.mean().item() == pytest.approx(0.0, abs=0.03) and x.std().item() == pytest.approx(1.0, abs=0.03)
    # exact at native size: (v / 255 - mean) / std
    img = fashion_train[5][0]
    torch.testing.assert_close(t(img)[2], (img[0].float() / 255 - mean[0]) / std[0])
    t_crop = build_eval_transform(32, in_chans=1, source_chans=1, crop_pct=0.875, mean=mean, std=std)
    assert t_crop(img).shape == (1, 32, 32)


@needs_fashion
def test_randaugment_magnitude_changes_distortion(fashion_train):
    images = _images(fashion_train, 48)

    def mean_change(ra, seed=0):
        torch.manual_seed(seed)
        return sum((ra(img).float() - img.float()).abs().mean().item() for img in images) / len(images)

    # every op with a magnitude distorts more at 20 than at 5 (same seed: same ops, signs and positions)
    for op in ("rotate", "posterize", "solarize", "solarize_add", "contrast", "brightness", "sharpness",
               "shear_x", "shear_y", "translate_x", "translate_y", "cutout"):
        weak = mean_change(RandAugment(num_ops=1, magnitude=5, ops=[op]))
        strong = mean_change(RandAugment(num_ops=1, magnitude=20, ops=[op]))
        assert strong > weak, op
    ra = RandAugment(num_ops=2, magnitude=0)
    zero = mean_change(ra)
    ra.magnitude = 20.0  # mutable between epochs, above TF's nominal 10
    assert mean_change(ra) > zero + 5
    torch.manual_seed(3)
    a = ra(images[0])
    torch.manual_seed(3)
    assert torch.equal(a, ra(images[0]))  # reproducible under a seed
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)


def test_randaugment_magnitude_std():
    torch.manual_seed(0)
    ra = RandAugment(magnitude=10, magnitude_std=0.5)
    samples = torch.tensor([ra._sample_magnitude() for _ in range(4000)])
    assert samples.mean().item() == pytest.approx(10, abs=0.05) and samples.std().item() == pytest.approx(0.5, abs=0.05)
    ra.magnitude_std = float("inf")
    samples = torch.tensor([ra._sample_magnitude() for _ in range(4000)])
    assert 0 <= samples.min() and samples.max() <= 10 and samples.mean().item() == pytest.approx(5, abs=0.2)


# ----------------------------------------------------------------------------------------------------------------
# Mixup / CutMix / label smoothing


def test_smooth_one_hot_and_soft_target_ce_match_torch():
    y = torch.tensor([0, 3, 9, 3])
    t = smooth_one_hot(y, 10, 0.1)
    assert t[0, 0].item() == pytest.approx(0.91) and t[0, 1].item() == pytest.approx(0.01)
    logits = torch.randn(4, 10)
    loss = torch.nn.CrossEntropyLoss()(logits, t)  # the trainer's loss takes the probabilities as they are
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.1))
    with pytest.raises(ValueError, match="num_classes"):
        smooth_one_hot(y, 5)


def test_mixup_alpha_zero_is_identity():
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    mix = MixupCutmix(0.0, 0.0, label_smoothing=0.1, num_classes=6)
    xm, t = mix(x, y)
    assert torch.equal(xm, x) and torch.equal(t, smooth_one_hot(y, 6, 0.1))


def test_mixup_mixes_images_and_targets_with_same_lambda():
    n = 6
    x, y = torch.randn(n, 3, 8, 8), torch.arange(n)
    xm, t = MixupCutmix(mixup_alpha=0.4, label_smoothing=0.0, num_classes=n)(x, y)
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    lam = t[0, 0].item()
    assert 0 < lam < 1
    for i in range(n):
        assert t[i, i].item() == pytest.approx(lam) and t[i, n - 1 - i].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.flip(0))


def test_cutmix_area_equals_target_weight():
    n = 4
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    y = torch.arange(n)
    mix = MixupCutmix(cutmix_alpha=1.0, label_smoothing=0.1, num_classes=n)
    for seed in range(5):
        torch.manual_seed(seed)
        xm, t = mix(x, y)
        torch.testing.assert_close(t.sum(1), torch.ones(n))
        pasted = (xm[0] == n - 1).float().mean().item()  # fraction of image 0 covered by image n-1
        on, off = 1 - 0.1 + 0.1 / n, 0.1 / n
        lam = (t[0, 0].item() - off) / (on - off)
        assert pasted == pytest.approx(1 - lam, abs=1e-6)


def test_split_batch_uses_both_methods():
    n = 8
    x, y = torch.randn(n, 3, 16, 16), torch.arange(n)
    torch.manual_seed(0)
    xm, t = MixupCutmix(0.5, 1.0, label_smoothing=0.0, num_classes=n, split_batch=True)(x, y)
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    first, second = xm[: n // 2], xm[n // 2:]
    lam = t[0, 0].item()
    torch.testing.assert_close(first, lam * x[: n // 2] + (1 - lam) * x[: n // 2].flip(0))  # mixup half
    src = x[n // 2:]
    # cutmix half: every pixel comes from the image itself or its mirror partner
    assert torch.all((second == src) | (second == src.flip(0)))


def test_batch_pad_crop_flip_equals_cropping_each_image_by_hand():
    from moderncnn.data.transforms import BatchPadCropFlip, sample_uniform

    t = BatchPadCropFlip(6, in_chans=3, source_chans=1, pad=2, hflip=0.5, mean=[0.5], std=[0.25])
    x = torch.randint(0, 256, (16, 1, 6, 6), dtype=torch.uint8)
    keys = torch.arange(16) + 12345
    out = t(x, keys)
    top, left = (sample_uniform(keys, 0) * 5).long(), (sample_uniform(keys, 1) * 5).long()
    flip = sample_uniform(keys, 2) < 0.5
    assert 0 < int(flip.sum()) < 16 and len(set(top.tolist())) > 1, "both flips and several offsets exercised"
    padded = torch.nn.functional.pad(x, [2, 2, 2, 2]).float() / 255
    for i in range(16):
        ref = padded[i, :, top[i]: top[i] + 6, left[i]: left[i] + 6]
        ref = (ref.flip(-1) if flip[i] else ref).expand(3, -1, -1)
        torch.testing.assert_close(out[i], (ref - 0.5) / 0.25)
    # a pure function of the key: the same image under the same key augments identically in any batch
    torch.testing.assert_close(t(x[3:4], keys[3:4]), out[3:4])
    with pytest.raises(ValueError, match="6×6"):
        t(torch.zeros(1, 1, 5, 5, dtype=torch.uint8), keys[:1])


def test_sample_uniform_is_uniform_and_keyed():
    from moderncnn.data.transforms import sample_uniform

    u = sample_uniform(torch.arange(100_000), 0)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    hist = torch.histc(u.float(), bins=10, min=0, max=1)
    assert float(hist.min()) > 9_500 and float(hist.max()) < 10_500
    assert not torch.equal(sample_uniform(torch.arange(10), 0), sample_uniform(torch.arange(10), 1))


# ----------------------------------------------------------------------------------------------------------------
# timm's RandAugment strings: every section honoured (checked against timm's own parser) or rejected

TIMM_NAMES = {"AutoContrast": "autocontrast", "Equalize": "equalize", "Invert": "invert", "Rotate": "rotate",
              "Posterize": "posterize", "Solarize": "solarize", "SolarizeAdd": "solarize_add", "Color": "color",
              "Contrast": "contrast", "Brightness": "brightness", "Sharpness": "sharpness", "ShearX": "shear_x",
              "ShearY": "shear_y", "TranslateXRel": "translate_x", "TranslateYRel": "translate_y"}


@pytest.mark.parametrize("aa", ["rand-m9-inc1-mmax12-p0.5", "rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd0.5",
                                "rand-n1", "rand-m20-n2-mmax20", "rand-m7-mstd101-p0.25", "rand-m5-inc0-p1"])
def test_rand_augment_string_reads_like_timm(aa):
    from timm.data.auto_augment import rand_augment_transform

    from moderncnn.data.transforms import rand_augment

    ours, ref = rand_augment(aa), rand_augment_transform(aa, {})
    assert ours.num_ops == ref.num_layers
    assert list(ours.ops) == [TIMM_NAMES[o.name.replace("Increasing", "")] for o in ref.ops]
    op = ref.ops[0]
    assert (ours.magnitude, ours.prob, ours.magnitude_std) == (op.magnitude, op.prob, op.magnitude_std)
    assert ours.max_magnitude == (op.magnitude_max or 10)
    assert ours.increasing == any("Increasing" in o.name for o in ref.ops)


def test_rand_augment_string_rejects_what_it_cannot_honour():
    from moderncnn.data.transforms import rand_augment
    from moderncnn.errors import ConfigError

    for bad, why in [("rand-tweights", "section 'tweights'"), ("rand-w0", "section 'w0'"), ("augmix-m5", "only Rand"),
                     ("rand-m9-x1", "section 'x1'"), ("rand-inc2", "inc must be 0 or 1"), ("rand-p1.5", "p in"),
                     ("rand-m15", "above the clip mmax 10")]:
        with pytest.raises(ConfigError, match=why):
            rand_augment(bad)


def test_rand_augment_probability_and_variants_change_the_pixels():
    from timm.data.auto_augment import LEVEL_TO_ARG

    from moderncnn.data.transforms import _OPS, _enhance_factor, rand_augment

    img = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    torch.manual_seed(0)
    assert all(torch.equal(rand_augment("rand-m9-p0")(img), img) for _ in range(20))  # p0: no op applies
    assert any(not torch.equal(rand_augment("rand-m9-p1")(img), img) for _ in range(20))
    # the magnitude -> op argument maps of timm's original (inc0) and increasing (inc1) variants
    for m in (0, 3, 5, 9, 10):
        s = m / 10
        bits = {inc: LEVEL_TO_ARG["PosterizeIncreasing" if inc else "Posterize"](m, {})[0] for inc in (0, 1)}
        for inc in (0, 1):
            expect = img if bits[inc] >= 8 else (img >> (8 - bits[inc])) << (8 - bits[inc])
            assert torch.equal(_OPS["posterize"](img, s, bool(inc)), expect), (m, inc)
            thresh = LEVEL_TO_ARG["SolarizeIncreasing" if inc else "Solarize"](m, {})[0]
            assert torch.equal(_OPS["solarize"](img, s, bool(inc)), torch.where(img.int() >= thresh, 255 - img, img))
        assert _enhance_factor(s, False) == pytest.approx(LEVEL_TO_ARG["Color"](m, {})[0])
