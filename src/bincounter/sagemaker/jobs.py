"""The SageMaker jobs a user runs with the custom image: tune, train, deploy, predict, evaluate, batch,
delete. Each request is built by a pure function (exactly what is sent, what `--dry-run` prints and what
the tests assert), then sent with boto3 (`--endpoint-url` points it at a test server such as moto).

The trainer's contract appears here once: hyperparameters as SageMaker strings, the metric definitions
built from `metrics.metric_definitions()` (the same key list as the trainer's epoch line), channels
train/val/test, checkpoints in /opt/ml/checkpoints.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re

from ..errors import UserError
from ..metrics import metric_definitions

log = logging.getLogger("bincounter")
CHECKPOINT_LOCAL = "/opt/ml/checkpoints"
VARIANT = "AllTraffic"


def job_name(prefix: str, max_len: int = 63) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%y%m%d-%H%M%S")
    return f"{prefix[: max_len - len(stamp) - 1]}-{stamp}"


def hp_strings(hps: dict) -> dict[str, str]:
    """SageMaker hyperparameters are strings; booleans as true/false (what the container parses)."""
    out = {}
    for k, v in hps.items():
        if v is None:
            continue
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def _channels(channels: dict[str, str]) -> list[dict]:
    for name, uri in channels.items():
        if not uri.startswith("s3://"):
            raise UserError(f"channel {name}: {uri!r} is not an S3 URI (upload with `bincounter data upload`)")
    if "train" not in channels or "val" not in channels:
        raise UserError("a training job needs the 'train' and 'val' channels (--train s3://... --val s3://...)")
    return [{"ChannelName": n, "InputMode": "File", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": u, "S3DataDistributionType": "FullyReplicated"}}}
        for n, u in channels.items()]


def training_definition(*, image: str, role: str, channels: dict[str, str], output_path: str,
                        hyperparameters: dict, instance_type: str, instance_count: int = 1, spot: bool = False,
                        checkpoint_s3: str | None = None, max_runtime_s: int = 4 * 3600, volume_gb: int = 50) -> dict:
    """The part of CreateTrainingJob that a tuning job's TrainingJobDefinition shares."""
    if spot and not checkpoint_s3:
        raise UserError("spot training needs --checkpoint-s3 (a spot interruption resumes from it)")
    d = {
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File",
                                   "MetricDefinitions": metric_definitions()},
        "RoleArn": role,
        "InputDataConfig": _channels(channels),
        "OutputDataConfig": {"S3OutputPath": output_path},
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": instance_count, "VolumeSizeInGB": volume_gb},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
        "StaticHyperParameters": hp_strings(hyperparameters),
        "EnableManagedSpotTraining": spot,
    }
    if spot:
        d["StoppingCondition"]["MaxWaitTimeInSeconds"] = 2 * max_runtime_s
    if checkpoint_s3:
        d["CheckpointConfig"] = {"S3Uri": checkpoint_s3, "LocalPath": CHECKPOINT_LOCAL}
    return d


def training_request(name: str, definition: dict, profile: bool = True) -> dict:
    req = {k: v for k, v in definition.items() if k != "StaticHyperParameters"}
    req["TrainingJobName"] = name
    req["HyperParameters"] = definition["StaticHyperParameters"]
    req["AlgorithmSpecification"] = {**definition["AlgorithmSpecification"], "EnableSageMakerMetricsTimeSeries": True}
    if profile:  # SageMaker system monitoring (CPU/GPU/memory/IO per instance) next to the output
        req["ProfilerConfig"] = {"S3OutputPath": definition["OutputDataConfig"]["S3OutputPath"],
                                 "ProfilingIntervalInMilliseconds": 500}
    return req


def tuning_request(name: str, definition: dict, *, max_jobs: int = 12, max_parallel: int = 3,
                   lr=(1e-4, 3e-3), batch_sizes=(32, 64, 128), epochs=(5, 20), archs=(), image_sizes=(),
                   early_stopping: bool = True) -> dict:
    if len(name) > 32:
        raise UserError(f"tuning job name {name!r} is longer than SageMaker's 32 characters")
    if max_parallel > max_jobs:
        raise UserError("--max-parallel cannot exceed --max-jobs")
    categorical = [{"Name": "batch_size", "Values": [str(b) for b in batch_sizes]}]
    if archs:
        categorical.append({"Name": "arch", "Values": list(archs)})
    if image_sizes:
        categorical.append({"Name": "image_size", "Values": [str(s) for s in image_sizes]})
    tuned = {"lr", "batch_size", "epochs", *(["arch"] if archs else []), *(["image_size"] if image_sizes else [])}
    static = {k: v for k, v in definition["StaticHyperParameters"].items() if k not in tuned}
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "val_acc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": max_parallel},
            "ParameterRanges": {
                "ContinuousParameterRanges": [{"Name": "lr", "MinValue": str(lr[0]), "MaxValue": str(lr[1]),
                                               "ScalingType": "Logarithmic"}],
                "IntegerParameterRanges": [{"Name": "epochs", "MinValue": str(epochs[0]),
                                            "MaxValue": str(epochs[1]), "ScalingType": "Linear"}],
                "CategoricalParameterRanges": categorical,
            },
            "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off",
        },
        "TrainingJobDefinition": {**definition, "StaticHyperParameters": static},
    }


def best_hyperparameters(sm, tuning_job: str) -> dict[str, str]:
    """Static + tuned hyperparameters of the best training job of a tuning job."""
    desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    best = desc.get("BestTrainingJob")
    if not best:
        raise UserError(f"tuning job {tuning_job} has no best training job yet "
                        f"(status {desc.get('HyperParameterTuningJobStatus')})")
    static = desc.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
    tuned = {k: v.strip('"') for k, v in best.get("TunedHyperParameters", {}).items()}
    return {**{k: v for k, v in static.items() if not k.startswith(("_", "sagemaker_"))}, **tuned}


# ------------------------------------------------------------------------------------------- hosting
def model_request(name: str, image: str, model_data: str, role: str, workers: int | None = None) -> dict:
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)} if workers else {}
    return {"ModelName": name, "ExecutionRoleArn": role,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": model_data, "Environment": env}}


def endpoint_config_request(name: str, model_name: str, instance_type: str, instance_count: int = 1,
                            capture_s3: str | None = None, capture_percent: int = 100) -> dict:
    req = {"EndpointConfigName": name, "ProductionVariants": [{
        "VariantName": VARIANT, "ModelName": model_name, "InitialInstanceCount": instance_count,
        "InstanceType": instance_type}]}
    if capture_s3:
        req["DataCaptureConfig"] = {"EnableCapture": True, "InitialSamplingPercentage": capture_percent,
                                    "DestinationS3Uri": capture_s3,
                                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
    return req


def autoscaling_requests(endpoint: str, min_count: int, max_count: int, invocations_per_instance: int) -> tuple:
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    target = {"ServiceNamespace": "sagemaker", "ResourceId": resource,
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
              "MinCapacity": min_count, "MaxCapacity": max_count}
    policy = {"PolicyName": f"{endpoint}-invocations", "ServiceNamespace": "sagemaker", "ResourceId": resource,
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount", "PolicyType": "TargetTrackingScaling",
              "TargetTrackingScalingPolicyConfiguration": {
                  "TargetValue": float(invocations_per_instance),
                  "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                  "ScaleInCooldown": 300, "ScaleOutCooldown": 60}}
    return target, policy


def transform_request(name: str, model_name: str, input_s3: str, output_s3: str, instance_type: str,
                      instance_count: int = 1) -> dict:
    return {"TransformJobName": name, "ModelName": model_name, "MaxPayloadInMB": 6, "BatchStrategy": "SingleRecord",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_s3}},
                               "ContentType": "application/x-image", "SplitType": "None"},
            "TransformOutput": {"S3OutputPath": output_s3, "Accept": "application/json", "AssembleWith": "None"},
            "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count}}


def console_link(region: str, kind: str, name: str) -> str:
    path = {"training": "jobs", "tuning": "hyper-tuning-jobs", "endpoint": "endpoints", "transform": "transform-jobs",
            "model": "models"}[kind]
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{path}/{name}"


def parse_kv(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", p):
            raise UserError(f"--hp {p!r}: expected NAME=VALUE")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def print_request(api: str, request: dict) -> None:
    print(json.dumps({"api": api, "request": request}, indent=2, sort_keys=True))
