"""The cloud pipeline's production settings: retry policies, step caching, the image pinned by digest, request
fields the SDK's shapes cannot take as pipeline parameters, and the cost line per step read from a definition.

* Retries: every job step retries throttling and service faults (StepRetryPolicy: 5 attempts, 10 s doubling)
  and the job-level capacity/internal/resource-limit errors (SageMakerJobStepRetryPolicy: 3 attempts, 60 s
  doubling); a failed container (AlgorithmError) is not retried: the same data fails the same way.
* Caching: the data steps (Prepare, Shard, Index) are cached for 45 days (`CACHE_EXPIRE`, a monthly retrain plus
  slack): a rerun with the same RawData/DataVersion/instance settings reuses their outputs. Their outputs are keyed
  by DataVersion, not by execution, so a cache hit's locations are the ones the later steps read.
* Platform settings (`with_platform`): tags, VPC, KMS key and inter-container encryption go into every job step's
  request (its Arguments), as `sm train/tune` add them to theirs (`platform.apply`); the Register step takes the
  key (SecurityConfig) but no tags: a version in a group carries the group's tags (CreateModelPackage refuses
  Tags there), so `sm pipeline upsert` tags the group itself, and the pipeline (CreatePipeline).
* `patched_step(cls, fix)`: a step class whose request is `fix(request)`: the SDK's request shapes type instance
  counts as ints, so a parameter (TrainInstances) goes in afterwards, as `sdk_compat.tuning_step_class` does for
  MaxJobs. The same place turns on network isolation for the training steps.
"""

from __future__ import annotations

import logging
import re

from .. import aws
from ..errors import UserError
from . import cost
from . import platform as platform_fields

log = logging.getLogger("bincounter")
CACHE_EXPIRE = "P45D"
DIGEST_RE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
ECR_RE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+):([\w][\w.-]{0,127})$")


def retry_policies() -> list:
    from sagemaker.mlops.workflow.retry import (
        SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum,
        StepRetryPolicy,
    )

    return [StepRetryPolicy(exception_types=[StepExceptionTypeEnum.THROTTLING, StepExceptionTypeEnum.SERVICE_FAULT],
                            interval_seconds=10, backoff_rate=2.0, max_attempts=5),
            SageMakerJobStepRetryPolicy(exception_types=[SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                                                         SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                                                         SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT],
                                        interval_seconds=60, backoff_rate=2.0, max_attempts=3)]


def step_options(data_steps: tuple[str, ...]):
    """-> options(step name): retry policies for every job step, a CacheConfig for the data steps."""
    from sagemaker.mlops.workflow.steps import CacheConfig

    def options(name: str) -> dict:
        out = {"retry_policies": retry_policies()}
        if name in data_steps:
            out["cache_config"] = CacheConfig(enable_caching=True, expire_after=CACHE_EXPIRE)
        return out

    return options


def patched_step(step_class, fix):
    """A subclass of `step_class` whose request (its `arguments`) is `fix(request)`."""

    class Patched(step_class):
        @property
        def arguments(self):
            return fix(super().arguments)

    Patched.__name__ = Patched.__qualname__ = f"Patched{step_class.__name__}"
    return Patched


def training_fix(instances, isolate: bool):
    """CreateTrainingJob / a tuning job's TrainingJobDefinition: InstanceCount = `instances` (a parameter), and
    EnableNetworkIsolation (no network inside the container: the weights come as a channel)."""
    def fix(request: dict) -> dict:
        job = request.get("TrainingJobDefinition", request)
        job["ResourceConfig"]["InstanceCount"] = instances
        if isolate:
            job["EnableNetworkIsolation"] = True
        return request

    return fix


def pin_image(image: str, dry_run: bool, ecr_client=None, flag: str = "--image") -> tuple[str, str | None]:
    """The image as the definition references it: by digest. -> (image, a warning or None). A tag is resolved
    through ECR (DescribeImages); a dry run (offline) keeps the tag and says so."""
    if DIGEST_RE.match(image):
        return image, None
    m = ECR_RE.match(image)
    if dry_run:
        return image, (f"{flag} {image}: referenced by tag in this dry run (offline); a real upsert pins it by "
                       "digest through ECR, or pass IMAGE@sha256:DIGEST")
    if not m or ecr_client is None:
        raise UserError(f"{flag} {image}: the pipeline references its image by digest; pass REPO@sha256:DIGEST "
                        "(or an ECR REPO:TAG, resolved through ECR)")
    account, _, repo, tag = m.groups()
    try:
        got = ecr_client.describe_images(registryId=account, repositoryName=repo, imageIds=[{"imageTag": tag}])
        digest = got["imageDetails"][0]["imageDigest"]
    except Exception as e:  # noqa: BLE001 - any failure: one line, the digest form still works
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{flag} {image}: cannot resolve the tag to a digest through ECR ({first}); pass "
                        "REPO@sha256:DIGEST") from None
    return f"{image.rsplit(':', 1)[0]}@{digest}", None


# ------------------------------------------------------------------------------------------------ cost
def _value(x, params: dict):
    if isinstance(x, dict) and "Get" in x and x["Get"].startswith("Parameters."):
        return params.get(x["Get"][len("Parameters."):])
    return x


def _flat(steps: list[dict]) -> list[dict]:
    out, todo = [], list(steps)
    while todo:
        s = todo.pop(0)
        out.append(s)
        args = s.get("Arguments", {})
        todo += args.get("IfSteps", []) + args.get("ElseSteps", []) if isinstance(args, dict) else []
    return out


def cost_lines(definition: dict, overrides: dict[str, str] | None = None, region: str | None = None) -> list[str]:
    """One upper-bound line per job step (instances x max runtime x the price table's rate; a tuning step: x
    MaxJobs), then the total: what `sm pipeline start` prints before it starts an execution."""
    params = {p["Name"]: p.get("DefaultValue") for p in definition.get("Parameters", [])}
    params.update(overrides or {})
    lines, total, unknown = [], 0.0, []
    for step in _flat(definition["Steps"]):
        a, kind, jobs = step.get("Arguments", {}), step.get("Type"), 1
        if kind == "Processing":
            res, stop = a["ProcessingResources"]["ClusterConfig"], a.get("StoppingCondition", {})
        elif kind == "Training":
            res, stop = a["ResourceConfig"], a.get("StoppingCondition", {})
        elif kind == "Tuning":
            res, stop = a["TrainingJobDefinition"]["ResourceConfig"], a["TrainingJobDefinition"]["StoppingCondition"]
            jobs = int(_value(a["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"], params))
        else:
            continue
        itype, count = _value(res["InstanceType"], params), int(_value(res["InstanceCount"], params))
        runtime = int(stop.get("MaxRuntimeInSeconds", 86400))
        line = cost.job_line(instance_type=itype, instance_count=count, max_runtime_s=runtime, jobs=jobs,
                             region=region)
        rate = (cost.table()["instances"].get(itype) or {}).get("usd_per_hour")
        if rate is None:
            unknown.append(step["Name"])
        else:
            total += jobs * count * runtime / 3600 * rate
        cached = " (cached: free when its data is unchanged)" if "CacheConfig" in step else ""
        lines.append(f"  {step['Name']:<9} {line}{cached}")
    head = f"estimated cost: up to ${total:,.2f} for one execution, every step at its maximum runtime"
    if unknown:
        head += f" (plus {', '.join(unknown)}: not in the price table)"
    return [head, *lines]


# ------------------------------------------------------------------------------------------ validation
#: the API each job step's Arguments are a request of, and the name field the pipeline fills in at run time
STEP_APIS = {"Processing": ("CreateProcessingJob", "ProcessingJobName"),
             "Training": ("CreateTrainingJob", "TrainingJobName"),
             "Tuning": ("CreateHyperParameterTuningJob", "HyperParameterTuningJobName"),
             "RegisterModel": ("CreateModelPackage", None)}
_EXPRESSIONS = ("Get", "Std:Join", "Std:JsonGet")


def _is_expression(x) -> bool:
    return isinstance(x, dict) and len(x) == 1 and next(iter(x)) in _EXPRESSIONS


def _placeholder(shape):
    """A valid value of `shape` where the definition holds a pipeline expression (resolved at run time)."""
    kind = shape.type_name
    if kind == "string":
        return shape.enum[0] if shape.enum else "s3://bincounter-placeholder/x"
    if kind in ("integer", "long"):
        return max(1, shape.metadata.get("min", 1))
    if kind in ("float", "double"):
        return float(shape.metadata.get("min", 0.5))
    if kind == "boolean":
        return True
    return {}


def _fill(value, shape, count: list):
    if _is_expression(value):
        count[0] += 1
        return _placeholder(shape)
    if shape.type_name == "structure" and isinstance(value, dict):
        return {k: _fill(v, shape.members[k], count) if k in shape.members else v for k, v in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_fill(v, shape.member, count) for v in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: _fill(v, shape.value, count) for k, v in value.items()}
    return value


def step_request_errors(definition: dict) -> dict[str, str]:
    """Each job step's Arguments checked by botocore's validator against its API's input shape (sm.validate),
    pipeline expressions (resolved only at run time) stood in for by valid values of their field's type, the job
    name (the pipeline names each job) filled in. -> {step name: botocore's report} for the steps that fail."""
    from . import validate

    out = {}
    for step in _flat(definition["Steps"]):
        if step.get("Type") not in STEP_APIS:
            continue
        api, name_field = STEP_APIS[step["Type"]]
        shape = validate.operation(api, "sagemaker").input_shape
        request = _fill(step["Arguments"], shape, [0])
        if name_field:
            request.setdefault(name_field, "placeholder")
        if (problem := validate.errors(api, request, "sagemaker")) is not None:
            out[step["Name"]] = problem
    return out


def check_requests(definition: dict) -> None:
    """Raise validate.InvalidRequest (a bincounter bug) when a step's request fails botocore's validation."""
    from .validate import InvalidRequest

    if bad := step_request_errors(definition):
        raise InvalidRequest("; ".join(f"step {k}: {v}" for k, v in bad.items()))


# ------------------------------------------------------------------------------------------ platform
def with_platform(definition: dict, settings) -> dict:
    """`definition` with `settings` (a platform.PlatformSettings) merged into each job step's Arguments, condition
    branches included; changed in place."""
    for step in _flat(definition["Steps"]):
        if step.get("Type") not in STEP_APIS:
            continue
        api, args = STEP_APIS[step["Type"]][0], step["Arguments"]
        if api == "CreateModelPackage":  # a version in a group: the group's tags (no Tags allowed), the key
            if settings.kms_key:
                args["SecurityConfig"] = {"KmsKeyId": settings.kms_key}
        else:
            platform_fields.apply(api, args, settings)
    return definition


def group_tag_request(group: str, settings, arn: str | None) -> tuple[str, dict]:
    """The request tagging the model package group: (api, request). A new group (`arn` None): CreateModelPackageGroup
    with the tags (the Register step then adds versions to it); an existing one: AddTags on its ARN."""
    if arn:
        return "AddTags", {"ResourceArn": arn, "Tags": settings.tag_list()}
    return "CreateModelPackageGroup", {"ModelPackageGroupName": group, "Tags": settings.tag_list(),
                                       "ModelPackageGroupDescription": "bincounter: versions the pipeline registers"}


def tag_group(group: str, platform, target) -> None:
    """Tag the model package group (its versions carry its tags): create it with them, or AddTags if it exists; a
    dry run logs the request (validated) it would send."""
    from botocore.exceptions import ClientError

    from . import validate

    if not platform.tags:
        return
    if target.dry_run:
        api, request = group_tag_request(group, platform, None)
        validate.check(api, request, "sagemaker")
        log.info("dry run: would tag the pipeline (CreatePipeline) and the model package group %s (%s, AddTags if "
                 "it exists) with %s", group, api, ", ".join(f"{t['Key']}={t['Value']}" for t in request["Tags"]))
        return
    sm = target.client()
    with aws.user_errors("tagging the model package group"):
        try:
            arn = sm.describe_model_package_group(ModelPackageGroupName=group)
            arn = arn["ModelPackageGroupArn"]
        except ClientError as e:  # SageMaker: ValidationException "... does not exist"
            if "does not exist" not in str(e):
                raise
            arn = None
        api, request = group_tag_request(group, platform, arn)
        aws.aws_call(api, getattr(sm, "add_tags" if arn else "create_model_package_group"), **request)
