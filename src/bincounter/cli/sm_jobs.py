"""`bincounter sm tune`, `sm train`, `sm batch`: their flags, and each command's flags turned into its spec
(`sm.specs`) for the job module that checks and sends it (`sm.tuning`, `sm.training`, `sm.batch`)."""

from __future__ import annotations

from ..errors import UserError
from ..sm import channels, hyperparameters, jobs, sdk
from ..sm.checks import DEFAULT_INSTANCE
from ..sm.specs import DEFAULT_MAX_RUNTIME_S, TRAIN_INSTANCE_COUNT, BatchSpec, TrainingJobSpec, TuningJobSpec
from .sm_common import (
    Default,
    add_common,
    add_platform_options,
    add_price,
    instance_type,
    platform_settings,
    role,
    target,
    text,
)

RULE = ("batch_size is per training process (one per GPU, or one per instance without GPUs); lr is used as "
        "given, not scaled: more instances train with a larger global batch at the same lr.")


def _add_training_options(p, type_help: str = "billed per instance-hour") -> None:
    """What a training job and a tuning job's trials both take."""
    p.add_argument("--image", required=True, help="image URI (from ./build_and_push.sh)")
    p.add_argument("--train", required=True, help="s3:// train channel")
    p.add_argument("--val", required=True, help="s3:// val channel")
    p.add_argument("--test", help="s3:// test channel (evaluated after training)")
    p.add_argument("--pretrained", help="s3:// channel with ImageNet weights (offline pretraining)")
    p.add_argument("--output", required=True, help="s3:// output path (model.tar.gz, reports)")
    p.add_argument("--instance-type", default=Default(DEFAULT_INSTANCE), help=type_help)
    p.add_argument("--spot", action="store_true", help="managed spot training (cheaper, may be interrupted)")
    p.add_argument("--max-runtime", type=int, default=DEFAULT_MAX_RUNTIME_S, help="seconds per job; bounds the cost")
    p.add_argument("--wait", action="store_true", help="stay until the job ends, printing its log (tune: its "
                   "progress); exit non-zero unless it completes")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE",
                   help="trainer hyperparameter, repeatable, checked with the trainer's own rules; names: "
                        + ", ".join(hyperparameters.flag_names()))
    p.add_argument("--mlflow", metavar="URI", help="track the job (tune: every trial, in an experiment named after "
                   "the tuning job) in MLflow: an http(s) tracking server the job can reach, or a SageMaker MLflow "
                   "tracking server ARN; the same as --hp mlflow=URI")
    p.add_argument("--input-mode", choices=channels.MODES, help="for every channel (default: FastFile for a "
                   "sharded channel, one holding index.json; File for a per-image one); Pipe is refused")
    p.add_argument("--volume-size", type=int, metavar="GB", help="EBS volume per instance (default: File mode "
                   "max(30, ceil(1.2 x data GB) + 10) from the channels' size in S3; FastFile only: 30)")
    p.add_argument("--data-size-gb", type=float, metavar="GB", help="the File-mode channels' size, instead of "
                   "reading it from S3 (a dry run reads nothing)")
    add_price(p)


def add_tune(sub, formatter) -> None:
    t = sub.add_parser("tune", help="hyperparameter tuning job (Bayesian, objective best_val_acc)",
                       formatter_class=formatter,
                       description=text(
                           "Start a SageMaker hyperparameter tuning job: a Bayesian search over lr (log scale), "
                           "batch size and epochs (optionally model and image size), maximising val_acc, with early "
                           "stopping. Every range is checked with the trainer's own rules before any request.",
                           "Cost: up to --max-jobs x --instance-count x --max-runtime of --instance-type (by "
                           f"default 12 jobs x 1 {DEFAULT_INSTANCE} x 4 h).", RULE,
                           "No checkpoints: SageMaker would give every trial the same checkpoint URI."))
    add_common(t, True)
    _add_training_options(t)
    add_platform_options(t, "tune")
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
    t.add_argument("--archs", help="optional: comma-separated timm names to search (default: not searched; the arch "
                   "of --hp arch=..., else the trainer's)")
    t.add_argument("--image-sizes", help="optional: comma-separated sizes (>= 32) to search (default: not searched; "
                   "--hp image_size=..., else the trainer's)")
    t.add_argument("--no-early-stopping", action="store_true")
    t.set_defaults(func=cmd_tune)


def add_train(sub, formatter) -> None:
    tr = sub.add_parser("train", help="training job (torch.distributed over instances)", formatter_class=formatter,
                        description=text(
                            "Start a SageMaker training job with the image: torch.distributed across the instances, "
                            "one process per GPU. --hp values are checked with the trainer's own rules before any "
                            "request.", "Cost: up to --instance-count x --max-runtime of --instance-type (by default "
                            f"{TRAIN_INSTANCE_COUNT} x {DEFAULT_INSTANCE} x 4 h).", RULE))
    add_common(tr, True)
    _add_training_options(tr, f"billed per instance-hour; default {DEFAULT_INSTANCE}, with --from-tuning-job the "
                          "trials' type")
    tr.set_defaults(instance_type=None)
    add_platform_options(tr, "train")
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


def add_batch(sub, formatter) -> None:
    b = sub.add_parser("batch", help="batch transform over an S3 prefix of images", formatter_class=formatter,
                       description="Start a SageMaker batch transform job with a model (sm deploy creates one): "
                       "every image under --input is sent to it, one request per image, and its JSON answer "
                       "written to --output as <image>.out (--collect, or later sm collect, makes one CSV of "
                       "them). Billed per instance-hour while the job runs; nothing afterwards.")
    add_common(b)
    b.add_argument("--model", required=True, help="SageMaker model name (from deploy)")
    b.add_argument("--input", required=True, help="s3:// prefix of images")
    b.add_argument("--output", required=True, help="s3:// output prefix")
    b.add_argument("--instance-type", default=Default(DEFAULT_INSTANCE), help="billed per instance-hour")
    b.add_argument("--instance-count", type=int, default=1)
    b.add_argument("--name")
    b.add_argument("--wait", action="store_true", help="stay until the job ends, printing its log; exit non-zero "
                   "unless it completes")
    b.add_argument("--collect", metavar="CSV", help="wait for the job, then write its results as one CSV (image, "
                   "count, p1..p5, ...; later: bincounter sm collect JOB --csv FILE)")
    add_price(b)
    add_platform_options(b, "batch")
    b.set_defaults(func=cmd_batch)


def _with_mlflow(hps: dict, uri: str | None) -> dict:
    """--mlflow URI is --hp mlflow=URI (checked with the other hyperparameters); both, differing: refused."""
    if uri is None:
        return hps
    if hps.get("mlflow", uri) != uri:
        raise UserError(f"--mlflow {uri} and --hp mlflow={hps['mlflow']}: give one")
    return {**hps, "mlflow": uri}


def training_spec(args, **train_only) -> TrainingJobSpec:
    """The flags sm train and sm tune share -> the training job (a tuning job: its trials'); `train_only`: the
    spec's fields only sm train has flags for."""
    return TrainingJobSpec(
        image=args.image, role=role(args), train=args.train, val=args.val, output=args.output, test=args.test,
        pretrained=args.pretrained, instance_type=instance_type(args), instance_count=args.instance_count,
        hyperparameters=_with_mlflow(jobs.parse_kv(args.hp), args.mlflow), input_mode=args.input_mode,
        volume_gb=args.volume_size,
        data_size_gb=args.data_size_gb, max_runtime_s=args.max_runtime, spot=args.spot,
        checkpoint_s3=args.checkpoint_s3, price_per_hour=args.price_per_hour, name=args.name, wait=args.wait,
        platform=platform_settings(args), **train_only)


def cmd_tune(args) -> int:
    from ..sm import tuning

    spec = TuningJobSpec(job=training_spec(args), max_jobs=args.max_jobs, max_parallel=args.max_parallel,
                         lr_range=args.lr_range, batch_sizes=args.batch_sizes, epochs_range=args.epochs_range,
                         archs=args.archs or "", image_sizes=args.image_sizes or "",
                         early_stopping=not args.no_early_stopping)
    return tuning.start(spec, target(args))


def cmd_train(args) -> int:
    from ..sm import training

    spec = training_spec(args, from_tuning_job=args.from_tuning_job, profiler=not args.no_profiler,
                         profiler_interval_ms=args.profiler_interval_ms)
    return training.start(spec, target(args))


def cmd_batch(args) -> int:
    from ..sm import batch

    spec = BatchSpec(model=args.model, input=args.input, output=args.output, instance_type=instance_type(args),
                     instance_count=args.instance_count, name=args.name, wait=args.wait, collect_csv=args.collect,
                     price_per_hour=args.price_per_hour, platform=platform_settings(args))
    return batch.start(spec, target(args))
