"""`bincounter sm deploy`, `sm update`, `sm rollback`, `sm predict`, `sm evaluate`, `sm delete`: their flags, and
each command's flags turned into the calls of `sm.endpoint` (an `EndpointSpec` for deploy), `sm.update` (an
`UpdateSpec`) and `sm.delete`."""

from __future__ import annotations

from ..errors import UserError
from ..sm.checks import DEFAULT_INSTANCE
from ..sm.specs import EndpointSpec
from .sm_common import (
    Default,
    add_common,
    add_platform_options,
    add_price,
    add_tag_option,
    instance_type,
    platform_settings,
    role,
    tag_settings,
    target,
)


def add_deploy(sub, formatter) -> None:
    d = sub.add_parser("deploy", help="real-time endpoint from a training job or a model.tar.gz",
                       formatter_class=formatter,
                       description="Model + endpoint config + endpoint (all named --name). Billed per "
                       "instance-hour until `sm delete` (serverless: per request and compute time). Which image: "
                       "the training image (PyTorch, CUDA) for GPU instances; the CPU serving image (make image-cpu, "
                       "./build_and_push.sh --target serve-cpu; ONNX Runtime, 0.9 GB) for CPU instances and "
                       "serverless, with --cpu-image (see docs/PERFORMANCE.md for the measured difference).")
    add_common(d, True)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--training-job", metavar="NAME", help="a completed training job: its model.tar.gz and image")
    src.add_argument("--model-data", help="s3://.../model.tar.gz (then --image is required)")
    src.add_argument("--model-package", metavar="ARN", help="an Approved version from the Model Registry (what "
                     "`sm pipeline` registers); its image and model.tar.gz, unless --image/--cpu-image")
    img = d.add_mutually_exclusive_group()
    img.add_argument("--image", help="serving image URI (default: the training job's image)")
    img.add_argument("--cpu-image", metavar="URI", nargs="?", const=True,
                     help="the CPU serving image (target serve-cpu) to serve with: for CPU instances and "
                     "--serverless; the model must hold model.onnx (bincounter train writes it; older models: "
                     "bincounter export). With --model-package and no URI: the image and model of the package's "
                     "CPU specification (the additional one `sm pipeline` registers)")
    d.add_argument("--name", help="endpoint name (also the model and config name)")
    d.add_argument("--serverless", metavar="MEMORY_MB[,MAX_CONCURRENCY]",
                   help="a serverless endpoint instead of instances: memory 1024..6144 in steps of 1024, max "
                        "concurrency 1..200 (default 5); no idle cost, cold starts after idle periods. Images over "
                        "10 GiB are refused by SageMaker: use --cpu-image")
    d.add_argument("--instance-type", default=Default(DEFAULT_INSTANCE), help="billed per instance-hour")
    d.add_argument("--instance-count", type=int, default=1)
    d.add_argument("--autoscale", metavar="MIN,MAX", help="target tracking on invocations per instance")
    d.add_argument("--invocations-per-instance", type=int, default=300)
    d.add_argument("--capture-s3", help="enable data capture to this s3:// prefix")
    d.add_argument("--capture-percent", type=int, help="share of requests captured, 1..100 (default: 100; with "
                   "--capture-s3)")
    d.add_argument("--no-wait", action="store_true",
                   help="return once the endpoint is being created (default: wait for InService, showing the "
                        "deployment's progress and logs; --autoscale always waits)")
    add_price(d)
    add_platform_options(d, "deploy")
    d.set_defaults(func=cmd_deploy)


def add_update(sub, formatter) -> None:
    u = sub.add_parser("update", help="a new model behind a live endpoint: blue/green, rolled back on alarms",
                       formatter_class=formatter,
                       description="A new model and endpoint config (copied from the live ones: role, environment, "
                       "instances, data capture, KMS key and tags kept; the default tags and --tag added, and put on "
                       "the alarms too), then SageMaker's blue/green update: a new "
                       "fleet, traffic shifted to it (--traffic) in steps, each followed by a baking period (--bake), "
                       "the old fleet kept until the end. If a rollback alarm fires while a step bakes (the endpoint's "
                       "5xx rate, p99 model latency, the container's ERROR log lines: created here; or --alarm NAME), "
                       "SageMaker shifts traffic back. No downtime. "
                       "Both fleets bill during the update. Roll back by hand: bincounter sm rollback ENDPOINT.")
    add_common(u)
    add_tag_option(u)
    u.add_argument("endpoint", metavar="ENDPOINT", help="the live endpoint (InService)")
    u.add_argument("--role", help="execution role of the new model (default: the live model's)")
    src = u.add_mutually_exclusive_group(required=True)
    src.add_argument("--training-job", metavar="NAME", help="a completed training job: its model.tar.gz and image")
    src.add_argument("--model-data", help="s3://.../model.tar.gz (image: --image, else the live one's)")
    src.add_argument("--model-package", metavar="ARN", help="an Approved Model Registry version")
    img = u.add_mutually_exclusive_group()
    img.add_argument("--image", help="serving image URI (default: the model source's, else the live one's)")
    img.add_argument("--cpu-image", metavar="URI", help="the CPU serving image (model.onnx in the model)")
    u.add_argument("--instance-type", help="default: the live variant's (not with autoscaling)")
    u.add_argument("--instance-count", type=int, help="default: the live variant's current count")
    u.add_argument("--traffic", default="auto", metavar="MODE",
                   help="auto (a canary of 1 instance with 2+ instances, else all at once), all-at-once, "
                        "canary:SIZE or linear:SIZE; SIZE in instances (1) or a share of the fleet (10%%): a canary "
                        "is at most half the fleet, a linear step 10-50%%")
    u.add_argument("--bake", type=int, default=600, metavar="S",
                   help="baking period after each traffic step, the alarms watched (rollback if one fires), 0..3600")
    u.add_argument("--keep-old", type=int, default=0, metavar="S",
                   help="seconds the old fleet is kept after the update completed (no automatic rollback then), "
                        "0..3600 (default 0)")
    u.add_argument("--max-time", type=int, metavar="S", help="the whole deployment's time limit, 600..28800 "
                   "(default: SageMaker's)")
    u.add_argument("--alarm", action="append", default=[], metavar="NAME",
                   help="an existing CloudWatch alarm to roll back on (repeat, up to 10); then none is created")
    u.add_argument("--max-5xx-rate", type=float, metavar="SHARE",
                   help="alarm: share of requests answered 5xx (Invocation5XXErrors average; default 0.01)")
    u.add_argument("--max-p99-ms", type=float, metavar="MS", help="alarm: p99 ModelLatency (default 2000)")
    u.add_argument("--max-container-errors", type=int, metavar="N",
                   help="alarm: ERROR lines in the endpoint's container log per period (default 5)")
    u.add_argument("--alarm-period", type=int, metavar="S", help="the alarms' period (default 60)")
    u.add_argument("--ignore-alarm-state", action="store_true",
                   help="update even if a rollback alarm is already in ALARM (else refused: it would roll back at "
                        "once)")
    u.add_argument("--wait", action="store_true", help="follow the update until it ends: exit 0 when the new model "
                   "serves, an error when SageMaker rolled it back")
    add_price(u)
    u.set_defaults(func=cmd_update)


def add_rollback(sub, formatter) -> None:
    r = sub.add_parser("rollback", help="roll an endpoint update back by hand", formatter_class=formatter,
                       description="During an sm update: sets one of its rollback alarms to ALARM, and SageMaker "
                       "shifts traffic back to the old fleet. After it: updates the endpoint back to the config the "
                       "live one replaced (blue/green, all at once: no downtime), or to --to CONFIG.")
    add_common(r, costed=False)
    r.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint to roll back (during an update: to the fleet "
                   "it replaces; after it: to the config it replaced)")
    r.add_argument("--to", metavar="CONFIG", help="the endpoint config to go back to (default: the one sm update "
                   "replaced, from the live config's tag)")
    r.set_defaults(func=cmd_rollback)


def add_predict(sub, formatter) -> None:
    p = sub.add_parser("predict", help="count the items in images (files or s3:// URIs) via an endpoint",
                       formatter_class=formatter)
    add_common(p, costed=False)
    p.add_argument("--endpoint", required=True)
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_predict)


def add_evaluate(sub, formatter) -> None:
    e = sub.add_parser("evaluate", help="accuracy, RMSE, recall, confusion matrix of an endpoint on a channel",
                       formatter_class=formatter)
    add_common(e, costed=False)
    e.add_argument("--endpoint", required=True)
    e.add_argument("--data", required=True, help="a local channel DIR/<count>/<id>.jpg (or a sharded one), or the "
                                                 "whole output of `data split` / `data shard`: its test split")
    e.add_argument("--out", default=".", help="report directory")
    e.set_defaults(func=cmd_evaluate)


def add_delete(sub, formatter) -> None:
    x = sub.add_parser("delete", help="delete an endpoint, its config, model and autoscaling",
                       formatter_class=formatter,
                       description="Delete what a deploy created, also when it stopped half-way: --endpoint NAME "
                       "removes its autoscaling target, the endpoint, its endpoint config and its model(s) (found by "
                       "NAME when the endpoint or config is gone); --model NAME removes that model. What did not "
                       "exist is said, not an error.")
    add_common(x, costed=False)
    x.add_argument("--endpoint", help="endpoint name (also the config and model name sm deploy gave them)")
    x.add_argument("--model", help="model name (a deploy that stopped after creating its model)")
    x.set_defaults(func=cmd_delete)


def _ints(text: str) -> tuple[int, ...]:
    """'1,4' -> (1, 4); the count and the range are the job module's to check."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{text!r}: expected comma-separated values") from None


def endpoint_spec(args) -> EndpointSpec:
    from ..sm.endpoint import parse_serverless

    cpu_image = args.cpu_image
    if cpu_image is True:  # --cpu-image without a URI
        from ..sm.endpoint import CPU_FROM_PACKAGE

        if not args.model_package:
            raise UserError("--cpu-image without a URI serves a model package's CPU specification: add "
                            "--model-package ARN, or give the image: --cpu-image URI")
        cpu_image = CPU_FROM_PACKAGE
    if args.capture_percent is not None and not args.capture_s3:
        raise UserError("--capture-percent without --capture-s3: data capture needs where to write (--capture-s3 "
                        "s3://BUCKET/PREFIX)")
    return EndpointSpec(
        role=role(args), name=args.name, training_job=args.training_job, model_data=args.model_data,
        model_package=args.model_package, image=args.image, cpu_image=cpu_image,
        serverless=parse_serverless(args.serverless) if args.serverless else None,
        instance_type=instance_type(args), instance_count=args.instance_count,
        autoscale=_ints(args.autoscale) if args.autoscale else None,
        invocations_per_instance=args.invocations_per_instance, capture_s3=args.capture_s3,
        capture_percent=100 if args.capture_percent is None else args.capture_percent, wait=not args.no_wait,
        price_per_hour=args.price_per_hour,
        platform=platform_settings(args))


def cmd_deploy(args) -> int:
    from ..sm import endpoint

    return endpoint.deploy(endpoint_spec(args), target(args))


def update_spec(args):
    from ..sm.alarms import Thresholds
    from ..sm.update import UpdateSpec

    given = {f: v for f, v in (("error_rate", args.max_5xx_rate), ("p99_ms", args.max_p99_ms),
                               ("container_errors", args.max_container_errors), ("period_s", args.alarm_period))
             if v is not None}
    if args.alarm and given:
        flags = {"error_rate": "--max-5xx-rate", "p99_ms": "--max-p99-ms", "container_errors": "--max-container-errors",
                 "period_s": "--alarm-period"}
        raise UserError(f"{', '.join(flags[f] for f in given)} with --alarm: no alarm is created then, so the "
                        "thresholds would not apply; set them on your alarms, or leave --alarm out")
    defaults, tags = tag_settings(args)
    return UpdateSpec(
        endpoint=args.endpoint, role=args.role, training_job=args.training_job, model_data=args.model_data,
        model_package=args.model_package, image=args.image, cpu_image=args.cpu_image,
        instance_type=args.instance_type, instance_count=args.instance_count, traffic=args.traffic,
        bake_s=args.bake, keep_old_s=args.keep_old, max_time_s=args.max_time, alarm_names=tuple(args.alarm),
        thresholds=Thresholds(**given),
        price_per_hour=args.price_per_hour, ignore_alarm_state=args.ignore_alarm_state, wait=args.wait,
        tags=tags, default_tags=tuple(defaults.items()))


def cmd_update(args) -> int:
    from ..sm import update

    return update.update(update_spec(args), target(args))


def cmd_rollback(args) -> int:
    from ..sm import update

    return update.rollback(target(args), args.endpoint, args.to)


def cmd_predict(args) -> int:
    from ..sm import endpoint

    return endpoint.predict(target(args), args.endpoint, args.images)


def cmd_evaluate(args) -> int:
    from ..data.split import evaluation_channel
    from ..sm import endpoint

    return endpoint.evaluate(target(args), args.endpoint, evaluation_channel(args.data), args.out)


def cmd_delete(args) -> int:
    from ..sm import delete

    return delete.delete(target(args), endpoint=args.endpoint, model=args.model)
