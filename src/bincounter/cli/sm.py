"""`bincounter sm ...`: a thin CLI over `sdk` (training, tuning, endpoints, batch transform through the SageMaker
SDK v3) and boto3 (autoscaling, invocations, clean-up). Each command checks its inputs locally first (the
hyperparameters with the trainer's own rules, the tuning ranges, the role), prints an estimated cost line,
then prints its request(s) with --dry-run (no network call, no credentials) or sends them and prints what it
created, where to look and how to undo it.

Instances, batch size and learning rate, one rule for `sm train` and `sm tune`: `batch_size` is per training
process (one process per GPU on every instance, one per instance without GPUs) and `lr` is used as given,
never scaled with the number of processes. So a job on more instances trains with a proportionally larger
global batch at the same lr. `sm train --from-tuning-job` therefore runs on the trials' instance type and count
unless told otherwise, and says so when told otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import textwrap
from pathlib import Path

from .. import aws
from ..errors import UserError
from ..sm import channels, cost, hyperparameters, jobs, sdk
from ..sm.checks import DEFAULT_INSTANCE, check_instance_type, check_s3_uri
from ..sm.target import DRY_ACCOUNT, AwsTarget

log = logging.getLogger("bincounter")
TRAIN_INSTANCE_COUNT = 2


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one: no "(default: None)" on required options or unset ones."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _text(*paragraphs: str) -> str:
    return "\n".join(textwrap.fill(p, 100) for p in paragraphs)


def add_arguments(sub) -> None:
    from ..sm.hyperparameters import flag_names

    def common(p, needs_role=False, costed=True):
        jobs.add_aws_options(p)
        p.add_argument("--dry-run", action="store_true",
                       help=("print the estimated cost and the request(s)" if costed else "print the request(s)")
                       + "; no network call, no credentials needed (values that would come from AWS are "
                         "placeholders)")
        if needs_role:
            p.add_argument("--role", required=True, help="SageMaker execution role: an ARN, or a role name (expanded "
                           "with your account from STS)")

    def price(p):
        p.add_argument("--price-per-hour", type=float, metavar="USD",
                       help=f"price of one instance-hour for the cost line (default: the price table of "
                            f"{cost.table()['as_of']}, {cost.table()['region']}; its instance types: "
                            "bincounter sm --help)")

    def training(p, type_help="billed per instance-hour"):
        p.add_argument("--image", required=True, help="image URI (from ./build_and_push.sh)")
        p.add_argument("--train", required=True, help="s3:// train channel")
        p.add_argument("--val", required=True, help="s3:// val channel")
        p.add_argument("--test", help="s3:// test channel (evaluated after training)")
        p.add_argument("--pretrained", help="s3:// channel with ImageNet weights (offline pretraining)")
        p.add_argument("--output", required=True, help="s3:// output path (model.tar.gz, reports)")
        p.add_argument("--instance-type", default=DEFAULT_INSTANCE, help=type_help)
        p.add_argument("--spot", action="store_true", help="managed spot training (cheaper, may be interrupted)")
        p.add_argument("--max-runtime", type=int, default=4 * 3600, help="seconds per job; bounds the cost")
        p.add_argument("--wait", action="store_true", help="stay until the job ends, printing its log (tune: its "
                       "progress); exit non-zero unless it completes")
        p.add_argument("--hp", action="append", metavar="NAME=VALUE",
                       help="trainer hyperparameter, repeatable, checked with the trainer's own rules; names: "
                            + ", ".join(flag_names()))
        p.add_argument("--input-mode", choices=channels.MODES, help="for every channel (default: FastFile for a "
                       "sharded channel, one holding index.json; File for a per-image one); Pipe is refused")
        p.add_argument("--volume-size", type=int, metavar="GB", help="EBS volume per instance (default: File mode "
                       "max(30, ceil(1.2 x data GB) + 10) from the channels' size in S3; FastFile only: 30)")
        p.add_argument("--data-size-gb", type=float, metavar="GB", help="the File-mode channels' size, instead of "
                       "reading it from S3 (a dry run reads nothing)")
        price(p)

    rule = ("batch_size is per training process (one per GPU, or one per instance without GPUs); lr is used as "
            "given, not scaled: more instances train with a larger global batch at the same lr.")
    t = sub.add_parser("tune", help="hyperparameter tuning job (Bayesian, objective best_val_acc)",
                       formatter_class=_Help,
                       description=_text(
                           "Start a SageMaker hyperparameter tuning job: a Bayesian search over lr (log scale), "
                           "batch size and epochs (optionally model and image size), maximising val_acc, with early "
                           "stopping. Every range is checked with the trainer's own rules before any request.",
                           "Cost: up to --max-jobs x --instance-count x --max-runtime of --instance-type (by "
                           f"default 12 jobs x 1 {DEFAULT_INSTANCE} x 4 h).", rule,
                           "No checkpoints: SageMaker would give every trial the same checkpoint URI."))
    common(t, True)
    training(t)
    t.add_argument("--checkpoint-s3", help="refused: SageMaker would give every trial this one URI")
    t.add_argument("--name", help="tuning job name (<= 32 characters; default bc-hpo-<time>)")
    t.add_argument("--instance-count", type=int, default=1, help="instances per trial")
    t.add_argument("--max-jobs", type=int, default=12, help="trials in all (each billed up to --max-runtime)")
    t.add_argument("--max-parallel", type=int, default=3)
    ranges = hyperparameters.DEFAULT_RANGES
    t.add_argument("--lr-range", help=f"MIN,MAX, log-scaled (default {ranges['lr']}; not tuned when --hp lr=... "
                   "fixes it)")
    t.add_argument("--batch-sizes", help=f"per process (default {ranges['batch_size']}; not tuned when --hp "
                   "batch_size=...)")
    t.add_argument("--epochs-range", help=f"MIN,MAX (default {ranges['epochs']}; not tuned when --hp epochs=... "
                   "fixes it)")
    t.add_argument("--archs", default="", help="optional: comma-separated timm names to search")
    t.add_argument("--image-sizes", default="", help="optional: comma-separated sizes (>= 32) to search")
    t.add_argument("--no-early-stopping", action="store_true")
    t.set_defaults(func=cmd_tune)

    tr = sub.add_parser("train", help="training job (torch.distributed over instances)", formatter_class=_Help,
                        description=_text(
                            "Start a SageMaker training job with the image: torch.distributed across the instances, "
                            "one process per GPU. --hp values are checked with the trainer's own rules before any "
                            "request.", "Cost: up to --instance-count x --max-runtime of --instance-type (by default "
                            f"{TRAIN_INSTANCE_COUNT} x {DEFAULT_INSTANCE} x 4 h).", rule))
    common(tr, True)
    training(tr, f"billed per instance-hour; default {DEFAULT_INSTANCE}, with --from-tuning-job the trials' type")
    tr.set_defaults(instance_type=None)
    tr.add_argument("--checkpoint-s3", help="s3:// checkpoint prefix, one per job (resumes after a spot "
                    "interruption; needed with --spot)")
    tr.add_argument("--name", help="job name prefix (the SDK appends a timestamp)")
    tr.add_argument("--instance-count", type=int,
                    help=f"default {TRAIN_INSTANCE_COUNT}; with --from-tuning-job, the trials' count and type")
    tr.add_argument("--from-tuning-job", help="use the best hyperparameters of this tuning job")
    tr.add_argument("--no-profiler", action="store_true", help="leave out SageMaker's system profiler "
                    "(ProfilerConfig) and its built-in ProfilerReport rule (both on by default; bincounter sm report "
                    "JOB shows what they found)")
    tr.add_argument("--profiler-interval-ms", type=int, default=500, choices=sdk.PROFILER_INTERVALS_MS,
                    help="system monitoring interval")
    tr.set_defaults(func=cmd_train)

    d = sub.add_parser("deploy", help="real-time endpoint from a training job or a model.tar.gz", formatter_class=_Help,
                       description="Model + endpoint config + endpoint (all named --name). Billed per "
                       "instance-hour until `sm delete` (serverless: per request and compute time). Which image: "
                       "the training image (PyTorch, CUDA) for GPU instances; the CPU serving image (make image-cpu, "
                       "./build_and_push.sh --target serve-cpu; ONNX Runtime, 0.9 GB) for CPU instances and "
                       "serverless, with --cpu-image (see docs/PERFORMANCE.md for the measured difference).")
    common(d, True)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--training-job")
    src.add_argument("--model-data", help="s3://.../model.tar.gz (then --image is required)")
    src.add_argument("--model-package", metavar="ARN", help="an Approved version from the Model Registry (what "
                     "`sm pipeline` registers); its image and model.tar.gz, unless --image/--cpu-image")
    img = d.add_mutually_exclusive_group()
    img.add_argument("--image", help="serving image URI (default: the training job's image)")
    img.add_argument("--cpu-image", metavar="URI", help="the CPU serving image (target serve-cpu) to serve with: "
                     "for CPU instances and --serverless; the model must hold model.onnx (bincounter train writes "
                     "it; older models: bincounter export)")
    d.add_argument("--name", help="endpoint name (also the model and config name)")
    d.add_argument("--serverless", metavar="MEMORY_MB[,MAX_CONCURRENCY]",
                   help="a serverless endpoint instead of instances: memory 1024..6144 in steps of 1024, max "
                        "concurrency 1..200 (default 5); no idle cost, cold starts after idle periods. Images over "
                        "10 GiB are refused by SageMaker: use --cpu-image")
    d.add_argument("--instance-type", default=DEFAULT_INSTANCE, help="billed per instance-hour")
    d.add_argument("--instance-count", type=int, default=1)
    d.add_argument("--autoscale", metavar="MIN,MAX", help="target tracking on invocations per instance")
    d.add_argument("--invocations-per-instance", type=int, default=300)
    d.add_argument("--capture-s3", help="enable data capture to this s3:// prefix")
    d.add_argument("--capture-percent", type=int, default=100, help="share of requests captured")
    d.add_argument("--no-wait", action="store_true",
                   help="return once the endpoint is being created (default: wait for InService, showing the "
                        "deployment's progress and logs; --autoscale always waits)")
    price(d)
    d.set_defaults(func=cmd_deploy)

    p = sub.add_parser("predict", help="count the items in images (files or s3:// URIs) via an endpoint",
                       formatter_class=_Help)
    common(p, costed=False)
    p.add_argument("--endpoint", required=True)
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, RMSE, recall, confusion matrix of an endpoint on a channel",
                       formatter_class=_Help)
    common(e, costed=False)
    e.add_argument("--endpoint", required=True)
    e.add_argument("--data", required=True, help="local channel DIR/<count>/<id>.jpg")
    e.add_argument("--out", default=".", help="report directory")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("batch", help="batch transform over an S3 prefix of images", formatter_class=_Help,
                       description="Start a SageMaker batch transform job with a model (sm deploy creates one): "
                       "every image under --input is sent to it, one request per image, and its JSON answer "
                       "written to --output as <image>.out (--collect, or later sm collect, makes one CSV of "
                       "them). Billed per instance-hour while the job runs; nothing afterwards.")
    common(b)
    b.add_argument("--model", required=True, help="SageMaker model name (from deploy)")
    b.add_argument("--input", required=True, help="s3:// prefix of images")
    b.add_argument("--output", required=True, help="s3:// output prefix")
    b.add_argument("--instance-type", default=DEFAULT_INSTANCE, help="billed per instance-hour")
    b.add_argument("--instance-count", type=int, default=1)
    b.add_argument("--name")
    b.add_argument("--wait", action="store_true", help="stay until the job ends, printing its log; exit non-zero "
                   "unless it completes")
    b.add_argument("--collect", metavar="CSV", help="wait for the job, then write its results as one CSV (image, "
                   "count, p1..p5, ...; later: bincounter sm collect JOB --csv FILE)")
    price(b)
    b.set_defaults(func=cmd_batch)

    x = sub.add_parser("delete", help="delete an endpoint, its config, model and autoscaling", formatter_class=_Help,
                       description="Delete what a deploy created, also when it stopped half-way: --endpoint NAME "
                       "removes its autoscaling target, the endpoint, its endpoint config and its model(s) (found by "
                       "NAME when the endpoint or config is gone); --model NAME removes that model. What did not "
                       "exist is said, not an error.")
    common(x, costed=False)
    x.add_argument("--endpoint", help="endpoint name (also the config and model name sm deploy gave them)")
    x.add_argument("--model", help="model name (a deploy that stopped after creating its model)")
    x.set_defaults(func=cmd_delete)

    from ..sm import batch_collect, follow, job_report
    from . import sm_pipeline

    sm_pipeline.add_arguments(sub, _Help)
    follow.add_arguments(sub, _Help)
    job_report.add_arguments(sub, _Help)
    batch_collect.add_arguments(sub, _Help)


def epilog() -> str:
    """`bincounter sm --help`'s closing lines: the one place the priced instance types are listed."""
    t = cost.table()
    return _text(f"Instance types in the price table ({t['region']}, {t['as_of']}; others: pass --price-per-hour "
                 f"for the cost line): {', '.join(cost.instance_types())}.")


def _target(args) -> AwsTarget:
    return AwsTarget(args.region, args.profile, args.endpoint_url, bool(getattr(args, "dry_run", False)))


def _client(args, service="sagemaker"):
    return _target(args).client(service)


def _cost(line: str) -> None:
    """Printed before anything is requested, also with -q."""
    print(line, file=sys.stderr, flush=True)


def _channels(args) -> dict[str, str]:
    channels = {k: v for k, v in (("train", args.train), ("val", args.val), ("test", args.test),
                                  ("pretrained", args.pretrained)) if v}
    return channels


def _input_plan(args) -> tuple[list, int]:
    """(channels with their input modes, volume GB): `channels.plan`; its line is printed next to the cost line."""
    s3 = None if args.dry_run else _client(args, "s3")
    chans, volume, line, notes = channels.plan(_channels(args), input_mode=args.input_mode,
                                               volume_gb=args.volume_size, data_size_gb=args.data_size_gb, s3=s3)
    _cost(line)
    for n in notes:
        log.warning("%s", n)
    return chans, volume


def _check_instances(args) -> None:
    check_s3_uri("--output", args.output)
    check_instance_type(args.instance_type)
    channels.check(_channels(args), input_mode=args.input_mode, volume_gb=args.volume_size,
                   data_size_gb=args.data_size_gb)
    if args.instance_count is not None and args.instance_count < 1:
        raise UserError(f"--instance-count {args.instance_count}: must be >= 1")
    if args.max_runtime < 60:
        raise UserError(f"--max-runtime {args.max_runtime}: seconds, at least 60")
    if args.price_per_hour is not None and args.price_per_hour < 0:
        raise UserError("--price-per-hour must be >= 0")


def _check_pretrained(args, archs) -> None:
    """The `pretrained` channel must hold weights for the arch(s) the job trains: its provenance JSON (written by
    `bincounter weights fetch` beside the weights) is read from S3 and its arch compared, before any request,
    as local `train` does before loading. A dry run reads nothing, so it only says so."""
    if not args.pretrained:
        return
    if args.dry_run:
        log.warning("dry run: the pretrained channel's provenance is not read (a real run checks its arch against "
                    "%s before any request)", ", ".join(archs))
        return
    from ..weights import parse_provenance

    key, data = channels.pretrained_provenance(_client(args, "s3"), args.pretrained, archs[0])
    if data is None:
        log.warning("--pretrained %s: no provenance JSON beside %s, so its arch is not checked here (bincounter "
                    "weights fetch writes one)", args.pretrained, key)
        return
    prov = parse_provenance(data, key.rsplit(".", 1)[0] + channels.PROVENANCE_SUFFIX)
    wrong = [a for a in archs if a != prov.get("arch")]
    if wrong:
        raise UserError(f"--pretrained {args.pretrained} holds {prov.get('arch')} weights (per its provenance "
                        f"JSON), not {', '.join(wrong)}: pass --hp arch={prov.get('arch')}, or fetch and upload "
                        f"weights for {wrong[0]} (bincounter weights fetch --arch {wrong[0]})")
    log.info("pretrained weights: %s (%s)", prov.get("arch"), key)


def _pair(text: str, cast) -> tuple:
    try:
        vals = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{text!r}: expected comma-separated values") from None
    return vals


def _print_captured(captured: list[dict], want: str) -> None:
    for c in captured:
        jobs.print_request(c["api"], c["request"])
    if not any(c["api"] == want for c in captured):
        raise UserError(f"dry run: the SDK stopped before {want} (it called {[c['api'] for c in captured]})")


def cmd_tune(args) -> int:
    for flag, value in (("--max-jobs", args.max_jobs), ("--max-parallel", args.max_parallel)):
        if value < 1:
            raise UserError(f"{flag} {value}: at least 1")
    if args.max_parallel > args.max_jobs:
        raise UserError(f"--max-parallel {args.max_parallel} cannot exceed --max-jobs {args.max_jobs}")
    _check_instances(args)
    if args.checkpoint_s3:
        raise UserError("--checkpoint-s3 with sm tune: SageMaker gives every trial of a tuning job the same "
                        "checkpoint URI, and a job resumes from what its URI holds, so trials would resume from "
                        "one another; tune without it (with --spot an interrupted trial starts over)")
    user = jobs.parse_kv(args.hp)
    ranges = hyperparameters.tuning_ranges(lr=args.lr_range, batch_sizes=args.batch_sizes, epochs=args.epochs_range,
                                           archs=args.archs, image_sizes=args.image_sizes, static=user)
    _check_pretrained(args, list(ranges.get("arch") or [user.get("arch") or hyperparameters.default("arch")]))
    name = args.name or jobs.job_name("bc-hpo", 32)
    region = _target(args).resolved_region()
    role = _target(args).role_arn(args.role, region)
    _cost(cost.job_line(instance_type=args.instance_type, instance_count=args.instance_count,
                        max_runtime_s=args.max_runtime, jobs=args.max_jobs, spot=args.spot,
                        price_per_hour=args.price_per_hour, region=region))
    chans, volume = _input_plan(args)
    hps = jobs.hp_strings({"progress": False, **user})
    log.info("profiler: a tuning job's TrainingJobDefinition has no ProfilerConfig field (CreateHyperParameterTuning"
             "Job takes none), so trials run with SageMaker's own profiling defaults; bincounter sm report TRIAL "
             "shows what a trial wrote, and sm train --from-tuning-job %s runs the winner with the profiler", name)
    with sdk.sdk_session(region, args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        trainer = sdk.model_trainer(session, image=args.image, role=role, instance_type=args.instance_type,
                                    instance_count=args.instance_count, hyperparameters=hps, output_path=args.output,
                                    spot=args.spot, checkpoint_s3=None, max_runtime_s=args.max_runtime,
                                    base_name="bincounter-hpo", spot_needs_checkpoint=False, volume_gb=volume,
                                    input_mode=chans[0].mode)
        tuner = sdk.tuner(trainer, ranges=ranges, max_jobs=args.max_jobs, max_parallel=args.max_parallel,
                          early_stopping=not args.no_early_stopping, base_name=name)
        tuner.tune(inputs=sdk.inputs(chans), job_name=name, wait=False)
    if args.dry_run:
        _print_captured(captured, "CreateHyperParameterTuningJob")
        return 0
    job = tuner.latest_tuning_job
    _created("tuning job", name, getattr(job, "hyper_parameter_tuning_job_arn", None),
             jobs.console_link(region, "tuning", name),
             f"aws sagemaker stop-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name {name}",
             f"then: bincounter sm train --from-tuning-job {name} ...")
    return _wait(args, name, "tuning")


def _from_tuning_job(args, region: str) -> tuple[dict[str, str], str | None, int | None]:
    """(best hyperparameters, trials' instance type, trials' instance count). A dry run reads nothing: the tuned
    values are placeholders."""
    name = args.from_tuning_job
    if args.dry_run:
        defaults = [f"{what} {default}" for what, given, default in (
            ("type", args.instance_type, DEFAULT_INSTANCE), ("count", args.instance_count, TRAIN_INSTANCE_COUNT))
            if given is None]
        log.warning("dry run: tuning job %s is not read (no network call): its best %s are placeholders in the "
                    "request%s", name, ", ".join(hyperparameters.TUNED[:3]),
                    f"; the request and the cost line show the default instance {' and '.join(defaults)}, not the "
                    "trials' (a real run takes the trials' unless --instance-type/--instance-count say otherwise)"
                    if defaults else "")
        return {k: f"<best {k} of {name}>" for k in hyperparameters.TUNED[:3]}, None, None
    desc = jobs.describe_tuning_job(_client(args), name, region)
    itype, count = jobs.trial_resources(desc)
    return jobs.best_hyperparameters(None, name, desc), itype, count


def _instances_for_training(args, trial_type: str | None, trial_count: int | None) -> tuple[str, int]:
    """The rule (module docstring): tuned values were found on the trials' resources, so a job from a tuning job
    runs on them unless told otherwise, and a change of the process count is said out loud."""
    itype = args.instance_type or trial_type or DEFAULT_INSTANCE
    count = args.instance_count or trial_count or TRAIN_INSTANCE_COUNT
    if trial_count:
        now, then = jobs.processes(itype, count), jobs.processes(trial_type or itype, trial_count)
        if now and then and now != then:
            log.warning("the tuning trials trained with %d process(es), this job with %d: the per-process batch "
                        "and the tuned lr are kept (not scaled), so the global batch is %gx the trials'", then, now,
                        now / then)
    return itype, count


def cmd_train(args) -> int:
    _check_instances(args)
    check_s3_uri("--checkpoint-s3", args.checkpoint_s3)
    region = _target(args).resolved_region()
    user = jobs.parse_kv(args.hp)
    tuned, trial_type, trial_count = ({}, None, None)
    if args.from_tuning_job:
        tuned, trial_type, trial_count = _from_tuning_job(args, region)
    hps = {**tuned, **user}
    hyperparameters.validate({k: v for k, v in hps.items() if not (args.dry_run and k in tuned and k not in user)})
    _check_pretrained(args, [hps.get("arch") or hyperparameters.default("arch")])
    itype, count = _instances_for_training(args, trial_type, trial_count)
    role = _target(args).role_arn(args.role, region)
    _cost(cost.job_line(instance_type=itype, instance_count=count, max_runtime_s=args.max_runtime, spot=args.spot,
                        price_per_hour=args.price_per_hour, region=region))
    chans, volume = _input_plan(args)
    with sdk.sdk_session(region, args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        trainer = sdk.model_trainer(session, image=args.image, role=role, instance_type=itype,
                                    instance_count=count, hyperparameters=jobs.hp_strings({"progress": False, **hps}),
                                    output_path=args.output, spot=args.spot, checkpoint_s3=args.checkpoint_s3,
                                    max_runtime_s=args.max_runtime, base_name=args.name or "bincounter-train",
                                    volume_gb=volume, input_mode=chans[0].mode,
                                    profiler=None if args.no_profiler else
                                    sdk.profiler_settings(args.output, region, args.profiler_interval_ms))
        trainer.train(input_data_config=sdk.inputs(chans), wait=False)
    if args.dry_run:
        _print_captured(captured, "CreateTrainingJob")
        return 0
    job = trainer._latest_training_job
    name = job.training_job_name
    _created("training job", name, job.training_job_arn, jobs.console_link(region, "training", name),
             f"aws sagemaker stop-training-job --training-job-name {name}",
             f"model: {args.output.rstrip('/')}/{name}/output/model.tar.gz; "
             f"then: bincounter sm report {name}; bincounter sm deploy --training-job {name} ...")
    return _wait(args, name, "training")


def _serverless(text: str) -> tuple[int, int]:
    """--serverless MEMORY_MB[,MAX_CONCURRENCY] -> (memory, concurrency), in SageMaker's accepted ranges."""
    parts = text.split(",")
    if len(parts) > 2:
        raise UserError(f"--serverless {text!r}: expected MEMORY_MB[,MAX_CONCURRENCY], e.g. 3072,10")
    try:
        memory, concurrency = int(parts[0]), int(parts[1]) if len(parts) > 1 else 5
    except ValueError:
        raise UserError(f"--serverless {text!r}: expected MEMORY_MB[,MAX_CONCURRENCY], e.g. 3072,10") from None
    if memory not in range(1024, 6145, 1024):
        raise UserError(f"--serverless {text!r}: memory must be 1024, 2048, 3072, 4096, 5120 or 6144 MB")
    if not 1 <= concurrency <= 200:
        raise UserError(f"--serverless {text!r}: max concurrency must be in 1..200")
    return memory, concurrency


def cmd_deploy(args) -> int:
    name = args.name or jobs.job_name("bincounter")
    region = _target(args).resolved_region()
    image, model_data = args.image or args.cpu_image, args.model_data
    serverless = _serverless(args.serverless) if args.serverless else None
    if not serverless:  # a serverless endpoint has no instance type
        check_instance_type(args.instance_type)
    if serverless and args.autoscale:
        raise UserError("--serverless scales by itself: leave out --autoscale (use MAX_CONCURRENCY instead)")
    if serverless and args.capture_s3:
        raise UserError("--capture-s3 with --serverless: SageMaker has no data capture on serverless endpoints")
    if args.cpu_image and not serverless and args.instance_type.split(".")[1][:1] in ("g", "p", "i"):
        log.warning("--cpu-image on %s: the CPU image does not use GPUs or Inferentia; pick a CPU instance "
                    "(ml.c6i/ml.m6i) or serve with the training image", args.instance_type)
    if args.capture_s3 and not (args.capture_s3.startswith("s3://") and 0 < args.capture_percent <= 100):
        raise UserError("--capture-s3 needs an s3:// URI and --capture-percent in 1..100")
    if args.instance_count < 1:
        raise UserError(f"--instance-count {args.instance_count}: must be >= 1")
    scaling = None
    if args.autoscale:
        bounds = _pair(args.autoscale, int)
        if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1]:
            raise UserError(f"--autoscale {args.autoscale!r}: expected MIN,MAX with 1 <= MIN <= MAX")
        lo, hi = bounds
        scaling = jobs.autoscaling_requests(name, lo, hi, args.invocations_per_instance)
    if args.model_data and not image:
        raise UserError("--model-data needs --image (or --cpu-image)")
    check_s3_uri("--model-data", args.model_data)
    role = _target(args).role_arn(args.role, region)
    if args.training_job and args.dry_run:
        log.warning("dry run: training job %s is not read (no network call); its model and image are placeholders",
                    args.training_job)
        model_data = f"s3://dry-run-placeholder/{args.training_job}/output/model.tar.gz"
        image = image or f"{DRY_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/image-of-{args.training_job}:dry-run"
    elif args.model_package and args.dry_run:
        log.warning("dry run: model package %s is not read (no network call): its model and image are placeholders "
                    "and its approval status is not checked", args.model_package)
        model_data = "s3://dry-run-placeholder/model-package/model.tar.gz"
        image = image or f"{DRY_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/image-of-model-package:dry-run"
    elif args.model_package:
        pkg = aws.aws_call("DescribeModelPackage", _client(args).describe_model_package,
                           ModelPackageName=args.model_package)
        status = pkg.get("ModelApprovalStatus")
        if status != "Approved":
            raise UserError(f"model package {args.model_package} is {status}: approve it first (aws sagemaker "
                            f"update-model-package --model-package-arn {args.model_package} --model-approval-status "
                            "Approved), or deploy its training job")
        container = pkg["InferenceSpecification"]["Containers"][0]
        model_data, image = container.get("ModelDataUrl"), image or container["Image"]
        if not model_data:
            raise UserError(f"model package {args.model_package} has no ModelDataUrl")
    elif args.training_job:
        desc = jobs.describe_training_job(_client(args), args.training_job, region)
        model_data = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        image = image or desc["AlgorithmSpecification"]["TrainingImage"]
        if not model_data:
            raise UserError(f"training job {args.training_job} has no model artifacts (status "
                            f"{desc.get('TrainingJobStatus')}; wait until it has Completed)")
    if serverless:
        _cost(cost.serverless_line(memory_mb=serverless[0], max_concurrency=serverless[1], region=region))
        log.info("cost: serverless, %d MB, up to %d concurrent requests: billed per request and per GB-second of "
                 "inference time, nothing while idle", *serverless)
        if not args.cpu_image:
            log.info("serverless with %s: cold starts pull the image; the CPU image (--cpu-image) is ~9x smaller",
                     image)
    else:
        _cost(cost.hourly_line(what="while the endpoint exists (until sm delete)", instance_type=args.instance_type,
                               instance_count=args.instance_count,
                               max_count=scaling[0]["MaxCapacity"] if scaling else None,
                               price_per_hour=args.price_per_hour, region=region))
    sdk_wait = not (args.dry_run or args.no_wait or scaling)
    with sdk.sdk_session(region, args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        endpoint = sdk.deploy_endpoint(session, name=name, image=image, model_data=model_data, role=role,
                                       instance_type=args.instance_type, instance_count=args.instance_count,
                                       capture_s3=args.capture_s3, capture_percent=args.capture_percent,
                                       wait=sdk_wait, serverless=serverless)
    if args.dry_run:
        _print_captured(captured, "CreateEndpoint")
        if scaling:
            jobs.print_request("RegisterScalableTarget", scaling[0])
            jobs.print_request("PutScalingPolicy", scaling[1])
        return 0
    if scaling:  # registering needs the endpoint InService (minutes on SageMaker)
        sm = _client(args)
        log.info("waiting for %s to be InService before registering autoscaling ...", name)
        try:
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 30,
                                                                                      "MaxAttempts": 60})
        except Exception as e:  # noqa: BLE001 - WaiterError: the endpoint failed or took too long
            raise UserError(f"endpoint {name} did not reach InService ({e}); autoscaling not registered") from None
        aas = aws.client("application-autoscaling", args.region, args.profile, args.endpoint_url)
        aws.aws_call("RegisterScalableTarget", aas.register_scalable_target, **scaling[0])
        aws.aws_call("PutScalingPolicy", aas.put_scaling_policy, **scaling[1])
        log.info("autoscaling %s: %s..%s instances, target %s invocations/instance", name,
                 scaling[0]["MinCapacity"], scaling[0]["MaxCapacity"], args.invocations_per_instance)
    arn = getattr(endpoint, "endpoint_arn", None)
    arn = arn if isinstance(arn, str) else None  # the SDK's Endpoint; None where it has no ARN
    _created("endpoint", name, arn, jobs.console_link(region, "endpoint", name),
             f"bincounter sm delete --endpoint {name}", f"try: bincounter sm predict --endpoint {name} bin.jpg")
    return 0


def _runtime_invoke(args):
    rt = aws.client("sagemaker-runtime", args.region, args.profile, args.endpoint_url)

    def predict_batch(images: list[bytes]) -> list[dict]:
        body = json.dumps({"instances": [base64.b64encode(b).decode() for b in images]}).encode()
        resp = aws.aws_call("InvokeEndpoint", rt.invoke_endpoint, EndpointName=args.endpoint, Body=body,
                            ContentType="application/json", Accept="application/json")
        return predictions(args.endpoint, resp["Body"].read(), len(images), resp.get("ContentType"))

    return predict_batch


def predictions(endpoint: str, raw: bytes, n: int, content_type: str | None = None) -> list[dict]:
    """An endpoint's answer to n images -> its n predictions, each with a count in COUNTS; anything else (not
    JSON, an error JSON, another number of predictions) is one line naming the first 200 characters of it."""
    from .. import COUNTS

    text = raw.decode("utf-8", "replace")
    got = " ".join(text[:200].split()) + (" ..." if len(text) > 200 else "")
    where = f"endpoint {endpoint} answered"
    try:
        doc = json.loads(text)
    except ValueError:
        raise UserError(f"{where} something that is not JSON ({content_type or 'no content type'}, "
                        f"{len(raw)} bytes): {got!r}") from None
    preds = doc.get("predictions") if isinstance(doc, dict) else None
    if not isinstance(preds, list):
        raise UserError(f"{where} JSON with no 'predictions' list: {got!r}")
    if len(preds) != n:
        raise UserError(f"{where} {len(preds)} predictions for {n} images: {got!r}")
    for p in preds:
        count = p.get("count") if isinstance(p, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count not in COUNTS:
            raise UserError(f"{where} a prediction with count {count!r}, not a count in "
                            f"{COUNTS[0]}..{COUNTS[-1]}: {got!r}")
    return preds


def _read_image(ref: str, args) -> bytes:
    if ref.startswith("s3://"):
        from ..data.s3 import parse_s3_uri, s3_client

        bucket, key = parse_s3_uri(ref)
        s3 = s3_client(args.endpoint_url, region=_target(args).resolved_region(), profile=args.profile)
        return aws.aws_call(f"GetObject {ref}", s3.get_object, Bucket=bucket, Key=key)["Body"].read()
    try:
        return Path(ref).read_bytes()
    except OSError as e:
        raise UserError(f"{ref}: {e.strerror}") from None


def cmd_predict(args) -> int:
    if args.dry_run:  # local files are read (a missing one is an error now), S3 objects are not
        local = [r for r in args.images if not r.startswith("s3://")]
        for r in local:
            _read_image(r, args)
        print(json.dumps({"api": "InvokeEndpoint", "endpoint": args.endpoint, "images": len(args.images),
                          "s3_images_not_read": len(args.images) - len(local)}))
        return 0
    images = [_read_image(r, args) for r in args.images]
    for ref, out in zip(args.images, _runtime_invoke(args)(images), strict=True):
        print(json.dumps({"image": ref, **out}))
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_remote
    from ..metrics import format_summary

    if args.dry_run:
        print(json.dumps({"api": "InvokeEndpoint", "endpoint": args.endpoint, "data": args.data}))
        return 0
    summary, paths = evaluate_remote(_runtime_invoke(args), args.data, args.out, stem="endpoint")
    print(format_summary(summary))
    log.info("report: %s", ", ".join(map(str, paths)))
    return 0


def cmd_batch(args) -> int:
    check_instance_type(args.instance_type)
    name = args.name or jobs.job_name("bincounter-batch")
    region = _target(args).resolved_region()
    if args.instance_count < 1:
        raise UserError(f"--instance-count {args.instance_count}: must be >= 1")
    _cost(cost.hourly_line(what="while the job runs", instance_type=args.instance_type,
                           instance_count=args.instance_count, price_per_hour=args.price_per_hour, region=region))
    with sdk.sdk_session(region, args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        sdk.batch_transform(session, name=name, model=args.model, input_s3=args.input, output_s3=args.output,
                            instance_type=args.instance_type, instance_count=args.instance_count)
    if args.dry_run:
        _print_captured(captured, "CreateTransformJob")
        return 0
    desc = aws.aws_call("DescribeTransformJob", _client(args).describe_transform_job, TransformJobName=name)
    _created("batch transform job", name, desc.get("TransformJobArn"),
             jobs.console_link(region, "transform", name),
             f"aws sagemaker stop-transform-job --transform-job-name {name}",
             f"results: {args.output.rstrip('/')}/<image>.out (one JSON per image); "
             f"one CSV: bincounter sm collect {name} --csv results.csv")
    if args.collect:
        args.wait = True
    rc = _wait(args, name, "transform")
    if args.collect:
        from ..sm import batch_collect

        got = batch_collect.collect(_client(args), aws.client("s3", args.region, args.profile, args.endpoint_url),
                                    name, region, args.collect)
        print(json.dumps(got))
    return rc


def _absent(e: UserError) -> bool:
    text = str(e)
    return "Could not find" in text or "does not exist" in text.lower() or "not found" in text.lower()


def cmd_delete(args) -> int:
    """Everything a deploy may have left, each step on its own: what is missing is listed, not fatal."""
    if not (args.endpoint or args.model):
        raise UserError("sm delete needs --endpoint NAME and/or --model NAME")
    if args.dry_run:
        if args.endpoint:
            log.info("dry run: the autoscaling target is deregistered only if one is registered (a real delete "
                     "reads it with DescribeScalableTargets); the endpoint's config and models as sm deploy named "
                     "them (a real delete reads them from the endpoint)")
            jobs.print_request("DeregisterScalableTarget", {
                "ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{args.endpoint}/variant/{jobs.VARIANT}",
                "ScalableDimension": jobs.SCALABLE_DIMENSION})
            for api, req in (("DeleteEndpoint", {"EndpointName": args.endpoint}),
                             ("DeleteEndpointConfig", {"EndpointConfigName": args.endpoint}),
                             ("DeleteModel", {"ModelName": args.endpoint})):
                jobs.print_request(api, req)
        if args.model and args.model != args.endpoint:
            jobs.print_request("DeleteModel", {"ModelName": args.model})
        return 0
    sm = _client(args)
    deleted, absent = [], []

    def attempt(what: str, call, **kw) -> bool:
        try:
            aws.aws_call(what, call, **kw)
        except UserError as e:
            if not _absent(e):
                raise
            absent.append(what)
            return False
        deleted.append(what)
        return True

    models: list[str] = []
    if args.endpoint:
        name = args.endpoint
        aas = aws.client("application-autoscaling", args.region, args.profile, args.endpoint_url)
        resource = f"endpoint/{name}/variant/{jobs.VARIANT}"
        targets = aws.aws_call("DescribeScalableTargets", aas.describe_scalable_targets, ServiceNamespace="sagemaker",
                               ResourceIds=[resource])["ScalableTargets"]
        for t in targets:
            aws.aws_call("DeregisterScalableTarget", aas.deregister_scalable_target, ServiceNamespace="sagemaker",
                         ResourceId=resource, ScalableDimension=t["ScalableDimension"])
            deleted.append(f"autoscaling target {resource}")
        config = name  # sm deploy names the config after the endpoint; the endpoint says which it really uses
        try:
            config = aws.aws_call("DescribeEndpoint", sm.describe_endpoint, EndpointName=name)["EndpointConfigName"]
        except UserError as e:
            if not _absent(e):
                raise
        try:
            cfg = aws.aws_call("DescribeEndpointConfig", sm.describe_endpoint_config, EndpointConfigName=config)
            models = [v["ModelName"] for v in cfg["ProductionVariants"]]
        except UserError as e:
            if not _absent(e):
                raise
            models = [name]
        attempt(f"endpoint {name}", sm.delete_endpoint, EndpointName=name)
        attempt(f"endpoint config {config}", sm.delete_endpoint_config, EndpointConfigName=config)
    if args.model and args.model not in models:
        models.append(args.model)
    for m in models:
        attempt(f"model {m}", sm.delete_model, ModelName=m)
    print(json.dumps({"deleted": deleted, "did_not_exist": absent}))
    if deleted:
        log.info("deleted: %s", ", ".join(deleted))
    if absent:
        log.info("did not exist: %s", ", ".join(absent))
    if args.endpoint and deleted:
        log.info("nothing left billing for endpoint %s", args.endpoint)
    if not deleted:
        log.warning("nothing to delete: %s (names are case-sensitive; aws sagemaker list-endpoints / list-models)",
                    ", ".join(absent))
    return 0


def _wait(args, name: str, kind: str) -> int:
    if not args.wait:
        return 0
    from ..sm import follow

    return follow.wait(args, name, kind)


def _created(kind: str, name: str, arn: str | None, link: str, undo: str, nxt: str) -> None:
    print(json.dumps({"created": kind, "name": name, "arn": arn}))
    log.info("console: %s", link)
    log.info("undo:    %s", undo)
    log.info("next:    %s", nxt)
