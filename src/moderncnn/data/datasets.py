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
from collections.abc import Callable
from pathlib import Path

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
    "TransformedDataset",
    "load_dataset",
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


class TransformedDataset(Dataset):
    """Apply ``transform`` to the images of ``dataset`` (keeps its descriptive attributes).

    The trainer can rebuild or mutate the transform between epochs (progressive learning); with DataLoader
    worker processes that only takes effect if the workers are re-created (``persistent_workers=False``).
    """

    def __init__(self, dataset: Dataset, transform: Callable | None) -> None:
        self.dataset = dataset
        self.transform = transform
        for attr in ("num_classes", "in_chans", "classes", "image_size", "targets", "name"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, label


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
    """``root/<class name>/<image>`` files, classes sorted by name. Images are decoded to RGB uint8 when read;
    an unreadable file raises :class:`DataError` naming it."""

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"Image folder {root} does not exist. Expected {root}/<class name>/<image files>.")
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise DataError(f"Image folder {root} has no class sub-folders. Expected {root}/<class name>/<images>.")
        samples: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            files = sorted(
                f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            samples.extend((f, label) for f in files)
        if not samples:
            raise DataError(
                f"Image folder {root} has class folders ({', '.join(d.name for d in class_dirs[:5])}"
                f"{', ...' if len(class_dirs) > 5 else ''}) but no image files with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}."
            )
        self.root = root
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.classes = tuple(d.name for d in class_dirs)
        self.num_classes = len(self.classes)
        self.in_chans = 3
        self.image_size = None  # varies per file
        self.name = "imagefolder"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """Decode file ``index`` to an RGB uint8 tensor (3, H, W)."""
        from PIL import Image

        path = self.samples[index][0]
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... depending on the codec
            raise DataError(f"Cannot decode image {path}: {e}. Delete or replace the file.") from e
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)

    def __getitem__(self, index: int):
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.samples[index][1]

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, classes={self.num_classes})"


def _imagefolder(data_dir: str | None, split: str) -> ImageFolderDataset:
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
            return ImageFolderDataset(root / sub)
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


def load_dataset(
    name: str = "fashion-mnist", *, data_dir: str | None = None, split: str = "train", download: bool = False
) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`) and split (``"train"`` or ``"val"``; ``"test"`` means
    ``"val"``). Returns a dataset of ``(uint8 (C, H, W) image, int label)`` with ``num_classes``, ``in_chans``,
    ``classes`` and ``image_size`` attributes."""
    key = name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "image-folder": "imagefolder", "folder": "imagefolder",
           "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")
    split = split.lower()
    if split == "test":
        split = "val"
    if split not in ("train", "val"):
        raise DataError(f"Unknown split {split!r}; expected 'train' or 'val' ('test' is accepted as 'val').")
    if key == "fashion-mnist":  # never downloaded: the missing-file error says how to install it
        return _fashion_mnist(data_dir, split)
    if key == "imagefolder":
        return _imagefolder(data_dir, split)
    return _cifar(key, data_dir, split, download)
