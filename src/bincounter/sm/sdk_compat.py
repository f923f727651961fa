"""The SageMaker Python SDK v3's gaps, worked around in this one module: every override of an SDK class's private
method, every swap of an SDK (or jsonschema) attribute, every filter on the SDK's own log lines.

Written for (and each shim checked against) the versions in `WRITTEN_FOR`; tests/test_sdk_compat.py fails when the
installed SDK leaves that range, and, per shim, when the private name it relies on changes or the SDK behaviour it
works around is gone. After an SDK upgrade: run that file, delete the shims whose "delete when" has come, re-read
the rest, then move the range. Public SDK use (ModelTrainer, HyperparameterTuner, ModelBuilder, ...) is not here: it
stays where the job is built (sdk.py, pipeline.py, pipeline_local.py, local.py).

Shims, by where the SDK needs them:
* logs: `quiet_sdk_logs`, `dry_run_logs_quiet`, `quiet_region_notice`, `quiet_pipeline_sdk`, `model_build_quiet`;
* config: `validate_config_once` (jsonschema.validate);
* training: `profiled_trainer_class` (ModelTrainer._create_training_job_args), `profiler_config_request`
  (ProfilerConfig._to_request_dict), `latest_training_job` (ModelTrainer._latest_training_job);
* pipelines: `tuning_step_class` (TuningStep.arguments), `model_step_session` (ModelBuilder.build's client),
  `pipeline_sessions` + `FileJsonGetExecutor` (the local executor's JsonGet).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

#: distribution -> (lowest version, first version not checked): the range every shim below was written for
WRITTEN_FOR = {"sagemaker": ("3.27", "3.28"), "sagemaker-core": ("2.27", "2.28"),
               "sagemaker-train": ("1.27", "1.28"), "sagemaker-mlops": ("1.27", "1.28"),
               "sagemaker-serve": ("1.27", "1.28"), "jsonschema": ("4.0", "5.0")}

#: the logger of sagemaker.core.utils.utils, which ModelBuilder and the client helpers write to
SDK_UTILS_LOGGER = "sagemaker.core.utils.utils"


# ----------------------------------------------------------------------------------------------------- logs
class OnlyOurs(logging.Filter):
    """Passes bincounter's own lines and every warning; the SDK's INFO/DEBUG lines stay out."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or record.name.startswith("bincounter")


def quiet_sdk_logs() -> None:
    """For `sm` commands without -v: the SDK's INFO/DEBUG lines ("Not applying SDK defaults ...", "Creating
    model with name ...", the telemetry notice) leave the output; bincounter's lines and every warning stay.

    Works around: the SDK sets its own loggers' levels (and a rich handler) when imported
    (sagemaker.core.utils.utils.get_textual_rich_logger), so a level set on them beforehand does not hold: the
    filter sits on the root handlers. Delete when the SDK leaves its loggers' levels to the application."""
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, OnlyOurs) for f in h.filters):
            h.addFilter(OnlyOurs())


@contextmanager
def dry_run_logs_quiet():
    """In a dry run the SDK's INFO lines ("Model has been created", "Deployment started", ...) describe things
    that did not happen: only bincounter's own lines and warnings pass, for the length of the block.

    Works around: the same SDK logging as `quiet_sdk_logs`, for a run with -v too. Delete with it."""
    handlers = list(logging.getLogger().handlers)
    f = OnlyOurs()
    for h in handlers:
        h.addFilter(f)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(f)


REGION_NOTICE = "No region provided. Using default region."


class RegionNoticeWhenSet(logging.Filter):
    """The region notice passes only when no region is configured at all."""

    def filter(self, record):
        if record.getMessage() != REGION_NOTICE:
            return True
        import botocore.session

        return not botocore.session.get_session().get_config_variable("region")


def quiet_region_notice() -> None:
    """Install `RegionNoticeWhenSet` on the SDK logger that writes the notice (once).

    Works around: sagemaker.core.utils.utils warns "No region provided. Using default region." whenever a client
    is made without region_name, though the region does come from AWS_REGION / the profile. Delete when the SDK
    warns only when botocore finds no region either."""
    sdk_log = logging.getLogger(SDK_UTILS_LOGGER)
    if not any(isinstance(f, RegionNoticeWhenSet) for f in sdk_log.filters):
        sdk_log.addFilter(RegionNoticeWhenSet())


#: the SDK modules whose "Popping out '<JobName>' from the pipeline definition" warnings quiet_pipeline_sdk drops
PIPELINE_NOTE_LOGGERS = ("sagemaker.core.workflow.utilities", "sagemaker.mlops.workflow.model_step")
PIPELINE_SESSION_WARNING = "Running within a PipelineSession"


def quiet_pipeline_sdk() -> None:
    """Silence the SDK's notes about what a pipeline session does by design.

    Works around: sagemaker.core.workflow.pipeline_context.runnable_by_pipeline warns "Running within a
    PipelineSession, there will be No Wait, ..." for every step, and sagemaker.core.workflow.utilities /
    sagemaker.mlops.workflow.model_step log "Popping out 'TrainingJobName' ..." for every job name (set per
    execution by design; not the user's concern). Delete when those become debug lines."""
    warnings.filterwarnings("ignore", message=PIPELINE_SESSION_WARNING)
    for noisy in PIPELINE_NOTE_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)


class AtLeast(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno >= self.level


@contextmanager
def model_build_quiet():
    """Only warnings from the SDK's utils logger inside the block.

    Works around: ModelBuilder.build() (sagemaker.serve.model_builder) logs "Model has been created" on
    sagemaker.core.utils.utils's logger (and sets it to DEBUG), also under a PipelineSession, where it only records
    a CreateModel request. Delete when build() under a PipelineSession stops saying so."""
    sdk_log, only_warnings = logging.getLogger(SDK_UTILS_LOGGER), AtLeast(logging.WARNING)
    sdk_log.addFilter(only_warnings)
    try:
        yield
    finally:
        sdk_log.removeFilter(only_warnings)


# --------------------------------------------------------------------------------------------------- config
def validate_config_once() -> None:
    """Each (schema, config) pair that passed `jsonschema.validate` is not validated again in this process.

    Works around: the SDK validates its defaults config (our telemetry opt-out, ~/.config/sagemaker/config.yaml)
    with `jsonschema.validate` on every config lookup (sagemaker.core.config.config, .config_manager,
    sagemaker.core.utils.intelligent_defaults_helper), a dozen times per request, each time checking its large
    schema against the JSON Schema meta-schema first (~0.3 s of CPU each): most of a dry run's own time. The same
    config against the same schema passes (or fails) the same way every time. Delete when the SDK validates its
    config once per load."""
    import jsonschema

    validate = jsonschema.validate
    if getattr(validate, "once", False):
        return
    passed: set[tuple[int, str]] = set()  # (id(schema), the instance as canonical JSON) pairs that passed

    def once(instance, schema, *args, **kwargs):
        try:  # JSON text tells true from 1 and 1 from 1.0, which == does not
            key = (id(schema), json.dumps(instance, sort_keys=True))
        except (TypeError, ValueError):
            key = None
        if args or kwargs or key is None or key not in passed:
            validate(instance, schema, *args, **kwargs)
            if not (args or kwargs) and key is not None:
                passed.add(key)

    once.once = True
    jsonschema.validate = once


# ------------------------------------------------------------------------------------------------- training
@lru_cache(maxsize=1)
def profiled_trainer_class():
    """A ModelTrainer subclass with `with_profiler(settings)`: settings from `sdk.profiler_settings` go out in the
    same CreateTrainingJob call.

    Works around: ModelTrainer (sagemaker.train.model_trainer) has no argument for ProfilerConfig /
    ProfilerRuleConfigurations, although the TrainingJob.create it calls takes both: the subclass adds them to the
    request ModelTrainer builds (its private `_create_training_job_args(input_data_config, boto3)`). Delete when
    ModelTrainer takes a profiler config."""
    from pydantic import PrivateAttr
    from sagemaker.core.shapes import ProfilerConfig, ProfilerRuleConfiguration
    from sagemaker.train import ModelTrainer

    class ProfiledModelTrainer(ModelTrainer):
        _profiler: dict | None = PrivateAttr(default=None)

        def with_profiler(self, settings: dict | None):
            self._profiler = settings
            return self

        def _create_training_job_args(self, *args, **kwargs):
            request = super()._create_training_job_args(*args, **kwargs)
            if self._profiler and isinstance(request, dict):
                cfg, rules = self._profiler["ProfilerConfig"], self._profiler["ProfilerRuleConfigurations"]
                if "algorithm_specification" in request:  # snake_case keys and shapes, for TrainingJob.create
                    request["profiler_config"] = ProfilerConfig(
                        s3_output_path=cfg.get("S3OutputPath"), disable_profiler=cfg.get("DisableProfiler"),
                        profiling_interval_in_milliseconds=cfg.get("ProfilingIntervalInMilliseconds"))
                    request["profiler_rule_configurations"] = [ProfilerRuleConfiguration(
                        rule_configuration_name=r["RuleConfigurationName"],
                        rule_evaluator_image=r["RuleEvaluatorImage"], rule_parameters=r.get("RuleParameters"))
                        for r in rules]
                else:  # the serialized (API-shaped) request, boto3=True
                    request.update(self._profiler)
            return request

    return ProfiledModelTrainer


def profiler_config_request(config) -> dict:
    """A `ProfilerConfig` as its CreateTrainingJob request dict. The SDK v3 builds it only in the private
    `sagemaker.core.debugger.ProfilerConfig._to_request_dict` (ModelTrainer takes no profiler: see
    `profiled_trainer_class`). Delete when: ModelTrainer takes a ProfilerConfig itself."""
    return config._to_request_dict()


def latest_training_job(trainer):
    """The TrainingJob a `ModelTrainer.train(wait=False)` started: the SDK keeps it only in the private
    `ModelTrainer._latest_training_job` (train() returns None). Delete when: train() returns the job."""
    return trainer._latest_training_job


# ------------------------------------------------------------------------------------------------ pipelines
def tuning_step_class(max_jobs):
    """A TuningStep class whose MaxNumberOfTrainingJobs is `max_jobs` (a pipeline parameter).

    Works around: HyperparameterTuner's request shape (sagemaker.core.shapes.ResourceLimits) types
    max_number_of_training_jobs as an int, so the tuner cannot take a ParameterInteger: the step swaps the
    parameter into its request afterwards (sagemaker.mlops.workflow.steps.TuningStep.arguments). Delete when
    ResourceLimits accepts a pipeline variable."""
    from sagemaker.mlops.workflow.steps import TuningStep

    class ParameterizedTuningStep(TuningStep):
        @property
        def arguments(self):
            request = super().arguments
            request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] = max_jobs
            return request

    return ParameterizedTuningStep


def model_step_session():
    """A PipelineSession for ModelBuilder.build() in a local pipeline: records the CreateModel request, sends
    nothing.

    Works around: ModelBuilder.build() (sagemaker.serve.model_builder) decorates the session's SageMaker client's
    private `_user_agent_creator`, which the local session's client lacks, so a CreateModel step cannot be built
    under the local step session. Delete when build() works under sagemaker.core's LocalPipelineSession."""
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    return PipelineSession(boto_session=boto3.Session(region_name=os.environ.get("AWS_REGION", "us-east-1")),
                           default_bucket="bincounter-local-unused")


@lru_cache(maxsize=1)
def file_json_get_executor():
    """The SDK's local pipeline executor, reading a JsonGet's property file from disk when the processing output
    is a file:// URI.

    Works around: sagemaker.mlops.local.pipeline.LocalPipelineExecutor._evaluate_json_get_function parses the
    output URI with parse_s3_url (s3:// only) and reads it with S3 GetObject, so a local pipeline's condition on a
    file:// property file fails ("Invalid json path"). Delete when the local executor reads file:// outputs."""
    from urllib.parse import urlparse

    from sagemaker.core.local.utils import get_using_dot_notation
    from sagemaker.mlops.local.pipeline import LocalPipelineExecutor

    class FileJsonGetExecutor(LocalPipelineExecutor):
        def _property_file_path(self, json_get) -> Path | None:
            pf = json_get.property_file
            if not pf:
                return None
            if isinstance(pf, str):
                step = self.pipeline_dag.step_map[json_get.step_name]
                pf = next((f for f in step.property_files if f.name == pf), None)
                if pf is None:
                    return None
            try:
                uri = self.execution.step_execution.get(json_get.step_name).properties[
                    "ProcessingOutputConfig"]["Outputs"][pf.output_name]["S3Output"]["S3Uri"]
            except (KeyError, TypeError, AttributeError):
                return None
            parsed = urlparse(uri)
            return Path(parsed.netloc + parsed.path) / pf.path if parsed.scheme == "file" else None

        def _evaluate_json_get_function(self, pipeline_variable, step_name):
            path = self._property_file_path(pipeline_variable)
            if path is None:
                return super()._evaluate_json_get_function(pipeline_variable, step_name)
            try:
                doc = json.loads(path.read_text())
            except OSError as e:
                self.execution.update_step_failure(step_name, f"cannot read {path}: {e.strerror}")
            except ValueError:
                self.execution.update_step_failure(step_name, f"{path} is not valid JSON")
            try:
                return get_using_dot_notation(doc, pipeline_variable.json_path)
            except ValueError:
                self.execution.update_step_failure(step_name, f"{path} has no {pipeline_variable.json_path}")

    return FileJsonGetExecutor


@contextmanager
def _executor_swapped():
    """`FileJsonGetExecutor` as sagemaker.mlops.local.pipeline.LocalPipelineExecutor for the block: _LocalPipeline.start
    (sagemaker.mlops.local.pipeline_entities) imports the executor from that module when it runs and takes no
    executor argument."""
    import sagemaker.mlops.local.pipeline as executor_module

    sdk_executor = executor_module.LocalPipelineExecutor
    executor_module.LocalPipelineExecutor = file_json_get_executor()
    try:
        yield
    finally:
        executor_module.LocalPipelineExecutor = sdk_executor


def pipeline_sessions(container_root: Path):
    """(step session, run session) for a local pipeline: build the steps under the first, `create_pipeline` and
    `start_pipeline_execution` on the second (synchronous; returns the execution, run by `FileJsonGetExecutor`).
    Every job's docker-compose project lives under `container_root` (local.cleanup_docker).

    Works around: steps must be built under sagemaker.core.workflow.pipeline_context.LocalPipelineSession (its job
    calls return step arguments), but only sagemaker.mlops.local.LocalPipelineSession can run them
    (`Pipeline.create()` fails locally: the local client has no create_pipeline); and the executor swap of
    `file_json_get_executor`. Delete when one local session does both."""
    from sagemaker.core.workflow.pipeline_context import LocalPipelineSession as StepSession
    from sagemaker.mlops.local import LocalPipelineSession as RunSession

    class FileJsonGetRunSession(RunSession):
        def start_pipeline_execution(self, PipelineName, **kwargs):  # noqa: N803 - the API's casing
            with _executor_swapped():
                return super().start_pipeline_execution(PipelineName, **kwargs)

    config = {"local": {"container_root": str(container_root)}}
    steps, run = StepSession(), FileJsonGetRunSession()
    steps.config, run.config = dict(config), dict(config)
    return steps, run
