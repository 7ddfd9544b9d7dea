"""Datasets that yield ``(uint8 image tensor (C, H, W), int label)``.

- ``fashion-mnist``: Zalando's Fashion-MNIST (Xiao et al., 2017), 60,000 train / 10,000 test 28x28 grayscale
  images in 10 balanced classes, read from the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or a ``--data-dir``; no download. Held in memory as one tensor.
- ``imagefolder``: ``data_dir/train/<class>/*.png|jpg|...`` and ``data_dir/val/<class>/...``.
- ``cifar10`` / ``cifar100``: torchvision's CIFAR readers on ``data_dir``; downloaded only when asked.

Every dataset has ``num_classes``, ``in_chans``, ``classes``, ``image_size`` (native size; None when it varies)
and an optional ``transform`` applied to the uint8 image in ``__getitem__``.
"""

from __future__ import annotations

import gzip
import os
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
    "load_dataset",
    "load_splits",
]

DATASETS = ("fashion-mnist", "imagefolder", "cifar10", "cifar100")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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

    def resized(self, size: int) -> TensorImageDataset:
        """A copy with every image resized to ``size``×``size`` once (antialiased, as the transforms do),
        so per-sample transforms at that size skip their resize: a large saving for 28 px data on a CPU."""
        from torchvision.transforms.v2 import functional as TF

        if self.image_size == size:
            return self
        chunks = [TF.resize(c, [size, size], antialias=True) for c in self.images.split(4096)]
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
    folder name; a folder that is not in it is an error. By default the sorted folder names.

    An undecodable file raises :class:`DataError` naming it; with ``skip_bad=True`` it is replaced by the
    next readable file of the folder and recorded, once, in ``bad_images_log`` (a file shared with
    DataLoader worker processes), so :meth:`bad_images` can count them in the main process.
    """

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None,
                 classes: Sequence[str] | None = None, skip_bad: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"Image folder {root} does not exist. Expected {root}/<class name>/<image files>.")
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise DataError(f"Image folder {root} has no class sub-folders. Expected {root}/<class name>/<images>.")
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
            files = sorted(
                f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
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


def _imagefolder(data_dir: str | None, split: str, classes: Sequence[str] | None = None,
                 skip_bad: bool = False) -> ImageFolderDataset:
    if data_dir is None:
        raise DataError("The imagefolder dataset needs --data-dir: a folder with train/ and val/ sub-folders, "
                        "each holding one folder of images per class.")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"Data directory {root} does not exist. "
                        f"Expected {root}/train/<class>/ and {root}/val/<class>/.")
    names = ("train",) if split == "train" else ("val", "validation", "test")
    for sub in names:
        if (root / sub).is_dir():
            return ImageFolderDataset(root / sub, classes=classes, skip_bad=skip_bad)
    raise DataError(f"Data directory {root} has no {names[0]}/ sub-folder (looked for {', '.join(names)}). "
                    f"Expected {root}/train/<class>/ and {root}/val/<class>/.")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR (torchvision readers; download only on request)

def _cifar(name: str, data_dir: str | None, split: str, download: bool) -> TensorImageDataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    if data_dir is None:
        raise DataError(f"{name} needs --data-dir (a folder holding the torchvision CIFAR files, or where to "
                        "download them with --download).")
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        ds = cls(root=str(Path(data_dir).expanduser()), train=split == "train", download=download)
    except RuntimeError as e:
        raise DataError(f"{name} not found in {data_dir} ({e}). Pass --download to fetch it, or point --data-dir "
                        "at the folder that holds cifar-10-batches-py/ or cifar-100-python/.") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return TensorImageDataset(images, torch.tensor(ds.targets), tuple(ds.classes), name=name)


def dataset_key(name: str) -> str:
    """The canonical name of data set ``name`` (``FashionMNIST``, ``image_folder``, ``CIFAR-10`` are accepted)."""
    key = str(name).lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "image-folder": "imagefolder", "folder": "imagefolder",
           "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise DataError(f"dataset (--dataset) must be one of {', '.join(DATASETS)}, got {name!r}")
    return key


def load_dataset(
    name: str = "fashion-mnist", *, data_dir: str | None = None, split: str = "train", download: bool = False,
    classes: Sequence[str] | None = None, skip_bad_images: bool = False,
) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`) and split (``"train"`` or ``"val"``; ``"test"`` means
    ``"val"``). Returns a dataset of ``(uint8 (C, H, W) image, int label)`` with ``num_classes``, ``in_chans``,
    ``classes`` and ``image_size`` attributes.

    ``classes`` (image folders): label by this class list, matched by folder name (see :func:`load_splits`);
    ``skip_bad_images``: skip undecodable image files instead of stopping (image folders)."""
    key = dataset_key(name)
    split = split.lower()
    if split == "test":
        split = "val"
    if split not in ("train", "val"):
        raise DataError(f"Unknown split {split!r}; expected 'train' or 'val' ('test' is accepted as 'val').")
    if key == "fashion-mnist":  # never downloaded: the missing-file error says how to install it
        return _fashion_mnist(data_dir, split)
    if key == "imagefolder":
        return _imagefolder(data_dir, split, classes, skip_bad_images)
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
                skip_bad_images: bool = False) -> tuple[Dataset, Dataset]:
    """The training and validation splits of a data set, labelled alike: the validation split's classes are
    matched to the training split's by name (:func:`check_splits`)."""
    train = load_dataset(name, data_dir=data_dir, split="train", download=download,
                         skip_bad_images=skip_bad_images)
    val = load_dataset(name, data_dir=data_dir, split="val", download=download,
                       classes=getattr(train, "classes", None), skip_bad_images=skip_bad_images)
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
