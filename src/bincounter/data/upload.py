"""`data upload`: make s3://bucket/prefix equal to a local channels folder (`data split`) or shards folder
(`data shard`), like `aws s3 sync --delete`.

* `plan_upload` lists the prefix once (paginated) and compares it with the local tree: files whose size and ETag
  already match are skipped, the others are uploaded, and every object under the prefix that the local tree does
  not hold is deleted *after* the uploads (a re-split uploaded onto an older prefix would otherwise leave the old
  split's bins behind: test bins inside train);
* it refuses in one line, before anything is sent, when the deletions look like a mistake: objects that are not a
  channel layout (another tool's files), or more than half of what the prefix holds with names the local tree
  lacks (another data set? a re-split only moves the same bins between splits); `force` overrides;
* the dry run: `describe` (counts, what was read to know them) and `requests` (the writes the upload would send:
  PutObject, or CreateMultipartUpload for a file of PART_SIZE or more, then DeleteObjects; the same fields the real
  upload passes to boto3, from `object_args` and `delete_requests`, and those boto3's upload_file adds for the
  client's config, `transfer_args`: ChecksumAlgorithm). Listing the prefix is a read; `plan_upload`
  without a client lists nothing (an offline dry run: every file is to upload, the deletions are unknown);
* `kms_key` (SSE-KMS): every object is written encrypted with the customer key. S3's ETag of an SSE-KMS object is
  not an MD5, so each object is also given its MD5 ETag as metadata (`x-amz-meta-bincounter-etag`), and an object
  of the same size counts as unchanged only when a HeadObject shows it under that key with that metadata (one
  HEAD per such file; an object stored unencrypted, or under another key, is uploaded again).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, UserError
from .s3 import CONFIGURE, TransferReport, check_endpoint, parse_s3_uri, transfer

log = logging.getLogger(__name__)

#: multipart threshold and part size of our uploads (boto3's default, set explicitly so that `etag` computes
#: what S3 will report for a file: the MD5 below it, the MD5 of the parts' MD5s plus "-<parts>" at or above it)
PART_SIZE = 8 * 2**20
#: threads per file of a multipart upload (s3transfer's default). The client's connection pool must hold one
#: connection per thread (`upload_pool_size`), else urllib3 warns "Connection pool is full, discarding
#: connection" over and over on a large upload that goes well.
UPLOAD_THREADS_PER_FILE = 10
SPLITS = ("train", "val", "test")
#: keys (below the prefix) that `data split` and `data shard` write: deleting these needs no --force
CHANNEL_KEY = re.compile(r"^(manifest\.csv|(train|val|test)/(\d+/[^/]+\.(jpe?g|png)|[^/]+\.tar|index\.json))$")
#: deleting more than this fraction of the objects under the prefix needs --force
MAX_DELETE_FRACTION = 0.5
#: requests the dry run prints per API (the rest are counted)
PREVIEW = 5
#: the object metadata carrying a file's MD5 ETag (an SSE-KMS object's own ETag is not its MD5)
ETAG_META = "bincounter-etag"
#: S3's limit on keys per DeleteObjects request
DELETE_BATCH = 1000


def upload_pool_size(workers: int) -> int:
    """Connections an `upload` client with `workers` files in flight can use at once."""
    return workers * UPLOAD_THREADS_PER_FILE + 4


def etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 gives `path` uploaded by `upload` (shards are often over PART_SIZE, i.e. multipart)."""
    parts = []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(part_size), b""):
            parts.append(hashlib.md5(chunk).digest())
    if len(parts) <= 1 and path.stat().st_size < part_size:
        return (parts[0] if parts else hashlib.md5(b"").digest()).hex()
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


@dataclass
class UploadPlan:
    src: Path
    bucket: str
    prefix: str
    channels: list[str]
    files: list[tuple[str, Path]]  # every local file: (key, path)
    todo: list[tuple[str, Path]]  # those whose object is missing or differs
    extra: list[str] = field(default_factory=list)  # keys under the prefix that the local tree does not hold
    remote: int = 0  # objects under the prefix before the upload
    kms_key: str | None = None  # SSE-KMS with this customer key
    listed: bool = True  # False: the prefix was not listed (offline dry run): `todo` is every file, `extra` unknown

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def uris(self) -> dict[str, str]:
        return {c: f"s3://{self.bucket}/{'/'.join(filter(None, [self.prefix, c]))}/" for c in self.channels}

    def refusal(self) -> str | None:
        """Why deleting `extra` looks like a mistake (None: it does not)."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        foreign = [k for k in self.extra if not CHANNEL_KEY.match(k[cut:])]
        if foreign:
            return (f"{self.uri} holds {len(foreign)} objects that are not bincounter channels (e.g. "
                    f"{', '.join(repr(k) for k in foreign[:3])}); the upload makes the prefix equal to {self.src} "
                    "and would delete them: choose another prefix, or pass --force to delete them")
        # a re-split moves bins between splits (same file name, another key): not a loss; bins or shards whose
        # name the local tree does not hold at all are
        names = {k.rsplit("/", 1)[-1] for k, _ in self.files}
        lost = [k for k in self.extra if k.rsplit("/", 1)[-1] not in names]
        if len(lost) > MAX_DELETE_FRACTION * self.remote:
            return (f"the upload would delete {len(lost)} of the {self.remote} objects under {self.uri} whose "
                    f"names {self.src} does not hold (more than {MAX_DELETE_FRACTION:.0%}: another data set?): "
                    "check with --dry-run, choose another prefix, or pass --force")
        return None

    def multipart(self, path: Path) -> bool:
        """Whether boto3 uploads `path` in parts (s3transfer: size >= the threshold)."""
        return path.stat().st_size >= PART_SIZE

    def counts(self) -> dict[str, int]:
        """Requests the upload sends per API (writes only; a multipart upload's parts and completion not counted)."""
        parts = sum(1 for _, p in self.todo if self.multipart(p))
        return {"PutObject": len(self.todo) - parts, "CreateMultipartUpload": parts,
                "DeleteObjects": -(-len(self.extra) // DELETE_BATCH)}

    def requests(self, limit: int | None = None, *, checksum_calculation: str) -> list[tuple[str, dict]]:
        """The writes `upload` sends through a client with this request_checksum_calculation
        (`request_checksum_calculation`), (API, request) in order (uploads, then deletions), as boto3's upload_file
        hands them to the client (`transfer_args`); botocore adds each body and its checksum value. At most
        `limit` per API."""
        out: list[tuple[str, dict]] = []
        shown: dict[str, int] = {}
        for key, path in self.todo:
            api = "CreateMultipartUpload" if self.multipart(path) else "PutObject"
            if limit is None or shown.get(api, 0) < limit:
                shown[api] = shown.get(api, 0) + 1
                out.append((api, {"Bucket": self.bucket, "Key": key, **object_args(self.kms_key, path),
                                  **transfer_args(checksum_calculation)}))
        deletes = delete_requests(self.bucket, self.extra)
        return out + [("DeleteObjects", r) for r in deletes[:limit]]

    def describe(self, force: bool = False, shown: int = PREVIEW, *, checksum_calculation: str) -> list[str]:
        """The dry run's lines (beside the requests it prints, `shown` per API; `checksum_calculation`: as for
        `requests`)."""
        mb = sum(p.stat().st_size for _, p in self.todo) / 2**20
        if self.listed:
            lines = [f"dry run: {self.src} -> {self.uri}: would upload {len(self.todo)} files ({mb:.1f} MB), skip "
                     f"{len(self.files) - len(self.todo)} unchanged, would delete {len(self.extra)} objects that "
                     f"{self.src} does not hold",
                     f"  found by listing {self.uri}/ (ListObjectsV2"
                     + (", and a HeadObject per object of a local file's size" if self.kms_key else "")
                     + "): reads, no write was sent; --offline leaves them out"]
        else:
            lines = [f"dry run, offline: {self.src} -> {self.uri}: would upload all {len(self.todo)} files "
                     f"({mb:.1f} MB); {self.uri}/ was not listed, so which files are unchanged and which objects "
                     f"the upload would delete (and whether it would refuse to) are not known here: the upload "
                     "lists the prefix first"]
        if self.kms_key:
            lines.append(f"  encrypted with SSE-KMS key {self.kms_key} (objects there unencrypted or under another "
                         "key count as changed; that the key exists and you may use it is not checked here)")
        counts = self.counts()
        if counts["CreateMultipartUpload"]:
            lines.append(f"  files of {PART_SIZE // 2**20} MiB or more go in parts: CreateMultipartUpload, an "
                         f"UploadPart per {PART_SIZE // 2**20} MiB, CompleteMultipartUpload (those two carry the "
                         "UploadId S3 answers: not printed)")
        more = {api: n - shown for api, n in counts.items() if n > shown}
        if more:
            lines.append(f"  printed: the first {shown} requests of each kind; not printed: "
                         + ", ".join(f"{n} more {api}" for api, n in more.items()))
        if transfer_args(checksum_calculation):
            lines.append("  botocore adds each body, and the value of the checksum ChecksumAlgorithm names, when it "
                         "sends them")
        else:
            lines.append("  botocore adds each body when it sends them (request_checksum_calculation = "
                         "when_required: no checksum for the uploads; DeleteObjects always carries one)")
        why = self.refusal() if self.listed else None
        if why and not force:
            lines.append(f"without --force the upload refuses: {why}")
        lines.append("nothing was changed")
        return lines


def object_args(kms_key: str | None, path: Path) -> dict:
    """What every PutObject / CreateMultipartUpload of `path` carries beside Bucket and Key (boto3's ExtraArgs)."""
    if not kms_key:
        return {}
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key, "Metadata": {ETAG_META: etag(path)}}


def request_checksum_calculation(client, profile: str | None = None) -> str:
    """The S3 client's request_checksum_calculation, "when_supported" (botocore's default) or "when_required".
    `client` None (an offline dry run): the value a client for `profile` would take (its config file's
    request_checksum_calculation, or AWS_REQUEST_CHECKSUM_CALCULATION), checked as botocore checks it."""
    if client is not None:
        return client.meta.config.request_checksum_calculation
    import botocore.session
    from botocore.args import VALID_REQUEST_CHECKSUM_CALCULATION_CONFIG as valid
    from botocore.exceptions import InvalidChecksumConfigError

    value = str(botocore.session.Session(profile=profile).get_config_variable("request_checksum_calculation"))
    if value.lower() not in valid:
        raise InvalidChecksumConfigError(config_key="request_checksum_calculation", config_value=value,
                                         valid_options=valid)
    return value.lower()


def transfer_args(checksum_calculation: str) -> dict:
    """What boto3's upload_file (s3transfer) adds to the ExtraArgs of every PutObject and CreateMultipartUpload
    for a client with this request_checksum_calculation: botocore's default ChecksumAlgorithm (CRC32) when it is
    when_supported, nothing when it is when_required (s3transfer's TransferManager._add_operation_defaults)."""
    from botocore.httpchecksum import DEFAULT_CHECKSUM_ALGORITHM

    return {"ChecksumAlgorithm": DEFAULT_CHECKSUM_ALGORITHM} if checksum_calculation == "when_supported" else {}


def delete_requests(bucket: str, keys: list[str]) -> list[dict]:
    """The DeleteObjects requests for `keys`, DELETE_BATCH keys each."""
    return [{"Bucket": bucket, "Delete": {"Objects": [{"Key": k} for k in keys[i:i + DELETE_BATCH]], "Quiet": True}}
            for i in range(0, len(keys), DELETE_BATCH)]


def _kms_matches(given: str, got: str | None) -> bool:
    """Is an object's SSEKMSKeyId (S3 answers the key ARN) the key given (an id, ARN, alias or alias ARN)? An alias
    cannot be resolved without KMS: any customer key passes then."""
    if not got:
        return False
    if "alias/" in given:
        return True
    return got == given or got.endswith(f"/{given}") or given.endswith(f"/{got}")


def _unchanged_under_key(client, bucket: str, candidates: list[tuple[str, Path]], kms_key: str,
                         workers: int = 16) -> set[str]:
    """The keys among `candidates` (same size as the local file) stored with SSE-KMS under `kms_key` and holding
    the local file's MD5 ETag as metadata (one HeadObject each, in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    def same(job):
        key, path = job
        head = client.head_object(Bucket=bucket, Key=key)
        return (head.get("ServerSideEncryption") == "aws:kms" and _kms_matches(kms_key, head.get("SSEKMSKeyId"))
                and head.get("Metadata", {}).get(ETAG_META) == etag(path))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {k for (k, _), ok in zip(candidates, pool.map(same, candidates), strict=True) if ok}


def plan_upload(src: str | Path, uri: str, client, kms_key: str | None = None) -> UploadPlan:
    """Compare `src` (train/, val/, test/, manifest.csv) with what s3://bucket/prefix holds. Sends only list
    requests (with `kms_key`: a HeadObject per file whose object has its size). `client` None: nothing is sent
    (an offline dry run's plan: every file to upload, nothing known to delete)."""
    src = Path(src)
    bucket, prefix = parse_s3_uri(uri)
    if not src.is_dir():
        raise DataError(f"{src} does not exist or is not a directory: give the folder `bincounter data split` "
                        "(or `data shard`) wrote")
    channels = [p.name for p in sorted(src.iterdir()) if p.is_dir() and p.name in SPLITS]
    if not channels:
        raise DataError(f"{src}: no channels (train/, val/, test/) to upload; run `bincounter data split` first")
    paths = [p for c in channels for p in sorted((src / c).rglob("*")) if p.is_file()]
    if (src / "manifest.csv").is_file():
        paths.append(src / "manifest.csv")
    files = [("/".join(filter(None, [prefix, p.relative_to(src).as_posix()])), p) for p in paths]
    if client is None:
        return UploadPlan(src, bucket, prefix, channels, files, list(files), kms_key=kms_key, listed=False)
    check_endpoint(client, bucket, f"uploading needs them: {CONFIGURE}; --dry-run --offline needs none")
    remote: dict[str, tuple[int, str]] = {}
    # prefix + "/": s3://b/bins/v1 must not reach into bins/v10/
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix
                                                                 else ""):
        for o in page.get("Contents", []):
            if not (o["Key"].endswith("/") and o["Size"] == 0):  # a console "folder": neither ours nor harmful
                remote[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    if kms_key:
        sized = [(k, p) for k, p in files if k in remote and remote[k][0] == p.stat().st_size]
        same = _unchanged_under_key(client, bucket, sized, kms_key)
        todo = [(k, p) for k, p in files if k not in same]
    else:
        todo = [(k, p) for k, p in files if remote.get(k) != (p.stat().st_size, etag(p))]
    local = {k for k, _ in files}
    return UploadPlan(src, bucket, prefix, channels, files, todo, sorted(set(remote) - local), len(remote), kms_key)


def delete_keys(client, bucket: str, keys: list[str]) -> dict[str, str]:
    """DeleteObjects in batches of 1000. -> {key: reason} of those S3 did not delete."""
    failed = {}
    for request in delete_requests(bucket, keys):
        resp = client.delete_objects(**request)
        for err in resp.get("Errors", []):
            failed[err.get("Key", "?")] = f"{err.get('Code')}: {err.get('Message')}"
    return failed


def upload(plan: UploadPlan, client, workers: int = 16, force: bool = False) -> tuple[TransferReport, dict[str, str]]:
    """Carry out `plan`: refuse (UserError, nothing sent) if its deletions look like a mistake and not `force`;
    upload `plan.todo`, then delete `plan.extra`. -> (report, {key: reason} of deletions that failed); the
    report counts skipped files, `len(plan.extra) - len(failed)` objects were deleted."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    if not plan.listed:
        raise ValueError("an offline plan (nothing listed) is for a dry run only: it would not mirror the prefix")
    why = plan.refusal()
    if why and not force:
        raise UserError(why)
    config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                            max_concurrency=UPLOAD_THREADS_PER_FILE)

    def work(job, stop):
        key, path = job
        if stop.is_set():
            raise KeyboardInterrupt
        try:
            client.upload_file(str(path), plan.bucket, key, Config=config,
                               ExtraArgs=object_args(plan.kms_key, path) or None)
        except S3UploadFailedError as e:  # AccessDenied, a missing bucket...: this file failed, reported per key
            raise OSError(" ".join(str(e).split())) from None
        return path.stat().st_size

    report = transfer(plan.todo, work, workers, "upload")
    report.skipped = len(plan.files) - len(plan.todo)
    if report.failed and plan.extra:  # never leave the prefix holding neither the old split nor the new one
        log.warning("not deleting the %d objects the folder does not hold: %d uploads failed (rerun once they "
                    "succeed)", len(plan.extra), len(report.failed))
        return report, {k: "not deleted: an upload failed" for k in plan.extra}
    return report, delete_keys(client, plan.bucket, plan.extra)
