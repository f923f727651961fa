"""Moving ABID data between S3 and disk: `fetch` (the public bucket, or any S3 API via --endpoint-url), and
what `upload` (upload.py: prepared channels to your bucket) shares with it: the client, S3 URIs, the endpoint
check and the bounded transfer pool.

fetch is parallel (bounded thread pool), resumable and safe to interrupt:
* every object is written to `<name>.part-<pid>-<thread>` and renamed when complete (length checked
  against Content-Length), so a file under its final name is always whole;
* `.fetch-ledger.jsonl` records (key, size, ETag) of finished files: a second run trusts a file whose size on
  disk matches its ledger entry (no request at all: a rerun with nothing to do costs one listing call, not one per
  object) and fetches everything else again (missing, changed on disk); with `verify` it also asks the bucket
  whether each complete file's ETag changed (a conditional GET: 304, no body, when it did not) and fetches the
  changed ones; entries written before the ETag was recorded are trusted by size;
* throttling and 5xx are retried by botocore (adaptive mode) and a broken body stream by us, with backoff;
* a missing key is counted and reported, not fatal; Ctrl-C stops the workers, removes their partial files
  and leaves the ledger consistent.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .. import COUNTS
from ..errors import DataError, UserError
from .abid import ID_RE, count_from_metadata, read_file_list

log = logging.getLogger(__name__)
ABID_BUCKET = "aft-vbi-pds"
ABID_REGION = "us-east-1"
LEDGER = ".fetch-ledger.jsonl"
_CHUNK = 1 << 18


def s3_client(endpoint_url: str | None = None, region: str | None = None, unsigned: bool = False,
              max_pool: int = 32, profile: str | None = None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=max_pool,
                 connect_timeout=10, read_timeout=60, **({"signature_version": UNSIGNED} if unsigned else {}))
    session = boto3.Session(profile_name=profile) if profile else boto3.Session()
    return session.client("s3", region_name=region or ABID_REGION, endpoint_url=endpoint_url, config=cfg)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise UserError(f"{uri!r} is not an S3 URI (s3://bucket/prefix)")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise UserError(f"{uri!r} has no bucket")
    return bucket, prefix.strip("/")


#: how to get credentials, for the missing-credentials line
CONFIGURE = "aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
FETCH_NO_CREDENTIALS = f"the public ABID bucket needs none: leave out --no-unsigned; other buckets: {CONFIGURE}"


def check_endpoint(client, bucket: str, no_credentials: str = FETCH_NO_CREDENTIALS) -> None:
    """One cheap call up front, so an unreachable endpoint, missing credentials (`no_credentials` says how to get
    them) or a missing bucket is one clear line."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except EndpointConnectionError as e:
        raise UserError(f"cannot reach the S3 endpoint {e.kwargs.get('endpoint_url', '')}") from None
    except NoCredentialsError:
        raise UserError(f"no AWS credentials found ({no_credentials})") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        raise UserError(f"bucket {bucket!r}: {err.get('Code')}: {err.get('Message')}") from None


# --------------------------------------------------------------------------------------------- fetch
@dataclass
class TransferReport:
    done: int = 0
    skipped: int = 0
    bytes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    missing: set[str] = field(default_factory=set)  # the failed keys the bucket does not hold (404/NoSuchKey)

    def errors(self) -> dict[str, str]:
        """The failures that are not a missing key: throttling, 5xx, AccessDenied, broken streams."""
        return {k: v for k, v in self.failed.items() if k not in self.missing}

    def summary(self, verb: str = "downloaded") -> str:
        reasons = Counter(v.split(":")[0] for v in self.failed.values())
        failed = f"{len(self.failed)} failed" + (f" ({', '.join(f'{n} {r}' for r, n in reasons.items())})"
                                                   if reasons else "")
        rate = self.bytes / 2**20 / self.seconds if self.seconds else 0.0
        return (f"{verb} {self.done} files ({self.bytes / 2**20:.1f} MB, {rate:.1f} MB/s), "
                f"skipped {self.skipped} already complete, {failed}")


class _Ledger:
    def __init__(self, root: Path):
        self.path = root / LEDGER
        self.sizes: dict[str, int] = {}
        self.etags: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.sizes[rec["key"]] = rec["size"]
                    if rec.get("etag"):
                        self.etags[rec["key"]] = rec["etag"]
                    else:
                        self.etags.pop(rec["key"], None)
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn last line from a killed run
        self.lock = threading.Lock()
        self.f = open(self.path, "a")

    def complete(self, key: str, dest: Path) -> bool:
        """Whole on disk as fetched (the bucket may still hold a newer version: `etags`)."""
        return key in self.sizes and dest.is_file() and dest.stat().st_size == self.sizes[key]

    def add(self, key: str, size: int, etag: str | None = None) -> None:
        with self.lock:
            self.f.write(json.dumps({"key": key, "size": size, **({"etag": etag} if etag else {})}) + "\n")
            self.f.flush()
            self.sizes[key] = size
            if etag:
                self.etags[key] = etag

    def close(self) -> None:
        self.f.close()


class Unchanged(Exception):
    """A worker's job needed no transfer (the object did not change): counted as skipped by `transfer`."""


def _download(client, bucket: str, key: str, dest: Path, stop: threading.Event, attempts: int = 4,
              if_none_match: str | None = None) -> tuple[int, str | None]:
    """-> (bytes, the object's ETag). `if_none_match`: the ETag of the copy on disk; raises Unchanged when the
    bucket still holds that version."""
    from botocore.exceptions import ClientError

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}-{threading.get_ident()}")
    conditional = {"IfNoneMatch": if_none_match} if if_none_match else {}
    for attempt in range(1, attempts + 1):
        try:
            obj = client.get_object(Bucket=bucket, Key=key, **conditional)
            expected, got = obj["ContentLength"], 0
            with open(tmp, "wb") as f:
                for chunk in obj["Body"].iter_chunks(_CHUNK):
                    if stop.is_set():
                        raise KeyboardInterrupt
                    f.write(chunk)
                    got += len(chunk)
            if got != expected:
                raise OSError(f"truncated body: {got} of {expected} bytes")
            os.replace(tmp, dest)
            return got, obj.get("ETag")
        except ClientError as e:
            tmp.unlink(missing_ok=True)
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("304", "NotModified"):
                raise Unchanged(key) from None
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"missing: s3://{bucket}/{key}") from None
            if code in ("AccessDenied", "403"):
                raise PermissionError(f"access denied: s3://{bucket}/{key}") from None
            if attempt == attempts:
                raise OSError(f"error: {code}") from None
        except KeyboardInterrupt:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as e:  # noqa: BLE001 - broken streams, resets: retried, then reported
            tmp.unlink(missing_ok=True)
            if attempt == attempts:
                raise OSError(f"error: {type(e).__name__}: {str(e)[:120]}") from None
        time.sleep(min(8.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def transfer(jobs: list, worker, workers: int, desc: str, unit: str = "file") -> TransferReport:
    """Run `worker(job, stop) -> bytes` over jobs in a bounded pool with a progress bar. A job is
    (key, ...); FileNotFoundError (also in `missing`)/PermissionError/OSError are recorded per key; Ctrl-C
    stops cleanly."""
    from ..progress import progress

    report, stop, t0 = TransferReport(), threading.Event(), time.monotonic()
    with progress(len(jobs), desc, unit=unit) as bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = set()
        it = iter(jobs)
        try:
            while True:
                while len(pending) < 2 * workers:
                    job = next(it, None)
                    if job is None:
                        break
                    fut = pool.submit(worker, job, stop)
                    fut.key = job[0]
                    pending.add(fut)
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        report.bytes += fut.result()
                        report.done += 1
                    except Unchanged:
                        report.skipped += 1
                    except FileNotFoundError as e:
                        report.failed[fut.key] = str(e)
                        report.missing.add(fut.key)
                    except OSError as e:  # PermissionError, the rest
                        report.failed[fut.key] = str(e)
                    bar.update(1)
                elapsed = max(time.monotonic() - t0, 1e-9)
                bar.set_postfix_str(f"{report.bytes / 2**20 / elapsed:.1f} MB/s")
        except KeyboardInterrupt:
            stop.set()
            for fut in pending:
                fut.cancel()
            wait(pending)
            raise
    report.seconds = time.monotonic() - t0
    return report


def fetch(out: str | Path, ids: list[str], bucket: str = ABID_BUCKET, client=None, workers: int = 16,
          verify: bool = False, prefix: str = "") -> TransferReport:
    """Download images + metadata for the bin ids into `out` (ABID layout). Files complete per the ledger are
    skipped without a request, or with `verify` checked against the bucket's ETag (conditional GETs). `prefix`:
    where the ABID layout starts in the bucket ("" or "abid/")."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob("*.part-*"):  # left by a killed process (not a Ctrl-C, which cleans up)
        stale.unlink()
    ledger = _Ledger(out)
    keys = [k for bid in ids for k in (f"metadata/{bid}.json", f"bin-images/{bid}.jpg")]
    # complete on disk: skipped, or with `verify` and a recorded ETag, fetched again only if the bucket's ETag differs
    jobs = [(k, ledger.etags.get(k) if ledger.complete(k, out / k) else None) for k in keys
            if not (ledger.complete(k, out / k) and not (verify and k in ledger.etags))]
    skipped = len(keys) - len(jobs)
    checked = sum(1 for _, etag in jobs if etag)
    log.info("%d files listed, %d already complete, %d to check for changes, %d to fetch from s3://%s with %d "
             "workers", len(keys), skipped, checked, len(jobs) - checked, bucket, workers)

    def work(job, stop):
        key, etag = job
        n, new_etag = _download(client, bucket, prefix + key, out / key, stop, if_none_match=etag)
        ledger.add(key, n, new_etag)
        return n

    try:
        report = transfer(jobs, work, workers, "fetch")
    finally:
        ledger.close()
    report.skipped += skipped
    return report


def sample_ids(client, bucket: str, n: int, counts: tuple[int, ...], seed: int,
               workers: int = 16) -> dict[int, list[str]]:
    """A file list made on the fly: list metadata/, shuffle (seeded), read metadata until `n` bins with a
    count in `counts` are found."""
    ids, odd = [], []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="metadata/"):
        for o in page.get("Contents", []):
            if not o["Key"].endswith(".json"):
                continue
            bid = o["Key"][len("metadata/"):-5]
            # the id becomes a local file name: only plain ABID ids (digits), as with --file-list, so a key
            # like metadata/../../x.json can never write outside --out
            (ids if ID_RE.match(bid) else odd).append(bid)
    if odd:
        log.warning("skipped %d metadata keys that are not ABID bin ids (e.g. %s)", len(odd),
                    ", ".join(repr(k) for k in odd[:3]))
    if not ids:
        raise DataError(f"s3://{bucket}/metadata/ holds no metadata files")
    ids.sort()
    random.Random(seed).shuffle(ids)
    chosen: dict[int, list[str]] = {c: [] for c in counts}
    found = 0

    def read(bid):
        body = client.get_object(Bucket=bucket, Key=f"metadata/{bid}.json")["Body"].read()
        try:
            return bid, count_from_metadata(json.loads(body), bid, counts)
        except (DataError, ValueError):
            return bid, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(ids), workers * 4):
            for bid, c in pool.map(read, ids[start:start + workers * 4]):
                if c is not None and found < n:
                    chosen[c].append(bid)
                    found += 1
            if found >= n:
                break
    if found < n:
        log.warning("only %d bins with counts %s in s3://%s (asked for %d)", found, counts, bucket, n)
    return chosen


def write_file_list(path: Path, chosen: dict[int, list[str]]) -> None:
    path.write_text(json.dumps({str(c): [f"data/metadata/{b}.json" for b in sorted(v)]
                                for c, v in sorted(chosen.items())}, indent=1))


def ids_from_file_list(path: str | Path, counts: tuple[int, ...] = COUNTS) -> list[str]:
    listed = read_file_list(path, counts)
    return sorted({bid for ids in listed.values() for bid in ids})
