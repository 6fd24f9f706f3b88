"""CIFAR-10 and CIFAR-100: safe reading of the official python batches, splits, and batched augmentation.

The batches are pickles; they are read with a restricted unpickler that can build nothing but
numpy arrays and plain Python values, so a tampered file cannot run code. The whole data set
lives in memory as one uint8 tensor; augmentation (random crop with padding, horizontal flip,
cutout) is done on whole batches with tensor ops, with every random draw of an epoch made up
front from a seeded generator, so any step of any epoch can be reproduced exactly on resume.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..utils.errors import UserError

__all__ = [
    "DataError",
    "CifarArrays",
    "load_cifar10",
    "load_cifar",
    "DATASETS",
    "resolve_data_root",
    "BatchLoader",
    "DataAugmentation",
    "CIFAR_MEAN",
    "CIFAR_STD",
]

CIFAR_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR_STD = (0.24703223, 0.24348513, 0.26158784)
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where and how a CIFAR variant stores its python batches."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str


DATASETS = {
    "cifar10": CifarLayout("CIFAR-10", FOLDER, TRAIN_FILES, TEST_FILES, "labels", 10, CIFAR_MEAN, CIFAR_STD, "CIFAR10"),
    "cifar100": CifarLayout(
        "CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
        (0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047), "CIFAR100",
    ),  # fmt: skip
}


class DataError(UserError):
    """Missing, unreadable or malformed data; the message says which file and what to do."""


# ----------------------------------------------------------------------------------------- safe reading


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array reconstruction, ndarray and dtype."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain values are allowed")


def read_batch(path: Path, layout: CifarLayout | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file safely and check its layout; return (uint8 N x 3072, int64 labels)."""
    layout = layout or DATASETS["cifar10"]
    name, key = layout.name, layout.label_key
    try:
        with open(path, "rb") as handle:
            batch = RestrictedUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{name} file {path} is missing") from None
    except IsADirectoryError:
        raise DataError(f"{name} file {path} is a folder, not a batch file; replace it with a fresh copy") from None
    except OSError as exc:
        raise DataError(f"cannot read {name} file {path}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{name} file {path} is corrupt or unsafe ({exc}); replace it with a fresh copy") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name} file {path} does not hold a batch dictionary; replace it with a fresh copy")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(key.encode(), batch.get(key))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise DataError(f"{name} file {path} has no uint8 N x 3072 'data' array; replace it with a fresh copy")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise DataError(f"{name} file {path} has labels that do not match its images; replace it with a fresh copy")
    label_array = np.asarray(labels)
    if label_array.dtype.kind not in "iu" or (label_array.size and (label_array.min() < 0 or label_array.max() >= layout.num_classes)):
        raise DataError(f"{name} file {path} has labels outside 0..{layout.num_classes - 1}; replace it with a fresh copy")
    return data, label_array.astype(np.int64)


@dataclass
class CifarArrays:
    """Images as a uint8 tensor (N, 3, 32, 32), labels as int64 (N,), and the normalisation of the set."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def __len__(self) -> int:
        return self.labels.shape[0]

    def slice(self, start: int, stop: int) -> "CifarArrays":
        return CifarArrays(self.images[start:stop], self.labels[start:stop], self.mean, self.std)


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The folder that holds the CIFAR folders: the argument, else $DARTS_SG_DATA, else ./data."""
    if data_root is None:
        data_root = os.environ.get("DARTS_SG_DATA") or "./data"
    return Path(data_root).expanduser()


def _download(root: Path, layout: CifarLayout) -> None:
    try:
        import torchvision.datasets

        root.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=True, download=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{layout.name} is not in {root / layout.folder} and downloading it failed ({reason}); "
            f"put the python batches there or pass --data-root / set DARTS_SG_DATA"
        ) from None


def load_cifar10(
    data_root: str | os.PathLike | None = None, train: bool = True, download: bool = True
) -> CifarArrays:
    """Load the CIFAR-10 training (50k) or test (10k) set into memory, downloading it if absent."""
    return load_cifar("cifar10", data_root, train, download)


def load_cifar(
    dataset: str, data_root: str | os.PathLike | None = None, train: bool = True, download: bool = True
) -> CifarArrays:
    """Load `dataset` (cifar10 or cifar100; 50k training or 10k test images) into memory, downloading it if absent."""
    layout = DATASETS[dataset]
    root = resolve_data_root(data_root)
    folder = root / layout.folder
    if not folder.is_dir():
        if not download:
            raise DataError(f"{layout.name} is not in {folder}; pass --data-root or set DARTS_SG_DATA")
        _download(root, layout)
    files = layout.train_files if train else layout.test_files
    parts = [read_batch(folder / name, layout) for name in files]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return CifarArrays(torch.from_numpy(images), torch.from_numpy(labels), layout.mean, layout.std)


# ----------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class DataAugmentation:
    """Training augmentation: random crop after zero padding, horizontal flip, cutout (0 = off)."""

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0


NO_AUGMENTATION = DataAugmentation(crop_padding=0, flip=False, cutout=0)


def epoch_seed(seed: int, stream: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, data stream, epoch)."""
    return (seed * 1_000_003 + stream * 10_007 + epoch) % (2**63 - 1)


class BatchLoader:
    """Iterates over (images, labels) batches of an in-memory CIFAR array, augmented in batches.

    Each epoch's permutation and augmentation draws are made up front from a generator seeded by
    (seed, stream, epoch), so ``iterate(epoch, start_step)`` reproduces any step exactly. The
    uint8 data set itself lives on `device` (150 MB for CIFAR, which any GPU holds), the draws
    are made on the CPU and moved there once per epoch, and cropping, flipping, normalising and
    cutout run there: the same batches on every device, and no host-to-device copy per step.
    Images are normalised float32; with `world_size` > 1 each rank gets its own contiguous share
    of every global batch.
    """

    def __init__(
        self,
        data: CifarArrays,
        batch_size: int,
        augmentation: DataAugmentation = NO_AUGMENTATION,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        stream: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise UserError(f"--batch-size must be positive, got {batch_size}")
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} must be divisible by the number of processes ({world_size}); change one of them")
        self.data = data
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed, self.stream = seed, stream
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        pad = augmentation.crop_padding
        images = data.images.to(self.device)
        self._images = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
        self._labels = data.labels.to(self.device)
        self._mean = torch.tensor(data.mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(data.std, device=self.device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _draws(self, epoch: int) -> dict[str, torch.Tensor]:
        n = len(self.data)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.stream, epoch))
        draws = {"order": torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)}
        aug = self.augmentation
        if aug.crop_padding:
            draws["offsets"] = torch.randint(0, 2 * aug.crop_padding + 1, (n, 2), generator=gen)
        if aug.flip:
            draws["flip"] = torch.rand(n, generator=gen) < 0.5
        if aug.cutout:
            draws["centres"] = torch.randint(0, 32, (n, 2), generator=gen)
        return {name: values.to(self.device) for name, values in draws.items()}

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `epoch`, starting at step `start_step`."""
        draws = self._draws(epoch)
        for step in range(start_step, len(self)):
            lo = step * self.batch_size
            hi = min(lo + self.batch_size, len(self.data))
            share = -(-(hi - lo) // self.world_size)
            lo, hi = lo + self.rank * share, min(hi, lo + (self.rank + 1) * share)
            yield self._make_batch(draws, slice(lo, hi))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def _make_batch(self, draws: dict[str, torch.Tensor], part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        idx = draws["order"][part]
        if "offsets" in draws:
            images = crop(self._images, idx, draws["offsets"][part])
        else:
            images = self._images[idx]
        images = images.float()
        if "flip" in draws:
            images = torch.where(draws["flip"][part].view(-1, 1, 1, 1), images.flip(3), images)
        images = (images - self._mean) / self._std
        if "centres" in draws:
            images = cutout(images, draws["centres"][part], self.augmentation.cutout)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, self._labels[idx]


def crop(padded: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Crop a `size` x `size` window at per-image (top, left) offsets from padded images, in one gather."""
    ar = torch.arange(size, device=padded.device)
    rows = (offsets[:, 0:1] + ar).view(-1, 1, size, 1)
    cols = (offsets[:, 1:2] + ar).view(-1, 1, 1, size)
    channels = torch.arange(padded.shape[1], device=padded.device).view(1, -1, 1, 1)
    return padded[idx.view(-1, 1, 1, 1), channels, rows, cols]


def cutout(images: torch.Tensor, centres: torch.Tensor, length: int) -> torch.Tensor:
    """Zero a `length` x `length` square (clipped at the border) around each image's centre."""
    h, w = images.shape[-2:]
    half = length // 2
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, w)
    cy, cx = centres[:, 0].view(-1, 1, 1), centres[:, 1].view(-1, 1, 1)
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return images * (~inside).unsqueeze(1).to(images.dtype)
