"""`bincounter process prepare | evaluate`: the pipeline's processing steps, what `docker run IMAGE process` runs
(`bincounter.sagemaker.processing`)."""

from __future__ import annotations

import json

from ..train_config import positive_int
from . import sm_monitor
from .base import Formatter


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


def register(sub) -> None:
    pc = sub.add_parser("process", help="the pipeline's processing steps (what `docker run IMAGE process` runs)",
                        formatter_class=Formatter,
                        description="SageMaker Processing jobs with the bincounter image: `prepare` (raw ABID -> EDA "
                        "report + train/val/test channels) and `evaluate` (a model on the test channel -> "
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
    sm_monitor.add_process(psub, Formatter)  # `process monitor`: the drift check (cli/sm_monitor.py)
