"""`bincounter process prepare|evaluate` (what `docker run IMAGE process ...` runs in the pipeline)."""

from __future__ import annotations

import csv
import json
import shutil
import tarfile

import pytest

from .conftest import assert_one_line_error, run_cli


def test_prepare_writes_channels_and_the_eda_report(abid_root, tmp_path):
    proc = run_cli("process", "prepare", "--raw", abid_root, "--out", tmp_path / "out", "--val", "0.25",
                   "--test", "0.25")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n = {s: len(list((tmp_path / "out" / "channels" / s).rglob("*.jpg"))) for s in ("train", "val", "test")}
    assert sum(n.values()) == 40 and all(n.values()), n
    assert result["channels"]["test"] == str(tmp_path / "out" / "channels" / "test")
    assert (tmp_path / "out" / "eda" / "index.html").is_file()
    assert (tmp_path / "out" / "channels" / "manifest.csv").is_file()


def test_evaluate_a_training_jobs_tarball_in_the_model_metrics_layout(trained_model, channels, tmp_path):
    (tmp_path / "model").mkdir()
    with tarfile.open(tmp_path / "model" / "model.tar.gz", "w:gz") as tar:  # what a training job uploads
        for p in trained_model.iterdir():
            tar.add(p, arcname=p.name)
    proc = run_cli("process", "evaluate", "--model", tmp_path / "model", "--data", channels / "test",
                   "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    own = json.loads((trained_model / "test_metrics.json").read_text())  # the trainer's test evaluation
    acc = doc["multiclass_classification_metrics"]["accuracy"]
    assert acc == {"value": own["accuracy"], "standard_deviation": "NaN"}
    assert doc["regression_metrics"]["rmse"]["value"] == own["rmse"]
    cm = doc["multiclass_classification_metrics"]["confusion_matrix"]
    assert [[cm[t][p] for p in "12345"] for t in "12345"] == own["confusion_matrix"]
    assert (tmp_path / "ev" / "eval_confusion_matrix.png").is_file()


def test_evaluate_without_a_model_is_one_line(channels, tmp_path):
    assert_one_line_error(run_cli("process", "evaluate", "--model", tmp_path, "--data", channels / "test",
                                  "--out", tmp_path / "ev"), "expected a model directory")


def test_a_count_without_test_images_still_gives_strict_json():
    """No bins of count 5 in the test split: recall 5 is None; evaluation.json must stay strict JSON (no NaN)."""
    from bincounter.sagemaker.processing import _finite, model_metrics

    summary = {"accuracy": 0.5, "rmse": 1.0, "n": 4, "per_class_recall": {"1": 1.0, "2": 0.0, "3": 0.5, "4": 1.0,
                                                                         "5": None},
               "confusion_matrix": [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0],
                                    [0, 0, 0, 0, 0]], "loss": float("nan")}
    text = json.dumps(_finite(model_metrics(summary)), allow_nan=False)
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    mc = doc["multiclass_classification_metrics"]
    assert "recall_count_5" not in mc and mc["recall_count_3"]["value"] == 0.5
    assert doc["bincounter"]["loss"] is None


# ------------------------------------------------------------------ the sharded prepare: plan -> shard x N -> index
def _plan(abid_root, out, part_size=7):
    proc = run_cli("process", "plan", "--raw", abid_root, "--out", out, "--val", "0.25", "--test", "0.25",
                   "--part-size", part_size)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _two_instances(parts_dir, tmp_path):
    """ShardedByS3Key over the parts: instance i gets every other part (what SageMaker does by key)."""
    parts = sorted(parts_dir.glob("part-*.csv"))
    slices = []
    for i in range(2):
        d = tmp_path / f"algo-{i + 1}" / "parts"
        d.mkdir(parents=True)
        for p in parts[i::2]:
            (d / p.name).write_bytes(p.read_bytes())
        slices.append(d)
    return slices


def _shard_and_index(slices, source, tmp_path, *extra, env=None, manifest=None):
    """Each "instance" writes into its own output folder; SageMaker uploads them all under one prefix (merged)."""
    merged = tmp_path / "s3-prefix"
    for d in slices:
        out = d.parent / "output"
        proc = run_cli("process", "shard", "--parts", d, "--source", source, "--out", out, "--shard-size", "20KB",
                       *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        shutil.copytree(out, merged, dirs_exist_ok=True)
    proc = run_cli("process", "index", "--parts", merged / "index-parts", "--out", merged / "shards",
                   "--manifest", manifest or tmp_path / "plan" / "manifest")
    assert proc.returncode == 0, proc.stderr
    return merged, json.loads(proc.stdout.strip().splitlines()[-1])


def test_plan_reads_only_metadata_and_cuts_a_mixed_manifest(abid_root, tmp_path):
    meta_only = tmp_path / "raw"
    shutil.copytree(abid_root / "metadata", meta_only / "metadata")  # no bin-images/: none is read
    summary = _plan(meta_only, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "manifest" / "manifest.csv")))
    assert summary["bins"] == len(rows) == 40 and summary["parts"] == 6  # ceil(40 / 7)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    parts = [list(csv.DictReader(open(p))) for p in sorted((tmp_path / "out" / "parts").glob("part-*.csv"))]
    assert sorted(r["id"] for p in parts for r in p) == sorted(r["id"] for r in rows)  # each bin in one part
    assert len({r["split"] for r in parts[0]}) > 1  # a random mix, not one split per part
    assert (tmp_path / "out" / "eda" / "index.html").is_file()


def test_shards_from_two_instances_combine_into_the_index_the_trainer_reads(abid_root, tmp_path):
    from bincounter.data.shards import ShardDataset, read_index
    from bincounter.preprocess import Preprocess

    _plan(abid_root, tmp_path / "plan")
    bad = tmp_path / "raw"
    shutil.copytree(abid_root, bad)
    victims = sorted((bad / "bin-images").glob("*.jpg"))[:2]
    victims[0].write_bytes(b"not a jpeg")
    victims[1].unlink()
    slices = _two_instances(tmp_path / "plan" / "parts", tmp_path)
    merged, summary = _shard_and_index(slices, str(bad), tmp_path)
    assert summary["skips"] == {"corrupt image": 1, "missing image": 1} and summary["parts"] == 6
    assert sum(v["samples"] for v in summary["splits"].values()) == 38
    seen = set()
    for split in ("train", "val", "test"):
        index = read_index(merged / "shards" / split)  # every shard named is there, with its size
        names = [s["name"] for s in index["shards"]]
        assert len({n.split("-")[1] for n in names}) > 1  # shards of several parts (two instances)
        ds = ShardDataset(merged / "shards" / split, Preprocess(64))
        keys = [k for *_, ks in ds.loader(batch_size=4, keys=True) for k in ks]
        assert len(keys) == len(ds) == index["samples"] == summary["splits"][split]["samples"]
        seen |= set(keys)
    assert len(seen) == 38 and not seen & {v.stem for v in victims}
    assert json.loads((merged / "shards" / "summary" / "summary.json").read_text())["skips"] == summary["skips"]


def test_shard_fetches_its_slice_from_s3(abid_root, tmp_path, moto_endpoint, aws_env):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="abid-copy")
    for p in sorted(abid_root.rglob("*")):
        if p.is_file() and p.parent.name in ("metadata", "bin-images"):
            s3.put_object(Bucket="abid-copy", Key=f"abid/{p.parent.name}/{p.name}", Body=p.read_bytes())
    _plan(abid_root, tmp_path / "plan")
    slices = _two_instances(tmp_path / "plan" / "parts", tmp_path)
    merged, summary = _shard_and_index(slices, "s3://abid-copy/abid", tmp_path, "--endpoint-url", moto_endpoint,
                                       env=aws_env)
    assert summary["skips"] == {} and sum(v["samples"] for v in summary["splits"].values()) == 40
    one = next((merged / "shards" / "train").glob("*.tar"))
    with tarfile.open(one) as tar:
        doc = json.loads(tar.extractfile(next(m for m in tar if m.name.endswith(".json"))).read())
    assert "EXPECTED_QUANTITY" in doc["metadata"]  # the fetched metadata travels in the shard


def test_index_parts_naming_the_same_shard_twice_are_refused():
    from bincounter.data.shard_parts import combine_indexes
    from bincounter.data.shards import FORMAT
    from bincounter.errors import DataError

    part = {"format": FORMAT, "split": "train", "shard_size": 1, "seed": 0,
            "shards": [{"name": "train-p00001-000000.tar", "samples": 1, "counts": [1, 0, 0, 0, 0], "bytes": 9}]}
    with pytest.raises(DataError, match="same shard twice"):
        combine_indexes([part, part])
    with pytest.raises(DataError, match="different splits"):
        combine_indexes([part, {**part, "split": "val"}])


def test_each_local_host_takes_its_own_share_of_the_parts(tmp_path):
    """SageMaker local mode gives every instance every part: --slice-by-host splits them by the host's position."""
    from bincounter.errors import UserError
    from bincounter.sagemaker.processing import host_slice

    parts = [f"part-{k:05d}.csv" for k in range(5)]
    got = []
    for host in ("algo-2-x", "algo-1-x"):
        cfg = tmp_path / f"{host}.json"
        cfg.write_text(json.dumps({"current_host": host, "hosts": ["algo-2-x", "algo-1-x"]}))
        got.append(host_slice(parts, cfg))
    assert got == [parts[1::2], parts[0::2]]  # hosts in sorted order: algo-1 takes 0, 2, 4
    with pytest.raises(UserError, match="does not name this host"):
        host_slice(parts, tmp_path / "missing.json")


# ------------------------------------------------------------------ no lost data behind a green Shard/Index
def _bucket(abid_root, moto_endpoint, name="abid-copy"):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    for p in sorted(abid_root.rglob("*")):
        if p.is_file() and p.parent.name in ("metadata", "bin-images"):
            s3.put_object(Bucket=name, Key=f"{p.parent.name}/{p.name}", Body=p.read_bytes())
    return s3


class _Throttled:
    """The moto client, except that GetObject of `keys` answers SlowDown (past botocore's own retries) the first
    `times` times per key: moto cannot throttle."""

    def __init__(self, real, keys, times):
        from collections import Counter

        self.real, self.keys, self.times, self.seen = real, set(keys), times, Counter()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def get_object(self, **kw):
        from botocore.exceptions import ClientError

        if kw["Key"] in self.keys and self.seen[kw["Key"]] < self.times:
            self.seen[kw["Key"]] += 1
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}},
                              "GetObject")
        return self.real.get_object(**kw)


def _throttle(monkeypatch, s3, keys, times):
    from bincounter.data import s3 as s3_mod
    from bincounter.sagemaker import processing

    monkeypatch.setattr(s3_mod, "s3_client", lambda **kw: _Throttled(s3, keys, times))
    monkeypatch.setattr(s3_mod.time, "sleep", lambda s: None)  # the backoffs between attempts and passes
    return processing


def test_a_failed_download_fails_the_part_instead_of_counting_a_bad_image(abid_root, tmp_path, moto_endpoint,
                                                                          aws_env, monkeypatch):
    from bincounter.errors import DataError

    s3 = _bucket(abid_root, moto_endpoint)
    _plan(abid_root, tmp_path / "plan")
    victim = next(csv.DictReader(open(tmp_path / "plan" / "parts" / "part-00002.csv")))["id"]
    processing = _throttle(monkeypatch, s3, {f"bin-images/{victim}.jpg"}, times=10**6)  # throttled for good
    with pytest.raises(DataError, match=r"part 00002: 1 of 14 files failed to download .*\(1 SlowDown; e\.g\. "
                       rf"bin-images/{victim}\.jpg"):
        processing.shard(tmp_path / "plan" / "parts", "s3://abid-copy", tmp_path / "out", 20_000, workers=4)
    assert not (tmp_path / "out" / "index-parts" / "skips" / "part-00002.json").exists()


def test_a_transient_failure_is_fetched_again_and_a_404_counts_as_not_in_the_bucket(abid_root, tmp_path,
                                                                                    moto_endpoint, aws_env,
                                                                                    monkeypatch):
    s3 = _bucket(abid_root, moto_endpoint)
    _plan(abid_root, tmp_path / "plan")
    ids = [r["id"] for r in csv.DictReader(open(tmp_path / "plan" / "manifest" / "manifest.csv"))]
    s3.delete_object(Bucket="abid-copy", Key=f"bin-images/{ids[0]}.jpg")  # a real 404
    # throttled through the first pass's 4 attempts, fetched by the second pass
    processing = _throttle(monkeypatch, s3, {f"bin-images/{i}.jpg" for i in ids[1:4]}, times=4)
    got = processing.shard(tmp_path / "plan" / "parts", "s3://abid-copy", tmp_path / "out", 20_000, workers=4)
    assert got["skips"] == {"not in the bucket": 1} and sum(got["bins"].values()) == 39
    summary = processing.index(tmp_path / "out" / "index-parts", tmp_path / "out" / "shards",
                               tmp_path / "plan" / "manifest")
    assert summary["skips"] == {"not in the bucket": 1} and summary["bins"] == 40
    assert sum(v["samples"] for v in summary["splits"].values()) == 39


def _shard_here(plan, source, out):
    from bincounter.sagemaker import processing

    return processing.shard(plan / "parts", str(source), out, 20_000)


def test_index_refuses_more_bad_images_than_max_bad_fraction(abid_root, tmp_path):
    _plan(abid_root, tmp_path / "plan")
    bad = tmp_path / "raw"
    shutil.copytree(abid_root, bad)
    for v in sorted((bad / "bin-images").glob("*.jpg"))[:3]:  # 3 of 40: 7.5%
        v.write_bytes(b"not a jpeg")
    _shard_here(tmp_path / "plan", bad, tmp_path / "out")
    args = ("process", "index", "--parts", tmp_path / "out" / "index-parts", "--out", tmp_path / "ix",
            "--manifest", tmp_path / "plan" / "manifest")
    assert_one_line_error(run_cli(*args), "3 of 40 bins (7.5%) are bad (3 corrupt image)", "--max-bad-fraction 0.05")
    assert not (tmp_path / "ix" / "train" / "index.json").exists()
    proc = run_cli(*args, "--max-bad-fraction", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["bad_fraction"] == 3 / 40
    assert_one_line_error(run_cli(*args, "--max-bad-fraction", "5"), "not a fraction")


def test_index_without_index_parts_or_manifest_is_one_line(abid_root, tmp_path):
    assert_one_line_error(run_cli("process", "index", "--parts", tmp_path / "nonexistent", "--out", tmp_path / "o",
                                  "--manifest", tmp_path), "--parts", "no index parts there")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("process", "index", "--parts", tmp_path / "empty", "--out", tmp_path / "o",
                                  "--manifest", tmp_path), "no index parts there")
    _plan(abid_root, tmp_path / "plan")
    _shard_here(tmp_path / "plan", abid_root, tmp_path / "out")
    parts = tmp_path / "out" / "index-parts"
    assert_one_line_error(run_cli("process", "index", "--parts", parts, "--out", tmp_path / "o",
                                  "--manifest", tmp_path / "nowhere"), "--manifest", "parts.json")
    (parts / "skips" / "part-00003.json").unlink()  # an instance that never finished
    assert_one_line_error(run_cli("process", "index", "--parts", parts, "--out", tmp_path / "o", "--manifest",
                                  tmp_path / "plan" / "manifest"), "1 of the manifest's 6 parts", "part-00003")


def test_a_rerun_with_fewer_parts_under_the_same_output_indexes_only_its_own_parts(abid_root, tmp_path):
    """The data steps write to OUTPUT/data/<DataVersion>/ and never clear it: a rerun with changed raw data (fewer
    parts) leaves the first run's index parts there; Index must combine only the new manifest's."""
    from bincounter.data.shards import read_index

    out = tmp_path / "s3-prefix"  # one output, as the cloud's data/<DataVersion>/ prefix
    _plan(abid_root, tmp_path / "plan1")
    _shard_here(tmp_path / "plan1", abid_root, out)
    smaller = tmp_path / "raw2"
    keep = sorted(p.stem for p in (abid_root / "metadata").glob("*.json"))[::2]  # 20 of the 40 bins
    for d, ext in (("metadata", "json"), ("bin-images", "jpg")):
        (smaller / d).mkdir(parents=True)
        for bid in keep:
            shutil.copy(abid_root / d / f"{bid}.{ext}", smaller / d / f"{bid}.{ext}")
    assert _plan(smaller, tmp_path / "plan2")["parts"] == 3  # parts 00003-00005 of the first run stay behind
    _shard_here(tmp_path / "plan2", smaller, out)
    proc = run_cli("process", "index", "--parts", out / "index-parts", "--out", out / "shards", "--manifest",
                   tmp_path / "plan2" / "manifest")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["parts"] == 3 and summary["bins"] == 20 and summary["ignored_index_parts"] > 0
    indexed = 0
    for split in ("train", "val", "test"):
        index = read_index(out / "shards" / split)
        assert {s["name"].split("-")[1] for s in index["shards"]} <= {"p00000", "p00001", "p00002"}
        indexed += index["samples"]
    assert indexed == sum(v["samples"] for v in summary["splits"].values()) == 20


def test_shard_skips_manifest_parts_of_an_earlier_plan(abid_root, tmp_path):
    """Prepare's parts/ under the same DataVersion keeps the first plan's parts 00003-00005 too."""
    from bincounter.sagemaker import processing

    _plan(abid_root, tmp_path / "plan1")
    smaller = tmp_path / "raw2"
    shutil.copytree(abid_root / "metadata", smaller / "metadata")
    for p in sorted((smaller / "metadata").glob("*.json"))[::2]:
        p.unlink()
    _plan(smaller, tmp_path / "plan2")
    shutil.copytree(tmp_path / "plan2" / "parts", tmp_path / "plan1" / "parts", dirs_exist_ok=True)  # one prefix
    got = processing.shard(tmp_path / "plan1" / "parts", str(abid_root), tmp_path / "out", 20_000,
                           manifest=tmp_path / "plan2" / "manifest")
    assert got["parts"] == 3 and sum(got["bins"].values()) == 20
    assert sorted(p.stem for p in (tmp_path / "out" / "index-parts" / "skips").iterdir()) == \
        ["part-00000", "part-00001", "part-00002"]
