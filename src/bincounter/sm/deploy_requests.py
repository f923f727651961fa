"""The three requests of a deploy (CreateModel, CreateEndpointConfig, CreateEndpoint) as the SDK's ModelBuilder sends
them for `sdk.deploy_endpoint`'s passthrough build (our image and a model.tar.gz), with the platform fields its
botocore hook adds (`platform.apply`). A `sm deploy --dry-run` prints these without importing the SDK, whose import
(`sagemaker.core`, `sagemaker.serve`: ~3.5 s of CPU) was most of the dry run; a real deploy still goes through
ModelBuilder.

Written for the ModelBuilder of `sdk_compat.WRITTEN_FOR`. tests/test_sm_jobs.py runs ModelBuilder under the dry-run
hook (`sdk.sdk_session`) for each kind of deploy and fails when its requests and these differ. SDK defaults files
(the admin config, the user's ~/.config/sagemaker/config.yaml, or a SAGEMAKER_*_CONFIG_OVERRIDE) can add fields
ModelBuilder would send (a VPC, isolation, a KMS key, tags): where one may (`sdk_defaults_file`), the dry run goes
through ModelBuilder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .platform import PlatformSettings, apply

VARIANT = "AllTraffic"  # ModelBuilder's one production variant
MODEL_SOURCE_TAG = "sagemaker.amazonaws.com/model-source"  # ModelBuilder tags the config and endpoint with it
_TAG_VALUE_MAX, _TAG_PREFIX, _TAG_HASH = 256, 224, 31  # the SDK's normalize_tag_value (sagemaker.serve.model_reuse)
_SDK_CONFIG_VARS = ("SAGEMAKER_ADMIN_CONFIG_OVERRIDE", "SAGEMAKER_USER_CONFIG_OVERRIDE")  # the SDK's names


def _tag_value(value: str) -> str:
    """A tag value of at most 256 characters, shortened as the SDK does: 224 characters, '-', 31 hex of SHA-256."""
    if len(value) <= _TAG_VALUE_MAX:
        return value
    return f"{value[:_TAG_PREFIX]}-{hashlib.sha256(value.encode()).hexdigest()[:_TAG_HASH]}"


def sdk_config_file(which: str) -> str | None:
    """The SDK defaults file `which` ("admin" or "user") the SDK reads, picked as it picks it
    (sagemaker.core.config): SAGEMAKER_ADMIN_/USER_CONFIG_OVERRIDE as set (a file, a directory's config.yaml, an S3
    URI), else platformdirs' site_config_dir / user_config_dir("sagemaker") + config.yaml (XDG_CONFIG_DIRS /
    XDG_CONFIG_HOME honoured) where that file exists; None where there is none."""
    from platformdirs import site_config_dir, user_config_dir

    given = os.environ.get(_SDK_CONFIG_VARS[which == "user"])
    if given:
        return str(Path(given) / "config.yaml") if Path(given).is_dir() else given
    default = Path((user_config_dir if which == "user" else site_config_dir)("sagemaker")) / "config.yaml"
    return str(default) if default.is_file() else None


def sdk_defaults_file() -> str | None:
    """The SDK defaults file whose settings ModelBuilder would add to a dry run's requests: the admin config or the
    user's (`sdk_config_file`; a dry run through the SDK keeps the user's settings, in a copy with telemetry off);
    None when there is none, or when all it sets is the SDK's own behaviour (SageMaker.PythonSDK: telemetry, ...),
    as the dry run's own copy does."""
    for which in ("admin", "user"):
        path = sdk_config_file(which)
        if path and _may_add_fields(path):
            return path
    return None


def _may_add_fields(path: str) -> bool:
    """False only for a YAML file that sets nothing but SageMaker.PythonSDK; a directory, an S3 URI or a file
    this cannot read are the SDK's to read (and to report)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return True
    sm = doc.get("SageMaker", {}) if isinstance(doc, dict) else None
    return not isinstance(sm, dict) or bool(set(sm) - {"PythonSDK"})


def requests(*, name: str, image: str, model_data: str, role: str, instance_type: str, instance_count: int,
             capture_s3: str | None, capture_percent: int = 100, serverless: tuple[int, int] | None = None,
             platform: PlatformSettings | None = None) -> list[dict]:
    """[{"api": ..., "request": ...}] for CreateModel, CreateEndpointConfig and CreateEndpoint, as ModelBuilder
    sends them for `sdk.deploy_endpoint` with the same arguments (JSON values: what botocore would serialise)."""
    source = [{"Key": MODEL_SOURCE_TAG, "Value": _tag_value(model_data)}] if model_data else []
    container = {"Image": image, "Environment": {}, **({"ModelDataUrl": model_data} if model_data else {})}
    model = {"ModelName": name, "PrimaryContainer": container, "ExecutionRoleArn": role}
    variant = {"VariantName": VARIANT, "ModelName": name, "InitialVariantWeight": 1}
    if serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": serverless[0], "MaxConcurrency": serverless[1]}
    else:
        variant.update(InstanceType=instance_type, InitialInstanceCount=instance_count)
    config = {"EndpointConfigName": name, "ProductionVariants": [variant]}
    if capture_s3:
        config["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": capture_percent, "DestinationS3Uri": capture_s3,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}}
    if source:
        config["Tags"] = list(source)
    endpoint = {"EndpointName": name, "EndpointConfigName": name, **({"Tags": list(source)} if source else {})}
    out = [{"api": "CreateModel", "request": model}, {"api": "CreateEndpointConfig", "request": config},
           {"api": "CreateEndpoint", "request": endpoint}]
    if platform is not None:
        for r in out:
            apply(r["api"], r["request"], platform)
    return out
