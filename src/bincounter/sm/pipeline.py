"""The whole flow as one SageMaker Pipeline (SDK v3, `sagemaker.mlops.workflow`), every step on our image:

    Prepare (processing: raw ABID -> EDA + train/val/test)  ->  Tune (lr, MaxJobs trials)
      ->  Train (2 instances, the tuned lr)  ->  Evaluate (processing: test channel -> evaluation.json)
      ->  CheckAccuracy: accuracy >= MinAccuracy ?  Register (model package group, evaluation as model metrics)
                                                   : AccuracyTooLow (fails with the measured accuracy)

Pipeline parameters (overridable per execution, `sm pipeline start --param K=V`): RawData, InstanceType,
ProcessingInstanceType, MaxJobs, MinAccuracy, ApprovalStatus. Every S3 location is under --output, per
execution id. SDK v3 limits met here (the shims themselves live in sdk_compat):
* the tuner takes MaxJobs as a Python int (its request shape types it so): the Tune step swaps the parameter
  into its request afterwards (`sdk_compat.tuning_step_class`);
* `ModelBuilder.register()` uploads "dependencies" by default (an S3 call even for a definition):
  `dependencies=None`;
* only the continuous lr comes from the tuning job into Train (`BestTrainingJob.TunedHyperParameters`):
  categorical values come back JSON-quoted ('"64"'), which a step property cannot unquote.

`sm pipeline local` runs the same Prepare, Train, Evaluate and gate steps (`pipeline_steps.Flow`) on this machine
with Docker (the SDK's local pipeline executor), Tune replaced by fixed hyperparameters and Register by CreateModel
(pipeline_local).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

from .. import aws
from ..errors import UserError
from . import hyperparameters as hp_checks
from . import sdk, sdk_compat
from .checks import check_instance_type, check_s3_uri  # the checks sm train/tune/deploy use
from .pipeline_steps import Flow
from .target import AwsTarget

STEPS = ("Prepare", "Tune", "Train", "Evaluate", "CheckAccuracy", "Register", "AccuracyTooLow")
PARAMETERS = ("RawData", "InstanceType", "ProcessingInstanceType", "MaxJobs", "MinAccuracy", "ApprovalStatus")
APPROVAL_STATUSES = ("PendingManualApproval", "Approved")
NAME_RE = re.compile(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,62}")


@dataclass(frozen=True)
class PipelineSpec:
    """What `sm pipeline upsert` defines. The parameters' defaults (data, instance types, max_jobs, min_accuracy,
    approval_status) may be overridden per execution; the rest is fixed in the definition. `hyperparameters`: the
    fixed ones, as SageMaker's strings (lr is tuned within `lr_range`)."""

    role: str
    image: str
    data: str
    output: str
    name: str = "bincounter"
    instance_type: str = "ml.g5.xlarge"
    processing_instance_type: str = "ml.m5.xlarge"
    max_jobs: int = 8
    max_parallel: int = 2
    min_accuracy: float = 0.5
    lr_range: tuple[float, float] = field(default_factory=lambda: hp_checks.lr_range(None))
    hyperparameters: dict[str, str] = field(default_factory=dict)
    model_package_group: str = "bincounter"
    approval_status: str = "PendingManualApproval"


def build(session, *, name: str, image: str, role: str, data: str, output: str, instance_type: str,
          processing_instance_type: str, max_jobs: int, max_parallel: int, min_accuracy: float,
          lr_range: tuple[float, float], hyperparameters: dict[str, str], model_package_group: str,
          approval_status: str = "PendingManualApproval", train_instances: int = 2, max_runtime_s: int = 6 * 3600):
    """The Pipeline object (nothing is sent): `session` is a plain SDK Session (sdk.sdk_session's)."""
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.serve import ModelBuilder

    sdk_compat.quiet_pipeline_sdk()
    output = output.rstrip("/")
    ps = PipelineSession(boto_session=session.boto_session, default_bucket=output[5:].split("/")[0])

    p_data = ParameterString(name="RawData", default_value=data)
    p_instance = ParameterString(name="InstanceType", default_value=instance_type)
    p_proc_instance = ParameterString(name="ProcessingInstanceType", default_value=processing_instance_type)
    p_max_jobs = ParameterInteger(name="MaxJobs", default_value=max_jobs)
    p_min_acc = ParameterFloat(name="MinAccuracy", default_value=min_accuracy)
    p_approval = ParameterString(name="ApprovalStatus", default_value=approval_status)

    def s3(*parts):  # per execution, resolved by the service at run time
        return Join(on="/", values=[output, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts])

    flow = Flow(ps, image=image, role=role, instance_type=p_instance, processing_instance_type=p_proc_instance,
                 uri=s3, max_runtime_s=max_runtime_s)
    prepare = flow.prepare_step(p_data)

    hps = {"progress": "false", **hyperparameters}
    tuner = sdk.tuner(flow.trainer(1, dict(hps), s3("tune"), "bincounter-hpo"), ranges={"lr": lr_range},
                      max_jobs=max_jobs, max_parallel=max_parallel, early_stopping=True, base_name="bincounter-hpo")
    tune_step = sdk_compat.tuning_step_class(p_max_jobs)
    tune = tune_step(name="Tune", step_args=tuner.tune(inputs=flow.channels("train", "val")))

    best_lr = tune.properties.BestTrainingJob.TunedHyperParameters["lr"]
    train = flow.train_step(train_instances, {**hps, "lr": best_lr})
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts
    evaluate, report = flow.evaluate_step(model_data)

    evaluation_json = Join(on="/", values=[
        evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, "evaluation.json"])
    builder = ModelBuilder(image_uri=image, s3_model_data_url=model_data, role_arn=role, sagemaker_session=ps,
                           dependencies=None)
    register = ModelStep(name="Register", step_args=builder.register(
        model_package_group_name=model_package_group, approval_status=p_approval,
        content_types=["image/jpeg", "image/png", "application/json"], response_types=["application/json"],
        inference_instances=["ml.c6i.xlarge", "ml.m6i.xlarge", "ml.g5.xlarge"],
        transform_instances=["ml.g5.xlarge", "ml.c6i.xlarge"],
        model_metrics=ModelMetrics(model_statistics=MetricsSource(content_type="application/json",
                                                                  s3_uri=evaluation_json))))
    check = flow.gate(evaluate, report, p_min_acc, [register], "not registered")
    return Pipeline(name=name, sagemaker_session=ps,
                    parameters=[p_data, p_instance, p_proc_instance, p_max_jobs, p_min_acc, p_approval],
                    steps=[prepare, tune, train, evaluate, check])


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
    check_parameter("MinAccuracy", str(spec.min_accuracy), "--min-accuracy")
    if not 1 <= spec.max_parallel <= spec.max_jobs:
        raise UserError(f"--max-jobs {spec.max_jobs} / --max-parallel {spec.max_parallel}: need 1 <= parallel <= jobs")
    for what, name in (("--name", spec.name), ("--model-package-group", spec.model_package_group)):
        if not NAME_RE.fullmatch(name):
            raise UserError(f"{what} {name!r}: SageMaker names are letters, digits and single hyphens, "
                            "up to 63 characters, starting with a letter or digit")
    if "lr" in spec.hyperparameters:
        raise UserError("--hp lr=...: the pipeline tunes lr (--lr-range); fix the other hyperparameters with --hp")
    if spec.hyperparameters:
        hp_checks.validate(spec.hyperparameters)
    return replace(spec, data=data)


def upsert(spec: PipelineSpec, target: AwsTarget) -> tuple[dict, str | None]:
    """Build the definition (checked first) and, unless a dry run, CreatePipeline or UpdatePipeline.
    -> (the definition, the pipeline ARN; None in a dry run)."""
    spec = check_spec(spec)
    region = target.resolved_region()
    role = target.role_arn(spec.role, region)
    definition, created = None, None
    with sdk.sdk_session(region, target.profile, target.endpoint_url, target.dry_run) as (session, captured):
        pipe = build(session, name=spec.name, image=spec.image, role=role, data=spec.data, output=spec.output,
                     instance_type=spec.instance_type, processing_instance_type=spec.processing_instance_type,
                     max_jobs=spec.max_jobs, max_parallel=spec.max_parallel, min_accuracy=spec.min_accuracy,
                     lr_range=spec.lr_range, hyperparameters=spec.hyperparameters,
                     model_package_group=spec.model_package_group, approval_status=spec.approval_status)
        definition = pipe.definition()
        if not target.dry_run:
            created = pipe.upsert(role_arn=role, description="bincounter: prepare, tune, train, evaluate, register")
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
    return {"PipelineName": name, "PipelineParameters": [{"Name": k, "Value": str(v)} for k, v in checked.items()]}


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
