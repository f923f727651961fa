"""Synthetic data, ABID parsing and validation, the split, and the channel Dataset."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from bincounter import COUNTS
from bincounter.data.abid import read_count, read_file_list, scan
from bincounter.data.dataset import ChannelDataset, list_channel
from bincounter.data.split import split_dataset
from bincounter.data.synth import render_bin, synth_dataset
from bincounter.errors import DataError
from bincounter.preprocess import BACKGROUND, Preprocess

from .poison import dds_unimplemented, exif_poison_jpeg, transparent


# ------------------------------------------------------------------------------------------- synth
def test_synth_writes_real_abid_layout_and_schema(abid_root):
    fl = json.loads((abid_root / "file_list.json").read_text())
    assert sorted(fl) == ["1", "2", "3", "4", "5"]
    assert all(len(v) == 8 for v in fl.values())
    for key, paths in fl.items():
        for p in paths:
            assert p.startswith("data/metadata/") and p.endswith(".json")
            bid = p.rsplit("/", 1)[1][:-5]
            assert len(bid) == 5 and bid.isdigit()
            meta = json.loads((abid_root / "metadata" / f"{bid}.json").read_text())
            assert meta["EXPECTED_QUANTITY"] == int(key)
            items = meta["BIN_FCSKU_DATA"]
            assert sum(it["quantity"] for it in items.values()) == int(key)
            for asin, it in items.items():
                assert it["asin"] == asin
                assert {"name", "normalizedName", "quantity", "height", "length", "width", "weight"} <= set(it)
                assert it["height"]["unit"] == "IN" and it["weight"]["unit"] == "pounds"
            assert (abid_root / "bin-images" / f"{bid}.jpg").is_file()
            assert "width" not in meta and "height" not in meta  # ABID has no image-size fields
    assert (abid_root / "metadata" / "00001.json").exists()


def test_synth_is_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth_dataset(a, 2, seed=7, size=96)
    synth_dataset(b, 2, seed=7, size=96)
    synth_dataset(c, 2, seed=8, size=96)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


@pytest.mark.parametrize("count", COUNTS)
def test_synth_draws_exactly_the_stated_items_mostly_visible(count):
    from bincounter.data.synth import _overlap

    for seed in range(5):
        img, meta, boxes = render_bin(np.random.default_rng([seed, count]), count, 160)
        assert meta["EXPECTED_QUANTITY"] == count == len(boxes)
        assert img.size[0] == 160 and 0.74 * 160 <= img.size[1] <= 0.86 * 160
        # no item hides more than ~30% of an earlier one (placement retries; the last try may exceed it)
        worst = max((_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i]), default=0)
        assert worst <= 0.6


# ---------------------------------------------------------------------------------------- parsing
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ("[]", "non-empty object"),
    ('{"7": ["data/metadata/00001.json"]}', "outside the counts"),
    ('{"one": ["data/metadata/00001.json"]}', "not an item count"),
    ('{"1": "data/metadata/00001.json"}', "list of metadata paths"),
    ('{"1": ["data/metadata/abc.json"]}', "does not name an ABID bin"),
])
def test_bad_file_list_is_one_clear_error(tmp_path, content, needle):
    with pytest.raises(DataError, match=needle):
        read_file_list(_write(tmp_path / "file_list.json", content))


def test_file_list_parses_ids_from_basenames(tmp_path):
    p = _write(tmp_path / "fl.json", '{"2": ["data/metadata/00009.json", "x/100313.json"]}')
    assert read_file_list(p) == {2: ["00009", "100313"]}


@pytest.mark.parametrize("meta, needle", [
    ('{"BIN_FCSKU_DATA": {}}', "no EXPECTED_QUANTITY"),
    ('{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0}', "outside 1..5"),
    ('{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 7}', "outside 1..5"),
    ('{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": "3"}', "expected an integer"),
    ('{"EXPECTED_QUANTITY": 3}', "BIN_FCSKU_DATA"),
    ("{broken", "not valid JSON"),
])
def test_bad_metadata_is_one_clear_error(tmp_path, meta, needle):
    with pytest.raises(DataError, match=needle):
        read_count(_write(tmp_path / "00001.json", meta))


def test_scan_counts_every_skip_by_reason(abid_root, tmp_path):
    import shutil

    root = tmp_path / "abid"
    shutil.copytree(abid_root, root)
    (root / "bin-images" / "00001.jpg").unlink()
    (root / "metadata" / "00002.json").write_text("{broken")
    meta3 = json.loads((root / "metadata" / "00003.json").read_text())
    meta3["EXPECTED_QUANTITY"] = 7
    (root / "metadata" / "00003.json").write_text(json.dumps(meta3))
    meta4 = json.loads((root / "metadata" / "00004.json").read_text())
    meta4["EXPECTED_QUANTITY"] = 0
    (root / "metadata" / "00004.json").write_text(json.dumps(meta4))
    bins, skips = scan(root)
    assert len(bins) == 40 - 4
    assert skips.reasons == {"missing image": 1, "bad metadata": 1, "count out of range": 2}
    assert "skipped 4 bins" in skips.summary() and "00003" in skips.summary()


def test_scan_rejects_a_directory_that_is_not_abid(tmp_path):
    with pytest.raises(DataError, match="not an ABID directory"):
        scan(tmp_path)


# ------------------------------------------------------------------------------------------ split
def test_split_is_stratified_disjoint_and_hashed(abid_root, channels):
    rows = list(csv.DictReader(open(channels / "manifest.csv")))
    assert len(rows) == 40
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == 40  # no bin in two splits
    for split in ("train", "val", "test"):
        per = [sum(1 for r in rows if r["split"] == split and r["count"] == str(c)) for c in COUNTS]
        assert per == ([4] * 5 if split == "train" else [2] * 5), (split, per)
    for r in rows:
        f = channels / r["split"] / r["count"] / f"{r['id']}.jpg"
        assert hashlib.sha256(f.read_bytes()).hexdigest() == r["sha256"]
        assert f.read_bytes() == (abid_root / "bin-images" / f"{r['id']}.jpg").read_bytes()


def test_split_is_deterministic_and_seed_dependent(abid_root, tmp_path):
    a, _ = split_dataset(abid_root, tmp_path / "a", seed=1)
    b, _ = split_dataset(abid_root, tmp_path / "b", seed=1)
    c, _ = split_dataset(abid_root, tmp_path / "c", seed=2)
    ids = lambda s: sorted(x.id for x in s["test"])  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_split_counts_a_corrupt_jpeg_as_skipped(abid_root, tmp_path):
    import shutil

    root = tmp_path / "abid"
    shutil.copytree(abid_root, root)
    jpg = root / "bin-images" / "00005.jpg"
    jpg.write_bytes(jpg.read_bytes()[:300])  # truncated
    splits, skips = split_dataset(root, tmp_path / "ch")
    assert skips.reasons == {"corrupt image": 1}
    assert sum(len(v) for v in splits.values()) == 39


@pytest.mark.parametrize("poison", [exif_poison_jpeg, dds_unimplemented], ids=["exif-struct-error", "dds"])
def test_split_counts_a_file_the_decoder_raises_anything_on_as_skipped(abid_root, tmp_path, poison, caplog):
    """Issue 21, item 5: struct.error (corrupt EXIF orientation) or NotImplementedError (DDS) aborted the split."""
    import logging
    import shutil

    from bincounter.data.split import run

    root = tmp_path / "abid"
    shutil.copytree(abid_root, root)
    (root / "bin-images" / "00005.jpg").write_bytes(poison((128, 128)) if poison is exif_poison_jpeg else poison())
    with caplog.at_level(logging.INFO, "bincounter"):
        splits = run(root, tmp_path / "ch")
    assert sum(len(v) for v in splits.values()) == 39
    assert "skipped 1 bins: 1 corrupt image (e.g. 00005)" in caplog.text


@pytest.mark.parametrize("poison", [exif_poison_jpeg, dds_unimplemented], ids=["exif-struct-error", "dds"])
def test_eda_counts_a_file_the_decoder_raises_anything_on_as_corrupt(abid_root, tmp_path, poison):
    import shutil

    from bincounter.data.eda import analyse

    root = tmp_path / "abid"
    shutil.copytree(abid_root, root)
    (root / "bin-images" / "00005.jpg").write_bytes(poison((128, 128)) if poison is exif_poison_jpeg else poison())
    stats = analyse(root)
    assert stats["corrupt_images"] == ["00005"]


def test_split_again_empties_split_folders_without_removing_them(abid_root, tmp_path, monkeypatch):
    """A split folder may be a mount point (SageMaker local mode mounts each processing output on its own):
    removing it fails (EBUSY), so a new split empties it."""
    import errno
    import shutil
    from pathlib import Path

    dst = tmp_path / "ch"
    stale = dst / "train" / "9" / "stale.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    (dst / "train" / "stale.txt").write_text("x")
    mounts = {dst / s for s in ("train", "val", "test")}
    real = shutil.rmtree

    def rmtree(path, *a, **k):
        if Path(path) in mounts:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    splits, _ = split_dataset(abid_root, dst)
    assert not stale.exists() and not stale.parent.exists() and not (dst / "train" / "stale.txt").exists()
    assert sum(1 for _ in (dst / "train").rglob("*.jpg")) == len(splits["train"])


def test_split_rejects_bad_fractions(abid_root, tmp_path):
    from bincounter.errors import UserError

    with pytest.raises(UserError, match="val"):
        split_dataset(abid_root, tmp_path / "x", val=0.6, test=0.5)


# ---------------------------------------------------------------------------------------- dataset
def test_channel_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_channel(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        list_channel(tmp_path / "empty")
    (tmp_path / "bad" / "7").mkdir(parents=True)
    with pytest.raises(DataError, match="outside the counts"):
        list_channel(tmp_path / "bad")
    (tmp_path / "worse" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="not an item count"):
        list_channel(tmp_path / "worse")


def test_dataset_flags_a_corrupt_image_instead_of_raising(channels_copy):
    victim = next((channels_copy / "train" / "3").iterdir())
    victim.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = ChannelDataset(channels_copy / "train", Preprocess(64), train=True)
    results = [ds[i] for i in range(len(ds))]
    bad = [r for r in results if not r[2]]
    assert len(bad) == 1 and torch.count_nonzero(bad[0][0]) == 0
    assert all(r[0].shape == (3, 64, 64) for r in results)


@pytest.mark.parametrize("poison", [exif_poison_jpeg, dds_unimplemented], ids=["exif-struct-error", "dds"])
def test_dataset_flags_a_file_the_decoder_raises_anything_on(channels_copy, poison):
    """Issue 21, item 5: the corrupt-EXIF JPEG in train/1/ ended a training job with a 40-line traceback."""
    victim = next((channels_copy / "train" / "1").iterdir())
    victim.write_bytes(poison((128, 128)) if poison is exif_poison_jpeg else poison())
    ds = ChannelDataset(channels_copy / "train", Preprocess(64), train=True)
    bad = [i for i in range(len(ds)) if not ds[i][2]]
    assert [ds.samples[i][0] for i in bad] == [victim]


def test_augmentation_is_seeded_per_epoch(channels):
    ds = ChannelDataset(channels / "train", Preprocess(64), train=True, seed=1)
    a = ds[0][0]
    assert torch.equal(a, ds[0][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[0][0]) or not torch.equal(a, ds[1][0])


def test_augmentation_changes_per_epoch_inside_persistent_workers(channels):
    """set_epoch must reach DataLoader workers that outlive the epoch (persistent_workers=True, as the trainer
    uses whenever it has workers, i.e. on every GPU job)."""
    from torch.utils.data import DataLoader

    ds = ChannelDataset(channels / "train", Preprocess(64), train=True, seed=1)
    dl = DataLoader(ds, batch_size=len(ds), num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        epochs.append(next(iter(dl))[0])
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    # and each epoch's images are exactly what the main process computes for that epoch
    ds.set_epoch(2)
    assert torch.equal(epochs[1], torch.stack([ds[i][0] for i in range(len(ds))]))


def test_channel_with_loose_images_says_they_belong_in_count_folders(channels, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, f in enumerate(sorted((channels / "train").rglob("*.jpg"))[:3]):
        (loose / f"{i}.jpg").write_bytes(f.read_bytes())
    with pytest.raises(DataError, match="holds 3 images at its top level; they must be in count folders"):
        list_channel(loose)


def test_16_bit_png_is_scaled_not_clipped_to_white():
    import io

    from PIL import Image

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    png16, png8 = io.BytesIO(), io.BytesIO()
    Image.fromarray(ramp).save(png16, format="PNG")  # 16-bit greyscale, as scanners and depth cameras write
    Image.fromarray((ramp / 257).round().astype(np.uint8)).save(png8, format="PNG")  # the same picture in 8 bits
    img16 = np.asarray(Preprocess(64).load(png16.getvalue())).astype(int)
    img8 = np.asarray(Preprocess(64).load(png8.getvalue())).astype(int)
    assert (img16 == 255).mean() < 0.05, "clipped to white"
    assert np.abs(img16 - img8).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_a_fully_transparent_red_png_is_read_as_the_background_not_red(mode):
    """Issue 21, item 6: transparent pixels were read with their (invisible) colour."""
    img = np.asarray(Preprocess(32).load(transparent(mode)))
    assert img.shape == (32, 32, 3)
    assert (img == np.array(BACKGROUND, dtype=np.uint8)).all(), img[0, 0]


def test_half_transparent_pixels_are_blended_over_the_background():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(buf, format="PNG")
    px = np.asarray(Preprocess(8).load(buf.getvalue())).astype(int)[0, 0]
    want = (np.array([255, 0, 0]) * 128 + np.array(BACKGROUND) * 127) / 255
    assert np.abs(px - want).max() <= 1, px
