"""Jobs through the SageMaker Python SDK v3: training (`ModelTrainer`), tuning (`HyperparameterTuner`),
endpoints (`ModelBuilder`) and batch transform (`Transformer`).

`--dry-run` runs the very same SDK code with a botocore hook that records every API request the SDK is about
to send and answers it locally: a write (Create*) is recorded and answered with its ARN, a read (Describe*,
GetCallerIdentity) is answered from the writes recorded before it, so multi-call flows (ModelBuilder: model,
endpoint config, endpoint) run to the end. An API without a local answer ends the dry run there. What is
printed is exactly what would be sent, and nothing reaches AWS. A deploy's dry run prints ModelBuilder's requests
from `deploy_requests` instead, without importing the SDK (tested against ModelBuilder under this hook).
`--endpoint-url` (tests: moto in server mode) is applied through botocore's AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import tempfile
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path

from .. import aws
from ..errors import UserError
from . import sdk_compat
from .target import DRY_ACCOUNT  # the dry run names it in ARNs


class _Captured(Exception):
    pass


TELEMETRY_KEY = "TelemetryOptOut"
_OFFLINE_CONFIG = f"""SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      {TELEMETRY_KEY}: true
"""


def write_offline_config(workdir: Path) -> Path:
    """The SDK defaults file that opts out of telemetry (for SAGEMAKER_USER_CONFIG_OVERRIDE): a dry run and local
    mode make no network call, whatever the user's config says."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "sagemaker-config.yaml"
    cfg.write_text(_OFFLINE_CONFIG)
    return cfg


def opt_out_of_telemetry(stack: ExitStack, *, force: bool = False) -> None:
    """Opt out of the SDK's telemetry for this command, as local mode does (SAGEMAKER_USER_CONFIG_OVERRIDE ->
    a config with TelemetryOptOut: true), without overruling the user: a user config that sets TelemetryOptOut
    either way is used as it is; one that does not is copied with that one key added (its other settings kept);
    the user's file is never written. `force` (a dry run, which makes no network call): TelemetryOptOut: false is
    turned to true in the copy too. The variable is restored when `stack` closes."""
    import yaml

    from .deploy_requests import sdk_config_file

    given = os.environ.get("SAGEMAKER_USER_CONFIG_OVERRIDE")
    path = sdk_config_file("user")  # the one the SDK reads: the override, else ~/.config/sagemaker/config.yaml
    if given and not Path(path).is_file():
        return  # an S3 URI or a missing file: the SDK's to read (or report), as the user set it
    try:
        cfg = yaml.safe_load(Path(path).read_text()) if path else {}
    except (OSError, yaml.YAMLError):
        return  # the SDK reports its own config's problems
    cfg = cfg if isinstance(cfg, dict) else {}
    modules = cfg
    for key in ("SageMaker", "PythonSDK", "Modules"):
        modules = modules.setdefault(key, {}) if isinstance(modules, dict) else None
    if not isinstance(modules, dict):
        return  # not a mapping: the SDK's schema check reports it
    if modules.get(TELEMETRY_KEY) is True or (TELEMETRY_KEY in modules and not force):
        return  # opted out already, or the user's explicit choice
    modules[TELEMETRY_KEY] = True
    cfg.setdefault("SchemaVersion", "1.0")
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bincounter-sdk-config-")))
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(tmp / "config.yaml")
    stack.callback(lambda: os.environ.__setitem__("SAGEMAKER_USER_CONFIG_OVERRIDE", given) if given else
                   os.environ.pop("SAGEMAKER_USER_CONFIG_OVERRIDE", None))


def _unparsable_line(e: Exception) -> str | None:
    """botocore's ResponseParserError (an answer that is not the API's XML/JSON: an HTML error page from a
    proxy, or from an endpoint such as moto that lacks the API) -> one line naming the likely cause."""
    import traceback

    from botocore.parsers import ResponseParserError

    if not isinstance(e, ResponseParserError):
        return None
    text = " ".join(str(e).split())
    got = text[text.find("b'"):][:200] if "b'" in text else text[:200]
    if any("iam_role_resolver" in f.filename for f in traceback.extract_tb(e.__traceback__)):
        return ("the SageMaker SDK's role check (IAM SimulatePrincipalPolicy) got an answer it cannot parse, "
                "likely because the endpoint does not implement that API (moto does not): set "
                f"SAGEMAKER_VALIDATE_ROLE=false to skip the check (got {got})")
    return (f"SageMaker: an answer botocore cannot parse (an HTML error page or an endpoint without this API; "
            f"check --endpoint-url and the network): {got}")


def _sdk_error_line(e: Exception) -> str | None:
    """One line for the SDK's own input validation (pydantic) errors and unparsable answers; None for anything
    else."""
    if (line := _unparsable_line(e)) is not None:
        return line
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - the SDK depends on pydantic
        return None
    if isinstance(e, ValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return (f"the SageMaker SDK rejected {e.title} {where}: {first.get('msg', str(e))} "
                f"(got {str(first.get('input'))[:80]!r})")
    return None


def _dry_answer(api: str, request: dict, writes: list[dict], region: str) -> dict | None:
    """The response AWS would give a dry-run call, from the requests recorded before it; None: no answer."""
    def arn(kind, name):
        return f"arn:aws:sagemaker:{region}:{DRY_ACCOUNT}:{kind}/{name.lower()}"

    def last(api_name):
        return next((w["request"] for w in reversed(writes) if w["api"] == api_name), None)

    now = _dt.datetime.now(_dt.UTC)
    if api == "CreateModel":
        return {"ModelArn": arn("model", request["ModelName"])}
    if api == "CreateEndpointConfig":
        return {"EndpointConfigArn": arn("endpoint-config", request["EndpointConfigName"])}
    if api == "CreateEndpoint":
        return {"EndpointArn": arn("endpoint", request["EndpointName"])}
    if api == "DescribeModel" and (m := last("CreateModel")):
        keep = ("ModelName", "PrimaryContainer", "Containers", "ExecutionRoleArn", "VpcConfig")
        return {**{k: v for k, v in m.items() if k in keep}, "ModelArn": arn("model", m["ModelName"]),
                "CreationTime": now}
    if api == "DescribeEndpoint" and (e := last("CreateEndpoint")):
        return {"EndpointName": e["EndpointName"], "EndpointArn": arn("endpoint", e["EndpointName"]),
                "EndpointConfigName": e["EndpointConfigName"], "EndpointStatus": "Creating",
                "CreationTime": now, "LastModifiedTime": now}
    if api == "GetCallerIdentity":
        return {"UserId": "dry-run", "Account": DRY_ACCOUNT, "Arn": f"arn:aws:iam::{DRY_ACCOUNT}:user/dry-run"}
    return None


def _is_write(api: str) -> bool:
    return not api.startswith(("Describe", "Get", "List", "Filter", "Search"))


@contextmanager
def sdk_session(region: str, profile: str | None, endpoint_url: str | None, dry_run: bool, platform=None):
    """Yields (sagemaker Session, recorded writes). In a dry run every API call is answered locally
    (`_dry_answer`) or, where there is no local answer, stopped: that ends the SDK call (caught here).
    `platform` (a `platform.PlatformSettings`): its tags/VPC/KMS/isolation fields are added to every SageMaker
    request the SDK makes (`platform.hook`), before botocore validates and sends it (or the dry run records it)."""
    import boto3

    sdk_compat.quiet_region_notice()
    if endpoint_url:  # every client the SDK makes (sagemaker, sts, logs, s3) talks to it
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    os.environ.setdefault("AWS_DEFAULT_REGION", region)  # sagemaker.serve makes a client when imported
    with ExitStack() as stack:
        # the user's SDK defaults are kept (a dry run prints what they add); a dry run sends no telemetry either
        opt_out_of_telemetry(stack, force=dry_run)
        if dry_run:
            stack.enter_context(sdk_compat.dry_run_logs_quiet())
            os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"  # the role check calls IAM
            if not (os.environ.get("AWS_ACCESS_KEY_ID") or profile):
                os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "dry-run"
            os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        captured: list[dict] = []  # the writes, in order
        boto_session = boto3.Session(region_name=region, profile_name=profile)
        if platform is not None:
            from .platform import hook

            boto_session.events.register("before-parameter-build.sagemaker", hook(platform))
        if dry_run:
            from botocore.awsrequest import AWSResponse

            def answer(model, params, **_):
                try:
                    request = json.loads(params.get("body") or b"{}")
                except ValueError:  # a query-protocol API (STS): no JSON body to print
                    request = {}
                api = model.name
                if _is_write(api):
                    captured.append({"api": api, "request": request})
                response = _dry_answer(api, request, captured, region)
                if response is None:
                    raise _Captured(api)
                return AWSResponse(params.get("url", ""), 200, {}, None), response

            boto_session.events.register("before-call", answer)
        from sagemaker.core.helper.session_helper import Session

        sdk_compat.validate_config_once()
        # the SDK prints progress panels and notices to stdout; ours carries only results (JSON lines)
        stack.enter_context(redirect_stdout(sys.stderr))
        try:
            with aws.user_errors("SageMaker"):
                yield Session(boto_session=boto_session), captured
        except _Captured:
            pass
        except UserError:
            raise
        except Exception as e:
            line = _sdk_error_line(e)
            if line is None:
                raise
            raise UserError(line) from None


# ------------------------------------------------------------------------------------------- profiler
PROFILER_INTERVALS_MS = (100, 200, 500, 1000, 5000, 60000)  # the values CreateTrainingJob accepts
PROFILER_RULE = "ProfilerReport"


def profiler_settings(output_path: str, region: str, interval_ms: int = 500) -> dict:
    """SageMaker Debugger's system monitoring (every `interval_ms`, to `output_path`/<job>/profiler-output/) and
    its built-in ProfilerReport rule (a processing job SageMaker runs next to the training job; it writes
    profiler-report.html and profiler-reports/*.json under `output_path`/<job>/rule-output/). Both work for any
    container: they read the instance, not the training script. Built with the SDK's own debugger helpers and
    returned as the two CreateTrainingJob fields {"ProfilerConfig": ..., "ProfilerRuleConfigurations": [...]}."""
    from sagemaker.core.debugger import ProfilerConfig, ProfilerRule, get_rule_container_image_uri, rule_configs

    if interval_ms not in PROFILER_INTERVALS_MS:
        raise UserError(f"--profiler-interval-ms {interval_ms}: SageMaker accepts "
                        f"{', '.join(map(str, PROFILER_INTERVALS_MS))}")
    rule = ProfilerRule.sagemaker(rule_configs.ProfilerReport(), name=PROFILER_RULE)
    try:
        rule.image_uri = get_rule_container_image_uri(rule.name, region)
    except ValueError:
        raise UserError(f"SageMaker Debugger has no rule image in {region}; pass --no-profiler") from None
    config = ProfilerConfig(s3_output_path=output_path, system_monitor_interval_millis=interval_ms)
    return {"ProfilerConfig": sdk_compat.profiler_config_request(config),
            "ProfilerRuleConfigurations": [rule.to_profiler_rule_config_dict()]}


def model_trainer(session, *, image: str, role: str, instance_type: str, instance_count: int, hyperparameters: dict,
                  output_path: str, spot: bool, checkpoint_s3: str | None, max_runtime_s: int, base_name: str,
                  volume_gb: int = 50, input_mode: str = "File", spot_needs_checkpoint: bool = True,
                  profiler: dict | None = None):
    """`volume_gb`, `input_mode` (the job's default; each channel carries its own): from `channels.plan`.
    `profiler`: from `profiler_settings` (training jobs only: a tuning job's TrainingJobDefinition has no field
    for it)."""
    from sagemaker.train.configs import CheckpointConfig, Compute, MetricDefinition, OutputDataConfig, StoppingCondition

    from ..metrics import metric_definitions

    if spot and not checkpoint_s3 and spot_needs_checkpoint:
        raise UserError("spot training needs --checkpoint-s3 (a spot interruption resumes from it)")
    trainer = sdk_compat.profiled_trainer_class()(
        sagemaker_session=session, training_image=image, role=role, base_job_name=base_name,
        compute=Compute(instance_type=instance_type, instance_count=instance_count, volume_size_in_gb=volume_gb,
                        enable_managed_spot_training=spot),
        hyperparameters=hyperparameters, output_data_config=OutputDataConfig(s3_output_path=output_path),
        training_input_mode=input_mode,
        checkpoint_config=CheckpointConfig(s3_uri=checkpoint_s3, local_path="/opt/ml/checkpoints")
        if checkpoint_s3 else None,
        stopping_condition=StoppingCondition(max_runtime_in_seconds=max_runtime_s,
                                             max_wait_time_in_seconds=2 * max_runtime_s if spot else None))
    trainer.with_profiler(profiler)
    return trainer.with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"])
                                            for d in metric_definitions()])


def inputs(channels) -> list:
    """`channels`: from `channels.plan` (name, uri, mode). Each goes out with its own InputMode, S3Prefix and
    FullyReplicated (every instance sees the whole channel; the trainer splits samples per rank itself).
    Channel objects, not InputData: the SDK turns InputData into File mode for training and drops the mode
    for tuning."""
    from sagemaker.train.configs import Channel, DataSource, S3DataSource

    for c in channels:
        if not c.uri.startswith("s3://"):
            raise UserError(f"channel {c.name}: {c.uri!r} is not an S3 URI (upload with `bincounter data upload`)")
    return [Channel(channel_name=c.name, input_mode=c.mode, data_source=DataSource(s3_data_source=S3DataSource(
        s3_data_type="S3Prefix", s3_uri=c.uri, s3_data_distribution_type="FullyReplicated"))) for c in channels]


def tuner(trainer, *, ranges: dict, max_jobs: int, max_parallel: int, early_stopping: bool, base_name: str):
    """`ranges`: from `hyperparameters.tuning_ranges` (lr and epochs as (min, max), the rest as value lists).
    The trainer carries no CheckpointConfig: SageMaker gives every trial of a tuning job the definition's one
    checkpoint URI and restores what is there into each trial, so trials would resume from each other."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.train.tuner import HyperparameterTuner

    from ..metrics import OBJECTIVE, metric_definitions

    if len(base_name) > 32:
        raise UserError(f"tuning job name {base_name!r} is longer than SageMaker's 32 characters")
    if max_parallel > max_jobs:
        raise UserError("--max-parallel cannot exceed --max-jobs")
    if getattr(trainer, "checkpoint_config", None) is not None:
        raise ValueError("tuning trials must not share a checkpoint URI")
    sm_ranges = {}
    if "lr" in ranges:
        sm_ranges["lr"] = ContinuousParameter(*ranges["lr"], scaling_type="Logarithmic")
    if "batch_size" in ranges:
        sm_ranges["batch_size"] = CategoricalParameter([str(b) for b in ranges["batch_size"]])
    if "epochs" in ranges:
        sm_ranges["epochs"] = IntegerParameter(*ranges["epochs"], scaling_type="Linear")
    if ranges.get("arch"):
        sm_ranges["arch"] = CategoricalParameter(list(ranges["arch"]))
    if ranges.get("image_size"):
        sm_ranges["image_size"] = CategoricalParameter([str(s) for s in ranges["image_size"]])
    return HyperparameterTuner(model_trainer=trainer, objective_metric_name=OBJECTIVE,
                               hyperparameter_ranges=sm_ranges, metric_definitions=metric_definitions(),
                               strategy="Bayesian", objective_type="Maximize", max_jobs=max_jobs,
                               max_parallel_jobs=max_parallel, early_stopping_type="Auto" if early_stopping else "Off")


def deploy_endpoint(session, *, name: str, image: str, model_data: str, role: str, instance_type: str,
                    instance_count: int, capture_s3: str | None, capture_percent: int = 100, wait: bool = True,
                    serverless: tuple[int, int] | None = None):
    """Model + endpoint config + endpoint, all named `name`, through ModelBuilder (a passthrough build: our own
    image and a model.tar.gz). With wait, the SDK shows the deployment's progress and the endpoint's logs.
    `serverless` = (memory MB, max concurrency): a serverless endpoint (ServerlessConfig) instead of instances."""
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.mode.function_pointers import Mode

    builder = ModelBuilder(image_uri=image, s3_model_data_url=model_data, role_arn=role,
                           mode=Mode.SAGEMAKER_ENDPOINT, sagemaker_session=session, instance_type=instance_type)
    builder.build(model_name=name)
    extra = {}
    if capture_s3:
        from sagemaker.core.model_monitor.data_capture_config import DataCaptureConfig

        extra["data_capture_config"] = DataCaptureConfig(enable_capture=True, sampling_percentage=capture_percent,
                                                         destination_s3_uri=capture_s3, sagemaker_session=session)
    if serverless:
        from sagemaker.core.inference_config import ServerlessInferenceConfig

        extra["inference_config"] = ServerlessInferenceConfig(memory_size_in_mb=serverless[0],
                                                              max_concurrency=serverless[1])
        return builder.deploy(endpoint_name=name, wait=wait, **extra)
    return builder.deploy(endpoint_name=name, initial_instance_count=instance_count, instance_type=instance_type,
                          wait=wait, **extra)


def batch_transform(session, *, name: str, model: str, input_s3: str, output_s3: str, instance_type: str,
                    instance_count: int):
    """A batch transform job over every image under an S3 prefix: one JSON result per image. Returns the
    SDK's Transformer (its latest_transform_job is the job)."""
    from sagemaker.core.transformer import Transformer

    for what, uri in (("--input", input_s3), ("--output", output_s3)):
        if not uri.startswith("s3://"):
            raise UserError(f"{what} {uri!r} is not an s3:// URI")
    transformer = Transformer(model_name=model, instance_count=instance_count, instance_type=instance_type,
                              strategy="SingleRecord", assemble_with="None", output_path=output_s3,
                              accept="application/json", max_payload=6, sagemaker_session=session)
    transformer.transform(data=input_s3, data_type="S3Prefix", content_type="application/x-image", split_type="None",
                          job_name=name, wait=False, logs=False)
    return transformer
