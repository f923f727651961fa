"""A real-time endpoint: `deploy` one from an `EndpointSpec` (model + endpoint config + endpoint, all named alike,
through the SDK's ModelBuilder; a dry run prints ModelBuilder's requests from `deploy_requests` without importing
the SDK; autoscaling through boto3: the SDK v3 has no autoscaling helper), then `predict` with it and
`evaluate` it on a local channel (InvokeEndpoint through boto3). `delete.py` removes what `deploy` created.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from .. import aws
from ..errors import UserError
from . import cost, deploy_requests, jobs, printing, sdk
from .checks import check_instance_type, check_s3_uri
from .specs import EndpointSpec
from .target import DRY_ACCOUNT, AwsTarget

log = logging.getLogger("bincounter")
CPU_FROM_PACKAGE = "<the model package's CPU entry>"  # cpu_image: the package's additional CPU specification
CPU_SPEC_NAME = "cpu-onnx"  # the name `sm pipeline` registers it under


def parse_serverless(text: str) -> tuple[int, int]:
    """--serverless MEMORY_MB[,MAX_CONCURRENCY] -> (memory, concurrency), in SageMaker's accepted ranges."""
    parts = text.split(",")
    if len(parts) > 2:
        raise UserError(f"--serverless {text!r}: expected MEMORY_MB[,MAX_CONCURRENCY], e.g. 3072,10")
    try:
        memory, concurrency = int(parts[0]), int(parts[1]) if len(parts) > 1 else 5
    except ValueError:
        raise UserError(f"--serverless {text!r}: expected MEMORY_MB[,MAX_CONCURRENCY], e.g. 3072,10") from None
    if memory not in cost.SERVERLESS_MEMORY_MB:
        raise UserError(f"--serverless {text!r}: memory must be 1024, 2048, 3072, 4096, 5120 or 6144 MB")
    if not 1 <= concurrency <= 200:
        raise UserError(f"--serverless {text!r}: max concurrency must be in 1..200")
    return memory, concurrency


def _check(spec: EndpointSpec) -> None:
    serverless = spec.serverless
    if not serverless:  # a serverless endpoint has no instance type
        check_instance_type(spec.instance_type)
    if serverless and spec.autoscale:
        raise UserError("--serverless scales by itself: leave out --autoscale (use MAX_CONCURRENCY instead)")
    if serverless and spec.capture_s3:
        raise UserError("--capture-s3 with --serverless: SageMaker has no data capture on serverless endpoints")
    if spec.cpu_image and not serverless and spec.instance_type.split(".")[1][:1] in ("g", "p", "i"):
        log.warning("--cpu-image on %s: the CPU image does not use GPUs or Inferentia; pick a CPU instance "
                    "(ml.c6i/ml.m6i) or serve with the training image", spec.instance_type)
    if not 0 < spec.capture_percent <= 100:
        raise UserError(f"--capture-percent {spec.capture_percent}: the share of requests captured, 1..100")
    if spec.capture_s3 and not spec.capture_s3.startswith("s3://"):
        raise UserError("--capture-s3 needs an s3:// URI")
    if spec.instance_count < 1:
        raise UserError(f"--instance-count {spec.instance_count}: must be >= 1")
    if spec.autoscale and (len(spec.autoscale) != 2 or not 1 <= spec.autoscale[0] <= spec.autoscale[1]):
        raise UserError(f"--autoscale {','.join(map(str, spec.autoscale))!r}: expected MIN,MAX with "
                        "1 <= MIN <= MAX")
    if spec.model_data and not (spec.image or spec.cpu_image):
        raise UserError("--model-data needs --image (or --cpu-image)")
    check_s3_uri("--model-data", spec.model_data)


def _model(spec: EndpointSpec, target: AwsTarget, region: str) -> tuple[str | None, str | None]:
    """(model.tar.gz URI, image) of the spec's model source; a dry run reads nothing and names placeholders."""
    from_package = spec.cpu_image == CPU_FROM_PACKAGE
    image, model_data = spec.image or (None if from_package else spec.cpu_image), spec.model_data
    if spec.training_job and target.dry_run:
        log.warning("dry run: training job %s is not read (no network call); its model and image are placeholders",
                    spec.training_job)
        model_data = f"s3://dry-run-placeholder/{spec.training_job}/output/model.tar.gz"
        image = image or f"{DRY_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/image-of-{spec.training_job}:dry-run"
    elif spec.model_package and target.dry_run:
        log.warning("dry run: model package %s is not read (no network call): its model and image are placeholders "
                    "and its approval status is not checked", spec.model_package)
        model_data = "s3://dry-run-placeholder/model-package/model.tar.gz"
        image = image or f"{DRY_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/image-of-model-package:dry-run"
        if from_package:
            log.warning("dry run: --cpu-image would serve the image and model of the package's CPU entry (read "
                        "with DescribeModelPackage: AdditionalInferenceSpecifications %s)", CPU_SPEC_NAME)
            image = f"{DRY_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/cpu-image-of-model-package:dry-run"
    elif spec.model_package:
        pkg = aws.aws_call("DescribeModelPackage", target.client().describe_model_package,
                           ModelPackageName=spec.model_package)
        status = pkg.get("ModelApprovalStatus")
        if status != "Approved":
            raise UserError(f"model package {spec.model_package} is {status}: approve it first (aws sagemaker "
                            f"update-model-package --model-package-arn {spec.model_package} --model-approval-status "
                            "Approved), or deploy its training job")
        container = pkg["InferenceSpecification"]["Containers"][0]
        if from_package:
            container = {"ModelDataUrl": container.get("ModelDataUrl"), **cpu_container(pkg, spec)}
        model_data, image = container.get("ModelDataUrl"), image or container["Image"]
        if not model_data:
            raise UserError(f"model package {spec.model_package} has no ModelDataUrl")
    elif spec.training_job:
        desc = jobs.describe_training_job(target.client(), spec.training_job, region)
        model_data = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        image = image or desc["AlgorithmSpecification"]["TrainingImage"]
        if not model_data:
            raise UserError(f"training job {spec.training_job} has no model artifacts (status "
                            f"{desc.get('TrainingJobStatus')}; wait until it has Completed)")
    return model_data, image


def cpu_container(pkg: dict, spec) -> dict:
    """The container of a model package's CPU specification (DescribeModelPackage's answer `pkg`): the
    additional specification named cpu-onnx (what `sm pipeline` registers), else its only one; a warning when
    `spec`'s instance type is not among the ones it lists."""
    extra = pkg.get("AdditionalInferenceSpecifications") or []
    named = [x for x in extra if x.get("Name") == CPU_SPEC_NAME] or (extra if len(extra) == 1 else [])
    if not named:
        raise UserError(f"model package {spec.model_package} has no CPU specification to serve with --cpu-image (its "
                        f"additional ones: {', '.join(x.get('Name', '?') for x in extra) or 'none'}; "
                        f"`sm pipeline upsert --cpu-image` registers one named {CPU_SPEC_NAME}): pass --cpu-image URI")
    cpu = named[0]
    allowed = cpu.get("SupportedRealtimeInferenceInstanceTypes") or []
    if not spec.serverless and allowed and spec.instance_type not in allowed:
        log.warning("--instance-type %s: not among the CPU specification's instance types (%s)",
                    spec.instance_type, ", ".join(allowed))
    log.info("model package %s: serving its CPU specification %s", spec.model_package, cpu.get("Name"))
    return {k: v for k, v in cpu["Containers"][0].items() if k in ("Image", "ModelDataUrl") and v}


model_source = _model  # public: sm update (update.py) takes a new model from the same sources


def deploy(spec: EndpointSpec, target: AwsTarget) -> int:
    """Check, price and create the endpoint (a dry run prints its requests); then register its autoscaling."""
    name = spec.name or jobs.job_name("bincounter")
    region = target.resolved_region()
    serverless = spec.serverless
    _check(spec)
    scaling = jobs.autoscaling_requests(name, *spec.autoscale, spec.invocations_per_instance) if spec.autoscale \
        else None
    spec.platform.check(region)
    if spec.platform.inter_container_encryption:
        raise UserError("--inter-container-encryption is a training setting (traffic between training instances); "
                        "an endpoint's instances do not talk to each other")
    if target.dry_run:
        for n in spec.platform.dry_run_notes():
            log.warning("%s", n)
    if scaling and spec.platform.tags:  # the scalable target is tagged like the endpoint
        scaling = ({**scaling[0], "Tags": dict(spec.platform.tags)}, scaling[1])
    role = target.role_arn(spec.role, region)
    model_data, image = _model(spec, target, region)
    if serverless:
        printing.cost(cost.serverless_line(memory_mb=serverless[0], max_concurrency=serverless[1], region=region))
        log.info("cost: serverless, %d MB, up to %d concurrent requests: billed per request and per GB-second of "
                 "inference time, nothing while idle", *serverless)
        if not spec.cpu_image:
            log.info("serverless with %s: cold starts pull the image; the CPU image (--cpu-image) is ~9x smaller",
                     image)
    else:
        printing.cost(cost.hourly_line(what="while the endpoint exists (until sm delete)",
                                       instance_type=spec.instance_type, instance_count=spec.instance_count,
                                       max_count=scaling[0]["MaxCapacity"] if scaling else None,
                                       price_per_hour=spec.price_per_hour, region=region))
    args = dict(name=name, image=image, model_data=model_data, role=role, instance_type=spec.instance_type,
                instance_count=spec.instance_count, capture_s3=spec.capture_s3, capture_percent=spec.capture_percent,
                serverless=serverless)
    sdk_defaults = deploy_requests.sdk_defaults_file() if target.dry_run else None
    if target.dry_run and not sdk_defaults:  # ModelBuilder's requests, without importing the SDK
        captured, endpoint = deploy_requests.requests(**args, platform=spec.platform), None
    else:
        if sdk_defaults:
            log.info("dry run through the SDK's ModelBuilder: its defaults file %s may add fields", sdk_defaults)
        with sdk.sdk_session(region, target.profile, target.endpoint_url, target.dry_run,
                             spec.platform) as (session, captured):
            endpoint = sdk.deploy_endpoint(session, **args, wait=spec.wait and not (target.dry_run or scaling))
    if target.dry_run:
        printing.captured(captured, "CreateEndpoint")
        if scaling:
            printing.print_request("RegisterScalableTarget", scaling[0])
            printing.print_request("PutScalingPolicy", scaling[1])
        return 0
    if scaling:
        _autoscale(target, name, scaling, spec.invocations_per_instance)
    arn = getattr(endpoint, "endpoint_arn", None)
    arn = arn if isinstance(arn, str) else None  # the SDK's Endpoint; None where it has no ARN
    printing.created("endpoint", name, arn, jobs.console_link(region, "endpoint", name),
                     f"bincounter sm delete --endpoint {name}", f"try: bincounter sm predict --endpoint {name} bin.jpg")
    return 0


def _autoscale(target: AwsTarget, name: str, scaling: tuple, invocations_per_instance: int) -> None:
    """Registering needs the endpoint InService (minutes on SageMaker)."""
    log.info("waiting for %s to be InService before registering autoscaling ...", name)
    try:
        target.client().get_waiter("endpoint_in_service").wait(EndpointName=name,
                                                               WaiterConfig={"Delay": 30, "MaxAttempts": 60})
    except Exception as e:  # noqa: BLE001 - WaiterError: the endpoint failed or took too long
        raise UserError(f"endpoint {name} did not reach InService ({e}); autoscaling not registered") from None
    aas = target.client("application-autoscaling")
    aws.aws_call("RegisterScalableTarget", aas.register_scalable_target, **scaling[0])
    aws.aws_call("PutScalingPolicy", aas.put_scaling_policy, **scaling[1])
    log.info("autoscaling %s: %s..%s instances, target %s invocations/instance", name,
             scaling[0]["MinCapacity"], scaling[0]["MaxCapacity"], invocations_per_instance)


# ------------------------------------------------------------------------------------------------ invoke
def runtime_invoke(target: AwsTarget, endpoint: str):
    """A function images -> predictions that sends one InvokeEndpoint per call."""
    rt = target.client("sagemaker-runtime")

    def predict_batch(images: list[bytes]) -> list[dict]:
        body = json.dumps({"instances": [base64.b64encode(b).decode() for b in images]}).encode()
        resp = aws.aws_call("InvokeEndpoint", rt.invoke_endpoint, EndpointName=endpoint, Body=body,
                            ContentType="application/json", Accept="application/json")
        return predictions(endpoint, resp["Body"].read(), len(images), resp.get("ContentType"))

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


def read_image(ref: str, target: AwsTarget) -> bytes:
    """A local file or an s3:// object's bytes."""
    if ref.startswith("s3://"):
        from ..data.s3 import parse_s3_uri, s3_client

        bucket, key = parse_s3_uri(ref)
        s3 = s3_client(target.endpoint_url, region=target.resolved_region(), profile=target.profile)
        return aws.aws_call(f"GetObject {ref}", s3.get_object, Bucket=bucket, Key=key)["Body"].read()
    try:
        return Path(ref).read_bytes()
    except OSError as e:
        raise UserError(f"{ref}: {e.strerror}") from None


def predict(target: AwsTarget, endpoint: str, images: list[str]) -> int:
    """One JSON line per image: its reference and the endpoint's prediction."""
    if target.dry_run:  # local files are read (a missing one is an error now), S3 objects are not
        local = [r for r in images if not r.startswith("s3://")]
        for r in local:
            read_image(r, target)
        print(json.dumps({"api": "InvokeEndpoint", "endpoint": endpoint, "images": len(images),
                          "s3_images_not_read": len(images) - len(local)}))
        return 0
    data = [read_image(r, target) for r in images]
    for ref, out in zip(images, runtime_invoke(target, endpoint)(data), strict=True):
        print(json.dumps({"image": ref, **out}))
    return 0


def evaluate(target: AwsTarget, endpoint: str, data: str, out: str) -> int:
    """Accuracy, RMSE, recall and the confusion matrix of the endpoint on a local channel, as `bincounter evaluate`
    reports a local model's."""
    from ..evaluate import evaluate_remote
    from ..metrics import format_summary

    if target.dry_run:
        print(json.dumps({"api": "InvokeEndpoint", "endpoint": endpoint, "data": data}))
        return 0
    summary, paths = evaluate_remote(runtime_invoke(target, endpoint), data, out, stem="endpoint")
    print(format_summary(summary))
    log.info("report: %s", ", ".join(map(str, paths)))
    return 0
