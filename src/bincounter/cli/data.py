"""`bincounter data ...`: synthetic bins, the stratified split, the ABID download, the EDA report, shards and the
upload to S3, each a thin wrapper over `bincounter.data`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import COUNTS
from ..errors import UserError
from ..train_config import positive_int
from .base import Formatter, not_empty

log = logging.getLogger("bincounter")


def cmd_synth(args) -> int:
    from ..data.synth import synth_dataset
    from ..progress import progress

    total = args.per_class * len(COUNTS)
    with progress(total, "synth", unit="bin") as bar:
        synth_dataset(args.out, args.per_class, seed=args.seed, size=args.size, progress=bar)
    log.info("wrote %d synthetic bins (%d per count %s) to %s: bin-images/, metadata/, file_list.json",
             total, args.per_class, "/".join(map(str, COUNTS)), args.out)
    return 0


def cmd_split(args) -> int:
    from ..data import split

    split.run(args.src, args.out, val=args.val, test=args.test, seed=args.seed, file_list=args.file_list,
              balance=args.balance, strict=args.strict)
    log.info("manifest: %s", Path(args.out) / "manifest.csv")
    return 0


def _s3(args, max_pool: int | None = None):
    from ..data.s3 import s3_client

    return s3_client(args.endpoint_url, args.region, unsigned=getattr(args, "unsigned", False),
                     max_pool=max_pool or args.workers + 4, profile=args.profile)


def cmd_fetch(args) -> int:
    from ..aws import user_errors

    with user_errors(f"data fetch from s3://{args.bucket}", "the public ABID bucket needs none: leave out "
                     "--no-unsigned"):  # no AWS tracebacks
        return _fetch(args)


#: what to do when the bucket refuses anonymous (unsigned) requests
UNSIGNED_DENIED = "requests are unsigned: pass --no-unsigned to sign them with your AWS credentials"


def _fetch(args) -> int:
    from ..data.s3 import check_endpoint, fetch, ids_from_file_list, sample_ids, write_file_list

    client = _s3(args)
    out = Path(args.out)
    if not (args.file_list or args.sample):
        raise UserError("pass --file-list FILE or --sample N")
    # local inputs first (a bad list fails without touching the network), then the endpoint, once
    ids = ids_from_file_list(args.file_list) if args.file_list else None
    counts = _parse_counts(args.counts) if ids is None else None
    try:
        check_endpoint(client, args.bucket)
    except UserError as e:
        if args.unsigned and "AccessDenied" in str(e):
            raise UserError(f"{e} ({UNSIGNED_DENIED})") from None
        raise
    if ids is None:
        chosen = sample_ids(client, args.bucket, args.sample, counts, args.seed, args.workers)
        out.mkdir(parents=True, exist_ok=True)
        write_file_list(out / "file_list.json", chosen)
        ids = sorted(b for v in chosen.values() for b in v)
        log.info("sampled %d bins (%s) -> %s", len(ids), {c: len(v) for c, v in chosen.items()},
                 out / "file_list.json")
    report = fetch(out, ids, bucket=args.bucket, client=client, workers=args.workers, verify=args.verify)
    for key, reason in list(report.failed.items())[:10]:
        log.warning("  %s: %s", key, reason)
    if args.unsigned and any(r.startswith("access denied") for r in report.failed.values()):
        log.warning("access denied to anonymous requests: %s", UNSIGNED_DENIED)
    log.info(report.summary())  # last: what a reader sees at the end
    if args.file_list and not (out / "file_list.json").exists():
        (out / "file_list.json").write_text(Path(args.file_list).read_text())
    return 1 if report.failed and not report.done and not report.skipped else 0


def _parse_counts(text: str) -> tuple[int, ...]:
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            counts = tuple(range(lo, hi + 1))
        else:
            counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--counts {text!r}: expected a range like 1-5 or a list like 1,2,3") from None
    if not counts or any(c not in COUNTS for c in counts):
        raise UserError(f"--counts {text!r}: counts must lie in {COUNTS[0]}..{COUNTS[-1]}")
    return counts


def cmd_eda(args) -> int:
    from ..data import eda

    index = eda.run(args.src, args.out)
    log.info("report: %s (plots + eda.json beside it)", index)
    return 0


def cmd_shard(args) -> int:
    from ..data.shards import parse_size, write_shards

    size = parse_size(args.shard_size)
    result = write_shards(args.channels, args.out, size, metadata_dir=args.metadata, seed=args.seed)
    for split, idx in result.items():
        log.info("%-5s %6d samples per count %s in %d shards (%.1f MB) -> %s", split, idx["samples"], idx["counts"],
                 len(idx["shards"]), idx["bytes"] / 1e6, Path(args.out) / split)
    log.info("upload with: bincounter data upload %s s3://BUCKET/PREFIX", args.out)
    return 0


def cmd_upload(args) -> int:
    from ..aws import user_errors
    from ..data.upload import plan_upload, request_checksum_calculation, upload, upload_pool_size

    if args.offline and not args.dry_run:
        raise UserError("--offline is for --dry-run: an upload lists the prefix first (what to skip, what to delete)")
    with user_errors(f"data upload to {args.dest}", "uploading needs them"):  # no AWS tracebacks
        if args.kms_key:
            from ..sm.platform import check_kms_key

            check_kms_key(args.kms_key, args.region)
        client = None if args.offline else _s3(args, upload_pool_size(args.workers))
        plan = plan_upload(args.src, args.dest, client, kms_key=args.kms_key)
        if args.dry_run:
            return _dry_upload(plan, args.force, request_checksum_calculation(client, args.profile))
        report, not_deleted = upload(plan, client, workers=args.workers, force=args.force)
    for key, reason in {**report.failed, **not_deleted}.items():
        log.warning("  %s: %s", key, reason)
    log.info("deleted %d objects under %s that %s does not hold%s", len(plan.extra) - len(not_deleted), plan.uri,
             plan.src, f", {len(not_deleted)} could not be deleted" if not_deleted else "")
    log.info(report.summary("uploaded"))
    for channel, uri in plan.uris().items():
        print(f"{channel}={uri}")
    return 1 if report.failed or not_deleted else 0


def _dry_upload(plan, force: bool, checksum_calculation: str) -> int:
    """The plan on stderr; on stdout the writes the upload would send (the first PREVIEW of each API) through a
    client with this request_checksum_calculation, each checked offline by botocore's model of S3 first, as every
    `sm` dry run's requests are (`printing.print_request`)."""
    import sys

    from ..data.upload import PREVIEW
    from ..sm import printing

    print("\n".join(plan.describe(force, PREVIEW, checksum_calculation=checksum_calculation)), file=sys.stderr)
    for api, request in plan.requests(limit=PREVIEW, checksum_calculation=checksum_calculation):
        printing.print_request(api, request, "s3")
    return 0


def _s3_options(q) -> None:
    q.add_argument("--endpoint-url", help="S3 API endpoint (S3-compatible stores, tests)")
    q.add_argument("--region", help="bucket region")
    q.add_argument("--profile", help="AWS profile")
    q.add_argument("--workers", type=positive_int, default=16, help="parallel transfers")


def register(sub) -> None:
    """The `data` group and its steps."""
    data = sub.add_parser("data", help="prepare ABID data (its steps are listed below)",
                          formatter_class=Formatter,
                          description="Prepare Amazon Bin Image Dataset data.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    s = dsub.add_parser("synth", help="write synthetic ABID bins (images + metadata + file_list.json)",
                        formatter_class=Formatter,
                        description="Draw synthetic bin photos with exactly 1..5 items, in the real ABID "
                        "layout: OUT/bin-images/<id>.jpg, OUT/metadata/<id>.json, OUT/file_list.json. "
                        "Deterministic for a seed. Into an existing OUT, bins with the same ids are overwritten; "
                        "other bins already there (from a larger earlier set) are kept but left out of "
                        "file_list.json, with a warning that counts them.")
    s.add_argument("out", help="output directory")
    s.add_argument("--per-class", type=positive_int, default=40, help="bins per item count")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=positive_int, default=256, help="image width in pixels (height ~0.8x)")
    s.set_defaults(func=cmd_synth)

    sp = dsub.add_parser("split", help="stratified train/val/test split into channel folders",
                         formatter_class=Formatter,
                         description="Validate every bin (metadata schema, count in 1..5, image decodes), "
                         "skip and count bad ones, and write DST/{train,val,test}/<count>/<id>.jpg plus "
                         "DST/manifest.csv (id,count,split,sha256). Stratified per count, seeded.")
    sp.add_argument("src", help="ABID directory (bin-images/, metadata/, optional file_list.json)")
    sp.add_argument("--out", required=True, help="channels directory to write")
    sp.add_argument("--file-list", help="use only the bins in this file_list.json "
                    "(default: SRC/file_list.json if present, else every metadata file)")
    sp.add_argument("--val", type=float, default=0.1, help="fraction of each class for validation")
    sp.add_argument("--test", type=float, default=0.1, help="fraction of each class for test")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--strict", action="store_true",
                    help="fail (exit 2, one line) instead of skipping bad bins; nothing is written")
    sp.add_argument("--balance", choices=["none", "cap", "oversample"], default="none",
                    help="train split only: cap every class to the smallest, or oversample to the largest")
    sp.set_defaults(func=cmd_split)

    f = dsub.add_parser("fetch", help="download ABID bins (images + metadata) from S3",
                        formatter_class=Formatter,
                        description="Download the bins named by a file_list.json (or a seeded sample) from the "
                        "public ABID bucket into OUT/bin-images and OUT/metadata. Parallel, resumable (a rerun "
                        "fetches only what is missing or incomplete, trusting OUT/.fetch-ledger.jsonl for the rest: "
                        "no request per finished file), safe to Ctrl-C.")
    f.add_argument("--out", required=True, help="ABID directory to write")
    f.add_argument("--file-list", help='file_list.json: {"1": ["data/metadata/00009.json", ...], ...}')
    f.add_argument("--sample", type=positive_int, help="no list: sample N bins from the bucket's metadata")
    f.add_argument("--counts", default="1-5", help="with --sample: counts to keep (1-5 or 1,2,3)")
    f.add_argument("--seed", type=int, default=0, help="with --sample")
    f.add_argument("--bucket", default="aft-vbi-pds", help="source bucket (the public ABID bucket by default)")
    f.add_argument("--unsigned", action=argparse.BooleanOptionalAction, default=True,
                   help="anonymous requests (the public bucket needs no credentials)")
    f.add_argument("--verify", action="store_true",
                   help="also ask the bucket whether each finished file changed (one conditional GET per file; "
                   "fetched again if it did)")
    _s3_options(f)
    f.set_defaults(func=cmd_fetch, region="us-east-1")

    ed = dsub.add_parser("eda", help="HTML report with plots and warnings about an ABID directory",
                         formatter_class=Formatter,
                         description="Class histogram, image sizes, item dimensions/weights, sample grid per "
                         "count, warnings (imbalance, corrupt/tiny images, duplicates). OUT/index.html is "
                         "self-contained; numbers in OUT/eda.json.")
    ed.add_argument("src", help="ABID directory (bin-images/ + metadata/), or shards from `data shard` (the whole "
                    "output or one split)")
    ed.add_argument("--out", required=True, help="report directory")
    ed.set_defaults(func=cmd_eda)

    sh = dsub.add_parser("shard", help="pack channels into WebDataset tar shards + an index (full-dataset scale)",
                         formatter_class=Formatter,
                         description="Pack CHANNELS/{train,val,test}/<count>/<id>.jpg into "
                         "SHARDS/<split>/<split>-NNNNNN.tar (<id>.jpg + <id>.json with the count and, with --metadata, "
                         "the bin's ABID metadata) and "
                         "SHARDS/<split>/index.json (samples per count, bytes and sha256 per shard). Deterministic: "
                         "the same channels give byte-identical shards. Each SHARDS/<split> is a channel the trainer "
                         "reads as it is (locally, or uploaded with `data upload` for SageMaker FastFile/File mode).")
    sh.add_argument("channels", help="channels directory (from `data split`)")
    sh.add_argument("--out", required=True, help="shards directory to write (its splits must not exist yet)")
    sh.add_argument("--shard-size", default="256MB", help="target bytes per shard (KB/MB/GB, KiB/MiB/GiB)")
    sh.add_argument("--metadata", help="ABID directory (or its metadata/ folder): put each bin's metadata JSON "
                    "into its sample")
    sh.add_argument("--seed", type=int, default=0, help="the fixed order samples are packed in")
    sh.set_defaults(func=cmd_shard)

    up = dsub.add_parser("upload", help="upload channels to S3 (the prefix ends equal to them) and print their URIs",
                         formatter_class=Formatter,
                         description="Make s3://bucket/prefix equal to DIR/{train,val,test} + manifest.csv (like "
                         "`aws s3 sync --delete`): objects with the same size and MD5 ETag are skipped, the rest "
                         "uploaded, then every object under the prefix that DIR does not hold is deleted (a "
                         "re-split uploaded onto an older prefix would otherwise keep the old split's bins: test "
                         "bins inside train). Refuses in one line, before sending anything, when it would delete "
                         "objects that are not bincounter channels, or more than half of the prefix with names DIR "
                         "lacks (--force). Prints channel=URI lines for the job.")
    up.add_argument("src", help="channels directory (from `data split`, or `data shard`)")
    up.add_argument("dest", help="s3://bucket/prefix")
    up.add_argument("--dry-run", action="store_true",
                    help="print the plan (counts; stderr) and the S3 requests that would write (PutObject, "
                    "CreateMultipartUpload, DeleteObjects: the first 5 of each, checked against botocore's model of "
                    "S3; stdout); change nothing. Lists the prefix (a read) to know what to skip and delete")
    up.add_argument("--offline", action="store_true",
                    help="with --dry-run: send nothing at all, no credentials needed (every file counts as to "
                    "upload; what would be skipped or deleted is not known)")
    up.add_argument("--force", action="store_true",
                    help="delete the objects DIR does not hold even when they are not bincounter channels or more "
                    "than half of the prefix")
    up.add_argument("--kms-key", metavar="KEY", type=not_empty,
                    help="encrypt every object with SSE-KMS under this customer key (id, ARN, alias); unchanged "
                         "objects are then found with one HeadObject each (an SSE-KMS object's ETag is not its MD5)")
    _s3_options(up)
    up.set_defaults(func=cmd_upload)
