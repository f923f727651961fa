"""Training and tuning jobs through the SageMaker Python SDK v3 (`ModelTrainer`, `HyperparameterTuner`).

`--dry-run` runs the very same SDK code with a botocore hook that records the API request the SDK is about
to send and stops it there: what is printed is exactly what would be sent, and nothing reaches AWS.
`--endpoint-url` (tests: moto in server mode) is applied through botocore's AWS_ENDPOINT_URL_SAGEMAKER.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

from ..errors import UserError
from ..metrics import metric_definitions


class _Captured(Exception):
    pass


@contextmanager
def sdk_session(region: str, profile: str | None, endpoint_url: str | None, dry_run: bool):
    """Yields (sagemaker Session, captured requests). In a dry run every API call is recorded and
    stopped; the first one ends the SDK call (caught here)."""
    import boto3

    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL_SAGEMAKER"] = endpoint_url
    if dry_run:
        os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"  # the role check calls IAM
        if not (os.environ.get("AWS_ACCESS_KEY_ID") or profile):
            os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "dry-run"
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    captured: list[dict] = []
    boto_session = boto3.Session(region_name=region, profile_name=profile)
    if dry_run:
        def stop(model, params, **_):
            body = params.get("body") or b"{}"
            captured.append({"api": model.name, "request": json.loads(body)})
            raise _Captured(model.name)

        boto_session.events.register("before-call", stop)
    from sagemaker.core.helper.session_helper import Session

    try:
        yield Session(boto_session=boto_session), captured
    except _Captured:
        pass


def model_trainer(session, *, image: str, role: str, instance_type: str, instance_count: int, hyperparameters: dict,
                  output_path: str, spot: bool, checkpoint_s3: str | None, max_runtime_s: int, base_name: str,
                  volume_gb: int = 50):
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import CheckpointConfig, Compute, MetricDefinition, OutputDataConfig, StoppingCondition

    if spot and not checkpoint_s3:
        raise UserError("spot training needs --checkpoint-s3 (a spot interruption resumes from it)")
    trainer = ModelTrainer(
        sagemaker_session=session, training_image=image, role=role, base_job_name=base_name,
        compute=Compute(instance_type=instance_type, instance_count=instance_count, volume_size_in_gb=volume_gb,
                        enable_managed_spot_training=spot),
        hyperparameters=hyperparameters, output_data_config=OutputDataConfig(s3_output_path=output_path),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoint_s3, local_path="/opt/ml/checkpoints")
        if checkpoint_s3 else None,
        stopping_condition=StoppingCondition(max_runtime_in_seconds=max_runtime_s,
                                             max_wait_time_in_seconds=2 * max_runtime_s if spot else None))
    return trainer.with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"])
                                            for d in metric_definitions()])


def inputs(channels: dict[str, str]):
    from sagemaker.train.configs import InputData

    for name, uri in channels.items():
        if not uri.startswith("s3://"):
            raise UserError(f"channel {name}: {uri!r} is not an S3 URI (upload with `bincounter data upload`)")
    return [InputData(channel_name=n, data_source=u) for n, u in channels.items()]


def tuner(trainer, *, lr, batch_sizes, epochs, archs, image_sizes, max_jobs: int, max_parallel: int,
          early_stopping: bool, base_name: str):
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.train.tuner import HyperparameterTuner

    if len(base_name) > 32:
        raise UserError(f"tuning job name {base_name!r} is longer than SageMaker's 32 characters")
    if max_parallel > max_jobs:
        raise UserError("--max-parallel cannot exceed --max-jobs")
    ranges = {"lr": ContinuousParameter(lr[0], lr[1], scaling_type="Logarithmic"),
              "batch_size": CategoricalParameter([str(b) for b in batch_sizes]),
              "epochs": IntegerParameter(epochs[0], epochs[1], scaling_type="Linear")}
    if archs:
        ranges["arch"] = CategoricalParameter(list(archs))
    if image_sizes:
        ranges["image_size"] = CategoricalParameter([str(s) for s in image_sizes])
    return HyperparameterTuner(model_trainer=trainer, objective_metric_name="val_acc", hyperparameter_ranges=ranges,
                               metric_definitions=metric_definitions(), strategy="Bayesian", objective_type="Maximize",
                               max_jobs=max_jobs, max_parallel_jobs=max_parallel,
                               early_stopping_type="Auto" if early_stopping else "Off")
