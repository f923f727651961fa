"""Sharded channels: WebDataset-format tar shards plus an index, and the dataset that streams them (writer and
reader of one format in one module, about 450 lines: the index schema and the member naming are defined once;
`shard_parts.combine_indexes` joins the index parts that several machines write).

A sharded channel is one directory per split, readable on its own (local disk, or a SageMaker channel in
File or FastFile mode)::

    SHARDS/train/index.json          what is in each shard: samples, samples per count, bytes, sha256
    SHARDS/train/train-000000.tar    <id>.jpg + <id>.json ({"count": 3, "metadata": {...}}) per sample
    SHARDS/train/train-000001.tar    ...

`write_shards` packs the per-image channels of `data split` into shards in a deterministic order (sorted by id,
then permuted with a fixed seed, so every shard holds a random mix of counts), about `shard_size` bytes each.
The tars are plain ustar files with the WebDataset member naming, so `webdataset.WebDataset(urls)` or `tar`
read them too.

`ShardDataset` is what the trainer gets for such a channel (`open_channel` decides from the index's presence);
it answers what the trainer asks of any channel (`len`, `class_counts`, `set_epoch`, `root`, `samples`) and
makes its own per-rank loader (`loader`). Reading is plain `tarfile` (stdlib), not the `webdataset` library:
webdataset splits *whole shards* across ranks and workers, so uneven shards give ranks unequal sample counts
(a DDP hang, or `with_epoch`/resampling, which repeats or drops samples) and it would be one more dependency in
the image. Here *samples* are assigned, not shards:

* each epoch the shard order is permuted by (seed, epoch); the concatenated sample sequence is cut into
  `world_size` contiguous ranges that differ by at most one sample; each rank cuts its range into batches
  and the batches go round-robin to its DataLoader workers, each worker reading one contiguous part of the
  rank's range (sequential reads; a shard started mid-way is entered by skipping tar headers, not data);
* training: every rank yields the same number of batches (DDP needs the same number of steps everywhere):
  full batches and a shorter last one, or, where a rank is one sample short of that, batches balanced in
  size. Nothing is padded, repeated or dropped: every sample is seen exactly once per epoch;
* a shuffle buffer (`shuffle_buffer` samples, seeded by (seed, epoch, rank, worker)) reorders each worker's
  stream. The order is a function of (seed, epoch, world size, loader workers): a resume on the same
  machine type repeats it exactly;
* validation/test: the same contiguous ranges, in index order, no shuffle, so ranks together evaluate the
  split exactly once;
* the dataset batches itself (the DataLoader runs with batch_size=None): batches are (images, labels, ok)
  like the per-image channel's; a sample whose image does not decode, whose JSON is missing or malformed,
  or that a damaged shard fails to deliver comes back as zeros with ok=False, and the loop masks and counts
  it exactly as for per-image channels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .. import COUNTS
from ..errors import DataError, UserError
from ..preprocess import Preprocess, augment
from .dataset import IMAGE_SUFFIXES, ChannelDataset, list_channel

log = logging.getLogger(__name__)
INDEX = "index.json"
FORMAT = "bincounter-shards/1"
SPLITS = ("train", "val", "test")
DEFAULT_SHARD_SIZE = 256 * 1000 ** 2
#: samples held by each worker's shuffle buffer (encoded bytes: ~100 MB for ABID-sized JPEGs)
SHUFFLE_BUFFER = 1000
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_size(text: str) -> int:
    """'256MB' -> 256_000_000; also KB/MB/GB, KiB/MiB/GiB and plain bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"--shard-size {text!r}: expected a size like 256MB, 1GB or 64MiB")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < 1024:
        raise UserError(f"--shard-size {text!r}: must be at least 1KiB")
    return size


# ---------------------------------------------------------------------------------------------- writing
def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Member headers that depend on the name and size only: the same channels give byte-identical shards."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def _tar_size(n: int) -> int:
    return 512 + (n + 511) // 512 * 512


def _metadata(metadata_dir: Path | None, key: str) -> dict | None:
    if metadata_dir is None:
        return None
    stem = re.sub(r"_dup\d+$", "", key)  # `split --balance oversample` copies
    for p in (metadata_dir / "metadata" / f"{stem}.json", metadata_dir / f"{stem}.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                return None
    return None


def write_split(channel: Path, out: Path, shard_size: int = DEFAULT_SHARD_SIZE, metadata_dir: Path | None = None,
                seed: int = 0) -> dict:
    """One per-image channel -> `out/<split>-NNNNNN.tar` + `out/index.json`. Returns the index."""
    samples = list_channel(channel)
    keys: dict[str, Path] = {}
    for path, _ in samples:
        if path.stem in keys or "." in path.stem:
            raise DataError(f"{channel}: image id {path.stem!r} is {'used twice' if path.stem in keys else 'dotted'} "
                            f"({keys.get(path.stem, path)} and {path}); a shard key must be unique and dot-free")
        keys[path.stem] = path
    return write_samples(samples, out, shard_size=shard_size, metadata_dir=metadata_dir, seed=seed)


def write_samples(samples: list[tuple[Path, int]], out: Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                  metadata_dir: Path | None = None, seed: int = 0, stem: str | None = None,
                  index_path: Path | None = None) -> dict:
    """(image path, label) samples -> `out/<stem>-NNNNNN.tar` (stem: the split, `out`'s name) + their index at
    `index_path` (default `out/index.json`; elsewhere: an index part, see shard_parts)."""
    split, stem = out.name, stem or out.name
    samples = sorted(samples, key=lambda s: s[0].stem)
    order = np.random.default_rng(seed).permutation(len(samples))  # counts mixed within every shard
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    tf = f = None
    cur: dict = {}

    def close():
        tf.close()
        f.close()
        with open(tmp := out / (cur["name"] + ".part"), "rb") as r:
            digest = hashlib.file_digest(r, "sha256").hexdigest()
        os.replace(tmp, out / cur["name"])
        cur.update(bytes=(out / cur["name"]).stat().st_size, sha256=digest)
        shards.append(dict(cur))

    for i in order:
        path, label = samples[i]
        image = path.read_bytes()
        meta = {"count": COUNTS[label]}
        md = _metadata(metadata_dir, path.stem)
        if md is not None:
            meta["metadata"] = md
        blob = json.dumps(meta, sort_keys=True).encode()
        need = _tar_size(len(image)) + _tar_size(len(blob))
        if tf is not None and cur["payload"] + need > shard_size:
            close()
            tf = None
        if tf is None:
            cur = {"name": f"{stem}-{len(shards):06d}.tar", "samples": 0, "counts": [0] * len(COUNTS), "payload": 0}
            f = open(out / (cur["name"] + ".part"), "wb")
            tf = tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT)
        ext = path.suffix.lower().lstrip(".")
        tf.addfile(_tar_info(f"{path.stem}.{ext}", len(image)), io.BytesIO(image))
        tf.addfile(_tar_info(f"{path.stem}.json", len(blob)), io.BytesIO(blob))
        cur["samples"] += 1
        cur["counts"][label] += 1
        cur["payload"] += need
    if tf is not None:
        close()
    _ = [s.pop("payload") for s in shards]
    index = {"format": FORMAT, "split": split, "samples": len(samples),
             "counts": [sum(s["counts"][c] for s in shards) for c in range(len(COUNTS))],
             "bytes": sum(s["bytes"] for s in shards), "shard_size": shard_size, "seed": seed, "shards": shards}
    write_index(index, index_path or out / INDEX)  # last: an index means a complete channel
    return index


def write_index(index: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (tmp := path.with_name(path.name + ".part")).write_text(json.dumps(index, indent=1))
    os.replace(tmp, path)


def write_shards(channels: str | Path, out: str | Path, shard_size: int = DEFAULT_SHARD_SIZE,
                 metadata_dir: str | Path | None = None, seed: int = 0, progress=None) -> dict[str, dict]:
    """Every split under `channels` (train/, val/, test/ from `data split`) -> `out/<split>/` shards.
    Refuses an `out/<split>` that already holds anything (shards are never mixed with older ones)."""
    channels, out = Path(channels), Path(out)
    if not channels.is_dir():
        raise DataError(f"{channels} does not exist or is not a directory")
    splits = [s for s in SPLITS if (channels / s).is_dir()]
    if not splits:
        raise DataError(f"{channels}: no channels (train/, val/, test/); run `bincounter data split` first")
    if metadata_dir is not None and not Path(metadata_dir).is_dir():
        raise DataError(f"--metadata {metadata_dir} is not a directory")
    for s in splits:
        if (out / s).exists() and any((out / s).iterdir()):
            raise UserError(f"{out / s} already exists and is not empty; remove it or choose another --out")
    result = {}
    for s in splits:
        result[s] = write_split(channels / s, out / s, shard_size,
                                Path(metadata_dir) if metadata_dir is not None else None, seed)
        if progress is not None:
            progress.update(result[s]["samples"])
    return result


# ---------------------------------------------------------------------------------------------- reading
def is_sharded(root: str | Path) -> bool:
    return (Path(root) / INDEX).is_file()


def read_index(root: str | Path) -> dict:
    """The index, checked against the directory (every shard present with its recorded size)."""
    root = Path(root)
    try:
        index = json.loads((root / INDEX).read_text())
        assert index.get("format") == FORMAT, f"format {index.get('format')!r} is not {FORMAT}"
        shards = index["shards"]
        assert shards and all(isinstance(s["samples"], int) and s["samples"] > 0 for s in shards), "no shards"
        assert sum(s["samples"] for s in shards) == index["samples"], "sample counts disagree"
        assert all(len(s["counts"]) == len(COUNTS) for s in shards), "counts are not per 1..5"
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"sharded channel {root}: {INDEX} is unusable ({e}); write it again with "
                        "`bincounter data shard`") from None
    for s in shards:
        p = root / s["name"]
        if not p.is_file():
            raise DataError(f"sharded channel {root}: shard {s['name']} named in {INDEX} is missing")
        if p.stat().st_size != s["bytes"]:
            raise DataError(f"sharded channel {root}: shard {s['name']} is {p.stat().st_size} bytes, {INDEX} says "
                            f"{s['bytes']}; upload the shards again")
    return index


def iter_tar(path: Path, skip: int = 0, take: int | None = None):
    """(key, {ext: bytes}) for samples skip..skip+take of one shard, in order. Skipped samples cost their
    tar headers only (data is seeked over). A damaged tar ends the iteration early (the caller notices)."""
    seen = 0  # keys started so far
    key, parts = None, {}
    end = None if take is None else skip + take
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
            while (m := tf.next()) is not None:
                if not m.isfile():
                    continue
                k, _, ext = m.name.rpartition("/")[2].partition(".")
                if k != key:
                    if key is not None and seen > skip:
                        yield key, parts
                    if end is not None and seen >= end:
                        return
                    key, parts, seen = k, {}, seen + 1
                if seen > skip:
                    parts[ext.lower()] = tf.extractfile(m).read()
            if key is not None and seen > skip:
                yield key, parts
    except (OSError, tarfile.TarError, EOFError) as e:
        log.warning("shard %s is damaged after %d samples: %s", path.name, seen, e)


def _bounds(n: int, parts: int, i: int) -> tuple[int, int]:
    return n * i // parts, n * (i + 1) // parts


def batch_sizes(n: int, batch_size: int, batches: int | None = None) -> list[int]:
    """Split n samples into `batches` batches (default: as many as batch_size needs): full batches and a
    shorter last one when possible, else sizes balanced within one sample."""
    if batches is None:
        batches = math.ceil(n / batch_size)
    if batches == 0:
        return []
    last = n - batch_size * (batches - 1)
    if last >= 1:
        return [batch_size] * (batches - 1) + [last]
    q, r = divmod(n, batches)
    return [q + 1] * r + [q] * (batches - r)


class ShardDataset:
    """A sharded channel with the face of a `ChannelDataset`: `len` (samples), `class_counts()`,
    `set_epoch()` (shared memory, so persistent workers see it), `root`, and `samples` (one
    (shard path, sha256) per shard: what `checkpoint.data_fingerprint` hashes, so a checkpoint notices changed
    data); `loader()` gives a rank its DataLoader."""

    def __init__(self, root: str | Path, pre: Preprocess, train: bool = False, seed: int = 0,
                 shuffle_buffer: int = SHUFFLE_BUFFER):
        self.root = Path(root)
        self.index = read_index(self.root)
        self.pre, self.train, self.seed, self.shuffle_buffer = pre, train, seed, shuffle_buffer
        self.shards = [(self.root / s["name"], s["samples"]) for s in self.index["shards"]]
        self.first = np.concatenate([[0], np.cumsum([n for _, n in self.shards])]).tolist()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return int(self.index["samples"])

    def class_counts(self) -> list[int]:
        return list(self.index["counts"])

    @property
    def samples(self) -> list[tuple[Path, str]]:
        return [(self.root / s["name"], s["sha256"]) for s in self.index["shards"]]

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def stream(self, rank: int = 0, world_size: int = 1, batch_size: int = 32, shuffle: bool | None = None,
               keys: bool = False) -> ShardStream:
        return ShardStream(self, rank, world_size, batch_size, self.train if shuffle is None else shuffle, keys)

    def loader(self, batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
               pin_memory: bool = False, shuffle: bool | None = None, keys: bool = False) -> DataLoader:
        # a seeded generator: the workers' base seed must not come from (and advance) the global torch RNG, or a
        # resumed run's dropout stream would differ from an uninterrupted one's
        g = torch.Generator()
        g.manual_seed(self.seed)
        return DataLoader(self.stream(rank, world_size, batch_size, shuffle, keys), batch_size=None,
                          num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0, generator=g)


class ShardStream(IterableDataset):
    """One rank's batches of a `ShardDataset` for the current epoch (see the module docstring)."""

    def __init__(self, ds: ShardDataset, rank: int, world_size: int, batch_size: int, shuffle: bool,
                 keys: bool = False):
        self.ds, self.rank, self.world, self.shuffle, self.keys = ds, rank, world_size, shuffle, keys
        n = len(ds)
        self.lo, self.hi = _bounds(n, world_size, rank)
        mine = self.hi - self.lo
        if shuffle:  # training: every rank the same number of steps
            batches = math.ceil(math.ceil(n / world_size) / batch_size)
            if n // world_size < batches:  # the smallest rank's share: the same answer on every rank
                raise DataError(f"sharded channel {ds.root}: {n} samples cannot give each of {world_size} ranks "
                                f"{batches} batches of at most {batch_size} without repeating samples; use a "
                                "larger batch size or fewer processes")
            self.sizes = batch_sizes(mine, batch_size, batches)
        else:
            self.sizes = batch_sizes(mine, batch_size)

    def __len__(self) -> int:
        return len(self.sizes)

    def _worker_part(self, worker: int, workers: int) -> tuple[int, int, list[int]]:
        """This worker's contiguous part [a, b) of the rank's range and its batch sizes, in its order."""
        per = [sum(self.sizes[k::workers]) for k in range(workers)]
        a = self.lo + sum(per[:worker])
        return a, a + per[worker], self.sizes[worker::workers]

    def _raw(self, epoch: int, a: int, b: int):
        """(global sample number, key, parts) for positions a..b of this epoch's sample sequence. A shard that
        delivers fewer samples than its index says is made up with empty samples (then ok=False)."""
        ds = self.ds
        order = (np.random.default_rng([ds.seed, epoch]).permutation(len(ds.shards)).tolist() if self.shuffle
                 else list(range(len(ds.shards))))
        pos = 0
        for s in order:
            path, n = ds.shards[s]
            lo, hi = max(a, pos), min(b, pos + n)
            if lo < hi:
                got = 0
                for key, parts in iter_tar(path, lo - pos, hi - lo):
                    yield ds.first[s] + lo - pos + got, key, parts
                    got += 1
                for j in range(got, hi - lo):
                    yield ds.first[s] + lo - pos + j, f"{path.name}#{lo - pos + j}", None
            pos += n
            if pos >= b:
                break

    def _sample(self, gid: int, key: str, parts: dict | None, epoch: int):
        ds, pre = self.ds, self.ds.pre
        label, why = 0, None
        if parts is None:
            why = "missing from its shard (damaged tar)"
        else:
            try:
                count = json.loads(parts["json"])["count"]
                label = COUNTS.index(count)
            except KeyError:
                why = "no .json with a count" if "json" not in parts else "its .json has no count"
            except (ValueError, TypeError):
                why = "its .json is not JSON or its count is not in 1..5"
            image = next((parts[e] for e in ("jpg", "jpeg", "png") if e in parts), None)
            if why is None and image is None:
                why = "no image (.jpg/.png)"
        if why is None:
            try:
                img = pre.load(image)
                if ds.train:
                    img = augment(img, np.random.default_rng([ds.seed, epoch, gid]))
                return pre.to_tensor(img), label, True
            except DataError as e:
                why = str(e)
        log.warning("skipping %s in %s: %s", key, ds.root, why)
        return torch.zeros(3, pre.image_size, pre.image_size), label, False

    def __iter__(self):
        wi = get_worker_info()
        worker, workers = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        epoch = self.ds.epoch
        a, b, sizes = self._worker_part(worker, workers)
        raw = self._raw(epoch, a, b)
        if self.shuffle and self.ds.shuffle_buffer > 1:
            raw = _shuffled(raw, self.ds.shuffle_buffer,
                            np.random.default_rng([self.ds.seed, epoch, self.rank, worker]))
        for size in sizes:
            xs, ys, oks, ks = [], [], [], []
            for _ in range(size):
                gid, key, parts = next(raw)
                x, y, ok = self._sample(gid, key, parts, epoch)
                xs.append(x)
                ys.append(y)
                oks.append(ok)
                ks.append(key)
            batch = (torch.stack(xs), torch.tensor(ys, dtype=torch.int64), torch.tensor(oks, dtype=torch.bool))
            yield (*batch, ks) if self.keys else batch


def _shuffled(items, size: int, rng: np.random.Generator):
    """A shuffle buffer: every item comes out exactly once, in an order seeded by rng."""
    buf = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], x = x, buf[j]
        yield x
    for j in rng.permutation(len(buf)):
        yield buf[j]


def open_channel(root: str | Path, pre: Preprocess, train: bool = False, seed: int = 0):
    """The dataset for a channel directory: sharded (it holds index.json) or per-image (<count>/<id>.jpg)."""
    root = Path(root)
    if is_sharded(root):
        return ShardDataset(root, pre, train=train, seed=seed)
    if root.is_dir() and any(p.suffix == ".tar" for p in root.iterdir()):
        raise DataError(f"channel {root} holds .tar files but no {INDEX}; upload the whole shard directory "
                        "written by `bincounter data shard`")
    return ChannelDataset(root, pre, train=train, seed=seed)


__all__ = ["ShardDataset", "ShardStream", "open_channel", "write_shards", "write_samples", "write_index",
           "read_index", "is_sharded", "parse_size", "IMAGE_SUFFIXES"]
