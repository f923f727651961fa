"""A prepared channel (`<channel>/<count>/<id>.jpg`) as a torch Dataset.

Augmentation is seeded by (seed, epoch, index). The epoch lives in a shared-memory tensor, so
`set_epoch` reaches DataLoader workers too, persistent ones included (a plain attribute would stay at the
value each worker copied when it started: one fixed augmentation for the whole run).

The dataset never raises on a bad image inside a DataLoader worker: `__getitem__` returns
(tensor, class index, ok) and a sample that cannot be decoded comes back as zeros with ok=False.
The training loop masks those samples out and the trainer logs how many it skipped, per epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import COUNTS
from ..errors import DataError
from ..preprocess import Preprocess, augment

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def list_channel(root: str | Path, counts: tuple[int, ...] = COUNTS) -> list[tuple[Path, int]]:
    """[(image path, class index)] of a channel, sorted; a clear DataError if the channel is unusable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"channel {root} does not exist or is not a directory")
    samples: list[tuple[Path, int]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            count = int(sub.name)
        except ValueError:
            raise DataError(f"channel {root}: folder {sub.name!r} is not an item count "
                            f"(expected {root}/<count>/<id>.jpg)") from None
        if count not in counts:
            raise DataError(f"channel {root}: folder {sub.name!r} is outside the counts "
                            f"{counts[0]}..{counts[-1]}")
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                samples.append((f, counts.index(count)))
    if not samples:
        loose = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if loose:
            raise DataError(f"channel {root} holds {loose} images at its top level; they must be in count "
                            f"folders ({root}/<count>/<id>.jpg, e.g. bincounter data split)")
        raise DataError(f"channel {root} holds no images (expected {root}/<count>/<id>.jpg)")
    return samples


class ChannelDataset(Dataset):
    def __init__(self, root: str | Path, pre: Preprocess, train: bool = False, seed: int = 0):
        self.root = Path(root)
        self.samples = list_channel(root)
        self.pre = pre
        self.train = train
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> list[int]:
        return np.bincount([c for _, c in self.samples], minlength=len(COUNTS)).tolist()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = self.pre.load(str(path))
        except DataError as e:
            log.warning("skipping %s: %s", path, e)
            return torch.zeros(3, self.pre.image_size, self.pre.image_size), label, False
        if self.train:
            img = augment(img, np.random.default_rng([self.seed, self.epoch, i]))
        return self.pre.to_tensor(img), label, True
