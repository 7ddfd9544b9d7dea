"""Train / eval transforms on uint8 image tensors, with RandAugment whose magnitude can change between epochs.

Cropping, flipping, random erasing and the eval resize/centre-crop are torchvision's ``transforms.v2``; only
RandAugment is ours (see :class:`RandAugment` for what v2's cannot do).

RandAugment (Cubuk et al., NeurIPS 2020) picks ``num_ops`` operations uniformly at random and applies each with
a shared magnitude. EfficientNetV2's progressive learning (Tan & Le, ICML 2021, §4) raises that magnitude from
5 to 10-25 over training, so the magnitude here is a mutable attribute and is not capped at 10.

**Magnitude scale.** TensorFlow's (``google/automl/efficientnetv2/autoaugment.py``), which timm's follows: an
op's strength is ``magnitude / 10`` (``_MAX_LEVEL = 10``) times the op's range below, and magnitudes above 10
extrapolate linearly, so the official values 5-20 (paper: up to 25) mean what they meant there. The class
clips magnitudes to ``[0, max_magnitude]`` (default 30); a timm string (:func:`rand_augment`) clips at its
``mmax`` (timm's default: 10). At strength ``s = magnitude / 10``:

=============== =============================================================================================
rotate          ``30 * s`` degrees, random sign
shear_x/y       shear factor ``0.3 * s``, random sign
translate_x/y   ``0.45 * s`` of the image side, random sign, at most the side
color, contrast, brightness, sharpness  increasing: factor ``1 + 0.9 * s`` with random sign, floored at 0.1;
                original: factor ``0.1 + 1.8 * s``
posterize       increasing: keep ``4 - int(4 * s)`` bits (at least 0); original: keep ``int(4 * s)`` (at most 8)
solarize        increasing: invert pixels from ``256 - int(256 * s)``; original: from ``int(256 * s)``
solarize_add    add ``110 * s`` to pixels below 128
cutout          grey square of side ``0.36 * s`` of the shorter side (TF's list; timm's rand list omits it)
autocontrast, equalize, invert   no magnitude
=============== =============================================================================================

The "increasing" variants (timm's ``inc1``, the default of the class) make a larger magnitude always a
stronger distortion, which the progressive schedule assumes; the "original" ones (``inc0``, timm's
default for a string) get weaker past a point.

AutoAugment (Cubuk et al., CVPR 2019) applies one of a fixed list of sub-policies, each two ops with their own
probability and magnitude, through the same ops (see :class:`AutoAugment`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = [
    "AA_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "AutoAugment",
    "EvalTransform",
    "RandAugment",
    "TrainTransform",
    "build_eval_transform",
    "build_train_transform",
    "parse_aa",
    "rand_augment",
    "resolve_data_config",
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


def _enhance_factor(s: float, increasing: bool) -> float:
    return max(0.1, 1.0 + _signed(0.9 * s)) if increasing else 0.1 + 1.8 * s


def _posterize(img: torch.Tensor, s: float, increasing: bool) -> torch.Tensor:
    bits = 4 - int(4 * s) if increasing else int(4 * s)
    return img if bits >= 8 else F.posterize(img, max(0, bits))


def _posterize_paper(img: torch.Tensor, s: float, increasing: bool) -> torch.Tensor:
    # the AutoAugment paper's range (Cubuk et al., CVPR 2019, its list of operations: posterize to 4..8
    # bits), timm's PosterizeOriginal: keep int(4 s) + 4 bits
    bits = int(4 * s) + 4
    return img if bits >= 8 else F.posterize(img, bits)


def _solarize(img: torch.Tensor, s: float, increasing: bool) -> torch.Tensor:
    level = int(256 * s)  # timm's level -> threshold, truncated
    threshold = 256 - level if increasing else level  # pixels >= threshold are inverted
    return img if threshold > 255 else F.solarize(img, max(0, threshold))


def _solarize_add(img: torch.Tensor, s: float, increasing: bool) -> torch.Tensor:
    added = (img.to(torch.int16) + int(110 * s)).clamp_(0, 255).to(torch.uint8)
    return torch.where(img < 128, added, img)


def _cutout(img: torch.Tensor, s: float, increasing: bool) -> torch.Tensor:
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


# name -> op(img uint8 (C, H, W), strength s = magnitude / 10, increasing variant) -> img
_OPS = {
    "autocontrast": lambda img, s, inc: F.autocontrast(img),
    "equalize": lambda img, s, inc: F.equalize(img),
    "invert": lambda img, s, inc: F.invert(img),
    "rotate": lambda img, s, inc: F.rotate(img, _signed(30.0 * s), fill=[_FILL] * img.shape[0]),
    "posterize": _posterize,
    "solarize": _solarize,
    "solarize_add": _solarize_add,
    "color": lambda img, s, inc: F.adjust_saturation(img, _enhance_factor(s, inc)),
    "contrast": lambda img, s, inc: F.adjust_contrast(img, _enhance_factor(s, inc)),
    "brightness": lambda img, s, inc: F.adjust_brightness(img, _enhance_factor(s, inc)),
    "sharpness": lambda img, s, inc: F.adjust_sharpness(img, _enhance_factor(s, inc)),
    "shear_x": lambda img, s, inc: _shear(img, s, 0),
    "shear_y": lambda img, s, inc: _shear(img, s, 1),
    "translate_x": lambda img, s, inc: _translate(img, s, 0),
    "translate_y": lambda img, s, inc: _translate(img, s, 1),
    "cutout": _cutout,
}
TIMM_OPS = tuple(op for op in _OPS if op != "cutout")  # timm's rand list: TF's without cutout
_OPS["posterize_paper"] = _posterize_paper  # AutoAugment's 'original' policy only (not drawn by RandAugment)


class RandAugment(nn.Module):
    """RandAugment on uint8 ``(C, H, W)`` tensors, TF magnitude scale (see the module docstring).

    Ours rather than ``torchvision.transforms.v2.RandAugment`` because v2's cannot do what training here
    needs: its magnitude is an integer bin index into fixed ranges (``num_magnitude_bins``, at most the top
    bin), not TF's ``magnitude / 10`` scale extrapolating past 10 that EfficientNetV2's progressive schedule
    (5 -> 20) is written in; it has no per-op magnitude noise (timm's ``mstd``), no per-op probability
    (timm's ``p``), no increasing/original variants (timm's ``inc``), and no solarize_add or cutout.

    Args:
        num_ops: operations applied per image (EfficientNetV2: 2).
        magnitude: shared magnitude, 0..``max_magnitude``; mutable between epochs (``ra.magnitude = 15``).
        magnitude_std: per-op Gaussian noise on the magnitude (timm's ``mstd``); ``float('inf')`` samples it
            uniformly in ``[0, magnitude]``.
        max_magnitude: clip for the (noisy) magnitude (timm's ``mmax``).
        prob: probability of applying each selected op (timm's ``p``; TF 1.0 here, timm 0.5).
        ops: subset of op names (default: all 16 of TF's RandAugment list).
        increasing: the op variants whose distortion grows with the magnitude (timm's ``inc1``).
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
        increasing: bool = True,
    ) -> None:
        super().__init__()
        ops = tuple(ops) if ops is not None else self.OPS
        unknown = [o for o in ops if o not in _OPS]
        if unknown:
            raise ValueError(f"Unknown RandAugment ops {unknown}; valid: {', '.join(_OPS)}")
        if magnitude < 0 or magnitude > max_magnitude:
            raise ValueError(f"RandAugment magnitude must be in [0, {max_magnitude}], got {magnitude}")
        if not 0 <= prob <= 1:
            raise ValueError(f"RandAugment prob must be in [0, 1], got {prob}")
        self.num_ops = num_ops
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.max_magnitude = float(max_magnitude)
        self.prob = prob
        self.ops = ops
        self.increasing = increasing

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
            img = _OPS[name](img, self._sample_magnitude() / 10.0, self.increasing)
        return img

    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std}, "
                f"max_magnitude={self.max_magnitude}, prob={self.prob}, increasing={self.increasing}")


def rand_augment(aa: str) -> RandAugment:
    """timm's RandAugment string (``rand-m9-n2-mstd0.5-inc1-mmax12-p0.5``) as timm reads it: ``m`` magnitude
    (default 10), ``n`` ops per image (2), ``p`` probability of each op (0.5), ``mstd`` magnitude noise (above
    100: uniform in [0, m]), ``mmax`` magnitude clip (10), ``inc`` increasing variants (0), and timm's list of
    15 ops. Its ``t`` (op set by name) section, anything else, and an ``m`` above ``mmax`` (which timm silently
    clips) are errors."""
    parts = aa.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"--aa {aa!r}: only RandAugment (written like timm: 'rand-m9-n2-mstd0.5') and the "
                          f"AutoAugment policies {', '.join(AA_POLICIES)} are supported")
    values = {"m": 10.0, "n": 2.0, "p": 0.5, "mstd": 0.0, "mmax": 10.0, "inc": 0.0}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)([0-9]+(?:\.[0-9]*)?)", part)
        if not match:
            raise ConfigError(f"--aa {aa!r}: cannot read section {part!r}; supported sections (timm's): m<magnitude>, "
                              "n<ops>, p<probability>, mstd<std>, mmax<clip>, inc<0|1> (timm's t<op set> is not)")
        values[match.group(1)] = float(match.group(2))
    if values["inc"] not in (0, 1) or values["n"] != int(values["n"]) or not 0 <= values["p"] <= 1:
        raise ConfigError(f"--aa {aa!r}: inc must be 0 or 1, n a whole number, p in [0, 1]")
    if values["m"] > values["mmax"]:
        raise ConfigError(f"--aa {aa!r}: magnitude {values['m']:g} is above the clip mmax {values['mmax']:g} (timm's "
                          f"default 10), where timm would silently use {values['mmax']:g}; add -mmax{values['m']:g} "
                          "or lower m")
    mstd = float("inf") if values["mstd"] > 100 else values["mstd"]
    return RandAugment(int(values["n"]), magnitude=values["m"], magnitude_std=mstd,
                       max_magnitude=values["mmax"], prob=values["p"], ops=TIMM_OPS, increasing=values["inc"] == 1)


# ---------------------------------------------------------------------------------------------------------------
# AutoAugment

# AutoAugment sub-policies as (op, probability, magnitude 0-10) pairs, op names in timm's spelling (TF's, with
# timm's posterize variants). 'original': the ImageNet policy of the AutoAugment paper (Cubuk et al., CVPR 2019,
# appendix). 'v0': the ImageNet policy of TensorFlow's EfficientNet code (tpu/models/official/
# efficientnet/autoaugment.py, policy_v0), which timm also calls v0. Their 'r' forms ('v0r', 'originalr') swap
# posterize for the variant whose bits discarded grow with the magnitude (TF research code), as timm does.
_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)), (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)), (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)), (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)), (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)), (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)), (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)), (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)), (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)), (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)), (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)), (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),  # keeps 0 bits: a black image, as in TF's code
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)), (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
_ORIGINAL = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)), (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)), (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)), (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)), (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def _swap_posterize(policy: tuple, old: str) -> tuple:
    return tuple(tuple(("PosterizeIncreasing", p, m) if op == old else (op, p, m) for op, p, m in sub)
                 for sub in policy)


AA_POLICIES: dict[str, tuple] = {
    "v0": _V0, "v0r": _swap_posterize(_V0, "Posterize"),
    "original": _ORIGINAL, "originalr": _swap_posterize(_ORIGINAL, "PosterizeOriginal"),
}
# timm/TF op name -> (our op, increasing variant); the plain enhance/solarize/posterize names are TF's
# "original" level mappings (factor 0.1 + 1.8 s, threshold 256 s, keep 4 s bits)
_AA_OPS = {
    "AutoContrast": ("autocontrast", False), "Equalize": ("equalize", False), "Invert": ("invert", False),
    "Rotate": ("rotate", False), "ShearX": ("shear_x", False), "ShearY": ("shear_y", False),
    "TranslateXRel": ("translate_x", False), "TranslateYRel": ("translate_y", False),
    "Color": ("color", False), "Contrast": ("contrast", False), "Brightness": ("brightness", False),
    "Sharpness": ("sharpness", False), "Solarize": ("solarize", False), "SolarizeAdd": ("solarize_add", False),
    "Posterize": ("posterize", False), "PosterizeIncreasing": ("posterize", True),
    "PosterizeOriginal": ("posterize_paper", False),
}


class AutoAugment(nn.Module):
    """AutoAugment on uint8 ``(C, H, W)`` tensors: one sub-policy drawn uniformly per image, each of its ops
    applied with its probability at its magnitude (TF's ``magnitude / 10`` scale of the module docstring).
    ``magnitude_std`` adds Gaussian noise to each op's magnitude, clipped to [0, 10] (timm's ``mstd``;
    ``inf``: uniform in [0, magnitude]). Policies: :data:`AA_POLICIES`."""

    def __init__(self, policy: str = "v0", magnitude_std: float = 0.0) -> None:
        super().__init__()
        if policy not in AA_POLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}; valid: {', '.join(AA_POLICIES)}")
        self.policy_name = policy
        self.policy = AA_POLICIES[policy]
        self.magnitude_std = float(magnitude_std)

    def _magnitude(self, m: float) -> float:
        if self.magnitude_std == float("inf"):
            m = float(torch.rand(())) * m
        elif self.magnitude_std > 0:
            m = m + float(torch.randn(())) * self.magnitude_std
        return min(max(m, 0.0), 10.0)

    def forward(self, img: Any) -> Any:
        """A uint8 ``(C, H, W)`` tensor, or a PIL image (returned as a PIL image of the same mode)."""
        pil_mode = getattr(img, "mode", None) if not isinstance(img, torch.Tensor) else None
        if pil_mode is not None:
            img = F.pil_to_tensor(img.convert("RGB") if pil_mode not in ("RGB", "L") else img)
        if img.dtype != torch.uint8:
            raise TypeError(f"AutoAugment expects a uint8 (C, H, W) image tensor or a PIL image, got {img.dtype}")
        for op, prob, magnitude in self.policy[int(torch.randint(len(self.policy), ()))]:
            if float(torch.rand(())) >= prob:
                continue
            name, increasing = _AA_OPS[op]
            img = _OPS[name](img, self._magnitude(magnitude) / 10.0, increasing)
        return F.to_pil_image(img) if pil_mode is not None else img

    def extra_repr(self) -> str:
        return f"policy={self.policy_name!r}, magnitude_std={self.magnitude_std}"


def auto_augment(aa: str) -> AutoAugment:
    """timm's AutoAugment string: a policy name (``v0``, ``v0r``, ``original``, ``originalr``) and an optional
    ``mstd<std>`` section (above 100: uniform magnitudes); anything else is an error."""
    policy, *sections = aa.split("-")
    if policy not in AA_POLICIES:
        raise ConfigError(f"--aa {aa!r}: unknown AutoAugment policy {policy!r}; valid: {', '.join(AA_POLICIES)}, "
                          "or RandAugment as 'rand-m9-n2-mstd0.5'")
    mstd = 0.0
    for part in sections:
        match = re.fullmatch(r"mstd([0-9]+(?:\.[0-9]*)?)", part)
        if not match:
            raise ConfigError(f"--aa {aa!r}: cannot read section {part!r}; AutoAugment takes mstd<std> only")
        mstd = float(match.group(1))
    return AutoAugment(policy, magnitude_std=float("inf") if mstd > 100 else mstd)


def parse_aa(aa: str | None) -> RandAugment | AutoAugment | None:
    """``--aa``: RandAugment (``rand-...``), an AutoAugment policy (``v0``, ``original``...), or None/'none'."""
    if not aa or aa.lower() == "none":
        return None
    return auto_augment(aa) if aa.split("-")[0] in AA_POLICIES else rand_augment(aa)


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


class TrainTransform:
    """Training transform: crop -> flip -> RandAugment or AutoAugment -> float/normalize -> random erasing.

    ``img_size``, ``ra_magnitude`` (0 disables RandAugment) and ``re_prob`` are attributes the trainer may
    change between epochs or progressive stages (with DataLoader workers, re-create the workers, i.e.
    ``persistent_workers=False``, for a change to reach them).

    Crop modes: ``"rrc"`` v2 ``RandomResizedCrop`` (Inception-style, ``scale`` of the area and ``ratio`` of the
    aspect); ``"pad"`` resizes to ``img_size``, pads ``pad`` pixels (default ``img_size // 8``) and takes a
    v2 ``RandomCrop`` of ``img_size`` (the CIFAR recipe; right for 28-32 px images, where a (0.08, 1) crop
    erases the object). Random erasing is v2's ``RandomErasing`` with per-pixel N(0, 1) noise in the
    normalized image (Zhong et al., AAAI 2020; timm's "pixel" mode).
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
        randaugment: RandAugment | None = None,
        re_prob: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        autoaugment: AutoAugment | None = None,
    ) -> None:
        if crop not in ("rrc", "pad"):
            raise ValueError(f"crop must be 'rrc' or 'pad', got {crop!r}")
        self.crop, self.scale, self.ratio, self.pad, self.hflip = crop, tuple(scale), tuple(ratio), pad, hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.rrc = T.RandomResizedCrop(img_size, scale=self.scale, ratio=self.ratio, antialias=True)
        self.flip = T.RandomHorizontalFlip(hflip)
        self.randaugment = randaugment if randaugment is not None else RandAugment(magnitude=0.0)
        self.autoaugment = autoaugment
        self.erasing = T.RandomErasing(re_prob, value="random")
        self.to_input = _ToModelInput(in_chans, source_chans, mean, std)
        self.img_size = img_size

    @property
    def img_size(self) -> int:
        return self._img_size

    @img_size.setter
    def img_size(self, value: int) -> None:
        self._img_size = int(value)
        self.rrc.size = (self._img_size, self._img_size)
        pad = self.pad if self.pad is not None else max(1, self._img_size // 8)
        self.pad_crop = T.RandomCrop(self._img_size, padding=pad, fill=0)

    @property
    def ra_magnitude(self) -> float:
        return self.randaugment.magnitude

    @ra_magnitude.setter
    def ra_magnitude(self, value: float) -> None:
        if value < 0 or value > self.randaugment.max_magnitude:
            raise ValueError(f"ra_magnitude must be in [0, {self.randaugment.max_magnitude}], got {value}")
        self.randaugment.magnitude = float(value)

    @property
    def re_prob(self) -> float:
        return self.erasing.p

    @re_prob.setter
    def re_prob(self, value: float) -> None:
        self.erasing.p = float(value)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.crop == "rrc":
            img = self.rrc(img)
        else:
            if tuple(img.shape[-2:]) != (self.img_size, self.img_size):
                img = F.resize(img, [self.img_size, self.img_size], antialias=True)
            img = self.pad_crop(img)
        if self.hflip > 0:
            img = self.flip(img)
        if self.autoaugment is not None:
            img = self.autoaugment(img)
        if self.ra_magnitude > 0:
            img = self.randaugment(img)
        x = self.to_input(img)
        return self.erasing(x) if self.re_prob > 0 else x

    def __repr__(self) -> str:
        return (f"TrainTransform(img_size={self.img_size}, crop={self.crop!r}, scale={self.scale}, "
                f"hflip={self.hflip}, randaugment={self.randaugment.extra_repr()}, autoaugment={self.autoaugment}, "
                f"re_prob={self.re_prob}, in_chans={self.to_input.in_chans})")


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # what v2 resizes uint8 tensors with
CROP_MODES = ("center", "squash", "border")


def interpolation_mode(name: str) -> T.InterpolationMode:
    """torchvision's mode for timm's name; "nearest" is torchvision's ``nearest-exact``, which picks PIL's
    pixels (its ``nearest`` keeps an older, shifted convention)."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return T.InterpolationMode.NEAREST_EXACT if name == "nearest" else T.InterpolationMode(name)


class EvalTransform:
    """timm's evaluation resize and crop with v2 ops, then float/normalize. With ``scale = floor(img_size /
    crop_pct)``: ``center`` resizes the shorter side to ``scale`` and takes the centre ``img_size``²;
    ``squash`` resizes both sides to ``scale`` (aspect not kept) and takes the centre; ``border`` resizes the
    longer side to ``scale`` and centre-crops, padding with the mean colour. ``interpolation``: bilinear,
    bicubic or nearest (antialiased when downsizing)."""

    def __init__(self, img_size: int, *, in_chans: int, source_chans: int, crop_pct: float = 0.875,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 interpolation: str = "bilinear", crop_mode: str = "center") -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
        self.img_size = int(img_size)
        self.crop_pct = crop_pct
        self.crop_mode = crop_mode
        self.interpolation = interpolation
        self.mode = interpolation_mode(interpolation)
        self.scale = int(math.floor(self.img_size / crop_pct))
        self.fill = [round(255 * float(m)) for m in mean] if len(mean) == source_chans else 0
        self.to_input = _ToModelInput(in_chans, source_chans, mean, std)

    def resize(self, img: torch.Tensor) -> torch.Tensor:
        size, scale = self.img_size, self.scale
        if self.crop_mode == "center":
            img = F.resize(img, [scale], interpolation=self.mode, antialias=True)  # shorter side
        elif self.crop_mode == "squash":
            img = F.resize(img, [scale, scale], interpolation=self.mode, antialias=True)
        else:  # border: longer side to scale, pad what is missing with the mean colour
            h, w = img.shape[-2:]
            r = scale / max(h, w)
            img = F.resize(img, [max(1, round(h * r)), max(1, round(w * r))], interpolation=self.mode, antialias=True)
            h, w = img.shape[-2:]
            ph, pw = max(0, size - h), max(0, size - w)
            if ph or pw:
                img = F.pad(img, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=self.fill)
        return F.center_crop(img, [size, size])

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape[-2:]) != (self.img_size, self.img_size) or self.crop_pct < 1.0:
            img = self.resize(img)
        return self.to_input(img)

    def __repr__(self) -> str:
        return (f"EvalTransform(img_size={self.img_size}, crop_pct={self.crop_pct}, crop_mode={self.crop_mode!r}, "
                f"interpolation={self.interpolation!r}, in_chans={self.to_input.in_chans})")


def build_train_transform(
    img_size: int,
    *,
    in_chans: int,
    source_chans: int,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    aa: str | None = None,
    ra_magnitude: float | None = None,
    ra_num_ops: int = 2,
    re_prob: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop: str = "rrc",
    pad: int | None = None,
    ra_magnitude_std: float = 0.0,
) -> TrainTransform:
    """A :class:`TrainTransform`. ``aa`` is timm's RandAugment string (:func:`rand_augment`) or AutoAugment
    policy (:func:`auto_augment`); without a RandAugment string, ``ra_num_ops``/``ra_magnitude_std`` build a
    TF-style one. ``ra_magnitude`` overrides the magnitude (progressive learning); 0 turns RandAugment off.
    ``mean``/``std`` may have 1 value or one per channel."""
    augment = parse_aa(aa)
    ra = augment if isinstance(augment, RandAugment) else RandAugment(ra_num_ops, magnitude=0.0,
                                                                      magnitude_std=ra_magnitude_std)
    t = TrainTransform(img_size, in_chans=in_chans, source_chans=source_chans, crop=crop, scale=scale, pad=pad,
                       hflip=hflip, randaugment=ra, re_prob=re_prob, mean=mean, std=std,
                       autoaugment=augment if isinstance(augment, AutoAugment) else None)
    if ra_magnitude is not None:
        t.ra_magnitude = ra_magnitude
    return t


def build_eval_transform(
    img_size: int,
    *,
    in_chans: int,
    source_chans: int,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    crop_mode: str = "center",
) -> EvalTransform:
    """An :class:`EvalTransform` (use ``crop_pct=1.0`` for small images such as Fashion-MNIST)."""
    return EvalTransform(img_size, in_chans=in_chans, source_chans=source_chans, crop_pct=crop_pct,
                         mean=mean, std=std, interpolation=interpolation, crop_mode=crop_mode)


def resolve_data_config(pretrained_cfg: dict, *, img_size: int | None = None, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, crop_pct: float | None = None,
                        interpolation: str | None = None, crop_mode: str | None = None) -> dict:
    """The data settings of a model, as timm's ``resolve_data_config(args, model=...)`` resolves them: each
    value given here wins, else the model's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``,
    ``crop_pct``, ``interpolation``, ``crop_mode``), else timm's defaults (224, ImageNet statistics, 0.875,
    bicubic, center). Returns timm's keys (``input_size`` as (C, H, W))."""
    cfg = pretrained_cfg or {}
    size = cfg.get("input_size") or (3, 224, 224)

    def per_channel(given: Sequence[float] | None, key: str, default: tuple) -> tuple:
        if given is None:
            return tuple(cfg.get(key) or default)
        return tuple(given) * size[0] if len(given) == 1 else tuple(given)  # one value: every channel, as timm

    return {
        "input_size": (size[0], img_size, img_size) if img_size else tuple(size),
        "interpolation": interpolation or cfg.get("interpolation") or "bicubic",
        "mean": per_channel(mean, "mean", IMAGENET_MEAN),
        "std": per_channel(std, "std", IMAGENET_STD),
        "crop_pct": crop_pct or cfg.get("crop_pct") or 0.875,
        "crop_mode": crop_mode or cfg.get("crop_mode") or "center",
    }


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
