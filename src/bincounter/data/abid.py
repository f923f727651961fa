"""Reading the Amazon Bin Image Dataset (ABID) layout, with validation.

Layout (the public bucket `aft-vbi-pds` and a local copy alike)::

    ROOT/bin-images/<id>.jpg
    ROOT/metadata/<id>.json      {"BIN_FCSKU_DATA": {<asin>: {..., "quantity": q}}, "EXPECTED_QUANTITY": n}
    ROOT/file_list.json          {"1": ["data/metadata/00009.json", ...], ..., "5": [...]}   (optional)

Ids are zero-padded to 5 digits (6 from 100000 on). A file list path's basename gives the id.

Bad records never crash a DataLoader later: `scan` returns the good bins plus a `Skips` counter that says
how many were dropped and why; the callers log it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import COUNTS
from ..errors import DataError

ID_RE = re.compile(r"^\d{5,}$")


@dataclass(frozen=True)
class Bin:
    id: str
    count: int
    image: Path
    metadata: Path


@dataclass
class Skips:
    """Bins dropped while reading, by reason, with a few examples each."""

    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        if not self.total:
            return "skipped 0 bins"
        parts = [f"{n} {reason} (e.g. {', '.join(self.examples[reason])})"
                 for reason, n in self.reasons.most_common()]
        return f"skipped {self.total} bins: " + "; ".join(parts)


def bin_id_from_path(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    if not ID_RE.match(stem):
        raise DataError(f"{path!r} does not name an ABID bin (expected a numeric id like 00009.json)")
    return stem


def read_count(metadata_path: str | Path, counts: tuple[int, ...] = COUNTS) -> int:
    """Parse one metadata JSON and return its EXPECTED_QUANTITY, validated against the schema and `counts`."""
    try:
        with open(metadata_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{metadata_path}: metadata file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{metadata_path}: not valid JSON ({e})") from None
    return count_from_metadata(meta, str(metadata_path), counts)


def count_from_metadata(meta: object, where: str, counts: tuple[int, ...] = COUNTS) -> int:
    if not isinstance(meta, dict) or "EXPECTED_QUANTITY" not in meta:
        raise DataError(f"{where}: no EXPECTED_QUANTITY (not ABID metadata)")
    n = meta["EXPECTED_QUANTITY"]
    if isinstance(n, bool) or not isinstance(n, int):
        raise DataError(f"{where}: EXPECTED_QUANTITY is {n!r}, expected an integer")
    items = meta.get("BIN_FCSKU_DATA")
    if not isinstance(items, dict):
        raise DataError(f"{where}: BIN_FCSKU_DATA missing or not an object")
    if n not in counts:
        raise DataError(f"{where}: EXPECTED_QUANTITY={n} is outside {counts[0]}..{counts[-1]}")
    return n


def read_file_list(path: str | Path, counts: tuple[int, ...] = COUNTS) -> dict[int, list[str]]:
    """Parse a `file_list.json` ({"1": [".../00009.json", ...], ...}) into {count: [bin id, ...]}."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file list not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: file list is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: file list must be a non-empty object like "
                        '{"1": ["data/metadata/00009.json", ...], ...}')
    out: dict[int, list[str]] = {}
    for key, paths in raw.items():
        try:
            count = int(key)
        except ValueError:
            raise DataError(f"{path}: key {key!r} is not an item count") from None
        if count not in counts:
            raise DataError(f"{path}: key {key!r} is outside the counts {counts[0]}..{counts[-1]}")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise DataError(f"{path}: value for {key!r} must be a list of metadata paths")
        out[count] = [bin_id_from_path(p) for p in paths]
    return out


def scan(root: str | Path, file_list: str | Path | None = None,
         counts: tuple[int, ...] = COUNTS) -> tuple[list[Bin], Skips]:
    """Find the usable bins under an ABID root.

    With a file list, exactly the listed bins are read (and the list's class must agree with the
    metadata); without one, every `metadata/*.json` is. Problems are counted, not raised, except when the
    root itself is unusable.
    """
    root = Path(root)
    if not (root / "metadata").is_dir() or not (root / "bin-images").is_dir():
        raise DataError(f"{root}: not an ABID directory (needs bin-images/ and metadata/)")
    skips = Skips()
    if file_list is not None:
        listed = read_file_list(file_list, counts)
        wanted = [(bid, c) for c, ids in sorted(listed.items()) for bid in ids]
    else:
        wanted = [(p.stem, None) for p in sorted((root / "metadata").glob("*.json"))]
    bins: list[Bin] = []
    seen: set[str] = set()
    for bid, listed_count in wanted:
        if bid in seen:
            skips.add("listed twice", bid)
            continue
        seen.add(bid)
        meta = root / "metadata" / f"{bid}.json"
        image = root / "bin-images" / f"{bid}.jpg"
        try:
            count = read_count(meta, counts)
        except DataError as e:
            msg = str(e)
            reason = ("missing metadata" if "not found" in msg else
                      "count out of range" if "outside" in msg else "bad metadata")
            skips.add(reason, bid)
            continue
        if listed_count is not None and listed_count != count:
            skips.add("file list disagrees with metadata", bid)
            continue
        if not image.is_file():
            skips.add("missing image", bid)
            continue
        bins.append(Bin(bid, count, image, meta))
    return bins, skips
