"""Effective receptive field (ERF), measured as RepLKNet does (Ding et al., CVPR 2022, §5: the ERF figure
and the area-ratio table; following Luo et al., NeurIPS 2016).

For every image, take the last feature map of the network, sum the channels of its central point, and
back-propagate that scalar to the input. The absolute input gradient, summed over the input channels
and averaged over the images, is the ERF map: how much each input pixel moves the centre output.

The *high-contribution area ratio* at a threshold t is the area of the smallest centred square that holds
at least t of the map's total, divided by the image area (RepLKNet's table reports t = 20%, 30%, 50%,
99%). As in RepLKNet's analysis, the ratio is computed on the log-scaled map ``log10(1 + ERF)``, which
is also what the figures show: raw scores span orders of magnitude and the centre would hide the rest.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, InputShapeError

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
# ImageNet statistics: the pretrained models of every family expect them
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ERFResult:
    """The averaged ERF map ``(H, W)`` of ``images`` inputs and its area ratios per threshold."""

    map: torch.Tensor
    images: int
    ratios: dict[float, float] = field(default_factory=dict)

    def log_map(self) -> torch.Tensor:
        return torch.log10(1 + self.map)


def area_ratio(erf_map: torch.Tensor, threshold: float) -> float:
    """Area of the smallest centred square holding ``threshold`` of the sum of ``erf_map``, over the map's
    area; 1.0 when only the whole map does. For even sizes the centre is pixel ``(H // 2, W // 2)``."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    h, w = erf_map.shape
    total = erf_map.sum()
    if total <= 0:
        raise ValueError("the ERF map is all zero: the output does not depend on the input")
    cy, cx = h // 2, w // 2
    for r in range(max(h, w)):
        square = erf_map[max(0, cy - r): cy + r + 1, max(0, cx - r): cx + r + 1]
        if square.sum() >= threshold * total:
            side = 2 * r + 1
            return min(side, h) * min(side, w) / (h * w)
    return 1.0


def _last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    if isinstance(out, (list, tuple)):  # a features-only backbone: its deepest level
        out = out[-1]
    if out.ndim != 4:
        raise InputShapeError(f"the ERF needs a (N, C, H, W) feature map, the model gave shape {tuple(out.shape)}")
    return out


def erf(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 8,
    thresholds: tuple[float, ...] = THRESHOLDS,
    progress: bool = False,
) -> ERFResult:
    """The ERF of ``model`` averaged over ``images`` (a ``(N, C, H, W)`` tensor, or an iterable of batches).

    The model runs in eval mode (its mode is restored afterwards); each image's gradient is independent of
    the others in the batch. ``progress`` shows a bar over the images.
    """
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    total_images = len(images) if isinstance(images, torch.Tensor) else None
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    acc, seen = None, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_images, unit="img", desc=getattr(model, "model_name", type(model).__name__))
    try:
        for batch in batches:
            if batch.ndim != 4:
                raise InputShapeError(f"images must be (N, C, H, W) batches, got shape {tuple(batch.shape)}")
            x = batch.to(device=device, dtype=dtype).requires_grad_(True)
            out = _last_feature_map(model, x)
            centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum()
            (grad,) = torch.autograd.grad(centre, x)
            contrib = grad.abs().sum(dim=(0, 1)).double().cpu()  # sum over the images and input channels
            acc = contrib if acc is None else acc + contrib
            seen += len(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if acc is None:
        raise ConfigError("no images to measure the ERF on")
    result = ERFResult(acc / seen, seen)
    log = result.log_map()
    result.ratios = {t: area_ratio(log, t) for t in thresholds}
    return result


def load_images(
    n: int, size: int, in_chans: int = 3, *, dataset: str = "fashion-mnist", data_dir: str | None = None
) -> torch.Tensor:
    """The first ``n`` test images of ``dataset`` as a float ``(n, in_chans, size, size)`` batch, resized
    (antialiased) and normalized with ImageNet statistics; grey images are repeated over 3 channels and
    colour images averaged for 1-channel models."""
    from torchvision.transforms.v2 import functional as TF

    from ..data.datasets import load_dataset

    if n < 1 or size < 1:
        raise ConfigError(f"need at least one image of at least 1 px; got n={n}, size={size}")
    ds = load_dataset(dataset, data_dir=data_dir, split="val" if dataset == "imagefolder" else "test")
    if len(ds) < n:
        raise ConfigError(f"{dataset} has {len(ds)} test images, fewer than the {n} asked for")
    out = []
    for i in range(n):
        img = ds[i][0]
        img = TF.to_image(img) if not isinstance(img, torch.Tensor) else img
        img = TF.to_dtype(img, torch.float32, scale=True)
        img = TF.resize(img, [size, size], antialias=True)
        if img.shape[0] != in_chans:
            img = img.mean(0, keepdim=True).expand(in_chans, -1, -1)
        out.append(img)
    x = torch.stack(out)
    if in_chans == 3:
        x = TF.normalize(x, list(MEAN), list(STD))
    return x


def write_ratios(results: dict[str, ERFResult], path: str | Path) -> list[Path]:
    """``<path>.csv`` and ``<path>.json``: one row per model, the area ratio at every threshold."""
    path = Path(path)
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    thresholds = sorted({t for r in results.values() for t in r.ratios})
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "images", "size"] + [f"ratio@{t:g}" for t in thresholds])
        for name, r in results.items():
            w.writerow([name, r.images, r.map.shape[-1]] + [f"{r.ratios[t]:.6f}" for t in thresholds])
    rows = {name: {"images": r.images, "size": list(r.map.shape), "area_ratio": {f"{t:g}": r.ratios[t]
            for t in thresholds}} for name, r in results.items()}
    json_path.write_text(json.dumps(rows, indent=2))
    return [csv_path, json_path]


def plot(results: dict[str, ERFResult], out: str | Path) -> Path | None:
    """The log-scaled ERF maps side by side with one colour scale for all, area ratios in the titles.
    ``None`` (after a one-line note) when matplotlib, an optional extra, is not installed."""
    from ..plotting import pyplot

    plt = pyplot("the ERF figure")
    if plt is None:
        return None
    maps = {name: r.log_map().numpy() for name, r in results.items()}
    vmax = max(m.max() for m in maps.values())
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps) + 0.8, 3.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(m, cmap="RdYlGn", vmin=0.0, vmax=vmax)
        r = results[name].ratios
        ax.set_title(f"{name}\n" + " ".join(f"{t:g}:{r[t]:.3f}" for t in sorted(r)), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="log10(1 + |∂ centre / ∂ input|)")
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
