"""Sharded channels: writer, index, the streaming dataset (ranks x workers, epochs, bad samples), training."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bincounter.data.dataset import ChannelDataset
from bincounter.data.shards import INDEX, ShardDataset, batch_sizes, iter_tar, open_channel, write_shards
from bincounter.errors import DataError
from bincounter.preprocess import Preprocess

from .conftest import REPO, assert_one_line_error, run_cli

PRE = Preprocess(32)
SMALL = 20_000  # bytes: the fixture's 128 px bins give 2-3 samples per shard, unevenly


@pytest.fixture(scope="module")
def shards(channels, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(channels, out, shard_size=SMALL)
    return out


def _keys(loader) -> list[list[str]]:
    return [list(b[3]) for b in loader]


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_round_trip_gives_the_same_images_and_labels(channels, shards, tmp_path):
    for split in ("train", "val", "test"):
        index = json.loads((shards / split / INDEX).read_text())
        assert len(index["shards"]) > 2 and len({s["samples"] for s in index["shards"]}) > 1  # uneven
        for s in index["shards"]:
            assert _sha((shards / split / s["name"]).read_bytes()) == s["sha256"]
        per_image = ChannelDataset(channels / split, PRE)
        want = Counter((_sha(p.read_bytes()), label) for p, label in per_image.samples)
        got = Counter()
        for s in index["shards"]:
            for _, parts in iter_tar(shards / split / s["name"]):
                got[(_sha(parts["jpg"]), json.loads(parts["json"])["count"] - 1)] += 1
        assert got == want
        assert index["counts"] == per_image.class_counts() and index["samples"] == len(per_image)
        # through the dataset the trainer gets: the same tensors, labels and keys as the per-image channel
        ds = open_channel(shards / split, PRE)
        assert isinstance(ds, ShardDataset) and len(ds) == len(per_image)
        by_key = {p.stem: per_image[i] for i, (p, _) in enumerate(per_image.samples)}
        seen = 0
        for x, y, ok, keys in ds.loader(batch_size=4, keys=True):
            for j, k in enumerate(keys):
                ref_x, ref_y, _ = by_key.pop(k)
                assert ok[j] and y[j].item() == ref_y and torch.equal(x[j], ref_x)
                seen += 1
        assert seen == len(per_image) and not by_key
    # deterministic: the same channels give byte-identical shards
    again = tmp_path / "again"
    write_shards(channels, again, shard_size=SMALL)
    for p in sorted((shards / "train").iterdir()):
        assert (again / "train" / p.name).read_bytes() == p.read_bytes()


@pytest.mark.parametrize("world, workers, batch", [(2, 2, 3), (3, 2, 3)])
def test_ranks_and_workers_see_every_sample_exactly_once_per_epoch(shards, world, workers, batch):
    """20 train samples: 2 ranks x 10 (batches 3,3,3,1), or 3 ranks x 6/7/7 (the 6 in balanced batches 2,2,2)."""
    ds = ShardDataset(shards / "train", PRE, train=True, seed=5)
    everything = sorted(k for s in ds.shards for k, _ in iter_tar(s[0]))
    loaders = [ds.loader(batch, rank=r, world_size=world, workers=workers, keys=True) for r in range(world)]
    orders = []
    for epoch in (1, 2):
        ds.set_epoch(epoch)  # after the loaders exist: persistent workers must see it
        per_rank = [_keys(dl) for dl in loaders]
        steps = {len(b) for b in per_rank}
        assert steps == {len(loaders[0])}, steps  # same number of steps on every rank (DDP)
        assert all(0 < len(b) <= batch for r in per_rank for b in r)
        flat = [k for r in per_rank for b in r for k in b]
        assert sorted(flat) == everything  # nothing dropped, nothing twice
        orders.append(flat)
    assert orders[0] != orders[1]


def test_order_changes_per_epoch_and_is_reproducible_for_a_seed(shards):
    def order(seed, epoch, workers=0):
        ds = ShardDataset(shards / "train", PRE, train=True, seed=seed)
        ds.set_epoch(epoch)
        return [k for b in _keys(ds.loader(4, workers=workers, keys=True)) for k in b]

    e1 = order(1, 1)
    assert e1 == order(1, 1) and e1 == order(1, 1)
    assert order(1, 2) != e1 and order(2, 1) != e1
    assert sorted(order(1, 2)) == sorted(e1)
    assert order(1, 3, workers=2) == order(1, 3, workers=2)  # with worker processes too
    # without a shuffle buffer the shard order alone changes per epoch; shards are still read whole, in order
    ds = ShardDataset(shards / "train", PRE, train=True, seed=1, shuffle_buffer=1)
    by_shard = [[k for k, _ in iter_tar(path)] for path, _ in ds.shards]
    runs = []
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        flat = [k for b in _keys(ds.loader(4, keys=True)) for k in b]
        runs.append(flat)
        assert sorted((flat.index(ks[0]), ks) for ks in by_shard) == \
            sorted((flat.index(ks[0]), flat[flat.index(ks[0]):flat.index(ks[0]) + len(ks)]) for ks in by_shard)
    assert runs[0] != runs[1]
    val = ShardDataset(shards / "val", PRE)  # validation: index order, every epoch
    val.set_epoch(7)
    assert [k for b in _keys(val.loader(4, keys=True)) for k in b] == \
        [k for s in val.shards for k, _ in iter_tar(s[0])]


def test_the_shuffle_buffer_reorders_within_a_shard_per_epoch(channels, tmp_path):
    write_shards(channels, tmp_path / "one", shard_size=10 ** 9)  # one shard per split
    ds = ShardDataset(tmp_path / "one" / "train", PRE, train=True, seed=1)
    assert len(ds.shards) == 1
    runs = []
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        runs.append([k for b in _keys(ds.loader(4, keys=True)) for k in b])
    assert runs[0] != runs[1] and sorted(runs[0]) == sorted(runs[1])


def test_a_bad_sample_is_skipped_and_counted_and_a_damaged_shard_keeps_the_step_count(channels_copy, tmp_path):
    from bincounter.distributed import DistInfo
    from bincounter.engine import evaluate

    victim = sorted((channels_copy / "val").rglob("*.jpg"))[3]
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    write_shards(channels_copy, tmp_path / "sh", shard_size=SMALL)
    ds = ShardDataset(tmp_path / "sh" / "val", PRE)
    bad = [k for x, y, ok, keys in ds.loader(3, keys=True) for k, o in zip(keys, ok, strict=True) if not o]
    assert bad == [victim.stem]

    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 5))
    ev = evaluate(model, ds.loader(3), torch.device("cpu"), DistInfo(), show_progress=False)
    assert ev["skipped"] == 1 and ev["confusion_matrix"].sum() == len(ds) - 1

    # a shard whose second sample's header is garbage (same size, so the index still matches): the rest of
    # that shard comes back as bad samples, and the rank still yields exactly its batches
    first = ds.shards[0][0]
    data = bytearray(first.read_bytes())
    offsets = [m.offset for m in __import__("tarfile").open(first).getmembers()]
    data[offsets[2]:offsets[2] + 512] = b"\x07" * 512
    first.write_bytes(bytes(data))
    n0 = ds.shards[0][1]
    dl = ShardDataset(tmp_path / "sh" / "val", PRE).loader(3, keys=True)
    batches = list(dl)
    assert len(batches) == len(dl)
    assert sum(len(b[3]) for b in batches) == len(ds)
    assert sum(int((~b[2]).sum()) for b in batches) == 1 + (n0 - 1)


def test_a_sample_the_decoder_raises_anything_on_is_skipped_and_counted(channels_copy, tmp_path):
    """Issue 21, item 5: struct.error from a corrupt EXIF orientation entry escaped the shard reader."""
    from .poison import exif_poison_jpeg

    victim = sorted((channels_copy / "train").rglob("*.jpg"))[2]
    victim.write_bytes(exif_poison_jpeg((128, 128)))
    write_shards(channels_copy, tmp_path / "sh", shard_size=SMALL)
    ds = ShardDataset(tmp_path / "sh" / "train", PRE, train=True)
    bad = [k for x, y, ok, keys in ds.loader(3, keys=True) for k, o in zip(keys, ok, strict=True) if not o]
    assert bad == [victim.stem]


def test_batch_sizes_equal_steps_without_padding():
    assert batch_sizes(10, 3, 4) == [3, 3, 3, 1]
    assert batch_sizes(6, 3, 3) == [2, 2, 2]  # a full-batch split would leave an empty last batch
    assert batch_sizes(7, 3) == [3, 3, 1] and batch_sizes(0, 3) == []


def test_too_few_samples_for_the_ranks_is_one_clear_error(shards):
    ds = ShardDataset(shards / "val", PRE, train=True)
    with pytest.raises(DataError, match="without repeating samples"):
        ds.loader(1, rank=0, world_size=20)


def test_fingerprint_follows_the_shards(channels, shards, tmp_path):
    from bincounter.checkpoint import data_fingerprint

    a = data_fingerprint(ShardDataset(shards / "train", PRE), ShardDataset(shards / "val", PRE))
    assert a == data_fingerprint(ShardDataset(shards / "train", PRE), ShardDataset(shards / "val", PRE))
    write_shards(channels, tmp_path / "other", shard_size=SMALL, seed=1)  # same images, other packing
    b = data_fingerprint(ShardDataset(tmp_path / "other" / "train", PRE), ShardDataset(shards / "val", PRE))
    assert a != b
    # same names and sizes, other content: only the index's sha256 tells them apart
    import shutil

    shutil.copytree(shards / "val", tmp_path / "val2")
    index = json.loads((tmp_path / "val2" / INDEX).read_text())
    index["shards"][1]["sha256"] = "0" * 64
    (tmp_path / "val2" / INDEX).write_text(json.dumps(index))
    c = data_fingerprint(ShardDataset(shards / "train", PRE), ShardDataset(tmp_path / "val2", PRE))
    assert c != a


def test_metadata_goes_into_the_sample_when_given(abid_root, channels, tmp_path):
    write_shards(channels, tmp_path / "sh", shard_size=SMALL, metadata_dir=abid_root)
    index = json.loads((tmp_path / "sh" / "test" / INDEX).read_text())
    key, parts = next(iter_tar(tmp_path / "sh" / "test" / index["shards"][0]["name"]))
    meta = json.loads(parts["json"])
    assert meta["metadata"] == json.loads((abid_root / "metadata" / f"{key}.json").read_text())
    assert meta["count"] == meta["metadata"]["EXPECTED_QUANTITY"]


@pytest.mark.slow  # five CLI processes (~20 s on 2 busy cores)
def test_cli_shard_and_its_one_line_errors(channels, shards, tmp_path):
    ok = run_cli("data", "shard", channels, "--out", tmp_path / "sh", "--shard-size", "20KB")
    assert ok.returncode == 0, ok.stderr
    for p in (shards / "train").iterdir():  # another process (another hash seed), byte for byte the same
        assert (tmp_path / "sh" / "train" / p.name).read_bytes() == p.read_bytes()
    assert "train     20 samples" in ok.stderr and (tmp_path / "sh" / "val" / INDEX).is_file()
    assert_one_line_error(run_cli("data", "shard", channels, "--out", tmp_path / "sh"), "already exists")
    assert_one_line_error(run_cli("data", "shard", tmp_path / "nope", "--out", tmp_path / "x"), "does not exist")
    assert_one_line_error(run_cli("data", "shard", channels, "--out", tmp_path / "y", "--shard-size", "lots"),
                          "--shard-size 'lots'")
    # the trainer: a shard the index names is missing; tars without an index
    (tmp_path / "sh" / "val" / "val-000001.tar").unlink()
    bad = run_cli("train", "--train", tmp_path / "sh" / "train", "--val", tmp_path / "sh" / "val", "--model-dir",
                  tmp_path / "m", "--no-pretrained", "--epochs", "1")
    assert_one_line_error(bad, "val-000001.tar", "missing")
    with open(tmp_path / "sh" / "train" / "train-000002.tar", "r+b") as f:  # a torn upload
        f.truncate(1024)
    with pytest.raises(DataError, match="train-000002.tar is 1024 bytes"):
        open_channel(tmp_path / "sh" / "train", PRE)
    (tmp_path / "sh" / "train" / INDEX).unlink()
    with pytest.raises(DataError, match="no index.json"):
        open_channel(tmp_path / "sh" / "train", PRE)


def test_upload_sends_shard_directories_as_they_are(shards, moto_endpoint, aws_env):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="shards")
    proc = run_cli("data", "upload", shards, "s3://shards/v1", "--endpoint-url", moto_endpoint,
                   "--region", "us-east-1")
    assert proc.returncode == 0, proc.stderr
    assert "train=s3://shards/v1/train/" in proc.stdout
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="shards", Prefix="v1/")["Contents"]}
    local = {f"v1/{p.relative_to(shards).as_posix()}" for p in shards.rglob("*") if p.is_file()}
    assert keys == local and "v1/train/index.json" in keys and "v1/train/train-000000.tar" in keys


@pytest.mark.slow
def test_two_processes_train_from_shards_with_gloo(shards, channels, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
         "-m", "bincounter", "train", "--train", str(shards / "train"), "--val", str(shards / "val"),
         "--test", str(shards / "test"), "--model-dir", str(tmp_path / "m"), "--epochs", "1", "--image-size",
         "64", "--no-pretrained", "--workers", "2", "--batch-size", "3", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("epoch=1 ")]) == 1
    assert (tmp_path / "m" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["history"][0]["val_n"] == len(list((channels / "val").rglob("*.jpg")))
    assert metrics["test"]["n"] == len(list((channels / "test").rglob("*.jpg")))


def test_evaluate_reads_a_sharded_channel(trained_model, channels, shards, tmp_path):
    """`bincounter evaluate --data` on the shards gives the per-image channel's numbers."""
    from bincounter.evaluate import evaluate_model

    per_image, _ = evaluate_model(trained_model, channels / "test", tmp_path / "img", device="cpu")
    from_shards, _ = evaluate_model(trained_model, shards / "test", tmp_path / "shards", device="cpu")
    assert from_shards["n"] == per_image["n"] > 0
    assert from_shards["confusion_matrix"] == per_image["confusion_matrix"]
    assert abs(from_shards["rmse"] - per_image["rmse"]) < 1e-9


def test_eda_reads_shards(channels, shards, tmp_path):
    """`bincounter data eda` on `data shard`'s output (or one split of it): the same bins, counts and report."""
    from bincounter.data.eda import analyse

    per_count = {str(c): sum(1 for s in ("train", "val", "test") for _ in (channels / s / str(c)).glob("*.jpg"))
                 for c in range(1, 6)}
    proc = run_cli("data", "eda", shards, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "report" / "eda.json").read_text())
    assert stats["usable_per_count"] == per_count and stats["bins"] == sum(per_count.values())
    assert not stats["missing_images"] and not stats["bad_metadata"] and not stats["corrupt_images"]
    assert (tmp_path / "report" / "samples.png").is_file()
    test_only = analyse(shards / "test")
    assert test_only["bins"] == sum(1 for _ in (channels / "test").rglob("*.jpg"))


@pytest.mark.parametrize("whole", ["shards", "channels"])
def test_evaluate_on_a_whole_split_output_evaluates_its_test_split(whole, trained_model, channels, shards, tmp_path,
                                                                    capsys, caplog):
    """`bincounter evaluate --data data/shards` (all of `data shard`'s output, as the README shows; or all of
    `data split`'s): its test split, said in one line, with the numbers of `--data data/shards/test`."""
    from bincounter.cli import main
    from bincounter.evaluate import evaluate_model

    root = {"shards": shards, "channels": channels}[whole]
    want, _ = evaluate_model(trained_model, root / "test", tmp_path / "split", device="cpu")
    caplog.set_level("INFO", logger="bincounter")
    assert main(["evaluate", "--model-dir", str(trained_model), "--data", str(root), "--out",
                 str(tmp_path / "all")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == want["n"] > 0
    assert (got["accuracy"], got["rmse"], got["per_class_recall"]) == (want["accuracy"], want["rmse"],
                                                                       want["per_class_recall"])
    assert json.loads((tmp_path / "all" / "eval_metrics.json").read_text())["confusion_matrix"] == \
        want["confusion_matrix"]
    said = [r.getMessage() for r in caplog.records if "test split" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(str(root / "test")) and "train, val, test" in said[0], said


def test_evaluate_on_a_split_output_without_test_names_the_splits_it_holds(trained_model, shards, tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    for split in ("train", "val"):
        (root / split).symlink_to(shards / split)
    assert_one_line_error(run_cli("evaluate", "--model-dir", trained_model, "--data", root),
                          f"--data {root} holds the splits train, val and no test/", f"--data {root / 'val'}")
