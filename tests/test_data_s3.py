"""fetch -> eda -> split -> upload against a real S3 API (moto server mode), with faults injected by a
small HTTP proxy in front of it. Everything goes through --endpoint-url, nothing patches boto3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from bincounter.data.synth import synth_dataset

from .conftest import BIN, REPO, assert_one_line_error, run_cli


def _load_s3_latency():
    """bench/s3_latency.py (not a package): the request forwarding its latency proxy and FaultProxy share."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("s3_latency", REPO / "bench" / "s3_latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S3_LATENCY = _load_s3_latency()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def abid_bucket(tmp_path_factory, moto_endpoint):
    """A bucket laid out exactly like aft-vbi-pds, seeded from 200 synthetic bins."""

    src = tmp_path_factory.mktemp("abid-src")
    synth_dataset(src, per_class=40, seed=11, size=96)
    return src, "aft-vbi-pds", _public_abid_bucket(moto_endpoint, "aft-vbi-pds", src)


def _public_abid_bucket(endpoint, bucket, src):
    """A bucket laid out like aft-vbi-pds (metadata/, bin-images/) holding `src`'s bins, public like the real one:
    anonymous (unsigned) list and get. -> the S3 client."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
    for p in sorted((src / "metadata").iterdir()) + sorted((src / "bin-images").iterdir()):
        s3.upload_file(str(p), bucket, f"{p.parent.name}/{p.name}")
    return s3


class FaultProxy:
    """Forwards to moto; can answer 503 for the first N requests of a key, cut a body short, or be slow. `sent`:
    every request's X-Amz-Target header (JSON APIs: the operation) and body, as it reached moto."""

    def __init__(self, upstream: str):
        self.host, self.port = upstream.split("//")[1].split(":")
        self.fail_503: dict[str, int] = {}
        self.truncate: dict[str, int] = {}
        self.delay = 0.0
        self.calls: dict[str, int] = {}
        self.sent: list[tuple[str | None, bytes]] = []
        proxy = self

        class H(S3_LATENCY.ProxyHandler):
            def relay(self, body: bytes) -> None:
                key = self.path.split("?")[0]
                proxy.calls[key] = proxy.calls.get(key, 0) + 1
                proxy.sent.append((self.headers.get("X-Amz-Target"), body))
                time.sleep(proxy.delay)
                if proxy.fail_503.get(key, 0) > 0:
                    proxy.fail_503[key] -= 1
                    msg = b"<Error><Code>SlowDown</Code><Message>try later</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                data = S3_LATENCY.forward(self, proxy.host, proxy.port, body, timeout=30)
                if proxy.truncate.get(key, 0) > 0 and self.command == "GET":
                    proxy.truncate[key] -= 1
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)


        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


@pytest.fixture()
def proxy(moto_endpoint):
    p = FaultProxy(moto_endpoint)
    yield p
    p.close()


def _fetch(endpoint, out, *extra, file_list=None, env=None):
    fl = ["--file-list", file_list] if file_list else []
    return run_cli("data", "fetch", "--out", out, *fl, "--endpoint-url", endpoint, *extra,
                   env={"AWS_EC2_METADATA_DISABLED": "true", **(env or {})})


def test_round_trip_fetch_eda_split_upload(abid_bucket, moto_endpoint, aws_env, tmp_path):
    src, bucket, s3 = abid_bucket
    out = tmp_path / "abid"
    proc = _fetch(moto_endpoint, out, file_list=src / "file_list.json")
    assert proc.returncode == 0, proc.stderr
    assert "downloaded 400 files" in proc.stderr and "0 failed" in proc.stderr
    for p in (src / "bin-images").iterdir():
        assert _sha(out / "bin-images" / p.name) == _sha(p)  # byte for byte
    again = _fetch(moto_endpoint, out, file_list=src / "file_list.json")
    assert "downloaded 0 files (0.0 MB" in again.stderr and "skipped 400 already complete" in again.stderr

    proc = run_cli("data", "eda", out, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "report" / "eda.json").read_text())
    assert stats["usable_per_count"] == {str(c): 40 for c in range(1, 6)}
    html = (tmp_path / "report" / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Warnings" in html

    assert run_cli("data", "split", out, "--out", tmp_path / "ch").returncode == 0
    s3.create_bucket(Bucket="my-training")
    proc = run_cli("data", "upload", tmp_path / "ch", "s3://my-training/bins/v1", "--endpoint-url", moto_endpoint)
    assert proc.returncode == 0, proc.stderr
    assert "train=s3://my-training/bins/v1/train/" in proc.stdout
    local = {p.relative_to(tmp_path / "ch").as_posix(): _sha(p) for p in (tmp_path / "ch").rglob("*") if p.is_file()}
    for rel, digest in local.items():
        body = s3.get_object(Bucket="my-training", Key=f"bins/v1/{rel}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
    again = run_cli("data", "upload", tmp_path / "ch", "s3://my-training/bins/v1", "--endpoint-url", moto_endpoint)
    assert "uploaded 0 files (0.0 MB" in again.stderr and f"skipped {len(local)}" in again.stderr


def test_a_second_upload_skips_multipart_files_too(abid_bucket, moto_endpoint, aws_env, tmp_path):
    """Issue 16: a shard over the multipart threshold has an MD5-of-parts ETag ("...-2"), not its MD5; a second
    upload re-sent it every time. Now its ETag is computed the way S3 does, and a changed file is still sent."""
    from bincounter.data.upload import PART_SIZE

    _, _, s3 = abid_bucket
    ch = tmp_path / "ch"
    big = ch / "train" / "shard-000000.tar"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(PART_SIZE + 12345))
    (ch / "train" / "small.tar").write_bytes(b"x" * 1000)
    s3.create_bucket(Bucket="multipart")
    args = ("data", "upload", ch, "s3://multipart/v1", "--endpoint-url", moto_endpoint)
    assert run_cli(*args).returncode == 0
    assert s3.head_object(Bucket="multipart", Key="v1/train/shard-000000.tar")["ETag"].strip('"').endswith("-2")
    again = run_cli(*args)
    assert "uploaded 0 files" in again.stderr and "skipped 2" in again.stderr, again.stderr
    with open(big, "r+b") as f:  # same size, one byte different in the second part
        f.seek(PART_SIZE + 10)
        f.write(b"\0" if f.read(1) != b"\0" else b"\1")
    third = run_cli(*args)
    assert "uploaded 1 files" in third.stderr and "skipped 1" in third.stderr, third.stderr


def test_missing_keys_are_reported_not_fatal(abid_bucket, moto_endpoint, aws_env, tmp_path):
    src, bucket, s3 = abid_bucket
    fl = tmp_path / "fl.json"
    listed = json.loads((src / "file_list.json").read_text())
    listed["1"] = listed["1"][:3] + ["data/metadata/99999.json"]
    fl.write_text(json.dumps({"1": listed["1"]}))
    proc = _fetch(moto_endpoint, tmp_path / "abid", file_list=fl)
    assert proc.returncode == 0, proc.stderr
    assert "downloaded 6 files" in proc.stderr and "2 failed (2 missing)" in proc.stderr
    assert "s3://aft-vbi-pds/bin-images/99999.jpg" in proc.stderr


def test_throttling_and_truncated_bodies_are_retried(abid_bucket, proxy, aws_env, tmp_path):
    src, bucket, _ = abid_bucket
    fl = tmp_path / "fl.json"
    ids = json.loads((src / "file_list.json").read_text())["2"][:4]
    fl.write_text(json.dumps({"2": ids}))
    first = ids[0].rsplit("/", 1)[1][:-5]
    proxy.fail_503[f"/{bucket}/bin-images/{first}.jpg"] = 3
    proxy.truncate[f"/{bucket}/metadata/{first}.json"] = 2
    proc = _fetch(proxy.url, tmp_path / "abid", file_list=fl)
    assert proc.returncode == 0, proc.stderr
    assert "downloaded 8 files" in proc.stderr and "0 failed" in proc.stderr
    assert proxy.calls[f"/{bucket}/bin-images/{first}.jpg"] >= 4
    assert _sha(tmp_path / "abid" / "metadata" / f"{first}.json") == _sha(src / "metadata" / f"{first}.json")


def test_killed_fetch_resumes_and_leaves_no_partial_file(abid_bucket, proxy, aws_env, tmp_path):
    src, bucket, _ = abid_bucket
    out = tmp_path / "abid"
    proxy.delay = 0.05
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    p = subprocess.Popen([str(BIN), "data", "fetch", "--out", str(out), "--file-list", str(src / "file_list.json"),
                          "--endpoint-url", proxy.url, "--workers", "4"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.rglob("*.jpg"))) < 20:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    got = len(list(out.rglob("*.jpg")))
    assert 0 < got < 200, got
    proxy.delay = 0.0
    proc = _fetch(proxy.url, out, file_list=src / "file_list.json")
    assert proc.returncode == 0, proc.stderr
    assert not list(out.rglob("*.part-*"))
    for p in (src / "bin-images").iterdir():
        assert _sha(out / "bin-images" / p.name) == _sha(p)


def test_sample_without_a_file_list(abid_bucket, moto_endpoint, aws_env, tmp_path):
    proc = _fetch(moto_endpoint, tmp_path / "abid", "--sample", "15", "--counts", "2-3", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    fl = json.loads((tmp_path / "abid" / "file_list.json").read_text())
    assert set(fl) == {"2", "3"} and sum(len(v) for v in fl.values()) == 15
    assert len(list((tmp_path / "abid" / "bin-images").iterdir())) == 15


@pytest.mark.parametrize("content, needle", [("{broken", "not valid JSON"),
                                              ('{"6": ["data/metadata/00001.json"]}', "outside the counts")])
def test_bad_file_list(moto_endpoint, aws_env, tmp_path, content, needle):
    fl = tmp_path / "fl.json"
    fl.write_text(content)
    assert_one_line_error(_fetch(moto_endpoint, tmp_path / "o", file_list=fl), needle)


def test_unreachable_endpoint(aws_env, tmp_path, abid_bucket):
    src, _, _ = abid_bucket
    assert_one_line_error(_fetch("http://127.0.0.1:9", tmp_path / "o", file_list=src / "file_list.json"),
                          "cannot reach the S3 endpoint")


def test_metadata_without_expected_quantity_is_counted_at_split(abid_root, tmp_path):
    import shutil

    root = tmp_path / "abid"
    shutil.copytree(abid_root, root)
    (root / "metadata" / "00007.json").write_text('{"BIN_FCSKU_DATA": {}}')
    proc = run_cli("data", "split", root, "--out", tmp_path / "ch")
    assert proc.returncode == 0 and "1 file list disagrees" not in proc.stderr
    assert "skipped 1 bins: 1 bad metadata (e.g. 00007)" in proc.stderr
    strict = run_cli("data", "split", root, "--out", tmp_path / "strict", "--strict")
    assert_one_line_error(strict, "1 bad metadata (e.g. 00007)", "--strict")
    assert not (tmp_path / "strict").exists()  # nothing written


def test_split_balance_modes(abid_root, tmp_path):
    import shutil

    from bincounter.data.split import split_dataset

    root = tmp_path / "abid"
    shutil.copytree(abid_root, root)
    for bid in ("00001", "00002", "00003", "00004", "00005", "00006"):  # thin out some classes
        (root / "metadata" / f"{bid}.json").unlink()
    (root / "file_list.json").unlink()
    capped, _ = split_dataset(root, tmp_path / "cap", balance="cap", val=0.25, test=0.25)
    per = [sum(1 for b in capped["train"] if b.count == c) for c in range(1, 6)]
    assert len(set(per)) == 1
    over, _ = split_dataset(root, tmp_path / "over", balance="oversample", val=0.25, test=0.25)
    per = [sum(1 for b in over["train"] if b.count == c) for c in range(1, 6)]
    assert len(set(per)) == 1 and per[0] == max(per)
    assert any("_dup" in p.name for p in (tmp_path / "over" / "train").rglob("*.jpg"))


def test_sample_never_writes_outside_out(moto_endpoint, aws_env, tmp_path):
    """Ids from the bucket's listing become file names: a key like metadata/../../x.json is skipped, counted."""
    src = tmp_path / "src"
    synth_dataset(src, per_class=2, seed=5, size=64)
    bucket = "evil-abid"
    s3 = _public_abid_bucket(moto_endpoint, bucket, src)
    meta = next((src / "metadata").iterdir())
    img = next((src / "bin-images").iterdir())
    s3.upload_file(str(meta), bucket, "metadata/../../escaped.json")
    s3.upload_file(str(img), bucket, "bin-images/../../escaped.jpg")
    assert "metadata/../../escaped.json" in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    out = tmp_path / "deep" / "er" / "abid"
    proc = _fetch(moto_endpoint, out, "--sample", "100", "--bucket", bucket)
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.rglob("escaped*")), list(tmp_path.rglob("escaped*"))
    assert "skipped 1 metadata keys that are not ABID bin ids" in proc.stderr
    assert len(list((out / "bin-images").iterdir())) == 10


def test_a_multipart_upload_that_succeeds_logs_no_connection_pool_warnings(abid_bucket, moto_endpoint, aws_env,
                                                                            tmp_path):
    """Issue 13: each part of a large file has its own thread, and a client pool sized for the files in flight
    only made urllib3 warn "Connection pool is full, discarding connection" over and over on an upload that
    went well. The pool now holds every thread's connection."""
    from bincounter.data.upload import PART_SIZE

    _, _, s3 = abid_bucket
    big = tmp_path / "ch" / "train" / "shard-000000.tar"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(6 * PART_SIZE))
    s3.create_bucket(Bucket="pool")
    proc = run_cli("data", "upload", tmp_path / "ch", "s3://pool/v1", "--endpoint-url", moto_endpoint,
                   "--workers", "1")
    assert proc.returncode == 0 and "uploaded 1 files" in proc.stderr, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr


def test_an_object_changed_in_the_bucket_is_fetched_again(abid_bucket, moto_endpoint, aws_env, tmp_path):
    """Same size, new content: the ledger's ETag (not the size) tells; the summary line comes last."""
    src, bucket, s3 = abid_bucket
    fl = tmp_path / "fl.json"
    ids = json.loads((src / "file_list.json").read_text())["3"][:3]
    fl.write_text(json.dumps({"3": ids}))
    out = tmp_path / "abid"
    assert _fetch(moto_endpoint, out, file_list=fl).returncode == 0
    bid = ids[0].rsplit("/", 1)[1][:-5]
    key = f"bin-images/{bid}.jpg"
    old = (out / key).read_bytes()
    new = old[:-1] + bytes([old[-1] ^ 0xFF])
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=new)
        trusted = _fetch(moto_endpoint, out, file_list=fl)  # issue 26.10: the ledger is trusted...
        proc = _fetch(moto_endpoint, out, "--verify", file_list=fl)  # ...unless asked to verify
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=old)  # the module's bucket, as the other tests expect it
    assert proc.returncode == 0, proc.stderr
    assert "downloaded 0 files" in trusted.stderr, trusted.stderr
    assert (out / key).read_bytes() == new
    last = proc.stderr.strip().splitlines()[-1]
    assert "downloaded 1 files" in last and "skipped 5 already complete" in last, proc.stderr


# ------------------------------------------------------------------ issue 26: upload mirrors, fetch trusts
def _keys(s3, bucket: str, prefix: str) -> set[str]:
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
    return keys


def _local(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _upload(src, uri, endpoint, *extra):
    return run_cli("data", "upload", src, uri, "--endpoint-url", endpoint, *extra)


def test_upload_onto_a_reused_prefix_leaves_exactly_the_new_split(abid_bucket, abid_root, moto_endpoint, aws_env,
                                                                   tmp_path):
    """Issue 26.2: re-splitting with another seed and uploading onto the same prefix left the old objects: test
    bins inside train. The prefix now ends equal to the local channels; a dry run shows the plan, changes nothing."""
    from bincounter.data.split import split_dataset

    _, _, s3 = abid_bucket
    s3.create_bucket(Bucket="reuse")
    s3.put_object(Bucket="reuse", Key="bins/v10/train/1/keep.jpg", Body=b"x")  # a sibling prefix: never touched
    one, two = tmp_path / "seed1", tmp_path / "seed2"
    split_dataset(abid_root, one, seed=1, val=0.2, test=0.2)
    split_dataset(abid_root, two, seed=2, val=0.2, test=0.2)
    assert _upload(one, "s3://reuse/bins/v1", moto_endpoint).returncode == 0
    assert _keys(s3, "reuse", "bins/v1/") == _local(one)
    stale = _local(one) - _local(two)
    assert stale  # the seeds moved bins between splits

    dry = _upload(two, "s3://reuse/bins/v1", moto_endpoint, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {len(stale)} objects" in dry.stderr, dry.stderr
    (deletes,) = [d["request"] for d in _requests(dry.stdout) if d["api"] == "DeleteObjects"]
    assert [o["Key"] for o in deletes["Delete"]["Objects"]] == [f"bins/v1/{k}" for k in sorted(stale)]
    assert _keys(s3, "reuse", "bins/v1/") == _local(one)  # nothing touched

    proc = _upload(two, "s3://reuse/bins/v1", moto_endpoint)
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {len(stale)} objects" in proc.stderr, proc.stderr
    remote = _keys(s3, "reuse", "bins/v1/")
    assert remote == _local(two)
    test_ids = {k.rsplit("/", 1)[1] for k in remote if k.startswith("test/")}
    assert not test_ids & {k.rsplit("/", 1)[1] for k in remote if k.startswith("train/")}
    assert _keys(s3, "reuse", "bins/v10/") == {"train/1/keep.jpg"}


def test_upload_refuses_to_delete_what_does_not_look_like_channels(abid_bucket, channels, moto_endpoint, aws_env,
                                                                   tmp_path):
    _, _, s3 = abid_bucket
    s3.create_bucket(Bucket="foreign")
    s3.put_object(Bucket="foreign", Key="data/notes.txt", Body=b"mine")
    before = _keys(s3, "foreign", "")
    assert_one_line_error(_upload(channels, "s3://foreign/data", moto_endpoint), "notes.txt", "--force")
    assert _keys(s3, "foreign", "") == before  # refused before anything was uploaded
    proc = _upload(channels, "s3://foreign/data", moto_endpoint, "--force")
    assert proc.returncode == 0 and "deleted 1 objects" in proc.stderr, proc.stderr
    assert _keys(s3, "foreign", "data/") == _local(channels)


def test_upload_refuses_to_delete_most_of_a_prefix(abid_bucket, channels, moto_endpoint, aws_env, tmp_path):
    """Other bins entirely (another data set on the same prefix?): more than half would go. One line, --force."""
    _, _, s3 = abid_bucket
    s3.create_bucket(Bucket="most")
    assert _upload(channels, "s3://most/v1", moto_endpoint).returncode == 0
    other = tmp_path / "other"
    (other / "train" / "1").mkdir(parents=True)
    (other / "train" / "1" / "99999.jpg").write_bytes(b"jpeg")
    assert_one_line_error(_upload(other, "s3://most/v1", moto_endpoint), "--force", "of the")
    assert _keys(s3, "most", "v1/") == _local(channels)
    dry = _upload(other, "s3://most/v1", moto_endpoint, "--dry-run")
    assert dry.returncode == 0 and "without --force the upload refuses" in dry.stderr, dry.stderr
    assert _upload(other, "s3://most/v1", moto_endpoint, "--force").returncode == 0
    assert _keys(s3, "most", "v1/") == {"train/1/99999.jpg"}


def test_a_sharded_upload_onto_a_reused_prefix_mirrors_the_shards(abid_bucket, channels, moto_endpoint, aws_env,
                                                                  tmp_path):
    from bincounter.data.shards import write_shards

    _, _, s3 = abid_bucket
    s3.create_bucket(Bucket="shardsync")
    small, big = tmp_path / "small", tmp_path / "big"
    write_shards(channels, small, shard_size=20_000)
    write_shards(channels, big, shard_size=40_000)
    assert len(_local(small)) > len(_local(big))
    assert _upload(small, "s3://shardsync/s", moto_endpoint).returncode == 0
    proc = _upload(big, "s3://shardsync/s", moto_endpoint)
    assert proc.returncode == 0, proc.stderr
    gone = len(_local(small) - _local(big))
    assert f"deleted {gone} objects" in proc.stderr, proc.stderr
    assert _keys(s3, "shardsync", "s/") == _local(big)


def _requests(stdout: str) -> list[dict]:
    """The JSON documents a dry run prints, one after the other."""
    docs, at, text, decoder = [], 0, stdout.strip(), json.JSONDecoder()
    while at < len(text):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
        at = len(text) - len(text[at:].lstrip())
    return docs


def _layout(root: Path) -> Path:
    """A small image, a shard over the multipart threshold (boto3 sends it in parts) and a manifest."""
    from bincounter.data.upload import PART_SIZE

    (root / "train" / "1").mkdir(parents=True)
    (root / "train" / "1" / "00001.jpg").write_bytes(b"\xff\xd8" + bytes(200))
    (root / "train" / "train-000000.tar").write_bytes(bytes(range(256)) * (PART_SIZE // 256 + 1))
    (root / "manifest.csv").write_text("id,count,split,sha256\n")
    return root


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_upload_dry_run_prints_the_writes_the_upload_then_sends(checksums, moto_endpoint, aws_env, tmp_path,
                                                                monkeypatch):
    """Issue 27: the dry run shows the S3 requests (SSE-KMS fields, the parts' CreateMultipartUpload, the mirror's
    DeleteObjects), checked by botocore's model of S3, and says that it listed the prefix (a read). The upload
    then sends exactly those, whole (recorded on the client by botocore's own provide-client-params event; botocore
    adds the body and its checksum value), and nothing else that writes: with the client's default
    request_checksum_calculation boto3 adds a ChecksumAlgorithm to each upload, with when_required none."""
    import boto3

    from bincounter.data.s3 import s3_client
    from bincounter.data.upload import PREVIEW, plan_upload, request_checksum_calculation, upload

    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"writes-{checksums.replace('_', '-')}"  # the moto server outlives a test
    s3.create_bucket(Bucket=bucket)
    for stale in ("v1/train/2/00009.jpg", "v1/val/3/00010.jpg"):
        s3.put_object(Bucket=bucket, Key=stale, Body=b"old")
    src = _layout(tmp_path / "ch")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", checksums)  # the dry run's and the upload's client
    dry = _upload(src, f"s3://{bucket}/v1", moto_endpoint, "--kms-key", key, "--force", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"found by listing s3://{bucket}/v1/ (ListObjectsV2, and a HeadObject" in dry.stderr, dry.stderr
    assert "reads, no write was sent" in dry.stderr and "CompleteMultipartUpload" in dry.stderr
    printed = [(d["api"], d["request"]) for d in _requests(dry.stdout)]
    assert [api for api, _ in printed] == ["PutObject", "CreateMultipartUpload", "PutObject", "DeleteObjects"]
    for _, r in printed[:3]:
        assert (r["ServerSideEncryption"], r["SSEKMSKeyId"]) == ("aws:kms", key), r
    assert printed[3][1]["Delete"]["Objects"] == [{"Key": "v1/train/2/00009.jpg"}, {"Key": "v1/val/3/00010.jpg"}]
    assert _keys(s3, bucket, "v1/") == {"train/2/00009.jpg", "val/3/00010.jpg"}  # nothing written

    sent = []
    client = s3_client(moto_endpoint, "us-east-1")
    client.meta.events.register("provide-client-params.s3", lambda params, model, **_: sent.append(
        (model.name, {k: v for k, v in params.items() if k != "Body"})))
    plan = plan_upload(src, f"s3://{bucket}/v1", client, kms_key=key)
    assert request_checksum_calculation(client) == checksums
    # the dry run printed the plan's requests
    assert plan.requests(limit=PREVIEW, checksum_calculation=checksums) == printed
    sent.clear()
    report, failed = upload(plan, client, workers=2, force=True)
    assert not report.failed and not failed
    writes = [(api, r) for api, r in sent if api in ("PutObject", "CreateMultipartUpload", "DeleteObjects")]
    assert sorted(writes, key=str) == sorted(printed, key=str)
    assert {api for api, _ in sent} == {"PutObject", "CreateMultipartUpload", "UploadPart",
                                        "CompleteMultipartUpload", "DeleteObjects"}
    assert _keys(s3, bucket, "v1/") == _local(src)


def test_an_offline_upload_dry_run_sends_nothing_and_says_what_it_cannot_know(tmp_path):
    """--offline: no listing, no credentials, no network (nothing listens at the endpoint); every file is a
    PutObject, what the prefix holds is unknown and said so. An upload itself always lists: --offline alone is
    one line."""
    from .test_cli import NOWHERE, _run_env, _without_credentials

    src = _layout(tmp_path / "ch")
    env = _without_credentials(tmp_path)
    proc = _run_env(env, "data", "upload", src, "s3://bkt/v1", "--dry-run", "--offline", *NOWHERE)
    assert proc.returncode == 0, proc.stderr
    assert [d["api"] for d in _requests(proc.stdout)] == ["PutObject", "CreateMultipartUpload", "PutObject"]
    assert "s3://bkt/v1/ was not listed" in proc.stderr and "would upload all 3 files" in proc.stderr
    # the ChecksumAlgorithm boto3 adds follows the client's config, here with no client made
    # (test_upload_dry_run_prints_the_writes_the_upload_then_sends: what the upload sends)
    for checksums, algorithm in ((None, "CRC32"), ("when_required", None)):
        run = {**env, **({"AWS_REQUEST_CHECKSUM_CALCULATION": checksums} if checksums else {})}
        printed = _requests(_run_env(run, "data", "upload", src, "s3://bkt/v1", "--dry-run", "--offline",
                                     *NOWHERE).stdout)
        assert {d["request"].get("ChecksumAlgorithm") for d in printed} == {algorithm}, checksums
    assert_one_line_error(_run_env({**env, "AWS_REQUEST_CHECKSUM_CALCULATION": "always"}, "data", "upload", src,
                                   "s3://bkt/v1", "--dry-run", "--offline", *NOWHERE), "request_checksum_calculation")
    assert "which objects the upload would delete (and whether it would refuse to) are not known" in proc.stderr
    assert_one_line_error(_run_env(env, "data", "upload", src, "s3://bkt/v1", "--offline", *NOWHERE),
                          "--offline is for --dry-run")


def test_upload_of_a_missing_folder_is_one_line(aws_env, tmp_path):
    """Issue 26.4: a typo in the folder name raised FileNotFoundError (a traceback)."""
    assert_one_line_error(run_cli("data", "upload", tmp_path / "data" / "chanels", "s3://b/p",
                                  "--endpoint-url", "http://127.0.0.1:9"), "chanels", "data split")


def test_a_fetch_with_nothing_to_do_sends_no_request_per_object(abid_bucket, proxy, aws_env, tmp_path):
    """Issue 26.10: a rerun checked every object (1.07 M requests for all of ABID). The ledger is trusted;
    --verify asks the bucket again (conditional GETs, no body when unchanged)."""
    src, bucket, _ = abid_bucket
    fl = tmp_path / "fl.json"
    fl.write_text(json.dumps({"4": json.loads((src / "file_list.json").read_text())["4"][:5]}))
    out = tmp_path / "abid"
    assert _fetch(proxy.url, out, file_list=fl).returncode == 0
    proxy.calls.clear()
    again = _fetch(proxy.url, out, file_list=fl)
    assert "downloaded 0 files" in again.stderr and "skipped 10 already complete" in again.stderr, again.stderr
    assert sum(proxy.calls.values()) <= 1, proxy.calls  # the endpoint check only
    proxy.calls.clear()
    verify = _fetch(proxy.url, out, "--verify", file_list=fl)
    assert "downloaded 0 files" in verify.stderr and "skipped 10 already complete" in verify.stderr, verify.stderr
    assert sum(n for k, n in proxy.calls.items() if k.startswith(f"/{bucket}/bin-images/")) == 5, proxy.calls


def test_a_file_deleted_or_cut_on_disk_is_fetched_again_though_the_ledger_lists_it(abid_bucket, proxy, aws_env,
                                                                                    tmp_path):
    """Issue 26.10's other half: the ledger is trusted only while the file on disk has the size it recorded. A
    deleted image and a truncated metadata file are fetched again (two GETs), the rest still costs no request."""
    src, bucket, _ = abid_bucket
    fl = tmp_path / "fl.json"
    fl.write_text(json.dumps({"4": json.loads((src / "file_list.json").read_text())["4"][:5]}))
    out = tmp_path / "abid"
    assert _fetch(proxy.url, out, file_list=fl).returncode == 0
    gone = sorted((out / "bin-images").glob("*.jpg"))[0]
    cut = sorted((out / "metadata").glob("*.json"))[1]
    original = (gone.read_bytes(), cut.read_bytes())
    gone.unlink()
    cut.write_bytes(original[1][:10])
    proxy.calls.clear()
    again = _fetch(proxy.url, out, file_list=fl)
    assert "downloaded 2 files" in again.stderr and "skipped 8 already complete" in again.stderr, again.stderr
    object_gets = {k: n for k, n in proxy.calls.items() if k.startswith(f"/{bucket}/")}
    assert sum(object_gets.values()) == 2, proxy.calls
    assert (gone.read_bytes(), cut.read_bytes()) == original
