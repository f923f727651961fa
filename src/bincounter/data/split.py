"""Stratified train/val/test split of an ABID directory into SageMaker channels.

Writes the channel layout the trainer reads, one folder per class::

    DST/train/<count>/<id>.jpg    DST/val/<count>/<id>.jpg    DST/test/<count>/<id>.jpg
    DST/manifest.csv              id,count,split,sha256

Every image is fully decoded once here, so a corrupt or truncated JPEG is counted and left out now
instead of failing a training job later. No bin lands in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import COUNTS
from ..errors import DataError, UserError
from ..preprocess import decode
from .abid import Bin, Skips, read_count, scan

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def assign_splits(bins: list[Bin], val: float, test: float, seed: int) -> dict[str, list[Bin]]:
    """Per class: shuffle with the seed, then take round(n*test) for test, round(n*val) for val. A split asked
    for (fraction > 0) that gets no bin of a count is one warning each: it will not train or measure that count."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise UserError(f"--val {val} and --test {test} must be fractions in [0, 1) with val + test < 1")
    by_class: dict[int, list[Bin]] = defaultdict(list)
    for b in sorted(bins, key=lambda b: b.id):
        by_class[b.count].append(b)
    rng = np.random.default_rng(seed)
    out: dict[str, list[Bin]] = {s: [] for s in SPLITS}
    for count in sorted(by_class):
        members = by_class[count]
        order = rng.permutation(len(members))
        n_test = int(round(len(members) * test))
        n_val = int(round(len(members) * val))
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[split].append(members[i])
        n = len(members)
        for split, frac, got in (("train", 1 - val - test, n - n_test - n_val), ("val", val, n_val),
                                 ("test", test, n_test)):
            if frac > 0 and not got:
                why = (f"all {n} went to val/test: a smaller --val/--test" if split == "train" else
                       f"round({n} x {frac:g}) = 0: a larger --{split}")
                log.warning("%s split: no bins of count %d (count %d has %d usable bin%s; %s, or more bins of "
                            "count %d)", split, count, count, n, "" if n == 1 else "s", why, count)
    return out


def balance_train(train: list[Bin], mode: str, seed: int) -> list[Bin]:
    """Class balancing of the train split only (val/test keep the true distribution).
    cap: every class down to the smallest class's size; oversample: every class up to the largest by
    repeating bins (written as <id>_dupN.jpg)."""
    if mode == "none":
        return train
    by_class: dict[int, list[Bin]] = defaultdict(list)
    for b in train:
        by_class[b.count].append(b)
    sizes = [len(v) for v in by_class.values()]
    rng = np.random.default_rng(seed + 1)
    out: list[Bin] = []
    for count in sorted(by_class):
        members = by_class[count]
        if mode == "cap":
            keep = sorted(rng.choice(len(members), size=min(sizes), replace=False))
            out += [members[i] for i in keep]
        elif mode == "oversample":
            extra = max(sizes) - len(members)
            picks = rng.choice(len(members), size=extra, replace=True) if extra else []
            out += members + [Bin(f"{members[i].id}_dup{k}", members[i].count, members[i].image, members[i].metadata)
                              for k, i in enumerate(picks)]
        else:
            raise UserError(f"--balance must be none, cap or oversample (got {mode!r})")
    return out


def _empty(folder: Path) -> int:
    """Remove what `folder` holds, keeping the folder itself; -> the number of files removed."""
    if not folder.is_dir():
        return 0
    n = 0
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            n += sum(1 for f in child.rglob("*") if not f.is_dir())
            shutil.rmtree(child)
        else:
            child.unlink()
            n += 1
    return n


def run(src: str | Path, dst: str | Path, **kw) -> dict[str, list[Bin]]:
    """`data split` (and the pipeline's Prepare step): `split_dataset` with a progress bar, then the skips and
    one line per split (bins per count) in the log. `kw`: split_dataset's options. -> the splits."""
    from ..progress import progress

    with progress(None, "checking images", unit="img") as bar:
        splits, skips = split_dataset(src, dst, progress=bar, **kw)
    log.info(skips.summary())
    for s in SPLITS:
        per = [sum(1 for b in splits[s] if b.count == c) for c in COUNTS]
        log.info("%-5s %5d bins  per count %s  -> %s", s, len(splits[s]), per, Path(dst) / s)
    return splits


def split_metadata(src: str | Path, val: float = 0.1, test: float = 0.1,
                   seed: int = 0) -> tuple[dict[str, list[Bin]], Skips]:
    """The split from the metadata alone (the pipeline's light Prepare: no image is read or needed here; the
    sharding step checks each image as it fetches it). Bad metadata and counts out of range are counted skips."""
    src = Path(src)
    metas = sorted((src / "metadata").glob("*.json"))
    if not metas:
        raise DataError(f"{src}: no metadata/*.json (the ABID metadata)")
    bins, skips = [], Skips()
    for m in metas:
        try:
            bins.append(Bin(m.stem, read_count(m), src / "bin-images" / f"{m.stem}.jpg", m))
        except DataError as e:
            skips.add("count out of range" if "outside" in str(e) else "bad metadata", m.stem)
    if not bins:
        raise DataError(f"{src}: no usable bins ({skips.summary()})")
    return assign_splits(bins, val, test, seed), skips


def split_dataset(src: str | Path, dst: str | Path, val: float = 0.1, test: float = 0.1, seed: int = 0,
                  file_list: str | Path | None = None, progress=None,
                  balance: str = "none", strict: bool = False) -> tuple[dict[str, list[Bin]], Skips]:
    """Validate, split and write the channels. With `strict`, any bad bin is an error (before anything is
    written) instead of a counted skip."""
    src, dst = Path(src), Path(dst)
    if file_list is None and (src / "file_list.json").is_file():
        file_list = src / "file_list.json"
    bins, skips = scan(src, file_list)
    good: list[Bin] = []
    digests: dict[str, str] = {}
    for b in bins:
        data = b.image.read_bytes()
        try:
            decode(data, 64)
        except DataError:
            skips.add("corrupt image", b.id)
            continue
        finally:
            if progress is not None:
                progress.update(1)
        digests[b.id] = hashlib.sha256(data).hexdigest()
        good.append(b)
    if strict and skips.total:
        raise DataError(f"{src}: {skips.summary()} (--strict)")
    if not good:
        raise DataError(f"{src}: no usable bins ({skips.summary()})")
    splits = assign_splits(good, val, test, seed)
    splits["train"] = balance_train(splits["train"], balance, seed)
    removed = sum(_empty(dst / split) for split in SPLITS)  # emptied, not removed: each may be a mount point
    if removed:
        log.info("removed %d files of an earlier split from %s/{%s}", removed, dst, ",".join(SPLITS))
    dst.mkdir(parents=True, exist_ok=True)
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "count", "split", "sha256"])
        for split in SPLITS:
            for b in splits[split]:
                target = dst / split / str(b.count) / f"{b.id}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(b.image, target)
                w.writerow([b.id, b.count, split, digests[b.image.stem]])
    return splits, skips


def evaluation_channel(data: str) -> str:
    """`evaluate --data` and `sm evaluate --data`: a channel (per-image or sharded), or the whole output of `data
    split` or `data shard` (its train/ val/ test/ folders), which means its test split (said in one line); without
    a test split, one line naming the splits found."""
    from .shards import is_sharded

    root = Path(data)
    found = [s for s in SPLITS if root.is_dir() and not is_sharded(root) and (root / s).is_dir()]
    if not found:
        return data
    if "test" not in found:
        raise UserError(f"--data {data} holds the splits {', '.join(found)} and no test/: pass the split to "
                        f"evaluate on, e.g. --data {root / found[-1]}")
    log.info("--data %s holds the splits %s: evaluating its test split, %s", data, ", ".join(found), root / "test")
    return str(root / "test")
