"""The whole flow as one SageMaker Pipeline (SDK v3, `sagemaker.mlops.workflow`), every step on our image,
referenced by digest:

    Prepare (1 processing instance: ABID's metadata only -> EDA, stratified split, manifest + manifest parts)
      ->  Shard (ShardInstances processing instances, ShardedByS3Key over the parts: each fetches its bins
          straight from RawData with the parallel, retried fetch -> tar shards + index parts; bad images counted)
      ->  Index (1 instance: the index parts -> index.json per split next to its shards; bad images summed)
      ->  Tune (lr, batch size; MaxJobs trials on TrainInstances instances each, FastFile shards)
      ->  Train (TrainInstances instances, every tuned hyperparameter from the best trial, FastFile shards)
      ->  Evaluate (processing: test shards -> evaluation.json)
      ->  CheckAccuracy: accuracy >= MinAccuracy ?  Register (model package group: the GPU image, and the CPU image
                                                   serving model.onnx as an additional inference specification)
                                                 : AccuracyTooLow (fails with the measured accuracy)

Trials run with the final Train's instance count (TrainInstances) and per-device batch, so the tuned lr is the lr
of the same global batch. The training steps run with network isolation; the ImageNet weights come as their
`pretrained` channel (--weights: an S3 copy of a `bincounter weights fetch` folder). The data steps are cached
(a rerun with the same RawData and DataVersion skips them) and every job step retries throttling, service
faults and capacity errors (pipeline_settings).

Pipeline parameters (overridable per execution, `sm pipeline start --param K=V`): RawData, DataVersion,
InstanceType, TrainInstances, ProcessingInstanceType, ShardInstances, MaxJobs, MinAccuracy, ApprovalStatus.
Every S3 location is under --output: the data steps' under data/<DataVersion>/, the rest per execution id.
SDK v3 limits met here (the shims: sdk_compat, pipeline_settings.patched_step):
* the tuner takes MaxJobs as a Python int (its request shape types it so): the Tune step swaps the parameter
  into its request afterwards (`sdk_compat.tuning_step_class`); the same for the training instance counts;
* `ModelBuilder.register()` uploads "dependencies" by default (an S3 call even for a definition):
  `dependencies=None`;
* categorical tuned values come back JSON-quoted ('"64"'): the image's contract unquotes them.

`sm pipeline local` runs the same Prepare, Shard (2 local instances), Index, Train, Evaluate and gate steps
(`pipeline_steps.Flow`) on this machine with Docker (the SDK's local pipeline executor), Tune replaced by fixed
hyperparameters and Register by CreateModel (pipeline_local).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field, replace

from .. import aws
from ..errors import UserError
from . import hyperparameters as hp_checks
from . import pipeline_settings as settings
from . import sdk, sdk_compat, training
from .checks import check_instance_type, check_name, check_s3_uri  # the checks sm train/tune/deploy use
from .pipeline_steps import DATA_STEPS, Flow
from .platform import PlatformSettings
from .target import AwsTarget

log = logging.getLogger("bincounter")
STEPS = ("Prepare", "Shard", "Index", "Tune", "Train", "Evaluate", "CheckAccuracy", "Register", "AccuracyTooLow")
PARAMETERS = ("RawData", "DataVersion", "InstanceType", "TrainInstances", "ProcessingInstanceType", "ShardInstances",
              "MaxJobs", "MinAccuracy", "ApprovalStatus")
APPROVAL_STATUSES = ("PendingManualApproval", "Approved")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
CPU_INSTANCES = ["ml.c6i.xlarge", "ml.c6i.2xlarge", "ml.m6i.xlarge", "ml.c7i.xlarge"]
GPU_INSTANCES = ["ml.g5.xlarge", "ml.g4dn.xlarge", "ml.g6.xlarge"]


@dataclass(frozen=True)
class PipelineSpec:
    """What `sm pipeline upsert` defines. The parameters' defaults (data, data version, instance types and counts,
    max_jobs, min_accuracy, approval_status) may be overridden per execution; the rest is fixed in the definition.
    `hyperparameters`: the fixed ones, as SageMaker's strings (lr is tuned within `lr_range`, batch_size among
    `batch_sizes` unless fixed). `weights`: s3:// folder of ImageNet weights (the pretrained channel); None only
    with pretrained=false. `cpu_image`: the CPU (ONNX Runtime) image, registered as the additional inference
    specification. `platform`: tags, VPC, KMS key, inter-container encryption on every step (the training steps
    run isolated anyway) and tags on the pipeline and the model package group."""

    role: str
    image: str
    data: str
    output: str
    name: str = "bincounter"
    instance_type: str = "ml.g5.xlarge"
    processing_instance_type: str = "ml.m5.xlarge"
    train_instances: int = 2
    shard_instances: int = 8
    data_version: str = "v1"
    shard_size: str = "256MB"
    max_jobs: int = 8
    max_parallel: int = 2
    min_accuracy: float = 0.5
    lr_range: tuple[float, float] = field(default_factory=lambda: hp_checks.lr_range(None))
    batch_sizes: tuple[int, ...] = (32, 64, 128)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    model_package_group: str = "bincounter"
    approval_status: str = "PendingManualApproval"
    weights: str | None = None
    cpu_image: str | None = None
    max_runtime_s: int = 6 * 3600
    platform: PlatformSettings = field(default_factory=PlatformSettings)


def tuned_ranges(spec: PipelineSpec) -> dict:
    """What the tuner varies: lr always, batch_size unless --hp fixes it."""
    ranges = {"lr": spec.lr_range}
    if "batch_size" not in spec.hyperparameters:
        ranges["batch_size"] = tuple(spec.batch_sizes)
    return ranges


def build(session, spec: PipelineSpec, role: str):
    """The Pipeline object (nothing is sent): `session` is a plain SDK Session (sdk.sdk_session's); `spec` checked
    (check_spec) with its image pinned."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep

    sdk_compat.quiet_pipeline_sdk()
    output = spec.output.rstrip("/")
    ps = PipelineSession(boto_session=session.boto_session, default_bucket=output[5:].split("/")[0])

    p_data = ParameterString(name="RawData", default_value=spec.data)
    p_version = ParameterString(name="DataVersion", default_value=spec.data_version)
    p_instance = ParameterString(name="InstanceType", default_value=spec.instance_type)
    p_train_n = ParameterInteger(name="TrainInstances", default_value=spec.train_instances)
    p_proc_instance = ParameterString(name="ProcessingInstanceType", default_value=spec.processing_instance_type)
    p_shard_n = ParameterInteger(name="ShardInstances", default_value=spec.shard_instances)
    p_max_jobs = ParameterInteger(name="MaxJobs", default_value=spec.max_jobs)
    p_min_acc = ParameterFloat(name="MinAccuracy", default_value=spec.min_accuracy)
    p_approval = ParameterString(name="ApprovalStatus", default_value=spec.approval_status)

    def s3(*parts):  # per execution, resolved by the service at run time
        return Join(on="/", values=[output, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts])

    def data_s3(*parts):  # per data version: a cached data step's outputs are where later executions read
        return Join(on="/", values=[output, "data", p_version, *parts])

    flow = Flow(ps, image=spec.image, role=role, instance_type=p_instance, processing_instance_type=p_proc_instance,
                uri=s3, data_uri=data_s3, max_runtime_s=spec.max_runtime_s,
                step_options=settings.step_options(DATA_STEPS))
    data_steps = flow.data_steps(Join(on="", values=[p_data, "metadata/"]), p_shard_n, p_data, spec.shard_size)

    hps = {"progress": "false", **spec.hyperparameters}
    isolate = True
    chans = flow.channels("train", "val")
    if spec.weights:
        hps["pretrained"] = "true"
        chans.append(flow.pretrained_channel(spec.weights))
    ranges = tuned_ranges(spec)
    tuner = sdk.tuner(flow.trainer(1, dict(hps), s3("tune"), "bincounter-hpo"), ranges=ranges,
                      max_jobs=spec.max_jobs, max_parallel=spec.max_parallel, early_stopping=True,
                      base_name="bincounter-hpo")
    tune_fix = settings.training_fix(p_train_n, isolate)
    tune_step = settings.patched_step(sdk_compat.tuning_step_class(p_max_jobs), tune_fix)
    tune = tune_step(name="Tune", step_args=tuner.tune(inputs=chans), **flow.options("Tune"))

    best = tune.properties.BestTrainingJob.TunedHyperParameters
    train = flow.train_step(1, {**hps, **{k: best[k] for k in ranges}}, pretrained=spec.weights,
                            step_class=settings.patched_step(TrainingStep, settings.training_fix(p_train_n, isolate)))
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts
    evaluate, report = flow.evaluate_step(model_data)
    register = register_step(ps, spec, role, model_data, evaluate, p_approval)
    check = flow.gate(evaluate, report, p_min_acc, [register], "not registered")

    class PlatformPipeline(Pipeline):  # the definition printed and the one CreatePipeline/UpdatePipeline send
        def definition(self) -> str:
            return json.dumps(settings.with_platform(json.loads(super().definition()), spec.platform))

    return PlatformPipeline(name=spec.name, sagemaker_session=ps,
                    parameters=[p_data, p_version, p_instance, p_train_n, p_proc_instance, p_shard_n, p_max_jobs,
                                p_min_acc, p_approval],
                    steps=[*data_steps, tune, train, evaluate, check])


def register_step(ps, spec: PipelineSpec, role: str, model_data, evaluate, approval):
    """Register: one model package, the GPU image as its inference specification and (with --cpu-image) the CPU
    image as an additional one, both on the same model.tar.gz (it holds model.onnx too)."""
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.workflow.functions import Join
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.serve import ModelBuilder

    evaluation_json = Join(on="/", values=[
        evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, "evaluation.json"])
    builder = ModelBuilder(image_uri=spec.image, s3_model_data_url=model_data, role_arn=role, sagemaker_session=ps,
                           dependencies=None)
    content = ["image/jpeg", "image/png", "application/json"]
    args = builder.register(
        model_package_group_name=spec.model_package_group, approval_status=approval,
        content_types=content, response_types=["application/json"],
        inference_instances=GPU_INSTANCES + CPU_INSTANCES[:2],
        transform_instances=GPU_INSTANCES[:1] + CPU_INSTANCES[:1],
        model_metrics=ModelMetrics(model_statistics=MetricsSource(content_type="application/json",
                                                                  s3_uri=evaluation_json)))
    if spec.cpu_image:  # the request the step args carry (public attribute): one more field
        args.create_model_package_request["AdditionalInferenceSpecifications"] = [{
            "Name": "cpu-onnx", "Description": "the CPU image (ONNX Runtime) serving model.onnx of the same artifact",
            "Containers": [{"Image": spec.cpu_image, "ModelDataUrl": model_data}],
            "SupportedContentTypes": content, "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": CPU_INSTANCES,
            "SupportedTransformInstanceTypes": CPU_INSTANCES[:1]}]
    return ModelStep(name="Register", step_args=args, retry_policies=settings.retry_policies()[:1])


def step_names(definition: dict) -> list[str]:
    """Every step of a definition, condition branches included, in order."""
    out, todo = [], list(definition["Steps"])
    while todo:
        step = todo.pop(0)
        out.append(step["Name"])
        args = step.get("Arguments", {})
        todo += args.get("IfSteps", []) + args.get("ElseSteps", []) if isinstance(args, dict) else []
    return out


def check_parameter(name: str, value: str, option: str | None = None) -> str:
    """A pipeline parameter's value, checked offline (for upsert's defaults and start's --param overrides): a
    bad one would otherwise fail only when an execution reaches the step using it, after paid steps."""
    flag = option or f"--param {name}"
    where = option or f"--param {name}={value}"
    if name == "RawData":
        check_s3_uri(flag, value)
        return value.rstrip("/") + "/"
    if name in ("InstanceType", "ProcessingInstanceType"):
        check_instance_type(value, flag)
    if name == "MaxJobs":
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{where}: a number of tuning trials (>= 1)")
    if name in ("TrainInstances", "ShardInstances") and (not value.isdigit() or not 1 <= int(value) <= 100):
        raise UserError(f"{where}: a number of instances, 1..100")
    if name == "DataVersion" and not VERSION_RE.fullmatch(value):
        raise UserError(f"{where}: a label for the prepared data (letters, digits, . _ -), e.g. 2026-12")
    if name == "MinAccuracy":
        try:
            ok = 0 <= float(value) <= 1
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"{where}: an accuracy, 0..1")
    if name == "ApprovalStatus" and value not in APPROVAL_STATUSES:
        raise UserError(f"{where}: PendingManualApproval or Approved")
    return value


def check_spec(spec: PipelineSpec) -> PipelineSpec:
    """`spec`, checked offline as upsert's flags; -> the spec with RawData as a prefix (its trailing slash:
    s3://b/abid must not also take s3://b/abid-old/)."""
    check_s3_uri("--output", spec.output)
    data = check_parameter("RawData", spec.data, "--data")
    check_parameter("InstanceType", spec.instance_type, "--instance-type")
    check_parameter("ProcessingInstanceType", spec.processing_instance_type, "--processing-instance-type")
    check_parameter("MaxJobs", str(spec.max_jobs), "--max-jobs")
    check_parameter("TrainInstances", str(spec.train_instances), "--train-instances")
    check_parameter("ShardInstances", str(spec.shard_instances), "--shard-instances")
    check_parameter("DataVersion", spec.data_version, "--data-version")
    bad = [b for b in spec.batch_sizes if b < 1]
    if not spec.batch_sizes or bad:
        raise UserError(f"--batch-sizes {','.join(map(str, spec.batch_sizes))}: positive integers")
    check_parameter("MinAccuracy", str(spec.min_accuracy), "--min-accuracy")
    if not 1 <= spec.max_parallel <= spec.max_jobs:
        raise UserError(f"--max-jobs {spec.max_jobs} / --max-parallel {spec.max_parallel}: need 1 <= parallel <= jobs")
    for what, name in (("--name", spec.name), ("--model-package-group", spec.model_package_group)):
        check_name(what, name)
    if "lr" in spec.hyperparameters:
        raise UserError("--hp lr=...: the pipeline tunes lr (--lr-range); fix the other hyperparameters with --hp")
    if spec.hyperparameters:
        hp_checks.validate(spec.hyperparameters)
    from ..sagemaker.contract import is_false

    pretrained = not is_false(spec.hyperparameters.get("pretrained", "true"))
    if pretrained and not spec.weights:
        raise UserError("--weights S3URI is needed: the training steps run with network isolation, so the ImageNet "
                        "weights come as their pretrained channel (bincounter weights fetch, then upload the "
                        "folder); or --hp pretrained=false")
    if spec.weights:
        check_s3_uri("--weights", spec.weights)
        if not pretrained:
            raise UserError("--weights with --hp pretrained=false: choose one")
    if "pretrained" in spec.hyperparameters and pretrained:
        raise UserError("--hp pretrained=true: --weights gives the pretrained channel; leave pretrained out")
    return replace(spec, data=data)


def upsert(spec: PipelineSpec, target: AwsTarget) -> tuple[dict, str | None]:
    """Build the definition (checked first) and, unless a dry run, CreatePipeline or UpdatePipeline.
    -> (the definition, the pipeline ARN; None in a dry run)."""
    spec = check_spec(spec)
    region = target.resolved_region()
    role = target.role_arn(spec.role, region)
    spec.platform.check_training(region, None)
    # the weights must be the trained arch's (the container refuses others, after the data steps have billed)
    training.check_weights(spec.weights, target, [spec.hyperparameters.get("arch") or hp_checks.default("arch")],
                           "--weights")
    if target.dry_run:
        for note in spec.platform.dry_run_notes():
            log.info("%s", note)
    definition, created = None, None
    ecr = None if target.dry_run else target.client("ecr")
    pinned = {}
    for what, flag, image in (("image", "--image", spec.image), ("cpu_image", "--cpu-image", spec.cpu_image)):
        if image:
            with aws.user_errors("ECR DescribeImages"):
                pinned[what], warning = settings.pin_image(image, target.dry_run, ecr, flag=flag)
            if warning:
                log.warning(warning)
    spec = replace(spec, **pinned)
    with sdk.sdk_session(region, target.profile, target.endpoint_url, target.dry_run) as (session, captured):
        pipe = build(session, spec, role)
        definition = pipe.definition()
        settings.check_requests(json.loads(definition))  # botocore's validation of each job step (failure: our bug)
        settings.tag_group(spec.model_package_group, spec.platform, target)
        if not target.dry_run:
            created = pipe.upsert(role_arn=role, description="bincounter: prepare (sharded), tune, train, evaluate, "
                                  "register", tags=spec.platform.tag_list() or None)
    if definition is None:
        raise UserError(f"the SDK stopped before the definition was built (calls: {[c['api'] for c in captured]})")
    return json.loads(definition), (created or {}).get("PipelineArn")


def start_request(name: str, params: dict[str, str]) -> dict:
    """The StartPipelineExecution request for pipeline `name` with parameter overrides, each checked offline."""
    checked = {}
    for k, v in params.items():
        if k not in PARAMETERS:
            raise UserError(f"--param {k}: not a parameter of the pipeline ({', '.join(PARAMETERS)})")
        checked[k] = check_parameter(k, v)
    return {"PipelineName": name, "PipelineParameters": [{"Name": k, "Value": str(v)} for k, v in checked.items()],
            "ClientRequestToken": uuid.uuid4().hex}  # idempotent: a retried request starts one execution


def start_cost(request: dict, target: AwsTarget) -> list[str]:
    """The cost lines of the execution `request` would start: the stored definition (DescribePipeline) with the
    request's parameter overrides."""
    with aws.user_errors("DescribePipeline"):
        got = aws.aws_call("DescribePipeline", target.client().describe_pipeline, PipelineName=request["PipelineName"])
    overrides = {p["Name"]: p["Value"] for p in request.get("PipelineParameters", [])}
    return settings.cost_lines(json.loads(got["PipelineDefinition"]), overrides, target.resolved_region())


def start(request: dict, target: AwsTarget) -> str:
    """Send `start_request`'s request. -> the execution ARN."""
    with aws.user_errors("StartPipelineExecution"):
        out = aws.aws_call("StartPipelineExecution", target.client().start_pipeline_execution, **request)
    return out["PipelineExecutionArn"]


@dataclass
class ExecutionStatus:
    """An execution (`arn`, its DescribePipelineExecution answer) and its steps; `steps_unavailable`: why the steps
    could not be listed; `exit_messages`: a failed processing step's own one-line reason (`process` writes it as
    the job's ExitMessage), by step name."""

    arn: str
    execution: dict
    steps: list[dict]
    steps_unavailable: str | None
    exit_messages: dict[str, str | None]


def status(target: AwsTarget, name: str, execution: str | None = None) -> ExecutionStatus:
    """The latest execution of pipeline `name` (or `execution`, an ARN), step by step."""
    with aws.user_errors("sm pipeline status"):
        sm = target.client()
        arn = execution
        if not arn:
            runs = aws.aws_call("ListPipelineExecutions", sm.list_pipeline_executions, PipelineName=name,
                                SortBy="CreationTime", SortOrder="Descending", MaxResults=1)
            summaries = runs.get("PipelineExecutionSummaries", [])
            if not summaries:
                raise UserError(f"pipeline {name} has no executions yet (bincounter sm pipeline start)")
            arn = summaries[0]["PipelineExecutionArn"]
        ex = aws.aws_call("DescribePipelineExecution", sm.describe_pipeline_execution, PipelineExecutionArn=arn)
        steps, why = [], None
        try:
            steps = sm.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending")
            steps = steps.get("PipelineExecutionSteps", [])
        except Exception as e:  # noqa: BLE001 - shown, not fatal: the execution line is still useful
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        exit_messages = {}
        for st in steps:
            job = (st.get("Metadata") or {}).get("ProcessingJob", {}).get("Arn")
            if st.get("StepStatus") == "Failed" and job:
                try:
                    desc = sm.describe_processing_job(ProcessingJobName=job.rsplit("/", 1)[-1])
                    exit_messages[st["StepName"]] = desc.get("ExitMessage")
                except Exception:  # noqa: BLE001 - the step's FailureReason is shown anyway
                    pass
    return ExecutionStatus(arn, ex, steps, why, exit_messages)
