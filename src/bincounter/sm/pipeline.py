"""The whole flow as one SageMaker Pipeline (SDK v3, `sagemaker.mlops.workflow`), every step on our image:

    Prepare (processing: raw ABID -> EDA + train/val/test)  ->  Tune (lr, MaxJobs trials)
      ->  Train (2 instances, the tuned lr)  ->  Evaluate (processing: test channel -> evaluation.json)
      ->  CheckAccuracy: accuracy >= MinAccuracy ?  Register (model package group, evaluation as model metrics)
                                                   : AccuracyTooLow (fails with the measured accuracy)

Pipeline parameters (overridable per execution, `sm pipeline start --param K=V`): RawData, InstanceType,
ProcessingInstanceType, MaxJobs, MinAccuracy, ApprovalStatus. Every S3 location is under --output, per
execution id. SDK v3 limits met here, each worked around in this module only:
* the tuner takes MaxJobs as a Python int (its request shape types it so): the Tune step swaps the parameter
  into its request afterwards (`_TuningStep`);
* `ModelBuilder.register()` uploads "dependencies" by default (an S3 call even for a definition):
  `dependencies=None`;
* only the continuous lr comes from the tuning job into Train (`BestTrainingJob.TunedHyperParameters`):
  categorical values come back JSON-quoted ('"64"'), which a step property cannot unquote.

`sm pipeline local` runs the same Prepare, Train, Evaluate and gate steps (`_Flow`) on this machine with Docker
(the SDK's local pipeline executor), Tune replaced by fixed hyperparameters and Register by CreateModel
(pipeline_local).
"""

from __future__ import annotations

import logging
import re
import warnings

from . import jobs

PROC = "/opt/ml/processing"
# A processing step's ContainerEntrypoint replaces the image's ENTRYPOINT, so it names tini first: tini stays
# PID 1 (StopPipelineExecution's SIGTERM reaches the job, zombies are reaped). (ContainerArguments alone would keep
# the image's ENTRYPOINT, but the SDK's local executor requires an entrypoint.)
ENTRYPOINT = ["/usr/bin/tini", "--", "/opt/bincounter/container/entrypoint.sh"]
SPLITS = ("train", "val", "test")
STEPS = ("Prepare", "Tune", "Train", "Evaluate", "CheckAccuracy", "Register", "AccuracyTooLow")
ACCURACY_PATH = "multiclass_classification_metrics.accuracy.value"


def _tuning_step_class():
    from sagemaker.mlops.workflow.steps import TuningStep

    class _TuningStep(TuningStep):
        """A TuningStep whose MaxNumberOfTrainingJobs is the MaxJobs pipeline parameter."""

        max_jobs = None

        @property
        def arguments(self):
            request = super().arguments
            request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] = self.max_jobs
            return request

    return _TuningStep


class _Flow:
    """The steps the cloud pipeline (`build`) and the local one (pipeline_local) share, on a pipeline session
    `ps` (PipelineSession, or the SDK's LocalPipelineSession): Prepare, the channels it feeds, trainers, Evaluate
    and the accuracy gate. `uri(*parts)`: where an execution writes (a per-execution Join)."""

    def __init__(self, ps, *, image: str, role: str, instance_type, processing_instance_type, uri,
                 max_runtime_s: int):
        self.ps, self.image, self.role, self.uri = ps, image, role, uri
        self.instance_type, self.processing_instance_type = instance_type, processing_instance_type
        self.max_runtime_s = max_runtime_s
        self.prepare = None

    def processor(self, action: str):
        from sagemaker.core.processing import Processor

        return Processor(role=self.role, image_uri=self.image, instance_count=1,
                         instance_type=self.processing_instance_type, volume_size_in_gb=100,
                         entrypoint=[*ENTRYPOINT, "process", action],
                         base_job_name=f"bincounter-{action}", sagemaker_session=self.ps)

    @staticmethod
    def p_in(input_name, source, dest):
        from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

        return ProcessingInput(input_name=input_name, s3_input=ProcessingS3Input(
            s3_uri=source, local_path=dest, s3_data_type="S3Prefix", s3_input_mode="File",
            s3_data_distribution_type="FullyReplicated"))

    @staticmethod
    def p_out(output_name, local, dest):
        from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

        return ProcessingOutput(output_name=output_name, s3_output=ProcessingS3Output(
            s3_uri=dest, local_path=local, s3_upload_mode="EndOfJob"))

    def prepare_step(self, raw):
        from sagemaker.mlops.workflow.steps import ProcessingStep

        outputs = [self.p_out(s, f"{PROC}/output/channels/{s}", self.uri("prepare", s)) for s in SPLITS]
        outputs.append(self.p_out("eda", f"{PROC}/output/eda", self.uri("prepare", "eda")))
        self.prepare = ProcessingStep(name="Prepare", step_args=self.processor("prepare").run(
            inputs=[self.p_in("raw", raw, f"{PROC}/input/raw")], outputs=outputs))
        return self.prepare

    def split_uri(self, split):
        return self.prepare.properties.ProcessingOutputConfig.Outputs[split].S3Output.S3Uri

    def channels(self, *names):
        from sagemaker.train.configs import Channel, DataSource, S3DataSource

        return [Channel(channel_name=n, input_mode="File", data_source=DataSource(s3_data_source=S3DataSource(
            s3_data_type="S3Prefix", s3_uri=self.split_uri(n), s3_data_distribution_type="FullyReplicated")))
            for n in names]

    def trainer(self, count, hps, out, base):
        from . import sdk

        return sdk.model_trainer(self.ps, image=self.image, role=self.role, instance_type=self.instance_type,
                                 instance_count=count, hyperparameters=hps, output_path=out, spot=False,
                                 checkpoint_s3=None, max_runtime_s=self.max_runtime_s, base_name=base)

    def train_step(self, count, hps, pretrained: str | None = None):
        """`pretrained`: a URI (file:// locally) of a `bincounter weights fetch` folder, the job's pretrained
        channel."""
        from sagemaker.mlops.workflow.steps import TrainingStep
        from sagemaker.train.configs import Channel, DataSource, S3DataSource

        chans = self.channels("train", "val")
        if pretrained:
            chans.append(Channel(channel_name="pretrained", input_mode="File", data_source=DataSource(
                s3_data_source=S3DataSource(s3_data_type="S3Prefix", s3_uri=pretrained,
                                            s3_data_distribution_type="FullyReplicated"))))
        return TrainingStep(name="Train", step_args=self.trainer(count, hps, self.uri("train"), "bincounter").train(
            input_data_config=chans))

    def evaluate_step(self, model_data, arguments: list[str] | None = None):
        """-> (the Evaluate step, its EvaluationReport property file)."""
        from sagemaker.core.workflow.properties import PropertyFile
        from sagemaker.mlops.workflow.steps import ProcessingStep

        report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
        evaluate = ProcessingStep(name="Evaluate", property_files=[report], step_args=self.processor("evaluate").run(
            inputs=[self.p_in("model", model_data, f"{PROC}/model"),
                    self.p_in("test", self.split_uri("test"), f"{PROC}/test")],
            outputs=[self.p_out("evaluation", f"{PROC}/evaluation", self.uri("evaluate"))],
            arguments=arguments))
        return evaluate, report

    @staticmethod
    def gate(evaluate, report, min_accuracy, if_steps, not_done: str):
        """CheckAccuracy: accuracy >= min_accuracy ? if_steps : AccuracyTooLow (a Fail step saying `not_done`)."""
        from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
        from sagemaker.core.workflow.functions import Join, JsonGet
        from sagemaker.mlops.workflow.condition_step import ConditionStep
        from sagemaker.mlops.workflow.fail_step import FailStep

        accuracy = JsonGet(step_name=evaluate.name, property_file=report, json_path=ACCURACY_PATH)
        fail = FailStep(name="AccuracyTooLow", error_message=Join(on=" ", values=[
            "test accuracy", accuracy, "is below MinAccuracy", min_accuracy, f"- {not_done}"]))
        return ConditionStep(name="CheckAccuracy", conditions=[ConditionGreaterThanOrEqualTo(left=accuracy,
                                                                                             right=min_accuracy)],
                             if_steps=if_steps, else_steps=[fail])


def quiet_pipeline_sdk() -> None:
    """Silence the SDK's notes about what a pipeline session does by design."""
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")
    # "Popping out 'TrainingJobName' ...": every job name is set per execution by design; not the user's concern
    for noisy in ("sagemaker.core.workflow.utilities", "sagemaker.mlops.workflow.model_step"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


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

    from . import sdk

    quiet_pipeline_sdk()
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

    flow = _Flow(ps, image=image, role=role, instance_type=p_instance, processing_instance_type=p_proc_instance,
                 uri=s3, max_runtime_s=max_runtime_s)
    prepare = flow.prepare_step(p_data)

    hps = {"progress": "false", **hyperparameters}
    tuner = sdk.tuner(flow.trainer(1, dict(hps), s3("tune"), "bincounter-hpo"), ranges={"lr": lr_range},
                      max_jobs=max_jobs, max_parallel=max_parallel, early_stopping=True, base_name="bincounter-hpo")
    step_class = _tuning_step_class()
    step_class.max_jobs = p_max_jobs
    tune = step_class(name="Tune", step_args=tuner.tune(inputs=flow.channels("train", "val")))

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



# ---------------------------------------------------------------------------------------------------- CLI
def add_arguments(sub, formatter) -> None:
    """`bincounter sm pipeline upsert|start|status|local`."""
    from . import pipeline_local
    from .hyperparameters import DEFAULT_RANGES

    p = sub.add_parser("pipeline", help="the whole flow as one SageMaker Pipeline (prepare, tune, train, evaluate, "
                       "quality gate, Model Registry); `local` runs it here with Docker",
                       formatter_class=formatter, description=__doc__)
    psub = p.add_subparsers(dest="pipeline_cmd", required=True, metavar="ACTION")

    def aws_opts(q, dry=True):
        jobs.add_aws_options(q)
        if dry:
            q.add_argument("--dry-run", action="store_true", help="print the request(s), offline: no credentials")

    u = psub.add_parser("upsert", help="create or update the pipeline definition", formatter_class=formatter,
                        description="Builds the definition with the SDK v3 and sends CreatePipeline (or "
                        "UpdatePipeline). Nothing runs until `sm pipeline start`. --dry-run prints the definition "
                        "JSON (stdout) without any AWS call. The options give the parameters' defaults; each "
                        "execution may override them.")
    aws_opts(u)
    u.add_argument("--role", required=True, help="execution role (ARN or name) for the pipeline and its jobs")
    u.add_argument("--image", required=True, help="the bincounter image URI (./build_and_push.sh)")
    u.add_argument("--data", required=True, help="s3:// raw ABID (bin-images/ + metadata/): RawData's default")
    u.add_argument("--output", required=True, help="s3:// prefix for everything the executions write")
    u.add_argument("--name", default="bincounter", help="pipeline name")
    u.add_argument("--instance-type", default="ml.g5.xlarge", help="training instances (InstanceType)")
    u.add_argument("--processing-instance-type", default="ml.m5.xlarge", help="prepare/evaluate instances")
    u.add_argument("--max-jobs", type=int, default=8, help="tuning trials (MaxJobs)")
    u.add_argument("--max-parallel", type=int, default=2, help="tuning trials at once")
    u.add_argument("--min-accuracy", type=float, default=0.5, help="the quality gate: test accuracy (MinAccuracy)")
    u.add_argument("--lr-range", help=f"MIN,MAX for the tuned lr (default {DEFAULT_RANGES['lr']})")
    u.add_argument("--hp", action="append", metavar="NAME=VALUE", help="a fixed hyperparameter (repeatable)")
    u.add_argument("--model-package-group", default="bincounter", help="Model Registry group")
    u.add_argument("--approval-status", default="PendingManualApproval",
                   choices=["PendingManualApproval", "Approved"], help="of a registered version (ApprovalStatus)")
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

    pipeline_local.add_arguments(psub, formatter)


PARAMETERS = ("RawData", "InstanceType", "ProcessingInstanceType", "MaxJobs", "MinAccuracy", "ApprovalStatus")
NAME_RE = re.compile(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,62}")


def check_parameter(name: str, value: str, option: str | None = None) -> str:
    """A pipeline parameter's value, checked offline (for upsert's defaults and start's --param overrides): a
    bad one would otherwise fail only when an execution reaches the step using it, after paid steps."""
    from ..errors import UserError
    from .checks import check_instance_type, check_s3_uri  # the checks sm train/tune/deploy use

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
    if name == "ApprovalStatus" and value not in ("PendingManualApproval", "Approved"):
        raise UserError(f"{where}: PendingManualApproval or Approved")
    return value


def cmd_upsert(args) -> int:
    import json
    import sys

    from ..errors import UserError
    from . import hyperparameters, jobs, sdk
    from .checks import check_s3_uri
    from .target import AwsTarget

    check_s3_uri("--output", args.output)
    check_parameter("RawData", args.data, "--data")
    check_parameter("InstanceType", args.instance_type, "--instance-type")
    check_parameter("ProcessingInstanceType", args.processing_instance_type, "--processing-instance-type")
    check_parameter("MaxJobs", str(args.max_jobs), "--max-jobs")
    check_parameter("MinAccuracy", str(args.min_accuracy), "--min-accuracy")
    if not 1 <= args.max_parallel <= args.max_jobs:
        raise UserError(f"--max-jobs {args.max_jobs} / --max-parallel {args.max_parallel}: need 1 <= parallel <= jobs")
    for what, name in (("--name", args.name), ("--model-package-group", args.model_package_group)):
        if not NAME_RE.fullmatch(name):
            raise UserError(f"{what} {name!r}: SageMaker names are letters, digits and single hyphens, "
                            "up to 63 characters, starting with a letter or digit")
    args.data = args.data.rstrip("/") + "/"  # a prefix: s3://b/abid must not also take s3://b/abid-old/
    user = jobs.parse_kv(args.hp)
    if "lr" in user:
        raise UserError("--hp lr=...: the pipeline tunes lr (--lr-range); fix the other hyperparameters with --hp")
    if user:
        hyperparameters.validate(jobs.hp_strings(user))
    lr_range = hyperparameters.lr_range(args.lr_range)
    target = AwsTarget(args.region, args.profile, args.endpoint_url, args.dry_run)
    region = target.resolved_region()
    role = target.role_arn(args.role, region)
    definition, created = None, None
    with sdk.sdk_session(region, args.profile, args.endpoint_url, args.dry_run) as (session, captured):
        pipe = build(session, name=args.name, image=args.image, role=role, data=args.data, output=args.output,
                     instance_type=args.instance_type, processing_instance_type=args.processing_instance_type,
                     max_jobs=args.max_jobs, max_parallel=args.max_parallel, min_accuracy=args.min_accuracy,
                     lr_range=lr_range, hyperparameters=jobs.hp_strings(user),
                     model_package_group=args.model_package_group, approval_status=args.approval_status)
        definition = pipe.definition()
        if not args.dry_run:
            created = pipe.upsert(role_arn=role, description="bincounter: prepare, tune, train, evaluate, register")
    if definition is None:
        raise UserError(f"the SDK stopped before the definition was built (calls: {[c['api'] for c in captured]})")
    doc = json.loads(definition)
    print(f"pipeline {args.name}: steps {' -> '.join(step_names(doc))}; parameters "
          f"{', '.join(p['Name'] for p in doc['Parameters'])}", file=sys.stderr)
    if args.dry_run:
        print(json.dumps(doc, indent=2))
        return 0
    arn = (created or {}).get("PipelineArn")
    print(json.dumps({"upserted": "pipeline", "name": args.name, "arn": arn}))
    print(f"next:    bincounter sm pipeline start --name {args.name} [--param MinAccuracy=0.6]", file=sys.stderr)
    return 0


def cmd_start(args) -> int:
    import json
    import sys

    from .. import aws
    from ..errors import UserError
    from . import jobs

    params = {}
    for pair in args.param or []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE, e.g. MinAccuracy=0.6")
        if k not in PARAMETERS:
            raise UserError(f"--param {k}: not a parameter of the pipeline ({', '.join(PARAMETERS)})")
        params[k] = check_parameter(k, v)
    request = {"PipelineName": args.name,
               "PipelineParameters": [{"Name": k, "Value": str(v)} for k, v in params.items()]}
    if args.dry_run:
        jobs.print_request("StartPipelineExecution", request)
        return 0
    with aws.user_errors("StartPipelineExecution"):
        sm = aws.client("sagemaker", args.region, args.profile, args.endpoint_url)
        out = aws.aws_call("StartPipelineExecution", sm.start_pipeline_execution, **request)
    arn = out["PipelineExecutionArn"]
    print(json.dumps({"started": "pipeline execution", "name": args.name, "arn": arn}))
    print(f"follow:  bincounter sm pipeline status --name {args.name}", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    import json

    from .. import aws
    from ..errors import UserError

    with aws.user_errors("sm pipeline status"):
        sm = aws.client("sagemaker", args.region, args.profile, args.endpoint_url)
        arn = args.execution
        if not arn:
            runs = aws.aws_call("ListPipelineExecutions", sm.list_pipeline_executions, PipelineName=args.name,
                                SortBy="CreationTime", SortOrder="Descending", MaxResults=1)
            summaries = runs.get("PipelineExecutionSummaries", [])
            if not summaries:
                raise UserError(f"pipeline {args.name} has no executions yet (bincounter sm pipeline start)")
            arn = summaries[0]["PipelineExecutionArn"]
        ex = aws.aws_call("DescribePipelineExecution", sm.describe_pipeline_execution, PipelineExecutionArn=arn)
        steps, why = [], None
        try:
            steps = sm.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending")
            steps = steps.get("PipelineExecutionSteps", [])
        except Exception as e:  # noqa: BLE001 - shown, not fatal: the execution line is still useful
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        exit_messages = {}
        for st in steps:  # a processing step's own one-line reason (`process` writes it) is its ExitMessage
            job = (st.get("Metadata") or {}).get("ProcessingJob", {}).get("Arn")
            if st.get("StepStatus") == "Failed" and job:
                try:
                    desc = sm.describe_processing_job(ProcessingJobName=job.rsplit("/", 1)[-1])
                    exit_messages[st["StepName"]] = desc.get("ExitMessage")
                except Exception:  # noqa: BLE001 - the step's FailureReason is shown anyway
                    pass
    print(json.dumps({"execution": arn, "status": ex.get("PipelineExecutionStatus"),
                      "failure": ex.get("FailureReason")}))
    if why:
        print(f"steps: not available ({why})")
    for st in steps:
        line = f"{st.get('StepName', '?'):<16} {st.get('StepStatus', '?'):<12}"
        meta = st.get("Metadata") or {}
        if meta.get("RegisterModel", {}).get("Arn"):
            line += f" registered {meta['RegisterModel']['Arn']} (deploy once Approved: sm deploy --model-package)"
        if meta.get("Condition", {}).get("Outcome"):
            line += f" outcome {meta['Condition']['Outcome']}"
        if meta.get("Fail", {}).get("ErrorMessage"):
            line += f" {meta['Fail']['ErrorMessage']}"
        reason = exit_messages.get(st.get("StepName")) or st.get("FailureReason")
        if reason:
            line += f" {reason.strip()}"
        print(line)
    return 0
