"""sm/sdk_compat: each SDK shim against the installed SDK. A test here fails when the SDK changes underneath its
shim: the private name it overrides or swaps is gone or has another signature, the log line or logger it filters
moved, or (where cheap to show) the SDK behaviour it works around is fixed, so the shim can go. After an SDK upgrade
the failures name the shims to delete or re-check (see each shim's "Delete when")."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import logging
import re
import warnings
from types import SimpleNamespace

import pytest
from packaging.version import Version

from bincounter.sm import sdk_compat

from .test_sm_jobs import ENV


@pytest.fixture(autouse=True)
def _offline_sdk(monkeypatch):
    """The SDK needs a region (and no network) when imported; restored after each test."""
    for k in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_EC2_METADATA_DISABLED", "SAGEMAKER_VALIDATE_ROLE"):
        monkeypatch.setenv(k, ENV.get(k, {"AWS_REGION": "us-east-1", "SAGEMAKER_VALIDATE_ROLE": "false"}.get(k, "x")))


def _source(module: str) -> str:
    return inspect.getsource(importlib.import_module(module))


def _overrides(cls, base) -> list[str]:
    """The methods and properties written in the body of `cls` (a shim; not what pydantic adds) that `base` (the
    SDK class it patches) defines too."""
    def written_here(v):
        f = v.fget if isinstance(v, property) else v
        return getattr(f, "__qualname__", "").startswith(f"{cls.__qualname__}.")

    return [n for n, v in vars(cls).items() if written_here(v)
            and any(n in vars(k) for k in base.__mro__ if k.__module__.startswith("sagemaker."))]


def _same_signature(cls, base, name):
    """`base` still has `name` (method or property), and an override's parameters are the ones `base` takes."""
    assert name in dir(base), f"{base.__qualname__}.{name} is gone: re-check the shim {cls.__qualname__}"
    ours, theirs = vars(cls)[name], getattr(base, name)
    if isinstance(ours, property):
        assert isinstance(inspect.getattr_static(base, name), property), f"{base.__qualname__}.{name}: no property"
        return
    params = inspect.signature(theirs).parameters
    for p in inspect.signature(ours).parameters.values():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            assert p.name in params, f"{base.__qualname__}.{name} takes no {p.name!r} any more"


# ----------------------------------------------------------------------------------------------------- range
@pytest.mark.parametrize("dist", sorted(sdk_compat.WRITTEN_FOR))
def test_the_installed_sdk_is_the_one_the_shims_were_written_for(dist):
    low, high = sdk_compat.WRITTEN_FOR[dist]
    got = Version(importlib.metadata.version(dist))
    assert Version(low) <= got < Version(high), (
        f"{dist} {got} is outside the range sdk_compat was written for ({low} <= v < {high}): run this file, delete "
        "the shims whose SDK gap is gone, re-check the rest, then move WRITTEN_FOR")


# ------------------------------------------------------------------------------------------------------ logs
def test_the_sdk_sets_its_own_log_levels_so_only_a_handler_filter_holds(caplog):
    """quiet_sdk_logs / dry_run_logs_quiet: the SDK sets levels on its own loggers at run time."""
    assert "sagemaker_config_logger.setLevel(logging.INFO)" in _source("sagemaker.core.config.config_utils")
    assert "logger.setLevel(self.log_level)" in _source("sagemaker.serve.model_builder")
    f = sdk_compat.OnlyOurs()
    rec = logging.LogRecord
    assert not f.filter(rec("sagemaker.core.utils.utils", logging.INFO, __file__, 1, "Model created", (), None))
    assert f.filter(rec("sagemaker.core.utils.utils", logging.WARNING, __file__, 1, "careful", (), None))
    assert f.filter(rec("bincounter", logging.INFO, __file__, 1, "ours", (), None))


def test_the_region_notice_is_still_the_sdk_utils_loggers_line():
    """quiet_region_notice: the notice's text and the logger that writes it."""
    utils = importlib.import_module("sagemaker.core.utils.utils")
    assert utils.logger.name == sdk_compat.SDK_UTILS_LOGGER
    assert f'logger.warning("{sdk_compat.REGION_NOTICE}")' in _source("sagemaker.core.utils.utils")


def test_the_pipeline_notes_are_still_where_quiet_pipeline_sdk_looks():
    """quiet_pipeline_sdk: the PipelineSession warning's text and the loggers of the "Popping out" notes."""
    assert sdk_compat.PIPELINE_SESSION_WARNING in _source("sagemaker.core.workflow.pipeline_context")
    for name in sdk_compat.PIPELINE_NOTE_LOGGERS:
        module = importlib.import_module(name)
        assert module.logger.name == name and "Popping out" in inspect.getsource(module), name


def test_model_builder_still_logs_model_created_on_the_utils_logger():
    """model_build_quiet: ModelBuilder's logger is sagemaker.core.utils.utils's, and it still says so."""
    builder = importlib.import_module("sagemaker.serve.model_builder")
    assert builder.logger.name == sdk_compat.SDK_UTILS_LOGGER
    assert "Model has been created" in inspect.getsource(builder)
    sdk_log = logging.getLogger(sdk_compat.SDK_UTILS_LOGGER)
    before = list(sdk_log.filters)
    with sdk_compat.model_build_quiet():
        assert not sdk_log.filters[-1].filter(logging.LogRecord(sdk_log.name, logging.INFO, "", 1, "x", (), None))
    assert sdk_log.filters == before


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("module", ["sagemaker.core.config.config", "sagemaker.core.config.config_manager",
                                    "sagemaker.core.utils.intelligent_defaults_helper"])
def test_the_sdk_still_calls_jsonschema_validate_through_the_module(module):
    """validate_config_once swaps jsonschema.validate: the SDK must look it up on the module when it validates
    (a `from jsonschema import validate` would keep the original), and it still validates its config there."""
    text = _source(module)
    assert "jsonschema.validate(sagemaker_config" in text
    assert not re.search(r"from jsonschema import .*\bvalidate\b", text)


def test_jsonschema_validate_still_checks_the_schema_on_every_call():
    """What validate_config_once saves: jsonschema.validate checks the schema against its meta-schema each time."""
    import jsonschema

    validate = getattr(jsonschema.validate, "__wrapped__", jsonschema.validate)
    if getattr(validate, "once", False):  # already swapped in this process: read the original's source
        validate = inspect.getclosurevars(validate).nonlocals["validate"]
    assert "check_schema(schema)" in inspect.getsource(validate)


# -------------------------------------------------------------------------------------------------- training
def test_model_trainer_still_lacks_a_profiler_and_builds_its_request_where_the_shim_adds_it():
    """profiled_trainer_class: ModelTrainer takes no profiler config, TrainingJob.create does, and the request
    goes through the private `_create_training_job_args(input_data_config, boto3)` that the shim overrides."""
    from sagemaker.core.resources import TrainingJob
    from sagemaker.train import ModelTrainer

    assert not [f for f in ModelTrainer.model_fields if "profiler" in f], "ModelTrainer takes a profiler now"
    assert {"profiler_config", "profiler_rule_configurations"} <= set(inspect.signature(TrainingJob.create).parameters)
    cls = sdk_compat.profiled_trainer_class()
    assert _overrides(cls, ModelTrainer) == ["_create_training_job_args"]
    _same_signature(cls, ModelTrainer, "_create_training_job_args")
    assert {"input_data_config", "boto3"} <= set(inspect.signature(ModelTrainer._create_training_job_args).parameters)
    assert "self._create_training_job_args(" in inspect.getsource(ModelTrainer.train)


def test_the_profiler_request_and_the_started_job_are_still_only_private():
    """profiler_config_request / latest_training_job: the SDK still builds ProfilerConfig's request dict only in
    `_to_request_dict` (and it is the CreateTrainingJob shape), and ModelTrainer.train still keeps the job it started
    only in `_latest_training_job` (it returns None)."""
    from sagemaker.core.debugger import ProfilerConfig
    from sagemaker.train import ModelTrainer

    req = sdk_compat.profiler_config_request(ProfilerConfig(s3_output_path="s3://b/p",
                                                            system_monitor_interval_millis=500))
    assert req["S3OutputPath"] == "s3://b/p" and req["ProfilingIntervalInMilliseconds"] == 500, req
    assert not [n for n in dir(ProfilerConfig) if not n.startswith("_") and "request" in n.lower()], \
        "ProfilerConfig has a public request builder now: use it"
    train_src = inspect.getsource(ModelTrainer.train)
    assert "self._latest_training_job = " in train_src and "return self._latest_training_job" not in train_src
    assert sdk_compat.latest_training_job(SimpleNamespace(_latest_training_job="job")) == "job"


def test_the_profiled_trainer_puts_the_profiler_in_both_request_shapes():
    from bincounter.sm import sdk

    prof = {"ProfilerConfig": {"S3OutputPath": "s3://b/o", "ProfilingIntervalInMilliseconds": 500},
            "ProfilerRuleConfigurations": [{"RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": "img",
                                            "RuleParameters": {"rule_to_invoke": "ProfilerReport"}}]}
    with sdk.sdk_session("us-east-1", None, None, True) as (session, _):
        trainer = sdk.model_trainer(session, image="img", role="arn:aws:iam::000000000000:role/r",
                                    instance_type="ml.m5.xlarge", instance_count=1, hyperparameters={},
                                    output_path="s3://b/o", spot=False, checkpoint_s3=None, max_runtime_s=60,
                                    base_name="t", profiler=prof)
        core = trainer._create_training_job_args(input_data_config=None)
        api = trainer._create_training_job_args(input_data_config=None, boto3=True)
    assert core["profiler_config"].profiling_interval_in_milliseconds == 500
    assert core["profiler_rule_configurations"][0].rule_evaluator_image == "img"
    assert api["ProfilerConfig"] == prof["ProfilerConfig"]
    assert api["ProfilerRuleConfigurations"] == prof["ProfilerRuleConfigurations"]


# ------------------------------------------------------------------------------------------------- pipelines
def test_a_tuners_resource_limits_still_refuse_a_pipeline_parameter():
    """tuning_step_class: ResourceLimits types MaxNumberOfTrainingJobs as an int (the gap), and TuningStep's
    `arguments` is the property the shim overrides (test_pipeline's definition checks the request it returns)."""
    from pydantic import ValidationError
    from sagemaker.core.shapes import ResourceLimits
    from sagemaker.core.workflow.parameters import ParameterInteger
    from sagemaker.mlops.workflow.steps import TuningStep

    with pytest.raises(ValidationError):
        ResourceLimits(max_number_of_training_jobs=ParameterInteger(name="MaxJobs", default_value=2),
                       max_parallel_training_jobs=1)
    cls = sdk_compat.tuning_step_class(None)
    assert _overrides(cls, TuningStep) == ["arguments"]
    _same_signature(cls, TuningStep, "arguments")


def test_model_builder_still_needs_a_real_client_to_build():
    """model_step_session: ModelBuilder decorates its client's `_user_agent_creator`, which the local client lacks."""
    from sagemaker.core.local.local_session import LocalSagemakerClient

    assert "sagemaker_client._user_agent_creator" in _source("sagemaker.serve.model_builder")
    assert not hasattr(LocalSagemakerClient, "_user_agent_creator")
    session = sdk_compat.model_step_session()
    assert session.sagemaker_client._user_agent_creator is not None


def test_the_local_step_session_still_cannot_run_a_pipeline():
    """pipeline_sessions: the step session (sagemaker.core) has no pipeline calls; the run session (mlops) has."""
    from sagemaker.core.workflow.pipeline_context import LocalPipelineSession as StepSession
    from sagemaker.mlops.local import LocalPipelineSession as RunSession

    assert not hasattr(StepSession, "create_pipeline") and not hasattr(StepSession, "start_pipeline_execution")
    assert hasattr(RunSession, "create_pipeline") and hasattr(RunSession, "start_pipeline_execution")


def test_the_local_pipeline_still_picks_its_executor_from_the_module_when_it_starts(tmp_path):
    """pipeline_sessions swaps sagemaker.mlops.local.pipeline.LocalPipelineExecutor while an execution starts:
    _LocalPipeline.start must import it from there at run time (and take no executor of its own); the swap ends
    with the call."""
    import sagemaker.mlops.local.pipeline as executor_module
    from botocore.exceptions import ClientError
    from sagemaker.mlops.local.pipeline_entities import _LocalPipeline

    start = inspect.getsource(_LocalPipeline.start)
    assert "from sagemaker.mlops.local.pipeline import LocalPipelineExecutor" in start
    assert "LocalPipelineExecutor(execution, self.local_session).execute()" in start
    sdk_executor = executor_module.LocalPipelineExecutor
    _, run = sdk_compat.pipeline_sessions(tmp_path)
    with pytest.raises(ClientError):
        run.start_pipeline_execution(PipelineName="no-such-pipeline")
    assert executor_module.LocalPipelineExecutor is sdk_executor


def test_a_local_execution_runs_on_the_file_json_get_executor(tmp_path, monkeypatch):
    """pipeline_sessions' run session starts an execution (a lone Fail step: no container) on our executor."""
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.pipeline import Pipeline

    ran = []
    monkeypatch.setattr(sdk_compat.file_json_get_executor(), "execute", lambda self: ran.append(type(self)) or "ran")
    steps, run = sdk_compat.pipeline_sessions(tmp_path)
    run.create_pipeline(Pipeline(name="p", steps=[FailStep(name="F")], sagemaker_session=steps), "one Fail step")
    assert run.start_pipeline_execution(PipelineName="p") == "ran"
    assert ran == [sdk_compat.file_json_get_executor()]


def _json_get_state(tmp_path, executor_cls):
    """An executor whose Evaluate step wrote evaluation.json to a file:// output, without running a pipeline."""
    from sagemaker.core.workflow.functions import JsonGet
    from sagemaker.core.workflow.properties import PropertyFile

    (tmp_path / "evaluation.json").write_text(json.dumps({"m": {"accuracy": 0.75}}))
    report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    failures = []

    class Failed(Exception):
        pass

    def update_step_failure(step, message):
        failures.append(message)
        raise Failed(message)

    outputs = {"ProcessingOutputConfig": {"Outputs": {"evaluation": {"S3Output": {"S3Uri": f"file://{tmp_path}"}}}}}
    executor = object.__new__(executor_cls)
    executor.execution = SimpleNamespace(
        step_execution={"Evaluate": SimpleNamespace(properties=outputs)}, update_step_failure=update_step_failure)
    executor.pipeline_dag = SimpleNamespace(step_map={"Evaluate": SimpleNamespace(property_files=[report])})
    executor.sagemaker_session = None
    return executor, JsonGet(step_name="Evaluate", property_file=report, json_path="m.accuracy"), failures, Failed


def test_the_sdk_executor_still_cannot_read_a_file_property_file_and_ours_can(tmp_path):
    """file_json_get_executor: the SDK's JsonGet on a file:// processing output fails (parse_s3_url is s3://
    only); the override of `_evaluate_json_get_function(pipeline_variable, step_name)` reads it from disk."""
    from sagemaker.mlops.local.pipeline import LocalPipelineExecutor

    executor, json_get, failures, failed = _json_get_state(tmp_path, LocalPipelineExecutor)
    with pytest.raises(failed):
        executor._evaluate_json_get_function(json_get, "CheckAccuracy")
    assert failures == ["Invalid json path 'm.accuracy'"], "the SDK reads file:// property files now"
    cls = sdk_compat.file_json_get_executor()
    _same_signature(cls, LocalPipelineExecutor, "_evaluate_json_get_function")
    executor, json_get, failures, _ = _json_get_state(tmp_path, cls)
    assert executor._evaluate_json_get_function(json_get, "CheckAccuracy") == 0.75 and failures == []


def test_quiet_pipeline_sdk_drops_the_pipeline_session_warning():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sdk_compat.quiet_pipeline_sdk()
        warnings.warn(f"{sdk_compat.PIPELINE_SESSION_WARNING}, there will be No Wait", UserWarning, stacklevel=1)
    assert seen == []


def test_the_role_check_still_lives_in_iam_role_resolver():
    """Not a shim, but an SDK module name sdk.py's error line relies on: a ResponseParserError raised from a frame
    in iam_role_resolver is the SDK's role check (SimulatePrincipalPolicy), answered with SAGEMAKER_VALIDATE_ROLE."""
    resolver = importlib.import_module("sagemaker.core.helper.iam_role_resolver")
    assert resolver.__file__.endswith("iam_role_resolver.py")
    assert "SAGEMAKER_VALIDATE_ROLE" in inspect.getsource(resolver)
