"""Hugging Face datasets and WebDataset shards as map-style data sets, spelled as timm spells them.

Both yield ``(uint8 RGB image (3, H, W), int label)`` and carry ``num_classes``, ``in_chans``, ``classes``,
``image_size`` (None: it varies) and ``transform``, like the data sets of ``data/datasets.py``.

- ``--dataset hfds/NAME --data-dir CACHE``: the Hub data set NAME from the ``datasets`` cache in CACHE, offline
  (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are forced on: nothing downloads, a data set missing from the
  cache is an error). ``--dataset hfds --data-dir PATH`` (or ``hfds/PATH``): a folder written by
  ``DatasetDict.save_to_disk`` (splits by name) or ``Dataset.save_to_disk`` (one split, used for the
  training split only). Columns: ``--input-key``/``--target-key`` (timm's defaults ``image``/``label``);
  without them the first ``Image`` column and the first ``ClassLabel`` column are taken when
  ``image``/``label`` do not exist.
- ``--dataset wds --data-dir DIR``: local tar shards holding ``KEY.jpg`` (or png/webp...) + ``KEY.cls`` (the
  label as text) per sample. A split is a brace pattern (``train-{000..003}.tar``, timm's form) relative to
  DIR, or a name: the shards ``NAME-*.tar``, ``NAME_*.tar`` or ``NAME/*.tar`` (trying timm's synonyms, e.g.
  ``val`` for ``validation``). timm streams shards (an ``IterableDataset``); here each shard is indexed once
  with the standard library's ``tarfile`` and samples are read by offset, because the trainer needs ``len``,
  indexing, fixed subsets and per-sample augmentation keys (``data/assembly.py``) — the price is one pass
  over the shards' headers at start-up.

Labels are class indices; ``classes`` are the ``ClassLabel`` names (hfds), the sorted label strings (string
labels) or ``"0".."n-1"``. A class map (``--class-map``) relabels by name and leaves out the samples of
classes it does not name.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .datasets import decode_image, load_class_map, natural_key, split_candidates, split_role

__all__ = ["HfImageDataset", "WdsImageDataset", "expand_braces", "load_hfds", "load_wds"]


class _LabelledFiles(Dataset):
    """Shared face of the readers: subclasses set ``labels`` (int64), ``classes`` and implement ``image_bytes``."""

    in_chans = 3
    image_size = None  # varies per sample
    transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def __getitem__(self, index: int):
        raw = self.image_bytes(int(index))
        try:
            image = decode_image(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
        except Exception as e:  # PIL raises several types depending on the codec
            raise DataError(f"cannot decode image {index} of {self!r} ({type(e).__name__}: {e})") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, classes={self.num_classes})"


def _relabel(names: list[str], class_names: tuple[str, ...] | None, classes: Sequence[str] | None,
             class_map: Any, where: str) -> tuple[list[int], torch.Tensor, tuple[str, ...]]:
    """(kept sample indices, their labels, class names) from each sample's class name. ``classes`` (a training
    split's) or ``class_map`` fix the label of each name; otherwise ``class_names`` (the data set's own list)."""
    if class_map is not None:
        order, strict = load_class_map(class_map), False
    elif classes is not None:
        order, strict = tuple(classes), True
    else:
        order, strict = class_names or tuple(sorted(set(names), key=natural_key)), True
    index = {n: i for i, n in enumerate(order)}
    if strict:
        foreign = sorted(set(names) - set(index), key=natural_key)
        if foreign:
            raise DataError(f"{where} has labels that the training split does not have: {', '.join(foreign[:10])} "
                            f"(training classes: {', '.join(order[:10])}{' ...' if len(order) > 10 else ''})")
    keep = [i for i, n in enumerate(names) if n in index]
    if not names:
        raise DataError(f"{where} holds no samples")
    if not keep:
        raise DataError(f"{where}: no sample has a class of the class map ({', '.join(order[:10])})")
    return keep, torch.tensor([index[names[i]] for i in keep], dtype=torch.long), tuple(order)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets

def _import_datasets() -> Any:
    # offline before the import (datasets reads these once), and forced on the config in case it was imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise DataError("--dataset hfds needs the Hugging Face `datasets` package: "
                        "pip install 'moderncnn[hfds]'") from None
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    try:  # the Hub client datasets calls reads its own flag, set at its import (maybe before ours)
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass
    return datasets


def _saved_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _pick_split(dd: Any, split: str, where: str) -> Any:
    for name in split_candidates(split):
        if name in dd:
            return dd[name]
    raise DataError(f"{where} has no split {split!r} (looked for {', '.join(split_candidates(split))}); its splits: "
                    f"{', '.join(dd)}. Name them with --train-split/--val-split.")


def _slice_splits(datasets: Any, dd: Any, split: str, where: str) -> Any:
    """``train[:90%]``, ``train[90%:]+validation``...: the datasets library's split syntax, read by its own
    ``ReadInstruction`` (so a saved folder slices as ``load_dataset`` slices a Hub data set)."""
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in dd.items()})
    except (ValueError, KeyError, AssertionError) as e:
        raise DataError(f"{where}: cannot read split {split!r} ({e}); its splits: {', '.join(dd)}, sliced like "
                        "train[:90%] or train[100:200], joined with +") from None
    pieces = [dd[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)


class HfImageDataset(_LabelledFiles):
    """One split of a Hugging Face ``datasets.Dataset`` with an image column and a class column."""

    def __init__(self, ds: Any, *, name: str, input_key: str | None = None, target_key: str | None = None,
                 classes: Sequence[str] | None = None, class_map: Any = None) -> None:
        datasets = _import_datasets()
        features = ds.features
        image_key = input_key or _find_column(features, "image", datasets.Image, name, "--input-key", "image")
        label_key = target_key or _find_column(features, "label", datasets.ClassLabel, name, "--target-key", "label")
        for key, flag in ((image_key, "--input-key"), (label_key, "--target-key")):
            if key not in features:
                raise DataError(f"{name} has no column {key!r} ({flag}); its columns: {', '.join(features)}")
        label_feature = features[label_key]
        raw = list(ds[label_key])  # the whole column at once (Arrow), not row by row
        if any(isinstance(v, int) and v < 0 for v in raw):
            raise DataError(f"{name}: column {label_key!r} holds negative labels (-1 marks an unlabelled sample, "
                            "as in the test splits of some Hub data sets); choose a labelled split")
        if isinstance(label_feature, datasets.ClassLabel):
            own: tuple[str, ...] | None = tuple(label_feature.names)
            names = [own[int(v)] for v in raw]
        elif raw and all(isinstance(v, int) for v in raw):
            own = tuple(str(i) for i in range(max(raw) + 1))
            names = [str(v) for v in raw]
        elif raw and all(isinstance(v, str) for v in raw):
            own, names = None, list(raw)
        else:
            raise DataError(f"{name}: column {label_key!r} ({label_feature}) holds no class labels (expected a "
                            "ClassLabel, integers or strings); name the label column with --target-key")
        keep, self.labels, self.classes = _relabel(names, own, classes, class_map, name)
        if len(keep) < len(raw):
            ds = ds.select(keep)
        if isinstance(features[image_key], datasets.Image):
            ds = ds.cast_column(image_key, datasets.Image(decode=False))  # we decode (16-bit PNGs, see decode_image)
        self.images = ds.select_columns([image_key])
        self.image_key = image_key
        self.name = name

    def image_bytes(self, index: int) -> Any:
        value = self.images[index][self.image_key]
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            return value["bytes"] if value.get("bytes") is not None else value["path"]
        return value  # bytes, or a path string


def _find_column(features: Any, default: str, kind: type, name: str, flag: str, what: str) -> str:
    if default in features:
        return default
    for key, feature in features.items():
        if isinstance(feature, kind):
            return key
    raise DataError(f"{name} has no {what} column: no {default!r} column and no {kind.__name__} column among "
                    f"{', '.join(features)}; name it with {flag}")


def load_hfds(name: str, data_dir: str | None, split: str, *, classes: Sequence[str] | None = None,
              class_map: Any = None, input_key: str | None = None,
              target_key: str | None = None) -> HfImageDataset:
    """Split ``split`` of ``hfds/NAME`` (Hub data set from the cache in ``data_dir``, or a saved folder) or of
    ``hfds`` with a saved folder in ``data_dir``; offline."""
    datasets = _import_datasets()
    _, _, rest = name.partition("/")
    local = Path(rest).expanduser() if rest else (Path(data_dir).expanduser() if data_dir else None)
    if local is not None and local.is_dir() and _saved_folder(local):
        try:
            saved = datasets.load_from_disk(str(local))
        except Exception as e:  # datasets raises FileNotFoundError, ValueError... for damaged folders
            raise DataError(f"cannot read the saved data set {local}: {type(e).__name__}: {e}") from None
        if isinstance(saved, datasets.DatasetDict) and ("[" in split or "+" in split):
            ds = _slice_splits(datasets, saved, split, str(local))
        elif isinstance(saved, datasets.DatasetDict):
            ds = _pick_split(saved, split, str(local))
        elif split_role(split) == "train":  # a lone Dataset: the training split only
            ds = saved
        else:
            raise DataError(f"{local} holds one split (Dataset.save_to_disk); the {split!r} split needs a folder "
                            "written by DatasetDict.save_to_disk with train and validation splits")
        return HfImageDataset(ds, name=f"hfds:{local}[{split}]", input_key=input_key, target_key=target_key,
                              classes=classes, class_map=class_map)
    if not rest:
        where = data_dir or "(no --data-dir)"
        raise DataError(f"--dataset hfds reads a folder written by datasets' save_to_disk in --data-dir, and {where} "
                        "is not one (no dataset_dict.json or state.json); for a Hub data set in the cache use "
                        "--dataset hfds/NAME --data-dir CACHE")
    errors = []
    for candidate in split_candidates(split):
        try:
            ds = datasets.load_dataset(rest, split=candidate, cache_dir=data_dir)
            break
        except ValueError as e:  # an unknown split name
            errors.append(str(e))
            if "split" not in str(e).lower():
                break
        except Exception as e:  # not in the cache: offline mode refuses to download
            cache = data_dir or "(default)"
            raise DataError(f"cannot load Hugging Face data set {rest!r} offline from the cache {cache}"
                            f" ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Nothing is "
                            "downloaded: fetch it once elsewhere with datasets.load_dataset(NAME, cache_dir=...) and "
                            "pass that cache as --data-dir, or save it with save_to_disk and pass the folder") from None
    else:
        raise DataError(f"Hugging Face data set {rest!r} has no split {split!r}: {errors[0] if errors else ''}")
    return HfImageDataset(ds, name=f"hfds/{rest}[{ds.split}]", input_key=input_key, target_key=target_key,
                          classes=classes, class_map=class_map)


# ---------------------------------------------------------------------------------------------------------------
# WebDataset shards

def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as WebDataset writes shard lists: ``{000..003}`` (zero-padded numeric ranges, inclusive)
    and ``{a,b}`` (alternatives); several groups multiply out, left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise DataError(f"shard pattern {pattern!r}: range {body} runs backwards")
        width = len(rng.group(1))
        items = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def _shard_files(root: Path | None, split: str) -> list[Path]:
    if "{" in split or split.endswith(".tar"):
        files = [Path(p).expanduser() for p in expand_braces(split)]
        files = [f if f.is_absolute() or root is None else root / f for f in files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"shard pattern {split!r}: {len(missing)} of {len(files)} shards do not exist "
                            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
        return files
    if root is None or not root.is_dir():
        raise DataError(f"--dataset wds needs --data-dir, the folder of the .tar shards (got {root})")
    for name in split_candidates(split):
        files = sorted({*root.glob(f"{name}-*.tar"), *root.glob(f"{name}_*.tar"), *root.glob(f"{name}/*.tar")},
                       key=lambda p: natural_key(str(p)))
        if files:
            return files
    raise DataError(f"no shards of split {split!r} in {root}: looked for {{name}}-*.tar, {{name}}_*.tar and "
                    f"{{name}}/*.tar with name in {', '.join(split_candidates(split))}; or pass a brace pattern, "
                    "e.g. --train-split 'train-{000..009}.tar'")


class WdsImageDataset(_LabelledFiles):
    """Samples of WebDataset tar shards, indexed once: ``KEY.<image ext>`` and ``KEY.<target ext>`` members
    with the same ``KEY`` (the member path up to the first dot of its file name) make one sample."""

    def __init__(self, files: Sequence[Path], *, name: str, input_key: str | None = None,
                 target_key: str | None = None, classes: Sequence[str] | None = None,
                 class_map: Any = None) -> None:
        image_exts = tuple(e.strip().lower().lstrip(".") for e in (input_key or "jpg;jpeg;png;webp").split(";"))
        target_ext = (target_key or "cls").lower().lstrip(".")
        self.files = [str(f) for f in files]
        entries: list[tuple[int, int, int]] = []  # (shard, data offset, size)
        names: list[str] = []
        for shard, path in enumerate(self.files):
            images: dict[str, tuple[int, int, int]] = {}
            labels: dict[str, str] = {}
            try:
                with tarfile.open(path, "r:") as tar:  # uncompressed tar only: offsets must be seekable
                    for member in tar:
                        if not member.isfile():
                            continue
                        folder, _, base = member.name.rpartition("/")
                        stem, dot, ext = base.partition(".")
                        if not dot:
                            continue
                        key = f"{folder}/{stem}" if folder else stem
                        ext = ext.lower()
                        if ext == target_ext:
                            labels[key] = tar.extractfile(member).read().decode("utf-8").strip()
                        elif ext in image_exts and key not in images:
                            images[key] = (shard, member.offset_data, member.size)
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"cannot read WebDataset shard {path}: {e} (expected an uncompressed .tar)") from None
            unlabelled = [k for k in images if k not in labels]
            if unlabelled:
                raise DataError(f"{path}: {len(unlabelled)} samples have an image but no .{target_ext} label "
                                f"(e.g. {unlabelled[0]}); every KEY.{image_exts[0]} needs a KEY.{target_ext}")
            for key in sorted(images, key=natural_key):
                entries.append(images[key])
                names.append(labels[key])
        if not entries:
            raise DataError(f"{name}: the shards hold no samples with a .{'/.'.join(image_exts)} image and a "
                            f".{target_ext} label")
        numeric = all(re.fullmatch(r"-?\d+", n) for n in names)
        if numeric:
            names = [str(int(n)) for n in names]
            if min(int(n) for n in names) < 0:
                raise DataError(f"{name}: .{target_ext} labels must be class indices >= 0")
            own: tuple[str, ...] | None = tuple(str(i) for i in range(max(int(n) for n in names) + 1))
        else:
            own = None
        keep, self.labels, self.classes = _relabel(names, own, classes, class_map, name)
        self.entries = [entries[i] for i in keep]
        self.name = name
        self._handles: dict[int, Any] = {}  # per process (DataLoader workers open their own)
        self._pid = os.getpid()

    def image_bytes(self, index: int) -> bytes:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        shard, offset, size = self.entries[index]
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open(self.files[shard], "rb")  # noqa: SIM115 (kept open for reuse)
        handle.seek(offset)
        return handle.read(size)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            handle.close()


def load_wds(name: str, data_dir: str | None, split: str, *, classes: Sequence[str] | None = None,
             class_map: Any = None, input_key: str | None = None,
             target_key: str | None = None) -> WdsImageDataset:
    """Split ``split`` (a brace pattern or a split name) of the shards in ``data_dir`` (or, without it, in the
    folder ``NAME`` of ``wds/NAME``)."""
    _, _, rest = name.partition("/")
    root = Path(data_dir).expanduser() if data_dir else (Path(rest).expanduser() if rest else None)
    files = _shard_files(root, split)
    return WdsImageDataset(files, name=f"wds:{root}[{split}]", input_key=input_key, target_key=target_key,
                           classes=classes, class_map=class_map)

