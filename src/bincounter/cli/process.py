"""`bincounter process prepare | evaluate`: the pipeline's processing steps, what `docker run IMAGE process` runs
(`bincounter.sagemaker.processing`)."""

from __future__ import annotations

import json

from ..train_config import positive_int
from . import sm_monitor
from .base import Formatter, fraction


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


def cmd_process_plan(args) -> int:
    from ..sagemaker.processing import plan

    print(json.dumps(plan(args.raw, args.out, val=args.val, test=args.test, seed=args.seed,
                          part_size=args.part_size)))
    return 0


def cmd_process_shard(args) -> int:
    from ..data.shards import parse_size
    from ..sagemaker.processing import shard

    print(json.dumps(shard(args.parts, args.source, args.out, parse_size(args.shard_size), workers=args.workers,
                           endpoint_url=args.endpoint_url, slice_by_host=args.slice_by_host,
                           manifest=args.manifest)))
    return 0


def cmd_process_index(args) -> int:
    from ..sagemaker.processing import index

    print(json.dumps(index(args.parts, args.out, args.manifest, max_bad_fraction=args.max_bad_fraction)))
    return 0


def _register_sharded(psub) -> None:
    """The sharded Prepare: plan (1 instance, metadata only) -> shard (N instances) -> index (1 instance)."""
    from ..sagemaker.processing import MAX_BAD_FRACTION, PART_SIZE, PARTS_JSON

    pl = psub.add_parser("plan", help="EDA + stratified split from the metadata alone -> manifest + manifest parts",
                         formatter_class=Formatter)
    pl.add_argument("--raw", default="/opt/ml/processing/input/raw", help="holds metadata/ (images not needed)")
    pl.add_argument("--out", default="/opt/ml/processing/output", help="writes manifest/, parts/ and eda/")
    pl.add_argument("--val", type=float, default=0.1)
    pl.add_argument("--test", type=float, default=0.1)
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--part-size", type=positive_int, default=PART_SIZE, help="bins per manifest part")
    pl.set_defaults(func=cmd_process_plan)
    sh = psub.add_parser("shard", help="this instance's manifest parts: fetch the bins, write shards + index parts",
                         formatter_class=Formatter)
    sh.add_argument("--parts", default="/opt/ml/processing/input/parts", help="manifest parts (part-NNNNN.csv)")
    sh.add_argument("--source", required=True, help="raw ABID: s3://bucket[/prefix] or a directory")
    sh.add_argument("--out", default="/opt/ml/processing/output", help="writes shards/ and index-parts/")
    sh.add_argument("--shard-size", default="256MB", help="bytes per shard (256MB, 1GB, ...)")
    sh.add_argument("--workers", type=positive_int, default=32, help="parallel GETs")
    sh.add_argument("--endpoint-url", help="another S3 API (tests: moto)")
    sh.add_argument("--slice-by-host", action="store_true", help="take this host's share of the parts "
                    "(/opt/ml/config/resourceconfig.json), where the executor gives every instance all of them "
                    "(SageMaker local mode)")
    sh.add_argument("--manifest", help=f"plan's manifest folder ({PARTS_JSON}): skip the parts it does not name "
                    "(an earlier plan's, left under the same output)")
    sh.set_defaults(func=cmd_process_shard)
    ix = psub.add_parser("index", help="every instance's index parts -> index.json per split + the summary",
                         formatter_class=Formatter)
    ix.add_argument("--parts", default="/opt/ml/processing/input/index-parts", help="the Shard step's index parts")
    ix.add_argument("--manifest", default="/opt/ml/processing/input/manifest",
                    help=f"plan's manifest folder ({PARTS_JSON}): only its parts are combined; index parts of other "
                    "parts (left by an earlier run under the same output) are ignored and counted")
    ix.add_argument("--max-bad-fraction", type=fraction, default=MAX_BAD_FRACTION,
                    help="refuse when more of the manifest's bins than this were bad (corrupt, missing, not in "
                    "the bucket)")
    ix.add_argument("--out", default="/opt/ml/processing/output", help="writes <split>/index.json, summary/")
    ix.set_defaults(func=cmd_process_index)


def register(sub) -> None:
    pc = sub.add_parser("process", help="the pipeline's processing steps (what `docker run IMAGE process` runs)",
                        formatter_class=Formatter,
                        description="SageMaker Processing jobs with the bincounter image: `prepare` (raw ABID -> EDA "
                        "report + train/val/test channels), the sharded prepare of the pipeline (`plan` -> `shard` on "
                        "N instances -> `index`) and `evaluate` (a model on the test channel -> "
                        "evaluation.json in SageMaker's model-metrics layout). Defaults are the paths of the "
                        "processing contract under /opt/ml/processing; any local paths work too.")
    psub = pc.add_subparsers(dest="process_cmd", required=True, metavar="STEP")
    pp = psub.add_parser("prepare", help="EDA report + stratified split of a raw ABID directory",
                         formatter_class=Formatter)
    pp.add_argument("--raw", default="/opt/ml/processing/input/raw", help="raw ABID: bin-images/ + metadata/")
    pp.add_argument("--out", default="/opt/ml/processing/output", help="writes channels/{train,val,test} and eda/")
    pp.add_argument("--val", type=float, default=0.1)
    pp.add_argument("--test", type=float, default=0.1)
    pp.add_argument("--seed", type=int, default=0)
    pp.set_defaults(func=cmd_process_prepare)
    pe = psub.add_parser("evaluate", help="a model on a channel -> evaluation.json (model-metrics layout) + PNG",
                         formatter_class=Formatter)
    pe.add_argument("--model", default="/opt/ml/processing/model",
                    help="a model directory or a directory/file holding a training job's model.tar.gz")
    pe.add_argument("--data", default="/opt/ml/processing/test", help="the test channel (per-image or shards)")
    pe.add_argument("--out", default="/opt/ml/processing/evaluation")
    pe.add_argument("--batch-size", type=positive_int, default=32)
    pe.set_defaults(func=cmd_process_evaluate)
    _register_sharded(psub)
    sm_monitor.add_process(psub, Formatter)  # `process monitor`: the drift check (cli/sm_monitor.py)
