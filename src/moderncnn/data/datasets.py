"""Datasets that yield ``(uint8 image tensor (C, H, W), int label)``.

- ``fashion-mnist``: Zalando's Fashion-MNIST (Xiao et al., 2017), 60,000 train / 10,000 test 28x28 grayscale
  images in 10 balanced classes, read from the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or a ``--data-dir``; no download. Held in memory as one tensor.
- ``imagefolder``: ``data_dir/<split>/<class>/*.png|jpg|...``; the split names are timm's (``train`` and
  ``validation``; :func:`split_folder` also finds ``val/``, ``valid/``, ``eval/``, ``test/``...). Classes are
  the folder names in natural order, as timm sorts them (``class2`` before ``class10``).
- ``cifar10`` / ``cifar100``: torchvision's CIFAR readers on ``data_dir``; downloaded only when asked.
- ``hfds/NAME``, ``hfds`` and ``wds``: Hugging Face datasets and WebDataset tar shards (``data/readers.py``).

A class map (timm's ``--class-map``: a text file of class names, one per line, the line number being the
index, or a ``{name: index}`` dict) restricts and orders the classes of the image-file data sets.

Every dataset has ``num_classes``, ``in_chans``, ``classes``, ``image_size`` (native size; None when it varies)
and an optional ``transform`` applied to the uint8 image in ``__getitem__``.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageFolderDataset",
    "TensorImageDataset",
    "bad_images",
    "check_eval_classes",
    "check_splits",
    "dataset_key",
    "decode_image",
    "load_class_map",
    "load_dataset",
    "load_splits",
    "natural_key",
    "split_folder",
    "split_role",
]

DATASETS = ("fashion-mnist", "imagefolder", "cifar10", "cifar100", "hfds", "wds")
# RGB image files of any size, whose transforms default to the model's pretrained_cfg (docs/training.md, "Data")
FILE_DATASETS = ("imagefolder", "cifar10", "cifar100", "hfds", "wds")
# timm's split synonyms: a split name not found as given is looked for under these (training / evaluation);
# "test" is ours, kept from the earlier train/ + val|validation|test/ layout
TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("validation", "val", "valid", "eval", "evaluation", "test")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def natural_key(name: str) -> tuple:
    """Sort key of ``name`` in natural order, case-insensitive: digit runs compare as numbers, so ``class2``
    comes before ``class10`` (timm's order of class folders; plain sorting puts ``class10`` first)."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts), name


def split_role(split: str) -> str:
    """``"train"`` or ``"val"``: what a split name is for (timm's synonyms; any other name, e.g. ``test``,
    is an evaluation split)."""
    return "train" if split.lower().split("[")[0] in TRAIN_SPLITS else "val"


def split_candidates(split: str) -> tuple[str, ...]:
    """``split`` first, then, when it is one of timm's split synonyms, the others of its role (timm's
    ``_search_split``, plus ``test``); any other name stands alone."""
    synonyms = TRAIN_SPLITS if split_role(split) == "train" else EVAL_SPLITS
    if split.lower() not in synonyms:
        return (split,)
    return (split, *[s for s in synonyms if s != split])


def load_class_map(class_map: str | os.PathLike | dict | Sequence[str]) -> tuple[str, ...]:
    """Class names by index from timm's ``--class-map``: a ``.txt`` file with one class name per line (the line
    number is the index), a ``{name: index}`` dict with indices 0..n-1, or a sequence of names."""
    if isinstance(class_map, dict):
        by_index = sorted((int(i), str(n)) for n, i in class_map.items())
        if [i for i, _ in by_index] != list(range(len(by_index))):
            raise DataError(f"class map indices must be 0..{len(by_index) - 1}, each once; got "
                            f"{sorted(class_map.values())[:10]}")
        names = tuple(n for _, n in by_index)
    elif isinstance(class_map, (str, os.PathLike)):
        path = Path(class_map).expanduser()
        if path.suffix.lower() != ".txt":
            raise DataError(f"--class-map {path}: expected a .txt file with one class name per line (timm's format; "
                            "its pickled .pkl maps are not read, as loading them could run code)")
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except OSError as e:
            raise DataError(f"cannot read --class-map {path}: {e}") from None
        while lines and not lines[-1].strip():
            lines.pop()
        names = tuple(line.strip() for line in lines)
        if "" in names:
            raise DataError(f"--class-map {path}: line {names.index('') + 1} is empty; give one class name per line")
    else:
        names = tuple(str(n) for n in class_map)
    if not names:
        raise DataError("the class map is empty; give one class name per line")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"the class map names {', '.join(dup[:10])} more than once")
    return names


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor ``(N, C, H, W)`` with int64 ``targets`` ``(N,)``."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: tuple[str, ...],
        *,
        name: str = "",
        transform: Callable | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets.long()
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.in_chans = images.shape[1]
        self.image_size = images.shape[2] if images.shape[2] == images.shape[3] else tuple(images.shape[2:])
        self.name = name
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def resized(self, size: int, interpolation: str = "bilinear") -> TensorImageDataset:
        """A copy with every image resized to ``size``×``size`` once (antialiased, as the transforms do),
        so per-sample transforms at that size skip their resize: a large saving for 28 px data on a CPU."""
        from torchvision.transforms.v2 import functional as TF

        from .transforms import interpolation_mode

        if self.image_size == size:
            return self
        mode = interpolation_mode(interpolation)
        chunks = [TF.resize(c, [size, size], interpolation=mode, antialias=True) for c in self.images.split(4096)]
        return TensorImageDataset(torch.cat(chunks), self.targets, self.classes, name=self.name,
                                  transform=self.transform)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, n={len(self)}, classes={self.num_classes}, "
                f"in_chans={self.in_chans}, image_size={self.image_size})")


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX format: big-endian magic, dims, then raw uint8)

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"Cannot read IDX file {path}: {e}. The file is corrupt or truncated; reinstall it.") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number {data[:4].hex()}).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) but the file holds {len(data) - offset}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist(data_dir: str | None, split: str) -> TensorImageDataset:
    prefix = "train" if split == "train" else "t10k"
    if data_dir is None:
        search = [Path(FASHION_MNIST_DIR)]
    else:
        root = Path(data_dir).expanduser()
        # accept the Debian layout, torchvision's FashionMNIST/raw layout, or a fashion-mnist/ sub-folder
        search = [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    for directory in search:
        images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
        if images_path is not None and labels_path is not None:
            break
    else:
        where = ", ".join(str(d) for d in search)
        raise DataError(
            f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], {prefix}-labels-idx1-ubyte[.gz]) not "
            f"found in {where}. Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass "
            "--data-dir pointing at a folder that holds the four IDX files."
        )
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files {images_path} and {labels_path} do not match: "
                        f"images {images.shape}, labels {labels.shape}.")
    images_t = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    return TensorImageDataset(images_t, labels_t, FASHION_MNIST_CLASSES, name="fashion-mnist")


# ---------------------------------------------------------------------------------------------------------------
# Image folders

class ImageFolderDataset(Dataset):
    """``root/<class name>/<image>`` files. Images are decoded to RGB uint8 when read (16-bit images are
    scaled to 8 bits, not clipped).

    ``classes``: the class list to label by (a validation split passes its training split's), matched by
    folder name; a folder that is not in it is an error. By default the folder names in natural order
    (:func:`natural_key`: ``class2`` before ``class10``, as timm's ImageFolder reader sorts them).
    ``class_map`` (timm's ``--class-map``, :func:`load_class_map`): label by this list instead and leave out
    the folders it does not name.

    An undecodable file raises :class:`DataError` naming it; with ``skip_bad=True`` it is replaced by the
    next readable file of the folder and recorded, once, in ``bad_images_log`` (a file shared with
    DataLoader worker processes), so :meth:`bad_images` can count them in the main process.
    """

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None,
                 classes: Sequence[str] | None = None, skip_bad: bool = False,
                 class_map: str | os.PathLike | dict | Sequence[str] | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"Image folder {root} does not exist. Expected {root}/<class name>/<image files>.")
        class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                            key=lambda d: natural_key(d.name))
        if not class_dirs:
            raise DataError(f"Image folder {root} has no class sub-folders. Expected {root}/<class name>/<images>.")
        if class_map is not None:
            classes = load_class_map(class_map)
            class_dirs = [d for d in class_dirs if d.name in set(classes)]
            if not class_dirs:
                raise DataError(f"none of the class folders of {root} is in the class map ({', '.join(classes[:10])}"
                                f"{' ...' if len(classes) > 10 else ''})")
        names = tuple(classes) if classes is not None else tuple(d.name for d in class_dirs)
        index = {name: i for i, name in enumerate(names)}
        foreign = [d.name for d in class_dirs if d.name not in index]
        if foreign:
            raise DataError(
                f"{root} has class folders that the training split does not have: {', '.join(foreign[:10])}"
                f"{' ...' if len(foreign) > 10 else ''} (training classes: {', '.join(names[:10])}"
                f"{' ...' if len(names) > 10 else ''}); labels are matched by class name, so the splits must "
                "use the same folder names"
            )
        samples: list[tuple[Path, int]] = []
        for d in class_dirs:
            files = sorted(  # natural order too, so sample i is timm's sample i (img2 before img10)
                (f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda f: natural_key(f.relative_to(d).as_posix()))
            samples.extend((f, index[d.name]) for f in files)
        if not samples:
            raise DataError(
                f"Image folder {root} has class folders ({', '.join(d.name for d in class_dirs[:5])}"
                f"{', ...' if len(class_dirs) > 5 else ''}) but no image files with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}."
            )
        self.root = root
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.classes = names
        self.num_classes = len(self.classes)
        self.in_chans = 3
        self.image_size = None  # varies per file
        self.name = "imagefolder"
        self.transform = transform
        self.skip_bad = skip_bad
        self.bad_images_log: Path | None = None
        if skip_bad:
            fd, log = tempfile.mkstemp(prefix="moderncnn-bad-images-", suffix=".txt")
            os.close(fd)
            self.bad_images_log = Path(log)
            weakref.finalize(self, _remove_owned, log, os.getpid())

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """Decode file ``index`` to an RGB uint8 tensor (3, H, W)."""
        path = self.samples[index][0]
        try:
            return decode_image(path)
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... depending on the codec
            reason = f"{type(e).__name__}: {e}".replace("\n", " ")
            raise DataError(f"cannot decode image {path} ({reason}); delete or replace the file, or pass "
                            "--skip-bad-images to skip unreadable files") from None

    def _record_bad(self, path: Path) -> None:
        if self.bad_images_log is not None:
            with open(self.bad_images_log, "a") as f:  # one short append: whole lines even from several workers
                f.write(f"{path}\n")

    def bad_images(self) -> list[str]:
        """The files skipped so far (by this process and its DataLoader workers), each once."""
        if self.bad_images_log is None or not self.bad_images_log.is_file():
            return []
        return sorted(set(self.bad_images_log.read_text().split("\n")) - {""})

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            try:
                image = self.load(i)
            except DataError:
                if not self.skip_bad:
                    raise
                self._record_bad(self.samples[i][0])
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, self.samples[index][1] if offset == 0 else self.samples[i][1]
        raise DataError(f"no image in {self.root} can be decoded")

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, classes={self.num_classes})"


def _remove_owned(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not when a DataLoader worker's copy of the dataset goes away
        Path(path).unlink(missing_ok=True)


def decode_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as an RGB uint8 tensor (3, H, W). 16- and 32-bit integer images (PIL modes ``I;16``,
    ``I``) are scaled to 8 bits by their bit depth, which ``PIL.Image.convert`` would clip to 0/255."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode.startswith("I;16") or im.mode == "I":
            a = np.asarray(im).astype(np.float64)
            # "I" holds 16-bit PNGs too; treat values up to 65535 as 16-bit and larger ones as 32-bit
            full = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else 4294967295.0
            gray = np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)
            rgb = np.repeat(gray[..., None], 3, axis=2)
        elif im.mode == "F":
            a = np.asarray(im, dtype=np.float64)
            gray = np.clip(np.rint(a * 255.0 if a.max(initial=0) <= 1.0 else a), 0, 255).astype(np.uint8)
            rgb = np.repeat(gray[..., None], 3, axis=2)
        else:
            rgb = np.asarray(im.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def split_folder(root: Path, split: str) -> Path | None:
    """``root/<split>``, else the first of its role's synonyms that exists (:func:`split_candidates`)."""
    for sub in split_candidates(split):
        if (root / sub).is_dir():
            return root / sub
    return None


def _imagefolder(data_dir: str | None, split: str, classes: Sequence[str] | None = None,
                 skip_bad: bool = False, class_map: Any = None) -> ImageFolderDataset:
    if data_dir is None:
        raise DataError("The imagefolder dataset needs --data-dir: a folder with train/ and validation/ (or val/) "
                        "sub-folders, each holding one folder of images per class.")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"Data directory {root} does not exist. "
                        f"Expected {root}/train/<class>/ and {root}/val/<class>/.")
    folder = split_folder(root, split)
    if folder is None:
        names = split_candidates(split)
        raise DataError(f"Data directory {root} has no {names[0]}/ sub-folder (looked for {', '.join(names)}). "
                        f"Expected {root}/train/<class>/ and {root}/val/<class>/ (or name the sub-folders with "
                        "--train-split/--val-split).")
    return ImageFolderDataset(folder, classes=classes, skip_bad=skip_bad, class_map=class_map)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR (torchvision readers; download only on request)

def _cifar(name: str, data_dir: str | None, split: str, download: bool) -> TensorImageDataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    if data_dir is None:
        raise DataError(f"{name} needs --data-dir (a folder holding the torchvision CIFAR files, or where to "
                        "download them with --download).")
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        ds = cls(root=str(Path(data_dir).expanduser()), train=split_role(split) == "train", download=download)
    except RuntimeError as e:
        raise DataError(f"{name} not found in {data_dir} ({e}). Pass --download to fetch it, or point --data-dir "
                        "at the folder that holds cifar-10-batches-py/ or cifar-100-python/.") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return TensorImageDataset(images, torch.tensor(ds.targets), tuple(ds.classes), name=name)


def dataset_key(name: str) -> str:
    """The canonical name of data set ``name`` (``FashionMNIST``, ``image_folder``, ``CIFAR-10`` are accepted);
    ``hfds/NAME`` and ``wds/NAME`` (timm's spelling: reader prefix, then the data set) give ``hfds``/``wds``."""
    prefix, sep, _ = str(name).partition("/")
    if sep and prefix.lower() in ("hfds", "wds"):
        return prefix.lower()
    key = str(name).lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "image-folder": "imagefolder", "folder": "imagefolder",
           "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise DataError(f"dataset (--dataset) must be one of {', '.join(DATASETS[:4])}, hfds/NAME (Hugging Face "
                        f"datasets), hfds (a save_to_disk folder in --data-dir) or wds (WebDataset shards), "
                        f"got {name!r}")
    return key


def load_dataset(
    name: str = "fashion-mnist", *, data_dir: str | None = None, split: str = "train", download: bool = False,
    classes: Sequence[str] | None = None, skip_bad_images: bool = False, class_map: Any = None,
    input_key: str | None = None, target_key: str | None = None,
) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`, ``hfds/NAME``, ``wds/NAME``) and split. Returns a
    dataset of ``(uint8 (C, H, W) image, int label)`` with ``num_classes``, ``in_chans``, ``classes`` and
    ``image_size`` attributes.

    ``split``: timm's split names. Fashion-MNIST and CIFAR have two: ``train`` (or ``training``) and the test
    set (``validation``, ``val``, ``test`` and timm's other evaluation synonyms). Image folders read the
    sub-folder of that name (else of a synonym, :func:`split_folder`); Hugging Face datasets the split of that
    name; WebDataset shards a brace pattern or the shards named after the split (``data/readers.py``).

    ``classes``: label by this class list, matched by name (see :func:`load_splits`); ``class_map``: timm's
    ``--class-map`` (:func:`load_class_map`), which also leaves out the classes it does not name;
    ``input_key``/``target_key``: the image and label columns (``hfds``) or file extensions (``wds``);
    ``skip_bad_images``: skip undecodable image files instead of stopping (image folders)."""
    key = dataset_key(name)
    split = str(split)
    if key == "hfds":
        from .readers import load_hfds

        return load_hfds(name, data_dir, split, classes=classes, class_map=class_map, input_key=input_key,
                         target_key=target_key)
    if "[" in split:  # timm's imagefolder would silently drop the slice and read the whole split
        raise DataError(f"split {split!r}: slices (train[:90%]) are read for hfds data sets only; for {key} use "
                        "--train-samples/--val-samples, or a folder (shard pattern) per split")
    if key == "wds":
        from .readers import load_wds

        return load_wds(name, data_dir, split, classes=classes, class_map=class_map, input_key=input_key,
                        target_key=target_key)
    if key == "imagefolder":
        return _imagefolder(data_dir, split, classes, skip_bad_images, class_map)
    if class_map is not None:
        raise DataError(f"--class-map applies to image files (imagefolder, hfds, wds), not to {key}")
    if split.lower() not in TRAIN_SPLITS + EVAL_SPLITS:
        raise DataError(f"Unknown split {split!r} of {key}: it has a training split ({', '.join(TRAIN_SPLITS)}) "
                        f"and a test split ({', '.join(EVAL_SPLITS)})")
    if key == "fashion-mnist":  # never downloaded: the missing-file error says how to install it
        return _fashion_mnist(data_dir, split_role(split))
    return _cifar(key, data_dir, split, download)


def check_splits(train: Dataset, val: Dataset) -> None:
    """Refuse a validation split whose class names differ from the training split's (labels would be
    shifted); warn about a training split with one class (the loss is 0 from the start)."""
    tc, vc = tuple(getattr(train, "classes", ()) or ()), tuple(getattr(val, "classes", ()) or ())
    if tc and vc and list(vc) != list(tc)[: len(vc)]:  # label i must name the same class in both splits
        raise DataError(
            f"the validation split's classes ({', '.join(vc[:10])}) are not the training split's "
            f"({', '.join(tc[:10])}); labels are matched by class name, so both must list the same classes"
        )
    n = getattr(train, "num_classes", None) or len(tc)
    if n == 1:
        warnings.warn(
            "the training set has a single class: every label is the same, so the loss is 0 from the start and "
            "the model learns nothing; add images of other classes (one folder per class)", stacklevel=2)


def load_splits(name: str = "fashion-mnist", *, data_dir: str | None = None, download: bool = False,
                skip_bad_images: bool = False, train_split: str = "train", val_split: str = "validation",
                class_map: Any = None, input_key: str | None = None,
                target_key: str | None = None) -> tuple[Dataset, Dataset]:
    """The training and validation splits of a data set (timm's split names and defaults), labelled alike:
    the validation split's classes are matched to the training split's by name (:func:`check_splits`)."""
    kw = dict(data_dir=data_dir, download=download, skip_bad_images=skip_bad_images, class_map=class_map,
              input_key=input_key, target_key=target_key)
    train = load_dataset(name, split=train_split, **kw)
    val = load_dataset(name, split=val_split, classes=getattr(train, "classes", None), **kw)
    check_splits(train, val)
    return train, val


def bad_images(dataset: Any) -> list[str]:
    """The image files skipped so far by ``dataset`` or the dataset it wraps (``.base``/``.dataset``)."""
    seen = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        if hasattr(dataset, "bad_images"):
            return dataset.bad_images()
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
    return []


def check_eval_classes(num_classes: int, dataset: Dataset, source: str = "the model") -> None:
    """Warn when a model is evaluated on a data set with another number of classes (top-1 then measures
    little: labels beyond the model's outputs can never be right, outputs beyond the labels never are)."""
    n = getattr(dataset, "num_classes", None)
    if n is not None and n != num_classes:
        warnings.warn(f"{source} has {num_classes} classes but the evaluation data set has {n}; the accuracy "
                      "compares labels with outputs that may not mean the same classes", stacklevel=2)
