"""One evaluation loop: top-1/top-5 and loss of a model over a loader, used by the trainer every epoch and by
``moderncnn eval`` (:func:`evaluate_checkpoint`) on a run folder or a weights file it wrote."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import CheckpointError
from .distributed import DistInfo, all_reduce_sum
from .metrics import Progress, accuracy

__all__ = ["evaluate", "evaluate_checkpoint"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device | str = "cpu", amp: bool = False,
             channels_last: bool = False, dist: DistInfo | None = None, amp_dtype: str = "bfloat16",
             progress: bool = False) -> dict[str, float]:
    """``{"loss", "top1", "top5", "images"}`` of ``model`` over ``loader`` (percentages; summed over the
    processes of ``dist`` when each holds a shard). ``progress``: a progress bar on stderr."""
    device = torch.device(device)
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    bar = Progress(len(loader), desc="eval", enabled=progress, use_bar=True, log_interval=1) if progress else None
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=getattr(torch, amp_dtype)) if amp else contextlib.nullcontext():
            out = model(x)
        out = out.float()
        top1, top5 = accuracy(out, y, (1, 5))
        loss = nn.functional.cross_entropy(out, y, reduction="sum")
        sums += torch.stack([loss, top1, top5, torch.tensor(len(y), device=device)]).double()
        if bar is not None:
            bar.update(i + 1, top1=100 * sums[1].item() / max(1.0, sums[3].item()))
    if bar is not None:
        bar.close()
    if dist is not None:
        sums = all_reduce_sum(sums, dist)
    n = max(1.0, sums[3].item())
    return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n,
            "images": int(sums[3].item())}


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    img_size: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
    val_samples: int | None = None,
    device: str = "cpu",
    verbose: bool = True,
    data_options: dict[str, Any] | None = None,
    progress: bool = False,
    model: str | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 (and loss) of a run folder's weights (``best``, else ``last``; raw and EMA), or of one
    weights file: one moderncnn wrote (``train``, ``convert``, ``fuse``), or, with ``model`` (a registered
    name), any checkpoint :func:`moderncnn.load_weights` reads (timm's, the official layout), its class
    count and input channels read off the weights. Returns ``{"raw": {...}, "ema": {...}}``.

    ``data_options``: training options that replace the run's for this evaluation (``val_split``,
    ``class_map``, ``input_key``, ``target_key``, ``interpolation``, ``crop_pct``; docs/training.md, "Data")."""
    from ..data.assembly import AugmentedDataset, random_subset
    from ..data.datasets import check_eval_classes, load_dataset
    from ..data.transforms import build_eval_transform
    from ..interop import load_weights
    from ..interop.spec import ModelSpec, find_description, missing_description
    from .build import data_settings
    from .config import TrainConfig, from_dict, read_yaml

    path = Path(checkpoint)
    if path.is_dir():
        tag = "best" if (path / "best.safetensors").is_file() else "last"
        files = {"raw": path / f"{tag}.safetensors", "ema": path / f"{tag}_ema.safetensors"}
        run_dir = path
        if not files["raw"].is_file():
            raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors; is it a run folder?")
    elif path.is_file():
        files, run_dir = {"raw": path}, path.parent
    else:
        raise CheckpointError(f"checkpoint {path} does not exist")
    cfg = from_dict(read_yaml(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() else TrainConfig()
    dataset = dataset or cfg.dataset
    cfg = cfg.replace(dataset=dataset, **{k: v for k, v in (data_options or {}).items() if v is not None})
    ds = load_dataset(dataset, data_dir=data_dir if data_dir is not None else cfg.data_dir, split=cfg.val_split,
                      class_map=cfg.class_map, input_key=cfg.input_key, target_key=cfg.target_key)
    results: dict[str, dict[str, float]] = {}
    for which, f in files.items():
        if not f.is_file():
            continue
        looked: list[str] = []
        found = None if model else find_description(f, looked)
        if found is None and not model:
            raise missing_description(f, looked)
        spec, extra = found or (ModelSpec.from_weights(model, f), {})
        check_eval_classes(spec.num_classes, ds, f"{f.name} ({spec.name})")
        net = load_weights(spec.build(), f, layout="native" if found else "auto")
        # the run's own settings; unset ones resolved as training resolved them (build.data_settings)
        settings = data_settings(cfg, ds.image_size if isinstance(ds.image_size, int) else None, model=spec.name)
        size = img_size or extra.get("img_size") or cfg.eval_img_size or settings["img_size"]
        if "mean" in extra and "std" in extra:
            mean, std = extra["mean"], extra["std"]
        else:
            mean, std = settings["mean"], settings["std"]
        transform = build_eval_transform(size, in_chans=spec.in_chans, source_chans=ds.in_chans, mean=mean, std=std,
                                         crop_pct=settings["crop_pct"], interpolation=settings["interpolation"],
                                         crop_mode=settings["crop_mode"])
        val = AugmentedDataset(ds, random_subset(len(ds), val_samples, cfg.seed + 1), transform, seeded=False)
        loader = DataLoader(val, batch_size=batch_size, num_workers=workers)
        results[which] = r = evaluate(net.to(device), loader, device=device, progress=progress)
        if verbose:
            print(f"{which:>4} {f.name}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}  "
                  f"({r['images']} {dataset} val images at {size} px)")
    return results
