"""Small pure helpers for `bincounter sm`: names, hyperparameter strings, the best tuning job's
hyperparameters, the autoscaling requests (sent with boto3: the SDK v3 has no autoscaling helper), console
links. The jobs themselves go through the SageMaker SDK v3 (`sdk.py`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re

from ..errors import UserError

log = logging.getLogger("bincounter")
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


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


def describe_tuning_job(sm, tuning_job: str, region: str) -> dict:
    """DescribeHyperParameterTuningJob; a missing job is one line saying how to list the existing ones."""
    from .. import aws

    try:
        return aws.aws_call(f"tuning job {tuning_job}", sm.describe_hyper_parameter_tuning_job,
                            HyperParameterTuningJobName=tuning_job)
    except UserError as e:
        if aws.not_found(e):
            raise UserError(f"--from-tuning-job {tuning_job}: no such tuning job in {region} (list them: aws "
                            f"sagemaker list-hyper-parameter-tuning-jobs --region {region})") from None
        raise


def describe_training_job(sm, job: str, region: str) -> dict:
    """DescribeTrainingJob (SageMaker answers a missing one with ValidationException); one line when missing."""
    from .. import aws

    try:
        return aws.aws_call(f"training job {job}", sm.describe_training_job, TrainingJobName=job)
    except UserError as e:
        if aws.not_found(e):
            raise UserError(f"--training-job {job}: no such training job in {region} (list them: aws sagemaker "
                            f"list-training-jobs --region {region})") from None
        raise


def best_hyperparameters(sm, tuning_job: str, desc: dict | None = None) -> dict[str, str]:
    """Static + tuned hyperparameters of the best training job of a tuning job."""
    desc = desc or sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    best = desc.get("BestTrainingJob")
    if not best:
        raise UserError(f"tuning job {tuning_job} has no best training job yet "
                        f"(status {desc.get('HyperParameterTuningJobStatus')}; wait for a trial to complete)")
    static = desc.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
    tuned = {k: v.strip('"') for k, v in best.get("TunedHyperParameters", {}).items()}
    return {**{k: v for k, v in static.items() if not k.startswith(("_", "sagemaker_"))}, **tuned}


def trial_resources(desc: dict) -> tuple[str | None, int | None]:
    """(instance type, instance count) every trial of a tuning job ran on."""
    rc = desc.get("TrainingJobDefinition", {}).get("ResourceConfig", {})
    return rc.get("InstanceType"), rc.get("InstanceCount")


def processes(instance_type: str, instance_count: int) -> int | None:
    """Training processes of a job: one per GPU on every instance (one per instance without GPUs); None when
    the instance type is not in the price table."""
    from .cost import gpus

    g = gpus(instance_type)
    return None if g is None else instance_count * max(1, g)


# ------------------------------------------------------------------------------------------- hosting
def autoscaling_requests(endpoint: str, min_count: int, max_count: int, invocations_per_instance: int) -> tuple:
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    target = {"ServiceNamespace": "sagemaker", "ResourceId": resource,
              "ScalableDimension": SCALABLE_DIMENSION,
              "MinCapacity": min_count, "MaxCapacity": max_count}
    policy = {"PolicyName": f"{endpoint}-invocations", "ServiceNamespace": "sagemaker", "ResourceId": resource,
              "ScalableDimension": SCALABLE_DIMENSION, "PolicyType": "TargetTrackingScaling",
              "TargetTrackingScalingPolicyConfiguration": {
                  "TargetValue": float(invocations_per_instance),
                  "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                  "ScaleInCooldown": 300, "ScaleOutCooldown": 60}}
    return target, policy


def console_link(region: str, kind: str, name: str) -> str:
    path = {"training": "jobs", "tuning": "hyper-tuning-jobs", "endpoint": "endpoints", "transform": "transform-jobs",
            "model": "models"}[kind]
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{path}/{name}"


def parse_kv(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p or not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*=", p):  # a-b: hyperparameters says a_b
            raise UserError(f"--hp {p!r}: expected NAME=VALUE")
        k, v = p.split("=", 1)
        if k in out:
            raise UserError(f"--hp {p}: {k} is given twice (--hp {k}={out[k]} before); give it once")
        out[k] = v
    return out
