"""Synthetic ABID bins: the embedded default data for the demo and the tests (the real bucket is not
reachable everywhere).

Each bin is drawn as a photo looks in ABID: a box interior seen from the front (floor, side walls,
perspective), uneven lighting, the elastic straps that hold items in (they occlude parts of items),
tape and paper clutter that are *not* items, and exactly `EXPECTED_QUANTITY` items: products of a few
kinds (same ASIN -> same look), with shadows, labels and partial overlap. Counting is learnable but not
trivial. Everything is a pure function of (seed, bin index), so a seed reproduces the data set byte for
byte.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .. import COUNTS

log = logging.getLogger(__name__)

_WORDS = ["Organic", "Premium", "Wireless", "Stainless", "Kids", "Travel", "Compact", "Deluxe", "Classic",
          "Eco", "Pro", "Mini"]
_THINGS = ["Coffee Mug", "Phone Case", "Notebook", "Water Bottle", "Toy Car", "Candle", "Sock Pack",
           "Charger Cable", "Shampoo", "Puzzle", "Spatula", "Headphones", "Paperback Book", "Dog Treats"]


def synth_bin(rng: np.random.Generator, count: int, width: int) -> tuple[Image.Image, dict]:
    """Draw one bin photo with `count` items; return (image, ABID metadata dict)."""
    img, meta, _ = render_bin(rng, count, width)
    return img, meta


def render_bin(rng: np.random.Generator, count: int, width: int):
    """`synth_bin` plus the bounding boxes of the items drawn (for tests and debugging)."""
    height = int(round(width * rng.uniform(0.75, 0.85)))
    img = _bin_interior(rng, width, height)
    kinds = _product_kinds(rng, count)
    # each unit gets the look of its product kind
    units = [k for k in kinds for _ in range(k["quantity"])]
    rng.shuffle(units)
    boxes: list[tuple[int, int, int, int]] = []
    for kind in units:
        _draw_item(img, rng, kind["look"], boxes)
    _draw_clutter(img, rng)
    _draw_straps(img, rng)
    img = _lighting_and_noise(img, rng)
    meta = {"BIN_FCSKU_DATA": {k["asin"]: k["record"] for k in kinds}, "EXPECTED_QUANTITY": count}
    return img, meta, boxes


def _bin_interior(rng, w, h) -> Image.Image:
    cardboard = rng.random() < 0.6
    base = (np.array([150, 118, 80]) if cardboard else np.array([95, 105, 120])) + rng.integers(-20, 20, 3)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in base * 0.55))
    d = ImageDraw.Draw(img)
    # the floor/back of the bin: an inner quadrilateral, walls around it shaded differently
    mx, my = int(w * rng.uniform(0.08, 0.16)), int(h * rng.uniform(0.08, 0.16))
    inner = [(mx, my), (w - mx, my + int(rng.integers(-5, 6))), (w - mx, h - my), (mx, h - my)]
    d.polygon([(0, 0), (w, 0), inner[1], inner[0]], fill=tuple(int(c) for c in base * 0.75))
    d.polygon([(0, h), (w, h), inner[2], inner[3]], fill=tuple(int(c) for c in base * 0.95))
    d.polygon([(0, 0), (0, h), inner[3], inner[0]], fill=tuple(int(c) for c in base * 0.65))
    d.polygon([(w, 0), (w, h), inner[2], inner[1]], fill=tuple(int(c) for c in base * 0.7))
    d.polygon(inner, fill=tuple(int(c) for c in base))
    # texture: faint corrugation / scuff lines
    for _ in range(int(rng.integers(10, 30))):
        y = int(rng.integers(0, h))
        shade = tuple(int(c) for c in base * rng.uniform(0.85, 1.1))
        d.line([(0, y), (w, y + int(rng.integers(-8, 9)))], fill=shade, width=1)
    return img


def _product_kinds(rng, count) -> list[dict]:
    n_kinds = int(rng.integers(1, count + 1))
    # split `count` units over n_kinds ASINs, each at least one
    cuts = np.sort(rng.choice(np.arange(1, count), size=n_kinds - 1, replace=False)) if n_kinds > 1 else []
    sizes = np.diff(np.concatenate([[0], cuts, [count]])).astype(int)
    kinds = []
    for q in sizes:
        asin = "B0" + "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), 8))
        name = f"{rng.choice(_WORDS)} {rng.choice(_THINGS)}"
        dims = sorted(rng.uniform(0.5, 12.0, 3).round(2), reverse=True)
        record = {
            "asin": asin, "name": name, "normalizedName": name.lower(), "quantity": int(q),
            "length": {"unit": "IN", "value": float(dims[0])},
            "width": {"unit": "IN", "value": float(dims[1])},
            "height": {"unit": "IN", "value": float(dims[2])},
            "weight": {"unit": "pounds", "value": round(float(rng.uniform(0.05, 6.0)), 3)},
        }
        look = {
            "shape": rng.choice(["box", "box", "bottle", "bag", "book"]),
            "color": tuple(int(c) for c in rng.integers(20, 236, 3)),
            "scale": float(rng.uniform(0.20, 0.32)),
            "aspect": float(rng.uniform(0.45, 1.0)),
            "label": bool(rng.random() < 0.6),
        }
        kinds.append({"asin": asin, "record": record, "quantity": int(q), "look": look})
    return kinds


def _overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(smaller, 1)


def _draw_item(img: Image.Image, rng, look: dict, boxes: list) -> None:
    w, h = img.size
    side = min(w, h) * look["scale"] * rng.uniform(0.9, 1.1)
    iw, ih = int(side), max(8, int(side * look["aspect"]))
    if rng.random() < 0.5:
        iw, ih = ih, iw
    tile = Image.new("RGBA", (iw, ih), (0, 0, 0, 0))
    d = ImageDraw.Draw(tile)
    color = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in look["color"])
    edge = tuple(int(c * 0.55) for c in color)
    if look["shape"] == "bottle":
        d.ellipse([0, 0, iw - 1, ih - 1], fill=color + (255,), outline=edge + (255,), width=2)
    elif look["shape"] == "bag":
        d.rounded_rectangle([0, 0, iw - 1, ih - 1], radius=min(iw, ih) // 3, fill=color + (255,),
                            outline=edge + (255,), width=2)
    else:
        d.rectangle([0, 0, iw - 1, ih - 1], fill=color + (255,), outline=edge + (255,), width=2)
        if look["shape"] == "book":
            d.rectangle([0, 0, max(3, iw // 8), ih - 1], fill=edge + (255,))
    if look["label"] and iw > 16 and ih > 16:
        lx, ly = iw // 4, ih // 3
        d.rectangle([lx, ly, lx + iw // 2, ly + ih // 4], fill=(235, 235, 230, 255))
        for x in range(lx + 2, lx + iw // 2 - 2, 3):
            if rng.random() < 0.6:
                d.line([(x, ly + 2), (x, ly + ih // 4 - 2)], fill=(20, 20, 20, 255))
    # a highlight so items look lit from above
    d.line([(2, 2), (iw - 3, 2)], fill=tuple(min(255, c + 50) for c in color) + (255,), width=2)
    tile = tile.rotate(float(rng.uniform(-35, 35)), expand=True, resample=Image.BICUBIC)
    tw, th = tile.size
    # place it on the floor, at most 30% hidden by earlier items, so every item stays countable
    for _attempt in range(40):
        x = int(rng.integers(int(w * 0.06), max(int(w * 0.06) + 1, int(w * 0.94) - tw)))
        y = int(rng.integers(int(h * 0.06), max(int(h * 0.06) + 1, int(h * 0.94) - th)))
        box = (x, y, x + tw, y + th)
        if all(_overlap(box, b) <= 0.3 for b in boxes):
            break
    boxes.append(box)
    alpha = tile.getchannel("A")
    shadow = Image.new("RGBA", tile.size, (0, 0, 0, 0))
    shadow.putalpha(alpha.point(lambda a: a * 0.45).filter(ImageFilter.GaussianBlur(4)))
    img.paste(shadow, (x + 5, y + 6), shadow)
    img.paste(tile, (x, y), tile)


def _draw_clutter(img: Image.Image, rng) -> None:
    """Paper slips and tape pieces: not items, the model must learn to ignore them."""
    w, h = img.size
    d = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(0, 4))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        sw, sh = int(rng.integers(w // 30, w // 12)), int(rng.integers(h // 40, h // 18))
        d.rectangle([x, y, x + sw, y + sh], fill=(240, 240, 235, 220))
    for _ in range(int(rng.integers(0, 3))):
        y = int(rng.integers(0, h))
        d.line([(int(rng.integers(0, w // 3)), y), (int(rng.integers(2 * w // 3, w)), y + int(rng.integers(-15, 16)))],
               fill=(225, 190, 90, 110), width=int(rng.integers(6, 14)))


def _draw_straps(img: Image.Image, rng) -> None:
    """The elastic bands across the front of an ABID bin: dark stripes that hide parts of items."""
    w, h = img.size
    d = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(1, 4))):
        y0 = int(rng.uniform(0.15, 0.85) * h)
        sag = int(rng.integers(-h // 12, h // 12))
        width = int(rng.integers(3, 7))
        tone = int(rng.integers(10, 60))
        pts = [(x, y0 + int(sag * math.sin(math.pi * x / w))) for x in range(0, w + 1, max(1, w // 16))]
        d.line(pts, fill=(tone, tone, tone + 10, 230), width=width)


def _lighting_and_noise(img: Image.Image, rng) -> Image.Image:
    w, h = img.size
    arr = np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.0, 0.5) * h
    dist = np.sqrt(((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2)
    light = rng.uniform(1.0, 1.25) - rng.uniform(0.3, 0.6) * dist
    arr = arr * light[..., None] + rng.normal(0, rng.uniform(2, 7), arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img


def synth_dataset(out: str | Path, per_class: int, seed: int = 0, size: int = 256,
                  counts: tuple[int, ...] = COUNTS, progress=None) -> dict[int, list[str]]:
    """Write `per_class` bins for every count in the real ABID layout, plus `file_list.json`.

    Returns the file list ({count: [metadata path, ...]}). Ids are 1.. in a seeded shuffled order so
    classes interleave like in the real dataset. Into an existing directory: bins with the new ids are
    overwritten, other bins (an earlier, larger set) are left in place, unlisted, with one warning.
    """
    out = Path(out)
    new_ids = {f"{i:05d}" for i in range(1, per_class * len(counts) + 1)}
    old = {f.stem for d, suffix in (("bin-images", ".jpg"), ("metadata", ".json")) if (out / d).is_dir()
           for f in (out / d).iterdir() if f.suffix == suffix} - new_ids
    if old:
        log.warning("%s already holds %d bins that are not part of this set of %d (e.g. %s); they stay there but "
                    "not in file_list.json: `data split` reads only the listed bins, `data eda` reads them all. "
                    "Remove %s first for a clean set", out, len(old), len(new_ids), min(old), out)
    (out / "bin-images").mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.array(counts), per_class)
    np.random.default_rng(seed).shuffle(labels)
    file_list: dict[int, list[str]] = {c: [] for c in counts}
    for idx, count in enumerate(labels, start=1):
        bid = f"{idx:05d}"
        rng = np.random.default_rng([seed, idx])
        img, meta = synth_bin(rng, int(count), size)
        img.save(out / "bin-images" / f"{bid}.jpg", quality=90)
        (out / "metadata" / f"{bid}.json").write_text(json.dumps(meta, indent=1))
        file_list[int(count)].append(f"data/metadata/{bid}.json")
        if progress is not None:
            progress.update(1)
    (out / "file_list.json").write_text(json.dumps({str(c): v for c, v in file_list.items()}, indent=1))
    return file_list
