"""`bincounter data eda`: look at an ABID directory before training on it.

Writes REPORT/index.html (self-contained: plots embedded) + REPORT/*.png + REPORT/eda.json with:
class histogram (every EXPECTED_QUANTITY, in range or not), image sizes, item dimensions and weights from
the metadata, a grid of sample images per count, and warnings: class imbalance, corrupt or tiny images,
duplicate images (same sha256).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from .. import COUNTS
from ..errors import DataError
from ..preprocess import decode

log = logging.getLogger(__name__)
TINY = 64  # pixels, shorter side
IMBALANCE = 1.5  # largest / smallest class


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shard_dirs(root: Path) -> list[Path]:
    """The sharded channels under `root` (`data shard`'s output or one of its splits), else []."""
    from .shards import INDEX

    if (root / INDEX).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if (p / INDEX).is_file()) if root.is_dir() else []


def _records(root: Path, metadata_only: bool = False):
    """(bin id, metadata text or None, image bytes or None) per bin: from an ABID directory (metadata/ +
    bin-images/) or from shards (each sample's JSON holds {"count", "metadata"}). -> (number of bins, records)."""
    shard_dirs = _shard_dirs(root)
    if shard_dirs:
        from .shards import iter_tar, read_index

        indexes = [(d, read_index(d)) for d in shard_dirs]

        def from_shards():
            for d, index in indexes:
                for sh in index["shards"]:
                    for key, parts in iter_tar(d / sh["name"]):
                        meta = None
                        if "json" in parts:
                            try:
                                doc = json.loads(parts["json"])
                                meta = json.dumps(doc.get("metadata") or {"EXPECTED_QUANTITY": doc["count"]})
                            except (ValueError, KeyError, TypeError, AttributeError):
                                meta = ""  # present but unreadable: counted as bad metadata
                        yield key, meta, parts.get("jpg")

        return sum(i["samples"] for _, i in indexes), from_shards()
    metas = sorted((root / "metadata").glob("*.json")) if (root / "metadata").is_dir() else []
    if not metas:
        raise DataError(f"{root}: no metadata/*.json (not an ABID directory, nor shards from `data shard`)")

    def from_dir():
        for m in metas:
            img = root / "bin-images" / f"{m.stem}.jpg"
            yield m.stem, m.read_text(), None if metadata_only else img.read_bytes() if img.is_file() else None

    return len(metas), from_dir()


def run(src: str | Path, out: str | Path, metadata_only: bool = False) -> Path:
    """`data eda` (and the pipeline's Prepare step): analyse with a progress bar, write the report, log each
    warning. -> the report's index.html. `metadata_only`: no image is read (the image checks are the sharding
    step's)."""
    from ..progress import progress

    with progress(None, "eda", unit="bin") as bar:
        stats = analyse(src, progress=bar, metadata_only=metadata_only)
    index = write_report(stats, out)
    for w in stats["warnings"]:
        log.warning(w)
    return index


def analyse(root: str | Path, progress=None, metadata_only: bool = False) -> dict:
    """Statistics and warnings of an ABID directory, or of sharded channels (`data shard`'s output)."""
    root = Path(root)
    n_bins, records = _records(root, metadata_only)
    quantities: Counter = Counter()
    bad_meta, missing_img, corrupt, tiny = [], [], [], []
    sizes, dims, weights, by_count = [], [], [], defaultdict(list)
    hashes: dict[str, list[str]] = defaultdict(list)
    for bid, meta_text, data in records:
        try:
            meta = json.loads(meta_text)
            q = meta["EXPECTED_QUANTITY"]
            items = meta.get("BIN_FCSKU_DATA") or {}
        except (ValueError, KeyError, TypeError):
            bad_meta.append(bid)
            continue
        quantities[q] += 1
        for it in items.values():
            try:
                dims.append([float(it[k]["value"]) for k in ("length", "width", "height")])
                weights.append(float(it["weight"]["value"]))
            except (KeyError, TypeError, ValueError):
                pass
        if data is None:
            if not metadata_only:
                missing_img.append(bid)
            continue
        hashes[hashlib.sha256(data).hexdigest()].append(bid)
        try:
            decode(data, TINY)  # the check `data split` makes: a file it will skip is a corrupt image here
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size  # as stored (decode's draft mode may have scaled it down)
        except DataError:  # whatever the decoder raised: decode turns it into a DataError
            corrupt.append(bid)
            continue
        sizes.append((w, h))
        if min(w, h) < TINY:
            tiny.append(bid)
        if len(by_count[q]) < 6:
            by_count[q].append(io.BytesIO(data))
        if progress is not None:
            progress.update(1)
    in_range = {c: quantities.get(c, 0) for c in COUNTS}
    duplicates = [ids for ids in hashes.values() if len(ids) > 1]
    warnings = []
    nonzero = [v for v in in_range.values() if v]
    if nonzero and max(nonzero) / min(nonzero) > IMBALANCE:
        big, small = max(in_range, key=in_range.get), min((c for c in in_range if in_range[c]), key=in_range.get)
        warnings.append(f"class imbalance: count {big} has {in_range[big]} bins, count {small} has "
                        f"{in_range[small]} ({in_range[big] / in_range[small]:.1f}x); consider "
                        "`data split --balance cap`")
    if any(v == 0 for v in in_range.values()):
        warnings.append(f"no bins for counts {[c for c, v in in_range.items() if v == 0]}")
    out_of_range = {q: n for q, n in quantities.items() if q not in COUNTS}
    if out_of_range:
        n_out = sum(out_of_range.values())
        warnings.append(f"{n_out} bins with counts outside 1..5 {dict(sorted(out_of_range.items()))} "
                        "will be skipped by the split")
    for name, ids in (("corrupt images", corrupt), ("tiny images (< 64 px)", tiny),
                      ("missing images", missing_img), ("bad metadata", bad_meta)):
        if ids:
            warnings.append(f"{len(ids)} {name}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}")
    if duplicates:
        warnings.append(f"{len(duplicates)} groups of duplicate images (same sha256), e.g. {duplicates[0][:4]}")
    sz = np.array(sizes) if sizes else np.zeros((0, 2))
    return {
        "root": str(root), "bins": n_bins, "quantity_histogram": {str(k): v for k, v in sorted(quantities.items())},
        "usable_per_count": {str(k): v for k, v in in_range.items()},
        "image_size": {"n": len(sizes), "width_median": float(np.median(sz[:, 0])) if len(sz) else None,
                       "height_median": float(np.median(sz[:, 1])) if len(sz) else None,
                       "min_side": int(sz.min()) if len(sz) else None},
        "item_dimensions_in": {"n": len(dims), "median_lwh": np.median(np.array(dims), 0).round(2).tolist()
                               if dims else None},
        "item_weight_lb": {"n": len(weights), "median": float(np.median(weights)) if weights else None},
        "corrupt_images": corrupt, "tiny_images": tiny, "missing_images": missing_img, "bad_metadata": bad_meta,
        "duplicate_groups": duplicates, "warnings": warnings,
        "_plots": {"sizes": sizes, "dims": dims, "weights": weights, "samples": {c: by_count[c][:6] for c in COUNTS}},
    }


def write_report(stats: dict, out: str | Path) -> Path:
    plt = _plt()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = stats.pop("_plots")
    pngs = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        pngs.append(name)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    hist = {int(k): v for k, v in stats["quantity_histogram"].items()}
    ks = sorted(hist)
    # one evenly spaced bar per quantity, labelled with it; positions, not the labels themselves as x values: a list
    # of number-like strings makes matplotlib log "Using categorical units ..." (INFO) on every report
    ax.bar(range(len(ks)), [hist[k] for k in ks], tick_label=[str(k) for k in ks],
           color=["tab:blue" if k in COUNTS else "tab:gray" for k in ks])
    ax.set_xlabel("EXPECTED_QUANTITY (gray: outside 1..5, skipped)")
    ax.set_ylabel("bins")
    ax.set_title("Items per bin")
    save(fig, "class_histogram.png")

    if plots["sizes"]:
        s = np.array(plots["sizes"])
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(s[:, 0], s[:, 1], s=6, alpha=0.5)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        ax.set_title("Image sizes")
        save(fig, "image_sizes.png")
    if plots["dims"]:
        d = np.array(plots["dims"])
        fig, axes = plt.subplots(1, 4, figsize=(12, 3))
        for i, name in enumerate(("length", "width", "height")):
            axes[i].hist(d[:, i], bins=30)
            axes[i].set_title(f"item {name} (in)")
        axes[3].hist(plots["weights"], bins=30, color="tab:orange")
        axes[3].set_title("item weight (lb)")
        save(fig, "item_dimensions.png")
    samples = plots["samples"]
    ncol = max((len(v) for v in samples.values()), default=0)
    if ncol:
        fig, axes = plt.subplots(len(COUNTS), ncol, figsize=(2 * ncol, 1.7 * len(COUNTS)), squeeze=False)
        for r, c in enumerate(COUNTS):
            for j in range(ncol):
                ax = axes[r][j]
                ax.axis("off")
                if j < len(samples[c]):
                    ax.imshow(decode(samples[c][j].getvalue(), 160))  # as the model sees it
                if j == 0:
                    ax.set_title(f"{c} item{'s' if c > 1 else ''}", fontsize=9, loc="left")
        save(fig, "samples.png")

    (out / "eda.json").write_text(json.dumps(stats, indent=2))
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in stats["warnings"]) or "<li>none</li>"
    imgs = "".join(f'<h3>{html.escape(p[:-4].replace("_", " "))}</h3><img src="data:image/png;base64,'
                   f'{base64.b64encode((out / p).read_bytes()).decode()}" style="max-width:100%">' for p in pngs)
    numbers = html.escape(json.dumps({k: v for k, v in stats.items() if k not in ("duplicate_groups",)}, indent=1))
    (out / "index.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>bincounter EDA: {html.escape(stats['root'])}</title>"
        f"<body style='font-family:sans-serif;max-width:1000px;margin:auto'>"
        f"<h1>ABID EDA</h1><p>{stats['bins']} bins in <code>{html.escape(stats['root'])}</code></p>"
        f"<h2>Warnings</h2><ul>{warn}</ul><h2>Plots</h2>{imgs}<h2>Numbers</h2><pre>{numbers}</pre>")
    return out / "index.html"
