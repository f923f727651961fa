"""`bincounter sm ...`: a thin CLI over `sdk` (training, tuning, endpoints, batch transform through the SageMaker
SDK v3) and boto3 (autoscaling, invocations, clean-up). Each command prints its request(s) with --dry-run, or
sends them and prints what it created, where to look and how to undo it."""

from __future__ import annotations

import argparse
import base64
import json
import logging
from pathlib import Path

from .. import aws
from ..errors import UserError
from . import jobs, sdk

log = logging.getLogger("bincounter")


def add_arguments(sub) -> None:
    def common(p, needs_role=False):
        p.add_argument("--region")
        p.add_argument("--profile")
        p.add_argument("--endpoint-url", help="one endpoint for every AWS API (tests: moto in server mode)")
        p.add_argument("--dry-run", action="store_true", help="print the request(s) and call nothing")
        if needs_role:
            p.add_argument("--role", required=True, help="SageMaker execution role ARN")

    def training(p):
        p.add_argument("--image", required=True, help="image URI (from ./build_and_push.sh)")
        p.add_argument("--train", required=True, help="s3:// train channel")
        p.add_argument("--val", required=True, help="s3:// val channel")
        p.add_argument("--test", help="s3:// test channel (evaluated after training)")
        p.add_argument("--pretrained", help="s3:// channel with ImageNet weights (offline pretraining)")
        p.add_argument("--output", required=True, help="s3:// output path (model.tar.gz, reports)")
        p.add_argument("--instance-type", default="ml.g5.xlarge")
        p.add_argument("--spot", action="store_true", help="managed spot training (needs --checkpoint-s3)")
        p.add_argument("--checkpoint-s3", help="s3:// checkpoint prefix (resume after spot interruption)")
        p.add_argument("--max-runtime", type=int, default=4 * 3600, help="seconds")
        p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="hyperparameter (repeatable)")

    F = argparse.ArgumentDefaultsHelpFormatter
    t = sub.add_parser("tune", help="hyperparameter tuning job (Bayesian, objective val_acc)", formatter_class=F)
    common(t, True)
    training(t)
    t.add_argument("--name", help="tuning job name (<= 32 characters; default bc-hpo-<time>)")
    t.add_argument("--max-jobs", type=int, default=12)
    t.add_argument("--max-parallel", type=int, default=3)
    t.add_argument("--lr-range", default="1e-4,3e-3", help="log-scaled")
    t.add_argument("--batch-sizes", default="32,64,128")
    t.add_argument("--epochs-range", default="5,20")
    t.add_argument("--archs", default="", help="optional: comma-separated timm names to search")
    t.add_argument("--image-sizes", default="", help="optional: comma-separated sizes to search")
    t.add_argument("--no-early-stopping", action="store_true")
    t.set_defaults(func=cmd_tune)

    tr = sub.add_parser("train", help="training job (torch.distributed over instances)", formatter_class=F)
    common(tr, True)
    training(tr)
    tr.add_argument("--name", help="job name prefix (the SDK appends a timestamp)")
    tr.add_argument("--instance-count", type=int, default=2)
    tr.add_argument("--from-tuning-job", help="use the best hyperparameters of this tuning job")
    tr.set_defaults(func=cmd_train)

    d = sub.add_parser("deploy", help="real-time endpoint from a training job or a model.tar.gz", formatter_class=F)
    common(d, True)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--training-job")
    src.add_argument("--model-data", help="s3://.../model.tar.gz (then --image is required)")
    d.add_argument("--image")
    d.add_argument("--name", help="endpoint name (also the model and config name)")
    d.add_argument("--instance-type", default="ml.g5.xlarge")
    d.add_argument("--instance-count", type=int, default=1)
    d.add_argument("--autoscale", metavar="MIN,MAX", help="target tracking on invocations per instance")
    d.add_argument("--invocations-per-instance", type=int, default=300)
    d.add_argument("--capture-s3", help="enable data capture to this s3:// prefix")
    d.add_argument("--capture-percent", type=int, default=100, help="share of requests captured")
    d.add_argument("--no-wait", action="store_true",
                   help="return once the endpoint is being created (default: wait for InService, showing the "
                        "deployment's progress and logs; --autoscale always waits)")
    d.set_defaults(func=cmd_deploy)

    p = sub.add_parser("predict", help="count the items in images (files or s3:// URIs) via an endpoint",
                       formatter_class=F)
    common(p)
    p.add_argument("--endpoint", required=True)
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, RMSE, recall, confusion matrix of an endpoint on a channel",
                       formatter_class=F)
    common(e)
    e.add_argument("--endpoint", required=True)
    e.add_argument("--data", required=True, help="local channel DIR/<count>/<id>.jpg")
    e.add_argument("--out", default=".", help="report directory")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("batch", help="batch transform over an S3 prefix of images", formatter_class=F)
    common(b)
    b.add_argument("--model", required=True, help="SageMaker model name (from deploy)")
    b.add_argument("--input", required=True, help="s3:// prefix of images")
    b.add_argument("--output", required=True, help="s3:// output prefix")
    b.add_argument("--instance-type", default="ml.g5.xlarge")
    b.add_argument("--instance-count", type=int, default=1)
    b.add_argument("--name")
    b.set_defaults(func=cmd_batch)

    x = sub.add_parser("delete", help="delete an endpoint, its config, model and autoscaling", formatter_class=F)
    common(x)
    x.add_argument("--endpoint", required=True)
    x.set_defaults(func=cmd_delete)


def _client(args, service="sagemaker"):
    return aws.client(service, args.region, args.profile, args.endpoint_url)


def _region(args) -> str:
    return aws.resolve_region(args.region, args.profile)


def _channels(args) -> dict[str, str]:
    channels = {k: v for k, v in (("train", args.train), ("val", args.val), ("test", args.test),
                                  ("pretrained", args.pretrained)) if v}
    return channels


def _trainer(session, args, hps: dict, instance_count: int, base_name: str):
    return sdk.model_trainer(session, image=args.image, role=args.role, instance_type=args.instance_type,
                             instance_count=instance_count, hyperparameters=jobs.hp_strings(hps),
                             output_path=args.output, spot=args.spot, checkpoint_s3=args.checkpoint_s3,
                             max_runtime_s=args.max_runtime, base_name=base_name)


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
    hps = {"progress": False, **jobs.parse_kv(args.hp)}
    name = args.name or jobs.job_name("bc-hpo", 32)
    with sdk.sdk_session(_region(args), args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        tuner = sdk.tuner(_trainer(session, args, hps, 1, "bincounter-hpo"), lr=_pair(args.lr_range, float),
                          batch_sizes=_pair(args.batch_sizes, int), epochs=_pair(args.epochs_range, int),
                          archs=_pair(args.archs, str), image_sizes=_pair(args.image_sizes, int),
                          max_jobs=args.max_jobs, max_parallel=args.max_parallel,
                          early_stopping=not args.no_early_stopping, base_name=name)
        tuner.tune(inputs=sdk.inputs(_channels(args)), job_name=name, wait=False)
    if args.dry_run:
        _print_captured(captured, "CreateHyperParameterTuningJob")
        return 0
    job = tuner.latest_tuning_job
    _created("tuning job", name, getattr(job, "hyper_parameter_tuning_job_arn", None),
             jobs.console_link(_region(args), "tuning", name),
             f"aws sagemaker stop-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name {name}",
             f"then: bincounter sm train --from-tuning-job {name} ...")
    return 0


def cmd_train(args) -> int:
    hps = {"progress": False}
    if args.from_tuning_job:
        if args.dry_run:
            log.warning("--dry-run with --from-tuning-job still reads the tuning job from the SageMaker API")
        hps.update(jobs.best_hyperparameters(_client(args), args.from_tuning_job))
    hps.update(jobs.parse_kv(args.hp))
    with sdk.sdk_session(_region(args), args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        trainer = _trainer(session, args, hps, args.instance_count, args.name or "bincounter-train")
        trainer.train(input_data_config=sdk.inputs(_channels(args)), wait=False)
    if args.dry_run:
        _print_captured(captured, "CreateTrainingJob")
        return 0
    job = trainer._latest_training_job
    name = job.training_job_name
    _created("training job", name, job.training_job_arn, jobs.console_link(_region(args), "training", name),
             f"aws sagemaker stop-training-job --training-job-name {name}",
             f"model: {args.output.rstrip('/')}/{name}/output/model.tar.gz; "
             f"then: bincounter sm deploy --training-job {name} ...")
    return 0


def cmd_deploy(args) -> int:
    name = args.name or jobs.job_name("bincounter")
    image, model_data = args.image, args.model_data
    if args.training_job:
        if args.dry_run and args.endpoint_url is None:
            raise UserError("--dry-run with --training-job needs AWS to read the job; pass --model-data and --image")
        desc = aws.aws_call("DescribeTrainingJob", _client(args).describe_training_job,
                            TrainingJobName=args.training_job)
        model_data = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        image = image or desc["AlgorithmSpecification"]["TrainingImage"]
        if not model_data:
            raise UserError(f"training job {args.training_job} has no model artifacts (status "
                            f"{desc.get('TrainingJobStatus')})")
    if not image:
        raise UserError("--model-data needs --image")
    if args.capture_s3 and not (args.capture_s3.startswith("s3://") and 0 < args.capture_percent <= 100):
        raise UserError("--capture-s3 needs an s3:// URI and --capture-percent in 1..100")
    scaling = None
    if args.autoscale:
        bounds = _pair(args.autoscale, int)
        if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1]:
            raise UserError(f"--autoscale {args.autoscale!r}: expected MIN,MAX with 1 <= MIN <= MAX")
        lo, hi = bounds
        scaling = jobs.autoscaling_requests(name, lo, hi, args.invocations_per_instance)
    sdk_wait = not (args.dry_run or args.no_wait or scaling)
    with sdk.sdk_session(_region(args), args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        endpoint = sdk.deploy_endpoint(session, name=name, image=image, model_data=model_data, role=args.role,
                                       instance_type=args.instance_type, instance_count=args.instance_count,
                                       capture_s3=args.capture_s3, capture_percent=args.capture_percent,
                                       wait=sdk_wait)
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
    _created("endpoint", name, arn, jobs.console_link(_region(args), "endpoint", name),
             f"bincounter sm delete --endpoint {name}", f"try: bincounter sm predict --endpoint {name} bin.jpg")
    return 0


def _runtime_invoke(args):
    rt = aws.client("sagemaker-runtime", args.region, args.profile, args.endpoint_url)

    def predict_batch(images: list[bytes]) -> list[dict]:
        body = json.dumps({"instances": [base64.b64encode(b).decode() for b in images]}).encode()
        resp = aws.aws_call("InvokeEndpoint", rt.invoke_endpoint, EndpointName=args.endpoint, Body=body,
                            ContentType="application/json", Accept="application/json")
        return json.loads(resp["Body"].read())["predictions"]

    return predict_batch


def _read_image(ref: str, args) -> bytes:
    if ref.startswith("s3://"):
        from ..data.s3 import parse_s3_uri, s3_client

        bucket, key = parse_s3_uri(ref)
        s3 = s3_client(region=_region(args), profile=args.profile)
        return aws.aws_call(f"GetObject {ref}", s3.get_object, Bucket=bucket, Key=key)["Body"].read()
    try:
        return Path(ref).read_bytes()
    except OSError as e:
        raise UserError(f"{ref}: {e.strerror}") from None


def cmd_predict(args) -> int:
    images = [_read_image(r, args) for r in args.images]
    if args.dry_run:
        print(json.dumps({"api": "InvokeEndpoint", "endpoint": args.endpoint, "images": len(images)}))
        return 0
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
    name = args.name or jobs.job_name("bincounter-batch")
    with sdk.sdk_session(_region(args), args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        sdk.batch_transform(session, name=name, model=args.model, input_s3=args.input, output_s3=args.output,
                            instance_type=args.instance_type, instance_count=args.instance_count)
    if args.dry_run:
        _print_captured(captured, "CreateTransformJob")
        return 0
    desc = aws.aws_call("DescribeTransformJob", _client(args).describe_transform_job, TransformJobName=name)
    _created("batch transform job", name, desc.get("TransformJobArn"),
             jobs.console_link(_region(args), "transform", name),
             f"aws sagemaker stop-transform-job --transform-job-name {name}",
             f"results: {args.output.rstrip('/')}/<image>.out (one JSON per image)")
    return 0


def cmd_delete(args) -> int:
    name = args.endpoint
    if args.dry_run:
        for api, req in (("DeleteEndpoint", {"EndpointName": name}),
                         ("DeleteEndpointConfig", {"EndpointConfigName": name}), ("DeleteModel", {"ModelName": name})):
            jobs.print_request(api, req)
        return 0
    sm = _client(args)
    aas = aws.client("application-autoscaling", args.region, args.profile, args.endpoint_url)
    resource = f"endpoint/{name}/variant/{jobs.VARIANT}"
    targets = aws.aws_call("DescribeScalableTargets", aas.describe_scalable_targets, ServiceNamespace="sagemaker",
                           ResourceIds=[resource])["ScalableTargets"]
    for t in targets:
        aws.aws_call("DeregisterScalableTarget", aas.deregister_scalable_target, ServiceNamespace="sagemaker",
                     ResourceId=resource, ScalableDimension=t["ScalableDimension"])
    desc = aws.aws_call("DescribeEndpoint", sm.describe_endpoint, EndpointName=name)
    config = desc["EndpointConfigName"]
    cfg = aws.aws_call("DescribeEndpointConfig", sm.describe_endpoint_config, EndpointConfigName=config)
    models = [v["ModelName"] for v in cfg["ProductionVariants"]]
    aws.aws_call("DeleteEndpoint", sm.delete_endpoint, EndpointName=name)
    aws.aws_call("DeleteEndpointConfig", sm.delete_endpoint_config, EndpointConfigName=config)
    for m in models:
        aws.aws_call("DeleteModel", sm.delete_model, ModelName=m)
    log.info("deleted endpoint %s, endpoint config %s, model(s) %s%s: nothing left billing", name, config,
             ", ".join(models), ", autoscaling target" if targets else "")
    return 0


def _created(kind: str, name: str, arn: str | None, link: str, undo: str, nxt: str) -> None:
    print(json.dumps({"created": kind, "name": name, "arn": arn}))
    log.info("console: %s", link)
    log.info("undo:    %s", undo)
    log.info("next:    %s", nxt)
