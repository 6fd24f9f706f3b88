"""ImageNet-style image folders (``train/`` and ``val/``, one subfolder per class) for retraining.

Images are decoded by torchvision's ``ImageFolder`` and augmented as in DARTS' ``train_imagenet``:
random-resized crop, horizontal flip and colour jitter (brightness, contrast, saturation 0.4,
hue 0.2) for training; resize to 256/224 of the crop size and centre crop for evaluation.
Every image's random draws come from a generator seeded by (seed, epoch, position in the epoch),
so an epoch, and any step of it, is the same however many workers decode it, and a resumed
run sees the same images as an uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch

from .data import DataError, epoch_seed

__all__ = ["FolderLoader", "image_folder", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_folder(root: str | os.PathLike, split: str):
    """torchvision ImageFolder of `root`/`split`, or a DataError saying what is missing."""
    from torchvision.datasets import ImageFolder

    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise DataError(f"no ImageNet-style folder {folder}; pass --data-root DIR holding train/ and val/ (one subfolder per class)")
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{folder} holds no images in class subfolders ({exc})") from None


def _transform(train: bool, size: int):
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose(
            [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4, 0.2), *normalize]
        )
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *normalize])


class _SeededImages(torch.utils.data.Dataset):
    """Items are (index, seed): the image at `index`, transformed with torch's RNG seeded by `seed`."""

    def __init__(self, folder, transform):
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class FolderLoader:
    """Batches of an image folder with the interface of ``data.BatchLoader`` (``iterate(epoch, start_step)``)."""

    def __init__(
        self,
        folder,
        batch_size: int,
        train: bool,
        image_size: int = 224,
        subset: int = 0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.images = _SeededImages(folder, _transform(train, image_size))
        self.size = min(subset, len(folder)) if subset else len(folder)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.device, self.channels_last = torch.device(device), channels_last
        self.rank, self.world_size, self.workers = rank, world_size, workers

    def __len__(self) -> int:
        return self.size // self.batch_size if self.train else -(-self.size // self.batch_size)

    def _batches(self, epoch: int, start_step: int) -> list[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, 0, epoch))
        order = torch.randperm(self.size, generator=gen) if self.train else torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.size,), generator=gen)
        batches = []
        for step in range(start_step, len(self)):
            lo = step * self.batch_size
            hi = min(lo + self.batch_size, self.size)
            share = -(-(hi - lo) // self.world_size)
            lo, hi = lo + self.rank * share, min(hi, lo + (self.rank + 1) * share)
            batches.append([(int(order[i]), int(seeds[i])) for i in range(lo, hi)])
        return batches

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `epoch` (normalised float32 on the device), starting at step `start_step`."""
        loader = torch.utils.data.DataLoader(
            self.images, batch_sampler=self._batches(epoch, start_step), num_workers=self.workers
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)
