"""The drift check on a schedule, with a maintained AWS scheduler (not SageMaker Model Monitor, which AWS has closed
to new customers): an EventBridge Scheduler schedule whose universal target calls SageMaker CreateProcessingJob
with our image's `process monitor` (check.py inside the job). Each run judges the window that ends at the
schedule's time (<aws.scheduler.scheduled-time>) and names its job after the invocation
(<aws.scheduler.execution-id>, 16 letters and digits), uploads drift.json + drift.html under REPORT/ENDPOINT/<time>/,
and fails (exit 1, the drift line as the job's FailureReason) only when it finds drift (a window with too few
images succeeds, status insufficient_data): an EventBridge rule on "SageMaker Processing Job State Change" with
status Failed is the alarm. The scheduler's role needs sagemaker:CreateProcessingJob, sagemaker:AddTags (the job
carries Tags) and iam:PassRole on the job's role.

Both requests are checked offline with botocore: the CreateSchedule request as printed, and the
CreateProcessingJob request inside its Input with the context attributes filled with sample values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..sm import validate
from ..sm.pipeline_steps import ENTRYPOINT

PROCESSING_ARN = "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
EXECUTION_ID = "<aws.scheduler.execution-id>"
BASELINE_DIR = "/opt/ml/processing/baseline"
#: what the context attributes look like when the schedule fires (validation of the job inside the Input)
SAMPLE = {SCHEDULED_TIME: "2026-12-07T06:00:00Z", EXECUTION_ID: "d32c5kddcf5bb8c3"}


@dataclass(frozen=True)
class ScheduleSpec:
    endpoint: str
    expression: str  # rate(1 day), cron(0 6 * * ? *), ...
    image: str
    role: str  # the processing job's execution role (S3 read of capture + baseline, write of the report)
    scheduler_role: str  # what EventBridge Scheduler assumes: sagemaker:CreateProcessingJob + AddTags, iam:PassRole
    baseline_s3: str
    capture_s3: str
    report_s3: str
    since: str = "24h"  # the window before each scheduled time
    region: str = "us-east-1"
    instance_type: str = "ml.m5.large"
    max_runtime_s: int = 3600
    name: str | None = None
    timezone: str = "UTC"
    extra_args: tuple[str, ...] = ()  # --threshold, --min-samples, --variant ...
    platform: object = None  # sm.platform.PlatformSettings: tags, VPC, KMS on each run's job


def processing_job(spec: ScheduleSpec) -> dict:
    """The CreateProcessingJob request each run sends (context attributes left in)."""
    prefix = f"drift-{spec.endpoint}"[:63 - 17]
    job = {
        "ProcessingJobName": f"{prefix}-{EXECUTION_ID}",
        "RoleArn": spec.role,
        "AppSpecification": {
            "ImageUri": spec.image,
            "ContainerEntrypoint": [*ENTRYPOINT, "process", "monitor"],
            "ContainerArguments": ["--endpoint", spec.endpoint, "--capture-s3", spec.capture_s3,
                                   "--baseline", BASELINE_DIR, "--since", spec.since, "--until", SCHEDULED_TIME,
                                   "--region", spec.region,
                                   "--report-s3", spec.report_s3,
                                   *spec.extra_args],
        },
        "ProcessingInputs": [{"InputName": "baseline", "S3Input": {
            "S3Uri": spec.baseline_s3, "LocalPath": BASELINE_DIR, "S3DataType": "S3Prefix", "S3InputMode": "File"}}],
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": spec.instance_type,
                                                  "VolumeSizeInGB": 30}},
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_s},
        "Tags": [{"Key": "bincounter:drift-watch", "Value": spec.endpoint}],
    }
    if spec.platform is not None:
        from ..sm import platform

        platform.apply("CreateProcessingJob", job, spec.platform)
    return job


def schedule_request(spec: ScheduleSpec) -> dict:
    """The CreateSchedule request; its processing job checked by botocore with SAMPLE context values."""
    job = processing_job(spec)
    sample = json.dumps(job)
    for k, v in SAMPLE.items():
        sample = sample.replace(k, v)
    validate.check("CreateProcessingJob", json.loads(sample), "sagemaker")
    return {
        "Name": spec.name or f"bincounter-drift-{spec.endpoint}"[:64],
        "ScheduleExpression": spec.expression,
        "ScheduleExpressionTimezone": spec.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Description": f"bincounter drift watch of endpoint {spec.endpoint}: the {spec.since} before each run"[:512],
        "Target": {"Arn": PROCESSING_ARN, "RoleArn": spec.scheduler_role, "Input": json.dumps(job),
                   "RetryPolicy": {"MaximumRetryAttempts": 0}},
    }
