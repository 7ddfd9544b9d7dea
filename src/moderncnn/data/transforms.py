"""Train / eval transforms on uint8 image tensors, with RandAugment whose magnitude can change between epochs.

RandAugment (Cubuk et al., NeurIPS 2020) picks ``num_ops`` operations uniformly at random and applies each with
a shared magnitude. EfficientNetV2's progressive learning (Tan & Le, ICML 2021, §4) raises that magnitude from
5 to 10-25 over training, so the magnitude here is a mutable attribute and is not capped at 10.

**Magnitude scale.** We use TensorFlow's scale (``google/automl/efficientnetv2/autoaugment.py``): an op's
strength is ``magnitude / 10`` (TF's ``_MAX_LEVEL = 10``) times the op's range below, and magnitudes above 10
extrapolate linearly, as in TF, so the official values 5-20 (paper: up to 25) mean what they meant there.
Magnitudes are clipped to ``[0, max_magnitude]`` (default 30). At strength ``s = magnitude / 10``:

=============== =============================================================================================
rotate          ``30 * s`` degrees, random sign (TF: 30 at level 10)
shear_x/y       shear factor ``0.3 * s``, random sign
translate_x/y   ``0.45 * s`` of the image side (TF: 100 px at 224 = 0.446), random sign, at most the side
color, contrast, brightness, sharpness  factor ``1 + 0.9 * s`` with random sign, floored at 0
posterize       keep ``8 - int(4 * s)`` bits, at least 1
solarize        invert pixels above ``256 - 256 * s``
solarize_add    add ``110 * s`` to pixels below 128
cutout          grey square of side ``0.36 * s`` of the shorter side (TF: 80 px at 224)
autocontrast, equalize, invert   no magnitude
=============== =============================================================================================

Deviations from TF, chosen so that a larger magnitude always means a stronger distortion (which is what the
progressive schedule assumes): posterize, solarize and the four "enhance" ops use the increasing variants
(timm's ``inc1``); TF's versions get *weaker* past a point (posterize at level 20 keeps all 8 bits). Each
selected op is applied (TF: probability 1; timm's default is 0.5 - set ``prob``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "RandAugment",
    "TrainTransform",
    "build_eval_transform",
    "build_train_transform",
    "resolve_mean_std",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_STD = {
    # computed over the 60,000 training images (tests/test_data.py recomputes them)
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
_FILL = 128  # TF RandAugment's replace value


def resolve_mean_std(dataset_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units of a dataset's source images (1 value for grayscale data).
    Unknown names (e.g. a custom image folder) get the ImageNet statistics."""
    key = dataset_name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    return _MEAN_STD.get(key, (IMAGENET_MEAN, IMAGENET_STD))


# ---------------------------------------------------------------------------------------------------------------
# RandAugment

def _signed(value: float) -> float:
    return -value if torch.rand(()) < 0.5 else value


def _enhance_factor(s: float) -> float:
    return max(0.0, 1.0 + _signed(0.9 * s))


def _solarize(img: torch.Tensor, s: float) -> torch.Tensor:
    threshold = 256.0 - 256.0 * s  # pixels >= threshold are inverted; above 255 nothing is
    return img if threshold > 255 else F.solarize(img, max(0.0, threshold))


def _solarize_add(img: torch.Tensor, s: float) -> torch.Tensor:
    added = (img.to(torch.int16) + int(110 * s)).clamp_(0, 255).to(torch.uint8)
    return torch.where(img < 128, added, img)


def _cutout(img: torch.Tensor, s: float) -> torch.Tensor:
    h, w = img.shape[-2:]
    half = int(0.36 * s * min(h, w)) // 2
    if half <= 0:
        return img
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    out = img.clone()
    out[..., max(0, cy - half): cy + half, max(0, cx - half): cx + half] = _FILL
    return out


def _shear(img: torch.Tensor, s: float, axis: int) -> torch.Tensor:
    degrees = math.degrees(math.atan(_signed(0.3 * s)))  # torchvision takes the shear angle, TF the factor
    shear = [degrees, 0.0] if axis == 0 else [0.0, degrees]
    return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=[_FILL] * img.shape[0])


def _translate(img: torch.Tensor, s: float, axis: int) -> torch.Tensor:
    size = img.shape[-1] if axis == 0 else img.shape[-2]
    pixels = int(round(_signed(min(0.45 * s, 1.0)) * size))
    shift = [pixels, 0] if axis == 0 else [0, pixels]
    return F.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], fill=[_FILL] * img.shape[0])


# name -> op(img uint8 (C, H, W), strength s = magnitude / 10) -> img
_OPS = {
    "autocontrast": lambda img, s: F.autocontrast(img),
    "equalize": lambda img, s: F.equalize(img),
    "invert": lambda img, s: F.invert(img),
    "rotate": lambda img, s: F.rotate(img, _signed(30.0 * s), fill=[_FILL] * img.shape[0]),
    "posterize": lambda img, s: F.posterize(img, max(1, 8 - int(4 * s))),
    "solarize": lambda img, s: _solarize(img, s),
    "solarize_add": _solarize_add,
    "color": lambda img, s: F.adjust_saturation(img, _enhance_factor(s)),
    "contrast": lambda img, s: F.adjust_contrast(img, _enhance_factor(s)),
    "brightness": lambda img, s: F.adjust_brightness(img, _enhance_factor(s)),
    "sharpness": lambda img, s: F.adjust_sharpness(img, _enhance_factor(s)),
    "shear_x": lambda img, s: _shear(img, s, 0),
    "shear_y": lambda img, s: _shear(img, s, 1),
    "translate_x": lambda img, s: _translate(img, s, 0),
    "translate_y": lambda img, s: _translate(img, s, 1),
    "cutout": _cutout,
}


class RandAugment(nn.Module):
    """RandAugment on uint8 ``(C, H, W)`` tensors, TF magnitude scale (see the module docstring).

    Args:
        num_ops: operations applied per image (EfficientNetV2: 2).
        magnitude: shared magnitude, 0..``max_magnitude``; mutable between epochs (``ra.magnitude = 15``).
        magnitude_std: per-op Gaussian noise on the magnitude (timm's ``mstd``); ``float('inf')`` samples it
            uniformly in ``[0, magnitude]``.
        max_magnitude: clip for the (noisy) magnitude.
        prob: probability of applying each selected op (TF 1.0, timm 0.5).
        ops: subset of op names (default: all 16 of TF's RandAugment list).
    """

    OPS: tuple[str, ...] = tuple(_OPS)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.0,
        max_magnitude: float = 30.0,
        prob: float = 1.0,
        ops: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        ops = tuple(ops) if ops is not None else self.OPS
        unknown = [o for o in ops if o not in _OPS]
        if unknown:
            raise ValueError(f"Unknown RandAugment ops {unknown}; valid: {', '.join(_OPS)}")
        if magnitude < 0 or magnitude > max_magnitude:
            raise ValueError(f"RandAugment magnitude must be in [0, {max_magnitude}], got {magnitude}")
        self.num_ops = num_ops
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.max_magnitude = float(max_magnitude)
        self.prob = prob
        self.ops = ops

    def _sample_magnitude(self) -> float:
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = float(torch.rand(())) * m
        elif self.magnitude_std > 0:
            m = m + float(torch.randn(())) * self.magnitude_std
        return min(max(m, 0.0), self.max_magnitude)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype != torch.uint8:
            raise TypeError(f"RandAugment expects a uint8 (C, H, W) image tensor, got {img.dtype}")
        for _ in range(self.num_ops):
            name = self.ops[int(torch.randint(len(self.ops), ()))]
            if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
                continue
            img = _OPS[name](img, self._sample_magnitude() / 10.0)
        return img

    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std}, "
                f"max_magnitude={self.max_magnitude}, prob={self.prob}")


# ---------------------------------------------------------------------------------------------------------------
# Shared tail: channels, float, normalize

def _expand_stats(values: Sequence[float], chans: int, what: str) -> torch.Tensor:
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return torch.tensor(values).view(-1, 1, 1)
    if len(values) == 1:
        return torch.tensor(values * chans).view(-1, 1, 1)
    if chans == 1:  # RGB statistics, gray output: use their mean
        return torch.tensor([sum(values) / len(values)]).view(1, 1, 1)
    raise ValueError(f"{what} has {len(values)} values but the output has {chans} channels")


class _ToModelInput:
    """uint8 (source_chans, H, W) -> float (in_chans, H, W), normalized."""

    def __init__(self, in_chans: int, source_chans: int, mean: Sequence[float], std: Sequence[float]) -> None:
        if in_chans not in (1, 3) and in_chans != source_chans:
            raise ValueError(f"Cannot convert {source_chans}-channel images to in_chans={in_chans}; "
                             "supported: gray<->RGB or unchanged.")
        self.in_chans = in_chans
        self.source_chans = source_chans
        self.mean = _expand_stats(mean, in_chans, "mean")
        self.std = _expand_stats(std, in_chans, "std")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        if c != self.in_chans:
            if c == 1 and self.in_chans == 3:
                img = img.expand(3, -1, -1)
            elif c == 3 and self.in_chans == 1:
                img = F.rgb_to_grayscale(img)
            else:
                raise ValueError(f"Image has {c} channels; expected {self.source_chans} (or 1/3 for gray<->RGB)")
        x = img.float().div_(255.0)
        return x.sub_(self.mean).div_(self.std)


def _random_erase(x: torch.Tensor, scale: tuple[float, float] = (0.02, 1 / 3)) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020), timm's "pixel" mode: one box of per-pixel N(0, 1) noise in the
    normalized image, area ``scale`` of the image, aspect ratio in [0.3, 1/0.3]."""
    log_ratio = (math.log(0.3), math.log(1 / 0.3))
    _, h, w = x.shape
    area = h * w
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(*scale))
        ratio = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
        eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(torch.randint(h - eh + 1, ())), int(torch.randint(w - ew + 1, ()))
            x[:, top: top + eh, left: left + ew] = torch.randn(x.shape[0], eh, ew)
            return x
    return x


class TrainTransform:
    """Training transform: crop -> flip -> RandAugment -> float/normalize -> random erasing.

    ``img_size``, ``ra_magnitude`` (0 disables RandAugment) and ``re_prob`` are plain attributes the trainer
    may change between epochs or progressive stages (with DataLoader workers, re-create the workers, i.e.
    ``persistent_workers=False``, for a change to reach them).

    Crop modes: ``"rrc"`` random-resized-crop (Inception-style, ``scale`` of the area and ``ratio`` of the
    aspect); ``"pad"`` resizes to ``img_size``, pads ``pad`` pixels (default ``img_size // 8``) and takes a
    random ``img_size`` crop (the CIFAR recipe; right for 28-32 px images, where a (0.08, 1) crop erases the
    object).
    """

    def __init__(
        self,
        img_size: int,
        *,
        in_chans: int,
        source_chans: int,
        crop: str = "rrc",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        pad: int | None = None,
        hflip: float = 0.5,
        ra_magnitude: float = 0.0,
        ra_num_ops: int = 2,
        ra_magnitude_std: float = 0.0,
        re_prob: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if crop not in ("rrc", "pad"):
            raise ValueError(f"crop must be 'rrc' or 'pad', got {crop!r}")
        self.img_size = int(img_size)
        self.crop = crop
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.pad = pad
        self.hflip = hflip
        self.randaugment = RandAugment(ra_num_ops, magnitude=0.0, magnitude_std=ra_magnitude_std)
        self.ra_magnitude = ra_magnitude
        self.re_prob = re_prob
        self.to_input = _ToModelInput(in_chans, source_chans, mean, std)

    @property
    def ra_magnitude(self) -> float:
        return self.randaugment.magnitude

    @ra_magnitude.setter
    def ra_magnitude(self, value: float) -> None:
        if value < 0 or value > self.randaugment.max_magnitude:
            raise ValueError(f"ra_magnitude must be in [0, {self.randaugment.max_magnitude}], got {value}")
        self.randaugment.magnitude = float(value)

    def _random_resized_crop(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*self.scale))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))
                break
        else:  # fall back to a central crop at the nearest allowed aspect
            in_ratio = w / h
            if in_ratio < self.ratio[0]:
                cw, ch = w, int(round(w / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                ch, cw = h, int(round(h * self.ratio[1]))
            else:
                cw, ch = w, h
            top, left = (h - ch) // 2, (w - cw) // 2
        return F.resized_crop(img, top, left, ch, cw, [self.img_size, self.img_size], antialias=True)

    def _pad_crop(self, img: torch.Tensor) -> torch.Tensor:
        size = self.img_size
        if tuple(img.shape[-2:]) != (size, size):
            img = F.resize(img, [size, size], antialias=True)
        pad = self.pad if self.pad is not None else max(1, size // 8)
        img = F.pad(img, [pad, pad, pad, pad], fill=0)
        top, left = int(torch.randint(2 * pad + 1, ())), int(torch.randint(2 * pad + 1, ()))
        return img[..., top: top + size, left: left + size]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = self._random_resized_crop(img) if self.crop == "rrc" else self._pad_crop(img)
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            img = F.horizontal_flip(img)
        if self.ra_magnitude > 0:
            img = self.randaugment(img)
        x = self.to_input(img)
        if self.re_prob > 0 and float(torch.rand(())) < self.re_prob:
            x = _random_erase(x)
        return x

    def __repr__(self) -> str:
        return (f"TrainTransform(img_size={self.img_size}, crop={self.crop!r}, scale={self.scale}, "
                f"hflip={self.hflip}, ra_magnitude={self.ra_magnitude}, ra_num_ops={self.randaugment.num_ops}, "
                f"re_prob={self.re_prob}, in_chans={self.to_input.in_chans})")


class EvalTransform:
    """Resize the shorter side to ``img_size / crop_pct``, center-crop ``img_size``, float/normalize."""

    def __init__(self, img_size: int, *, in_chans: int, source_chans: int, crop_pct: float = 0.875,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.img_size = int(img_size)
        self.crop_pct = crop_pct
        self.to_input = _ToModelInput(in_chans, source_chans, mean, std)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        size = self.img_size
        if self.crop_pct >= 1.0:
            img = F.resize(img, [size, size], antialias=True)
        else:
            img = F.resize(img, int(math.floor(size / self.crop_pct)), antialias=True)  # shorter side
            img = F.center_crop(img, [size, size])
        return self.to_input(img)

    def __repr__(self) -> str:
        return f"EvalTransform(img_size={self.img_size}, crop_pct={self.crop_pct}, in_chans={self.to_input.in_chans})"


def build_train_transform(
    img_size: int,
    *,
    in_chans: int,
    source_chans: int,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    ra_magnitude: float = 0.0,
    ra_num_ops: int = 2,
    re_prob: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop: str = "rrc",
    pad: int | None = None,
    ra_magnitude_std: float = 0.0,
) -> TrainTransform:
    """A :class:`TrainTransform`. ``mean``/``std`` may have 1 value or one per channel (see
    :func:`resolve_mean_std`)."""
    return TrainTransform(
        img_size, in_chans=in_chans, source_chans=source_chans, crop=crop, scale=scale, pad=pad, hflip=hflip,
        ra_magnitude=ra_magnitude, ra_num_ops=ra_num_ops, ra_magnitude_std=ra_magnitude_std, re_prob=re_prob,
        mean=mean, std=std,
    )


def build_eval_transform(
    img_size: int,
    *,
    in_chans: int,
    source_chans: int,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> EvalTransform:
    """An :class:`EvalTransform` (use ``crop_pct=1.0`` for small images such as Fashion-MNIST)."""
    return EvalTransform(img_size, in_chans=in_chans, source_chans=source_chans, crop_pct=crop_pct,
                         mean=mean, std=std)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """A well-mixed 64-bit hash of int64 keys (SplitMix64; torch's int64 arithmetic wraps like uint64)."""
    x = x + -7046029254386353131  # 0x9E3779B97F4A7C15
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def sample_uniform(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """A uniform [0, 1) draw per int64 key, independent across ``stream`` numbers; a pure function of both."""
    bits = (_splitmix64(keys * 8 + stream) >> 11) & ((1 << 53) - 1)
    return bits.double() / float(1 << 53)


class BatchPadCropFlip:
    """Pad-and-random-crop plus horizontal flip for a whole uint8 batch at once, then float/normalize.

    The vectorized equivalent of ``TrainTransform(crop="pad")`` without RandAugment or erasing, for data
    already at ``img_size``: one gather instead of a Python call per image (on a 2-core CPU the per-sample
    transform cost about a fifth of a small model's step). Each image's crop and flip are a pure function of
    its int64 ``keys`` entry (the trainer derives it from seed, epoch and sample index), so a run resumes
    exactly and gives the same augmentation whatever the number of processes.
    """

    def __init__(self, img_size: int, *, in_chans: int, source_chans: int, pad: int | None = None, hflip: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.img_size = int(img_size)
        self.pad = pad if pad is not None else max(1, self.img_size // 8)
        self.hflip = hflip
        self.to_input = _ToModelInput(in_chans, source_chans, mean, std)

    def __call__(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        if (h, w) != (self.img_size, self.img_size):
            raise ValueError(f"BatchPadCropFlip expects {self.img_size}×{self.img_size} images, got {h}×{w}")
        p = self.pad
        padded = torch.nn.functional.pad(images, [p, p, p, p])
        keys = keys.to(torch.int64)
        top = (sample_uniform(keys, 0) * (2 * p + 1)).long()
        left = (sample_uniform(keys, 1) * (2 * p + 1)).long()
        flip = sample_uniform(keys, 2) < self.hflip
        rows = (top[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
        cols = left[:, None] + torch.arange(w)  # (N, W)
        cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, :]  # (N, 1, W), reversed when flipped
        out = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (N, H, W, C) -> NCHW
        if c != self.to_input.in_chans:
            if c != 1:
                raise ValueError(f"BatchPadCropFlip repeats gray images to {self.to_input.in_chans} channels; "
                                 f"got {c}-channel images")
            out = out.expand(-1, self.to_input.in_chans, -1, -1)
        x = out.float().div_(255.0)
        mean = self.to_input.mean.reshape(1, -1, 1, 1)
        std = self.to_input.std.reshape(1, -1, 1, 1)
        return x.sub_(mean).div_(std).contiguous()
