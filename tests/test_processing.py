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


def _shard_and_index(slices, source, tmp_path, *extra, env=None):
    """Each "instance" writes into its own output folder; SageMaker uploads them all under one prefix (merged)."""
    merged = tmp_path / "s3-prefix"
    for d in slices:
        out = d.parent / "output"
        proc = run_cli("process", "shard", "--parts", d, "--source", source, "--out", out, "--shard-size", "20KB",
                       *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        shutil.copytree(out, merged, dirs_exist_ok=True)
    proc = run_cli("process", "index", "--parts", merged / "index-parts", "--out", merged / "shards")
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
