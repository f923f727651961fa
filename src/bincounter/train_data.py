"""The trainer's data: the train/val/test channels opened (per-image or sharded: the trainer does not care
which) and their loaders on this rank, each rank reading its own share."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .data.shards import ShardDataset, open_channel
from .distributed import DistInfo
from .preprocess import Preprocess
from .train_config import TrainConfig

log = logging.getLogger("bincounter")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's random stream (dropout, drop-path, loader worker seeds): seed + rank, as timm
    does, so that ranks do not draw the same masks. The model is built before, under `seed` alone: the same
    initial weights on every rank (DDP broadcasts rank 0's anyway)."""
    return seed + rank


@dataclass
class TrainData:
    """The channels and their train and val loaders on this rank."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    train_dl: DataLoader
    val_dl: DataLoader
    workers: int  # DataLoader workers per process


def load_data(cfg: TrainConfig, info: DistInfo, pre: Preprocess) -> TrainData:
    train_ds = open_channel(cfg.train_dir, pre, train=True, seed=cfg.seed)  # per-image or sharded
    val_ds = open_channel(cfg.val_dir, pre)
    test_ds = open_channel(cfg.test_dir, pre) if cfg.test_dir else None
    workers = loader_workers(cfg, info)
    data = TrainData(train_ds, val_ds, test_ds, make_loader(train_ds, cfg, info, True, workers),
                     make_loader(val_ds, cfg, info, False, workers), workers)
    log.info("data: train %d %s, val %d %s%s; %d loader workers per process, world size %d, device %s",
             len(train_ds), train_ds.class_counts(), len(val_ds), val_ds.class_counts(),
             f", test {len(test_ds)} {test_ds.class_counts()}" if test_ds else "", workers, info.world_size,
             info.device)
    return data


def make_loader(ds, cfg: TrainConfig, info: DistInfo, train: bool, workers: int):
    """This rank's loader of `ds`: for training every rank gets its share in a (seed, epoch) order; for
    evaluation an exact shard, nothing padded or repeated."""
    if isinstance(ds, ShardDataset):  # batches itself: the same number per rank, every sample once, nothing padded
        return ds.loader(cfg.batch_size, info.rank, info.world_size, workers,
                         pin_memory=info.device.type == "cuda", shuffle=train)
    if train:
        # the order is a function of (seed, epoch) via set_epoch, on one process too: resume is exact
        sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=False)
        shuffle = False
    else:
        # exact shard, no padding (DistributedSampler would repeat samples and skew the metrics)
        ds = Subset(ds, list(range(info.rank, len(ds), info.world_size))) if info.enabled else ds
        sampler, shuffle = None, False
    g = torch.Generator()
    g.manual_seed(rank_seed(cfg.seed, info.rank))
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      pin_memory=info.device.type == "cuda", drop_last=False, generator=g,
                      persistent_workers=workers > 0)


def loader_workers(cfg: TrainConfig, info: DistInfo) -> int:
    """DataLoader workers per process. On a GPU the CPU only feeds it: use most cores. On a CPU the model
    needs the cores itself; decoding inline costs ~1 ms per image (bench/train_pipeline.py measured
    c/a = 1.00 with 0 workers vs 0.78 with 2 on 2 cores), so only larger machines get workers."""
    if cfg.workers >= 0:
        return cfg.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_proc = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if info.device.type == "cuda":
        return min(8, per_proc - 1)
    return per_proc // 4
