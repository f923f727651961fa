"""`bincounter sm ...` requests. Training and tuning go through the SageMaker SDK v3: a dry run records the
request the SDK itself is about to send. The same commands sent to moto's SageMaker API (server mode) come
back from Describe* with the image, hyperparameter strings, ranges, instance count, checkpoint/output URIs
and spot settings we asked for. (moto lacks IAM SimulatePrincipalPolicy, so the SDK's client-side role
check is switched off with SAGEMAKER_VALIDATE_ROLE=false for the moto runs.)"""

from __future__ import annotations

import json
import os
import time

import boto3
import pytest
from botocore.stub import Stubber

from bincounter.errors import UserError
from bincounter.metrics import metric_definitions
from bincounter.sm import jobs

from .conftest import BIN, REPO, assert_one_line_error, run_cli

ROLE = "arn:aws:iam::123456789012:role/bincounter-sm"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bincounter:abc123"
TRAIN = ["--role", ROLE, "--image", IMAGE, "--train", "s3://bkt/ch/train/", "--val", "s3://bkt/ch/val/",
         "--test", "s3://bkt/ch/test/", "--output", "s3://bkt/out", "--instance-type", "ml.g5.2xlarge"]
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "SAGEMAKER_VALIDATE_ROLE": "false"}


PRICES = REPO / "src" / "bincounter" / "sm" / "prices.json"


def _s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def moto_endpoint(moto_endpoint):
    """conftest's moto server with TRAIN's per-image channels in it: a real run reads each channel (index.json,
    else a listing) before it sends the request."""
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="bkt")
    for split in ("train", "val", "test"):
        for count in (1, 2):
            s3.put_object(Bucket="bkt", Key=f"ch/{split}/{count}/bin-{count}.jpg", Body=b"\xff\xd8" + bytes(500))
    return moto_endpoint


def _sm(endpoint):
    return boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _dry(*args):
    # an endpoint nothing listens on: a dry run must not call it
    proc = run_cli("sm", *args, "--dry-run", "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_train_dry_run_is_the_exact_request():
    doc = _dry("train", *TRAIN, "--name", "bc-train-1", "--instance-count", "2", "--spot", "--checkpoint-s3",
               "s3://bkt/ckpt/bc-train-1", "--hp", "epochs=12", "--hp", "lr=0.0007", "--hp", "pretrained=false")
    assert doc["api"] == "CreateTrainingJob"
    r = doc["request"]
    assert r["TrainingJobName"].startswith("bc-train-1-")  # the SDK appends a timestamp
    assert r["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert r["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert r["HyperParameters"] == {"epochs": "12", "lr": "0.0007", "pretrained": "false", "progress": "false"}
    assert r["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert r["EnableManagedSpotTraining"] is True
    assert r["StoppingCondition"]["MaxWaitTimeInSeconds"] >= r["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert r["CheckpointConfig"] == {"S3Uri": "s3://bkt/ckpt/bc-train-1", "LocalPath": "/opt/ml/checkpoints"}
    assert [c["ChannelName"] for c in r["InputDataConfig"]] == ["train", "val", "test"]
    assert r["RoleArn"] == ROLE
    assert r["OutputDataConfig"]["S3OutputPath"] == "s3://bkt/out"
    assert r["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://bkt/ch/train/"


def test_tune_dry_run_ranges_and_objective():
    r = _dry("tune", *TRAIN, "--name", "bc-hpo", "--max-jobs", "8", "--max-parallel", "2",
             "--archs", "efficientnet_b0,efficientnet_b2", "--hp", "image_size=224")["request"]
    cfg = r["HyperParameterTuningJobConfig"]
    assert cfg["Strategy"] == "Bayesian" and cfg["TrainingJobEarlyStoppingType"] == "Auto"
    assert cfg["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "best_val_acc"}
    assert cfg["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2}
    ranges = cfg["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.003",
                                                    "ScalingType": "Logarithmic"}]
    assert {"Name": "arch", "Values": ["efficientnet_b0", "efficientnet_b2"]} in ranges["CategoricalParameterRanges"]
    d = r["TrainingJobDefinition"]
    assert {k: v for k, v in d["StaticHyperParameters"].items() if not k.startswith("_")} == \
        {"image_size": "224", "progress": "false"}
    assert d["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert "val_acc" in [m["Name"] for m in d["AlgorithmSpecification"]["MetricDefinitions"]]


def test_tune_with_a_fixed_lr_and_epochs_tunes_the_rest():
    """A default range yields to --hp: `--hp lr=0.01` fixes lr instead of contradicting the default --lr-range."""
    r = _dry("tune", *TRAIN, "--name", "bc-hpo-fixed", "--hp", "lr=0.01", "--hp", "epochs=3")["request"]
    ranges = r["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert not ranges.get("ContinuousParameterRanges") and not ranges.get("IntegerParameterRanges")
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch_size", "Values": ["32", "64", "128"]}]
    static = r["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static["lr"] == "0.01" and static["epochs"] == "3"


def _docs(stdout: str) -> list[dict]:
    return [json.loads(d) for d in stdout.replace("}\n{", "}\x00{").split("\x00")]


def test_deploy_dry_run_runs_modelbuilder_to_the_end():
    """ModelBuilder's three writes come out in order (built by `deploy_requests`, checked against ModelBuilder by
    test_a_deploy_dry_run_prints_what_modelbuilder_sends), then the autoscaling requests."""
    out = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/out/job/output/model.tar.gz",
                  "--image", IMAGE, "--name", "bc-ep", "--autoscale", "1,4", "--capture-s3", "s3://bkt/capture",
                  "--capture-percent", "25", "--instance-count", "2", "--dry-run",
                  "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert out.returncode == 0, out.stderr
    docs = _docs(out.stdout)
    assert [d["api"] for d in docs] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                        "RegisterScalableTarget", "PutScalingPolicy"]
    model, config, endpoint = (d["request"] for d in docs[:3])
    assert model["ModelName"] == "bc-ep" and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://bkt/out/job/output/model.tar.gz"
    assert config["EndpointConfigName"] == "bc-ep"
    assert [(v["ModelName"], v["InstanceType"], v["InitialInstanceCount"]) for v in config["ProductionVariants"]] \
        == [("bc-ep", "ml.g5.xlarge", 2)]
    capture = config["DataCaptureConfig"]
    assert (capture["DestinationS3Uri"], capture["InitialSamplingPercentage"], capture["EnableCapture"]) == \
        ("s3://bkt/capture", 25, True)
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    assert (endpoint["EndpointName"], endpoint["EndpointConfigName"]) == ("bc-ep", "bc-ep")
    assert docs[3]["request"]["MaxCapacity"] == 4
    assert docs[4]["request"]["ResourceId"] == "endpoint/bc-ep/variant/AllTraffic"


def test_batch_dry_run_is_the_sdk_transformer_request():
    out = run_cli("sm", "batch", "--model", "bc-ep", "--input", "s3://bkt/scans/2026-11-24/", "--output",
                  "s3://bkt/counts/", "--name", "bc-nightly", "--instance-count", "3", "--dry-run",
                  "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert out.returncode == 0, out.stderr
    [doc] = _docs(out.stdout)
    r = doc["request"]
    assert doc["api"] == "CreateTransformJob" and r["TransformJobName"] == "bc-nightly" and r["ModelName"] == "bc-ep"
    assert r["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                                 "S3Uri": "s3://bkt/scans/2026-11-24/"}
    assert r["TransformInput"]["ContentType"] == "application/x-image"
    assert r["TransformOutput"] == {"S3OutputPath": "s3://bkt/counts/", "Accept": "application/json",
                                    "AssembleWith": "None"}
    assert r["TransformResources"]["InstanceCount"] == 3 and r["BatchStrategy"] == "SingleRecord"


def test_requests_round_trip_through_the_sagemaker_api(moto_endpoint):
    sm = _sm(moto_endpoint)
    proc = run_cli("sm", "train", *TRAIN, "--name", "bc-moto-train", "--hp", "epochs=7",
                   "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)
    assert created["created"] == "training job" and "undo:" in proc.stderr and created["arn"]
    d = sm.describe_training_job(TrainingJobName=created["name"])
    assert d["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert d["HyperParameters"]["epochs"] == "7" and d["ResourceConfig"]["InstanceCount"] == 2
    assert d["OutputDataConfig"]["S3OutputPath"] == "s3://bkt/out"
    # (moto answers DescribeTrainingJob with canned MetricDefinitions; the dry-run test checks ours)

    proc = run_cli("sm", "tune", *TRAIN, "--name", "bc-moto-hpo", "--endpoint-url", moto_endpoint,
                   "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    t = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="bc-moto-hpo")
    assert t["HyperParameterTuningJobConfig"]["Strategy"] == "Bayesian"

    proc = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--image", IMAGE,
                   "--name", "bc-moto-ep", "--endpoint-url", moto_endpoint, "--autoscale", "1,3",
                   "--capture-s3", "s3://bkt/capture", "--instance-type", "ml.m5.xlarge",  # moto's older list
                   env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["created"] == "endpoint"
    ep = sm.describe_endpoint(EndpointName="bc-moto-ep")
    assert ep["EndpointConfigName"] == "bc-moto-ep" and ep["DataCaptureConfig"]["DestinationS3Uri"] == \
        "s3://bkt/capture"
    assert sm.describe_model(ModelName="bc-moto-ep")["PrimaryContainer"]["Image"] == IMAGE
    assert sm.describe_endpoint_config(EndpointConfigName="bc-moto-ep")["ProductionVariants"][0]["ModelName"] \
        == "bc-moto-ep"
    aas = boto3.client("application-autoscaling", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in target] == \
        [("endpoint/bc-moto-ep/variant/AllTraffic", 1, 3)]

    proc = run_cli("sm", "batch", "--model", "bc-moto-ep", "--input", "s3://bkt/scans/", "--output",
                   "s3://bkt/counts/", "--name", "bc-moto-batch", "--endpoint-url", moto_endpoint,
                   "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert sm.describe_transform_job(TransformJobName="bc-moto-batch")["ModelName"] == "bc-moto-ep"

    proc = run_cli("sm", "delete", "--endpoint", "bc-moto-ep", "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "nothing left billing" in proc.stderr and "autoscaling target" in proc.stderr
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    for call, kw in ((sm.describe_endpoint, {"EndpointName": "bc-moto-ep"}),
                     (sm.describe_endpoint_config, {"EndpointConfigName": "bc-moto-ep"}),
                     (sm.describe_model, {"ModelName": "bc-moto-ep"})):
        with pytest.raises(sm.exceptions.ClientError):
            call(**kw)


_KMS = "arn:aws:kms:us-east-1:123456789012:key/12345678-1234-1234-1234-123456789012"
_TAGGED = (("project", "bincounter"), ("team", "vision"))
#: the kinds of deploy whose requests a dry run builds without the SDK (sm/deploy_requests.py)
DEPLOYS = {
    "gpu-2-instances": dict(instance_type="ml.g5.xlarge", instance_count=2),
    "capture": dict(instance_type="ml.m5.xlarge", capture_s3="s3://bkt/capture", capture_percent=25),
    "serverless": dict(serverless=(3072, 10)),
    "long-prefix-model": dict(model_data="s3://bkt/" + "run/" * 70 + "model/"),  # the source tag's value shortened
    "platform": dict(instance_type="ml.m5.xlarge", capture_s3="s3://bkt/capture", platform=dict(
        tags=_TAGGED, subnets=("subnet-0123abcd",), security_groups=("sg-0123abcd",), kms_key=_KMS, isolation=True)),
    "platform-gpu": dict(platform=dict(tags=_TAGGED, kms_key=_KMS)),  # local NVMe: no volume key
    "platform-serverless": dict(serverless=(6144, 200), platform=dict(tags=_TAGGED, kms_key=_KMS)),
}


@pytest.mark.parametrize("kind", DEPLOYS)
def test_a_deploy_dry_run_prints_what_modelbuilder_sends(kind, monkeypatch, tmp_path):
    """The dry run's requests (deploy_requests, no SDK import) are the ones ModelBuilder sends for the same
    deploy, with the platform fields of the botocore hook: ModelBuilder runs here under the dry-run hook, which
    records its requests. Fails when an SDK upgrade changes what ModelBuilder sends."""
    from bincounter.sm import deploy_requests, sdk
    from bincounter.sm.platform import PlatformSettings

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED",
                "SAGEMAKER_VALIDATE_ROLE", "SAGEMAKER_USER_CONFIG_OVERRIDE", "SAGEMAKER_ADMIN_CONFIG_OVERRIDE"):
        monkeypatch.delenv(var, raising=False)  # what sdk_session sets is undone after the test
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no user SDK defaults (the dry run copies them)
    args = dict(name=f"bc-{kind}", image=IMAGE, model_data="s3://bkt/out/job/output/model.tar.gz", role=ROLE,
                instance_type="ml.g5.xlarge", instance_count=1, capture_s3=None, serverless=None)
    args.update(DEPLOYS[kind])
    platform = PlatformSettings(**args.pop("platform", {"tags": _TAGGED}))
    with sdk.sdk_session("us-east-1", None, None, True, platform) as (session, sent):
        sdk.deploy_endpoint(session, **args, wait=False)
        assert deploy_requests.sdk_defaults_file() is None  # the dry run's own SDK config adds no field
    ours = deploy_requests.requests(**args, platform=platform)
    assert [r["api"] for r in sent] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert json.dumps(ours, indent=1, sort_keys=True) == json.dumps(sent, indent=1, sort_keys=True)


_VPC = {"SecurityGroupIds": ["sg-0123abcd"], "Subnets": ["subnet-0123abcd"]}
_VPC_DEFAULTS = ("SchemaVersion: '1.0'\nSageMaker:\n  Model:\n    VpcConfig:\n"
                 "      SecurityGroupIds: ['sg-0123abcd']\n      Subnets: ['subnet-0123abcd']\n")


def test_sdk_defaults_send_a_deploy_dry_run_through_modelbuilder(tmp_path):
    """An SDK defaults file that sets request fields (here a VPC for models: in the admin config, or in the
    user's own ~/.config/sagemaker/config.yaml, which a real deploy reads too) is applied by ModelBuilder: the dry
    run then goes through it and shows them. One that only opts out of telemetry (like the dry run's own) changes
    no request: the dry run stays without the SDK."""
    from bincounter.sm.sdk import write_offline_config

    admin = tmp_path / "admin.yaml"
    admin.write_text(_VPC_DEFAULTS)
    users = {}
    for kind, text in (("vpc", _VPC_DEFAULTS), ("telemetry", write_offline_config(tmp_path / "t").read_text())):
        (tmp_path / kind / "sagemaker").mkdir(parents=True)
        users[kind] = tmp_path / kind / "sagemaker" / "config.yaml"
        users[kind].write_text(text)
    deploy = ("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--image", IMAGE, "--name", "bc",
              "--instance-type", "ml.m5.xlarge", "--dry-run", "--endpoint-url", "http://127.0.0.1:9")
    none = {"XDG_CONFIG_HOME": str(tmp_path / "none"), "XDG_CONFIG_DIRS": str(tmp_path / "none")}
    for env, through_sdk in (({**none, "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(admin)}, True),
                             ({**none, "SAGEMAKER_USER_CONFIG_OVERRIDE": str(users["telemetry"])}, False),
                             ({**none, "XDG_CONFIG_HOME": str(tmp_path / "vpc")}, True),
                             ({**none, "XDG_CONFIG_HOME": str(tmp_path / "telemetry")}, False)):
        proc = run_cli(*deploy, env={**ENV, **env})
        assert proc.returncode == 0, proc.stderr
        model = _docs(proc.stdout)[0]["request"]
        assert model.get("VpcConfig") == (_VPC if through_sdk else None), env
        assert ("dry run through the SDK's ModelBuilder" in proc.stderr) is through_sdk
    assert users["vpc"].read_text() == _VPC_DEFAULTS  # the user's file is read, never written


def test_a_dry_run_keeps_the_users_sdk_defaults_with_telemetry_off(tmp_path, monkeypatch):
    """The SDK config a dry run uses is a copy of the user's (their defaults kept, for ModelBuilder to add), with
    TelemetryOptOut: true even where they set it false: a dry run makes no network call. A real run keeps their
    choice."""
    from contextlib import ExitStack

    import yaml

    from bincounter.sm import sdk

    cfg = tmp_path / "sagemaker" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(_VPC_DEFAULTS + "  PythonSDK:\n    Modules:\n      TelemetryOptOut: false\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SAGEMAKER_USER_CONFIG_OVERRIDE", raising=False)
    for dry_run in (True, False):
        with ExitStack() as stack:
            sdk.opt_out_of_telemetry(stack, force=dry_run)
            used = os.environ.get("SAGEMAKER_USER_CONFIG_OVERRIDE")
            used = yaml.safe_load(open(used)) if used else None
        if dry_run:
            assert used["SageMaker"]["Model"]["VpcConfig"] == _VPC
            assert used["SageMaker"]["PythonSDK"]["Modules"] == {"TelemetryOptOut": True}
        else:
            assert used is None  # the user's file as it is
    assert "SAGEMAKER_USER_CONFIG_OVERRIDE" not in os.environ
    assert cfg.read_text().endswith("TelemetryOptOut: false\n")


def test_best_hyperparameters_of_a_tuning_job():
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:  # moto does not pick a best job; this is the real response shape
        stub.add_response("describe_hyper_parameter_tuning_job", {
            "HyperParameterTuningJobName": "hpo", "HyperParameterTuningJobArn": "arn:aws:sagemaker:x:1:hpo/hpo",
            "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {
                "MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1}},
            "HyperParameterTuningJobStatus": "Completed", "CreationTime": "2026-11-24T00:00:00Z",
            "TrainingJobStatusCounters": {}, "ObjectiveStatusCounters": {},
            "TrainingJobDefinition": {"StaticHyperParameters": {"image_size": "224", "_tuning_objective_metric":
                                                                "val_acc"},
                                      "AlgorithmSpecification": {"TrainingInputMode": "File"}, "RoleArn": ROLE,
                                      "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
                                      "StoppingCondition": {"MaxRuntimeInSeconds": 60}},
            "BestTrainingJob": {"TrainingJobName": "hpo-003", "TrainingJobArn": "arn:aws:sagemaker:x:1:training-job/h",
                                "CreationTime": "2026-11-24T00:00:00Z", "TrainingJobStatus": "Completed",
                                "TunedHyperParameters": {"lr": "0.00123", "batch_size": '"64"', "epochs": "11"}}},
            {"HyperParameterTuningJobName": "hpo"})
        best = jobs.best_hyperparameters(sm, "hpo")
    assert best == {"image_size": "224", "lr": "0.00123", "batch_size": "64", "epochs": "11"}


def test_deploy_serverless_with_the_cpu_image():
    """Issue 14: --cpu-image serves with the CPU image, --serverless makes a ServerlessConfig variant (no
    instance type or count)."""
    cpu = IMAGE.replace("bincounter:", "bincounter-cpu:")
    out = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--cpu-image", cpu,
                  "--serverless", "3072,10", "--name", "bc-sl", "--dry-run", "--endpoint-url", "http://127.0.0.1:9",
                  env=ENV)
    assert out.returncode == 0, out.stderr
    docs = _docs(out.stdout)
    assert [d["api"] for d in docs] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert docs[0]["request"]["PrimaryContainer"]["Image"] == cpu
    (variant,) = docs[1]["request"]["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 10}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert "serverless, 3072 MB" in out.stderr


@pytest.mark.parametrize("args, needle", [
    (["train", *TRAIN, "--spot"], "spot training needs --checkpoint-s3"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--serverless", "3000"],
     "memory must be 1024, 2048"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--serverless", "2048,500"],
     "max concurrency must be in 1..200"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--serverless", "2048",
      "--capture-s3", "s3://b/c"], "no data capture on serverless"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--serverless", "2048,10,5"],
     "expected MEMORY_MB[,MAX_CONCURRENCY]"),
    (["deploy", "--role", ROLE, "--model-data", "/tmp/m.tar.gz", "--image", IMAGE], "--model-data '/tmp/m.tar.gz': "
     "must be an s3:// URI"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--serverless", "big"],
     "expected MEMORY_MB[,MAX_CONCURRENCY]"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--serverless", "2048",
      "--autoscale", "1,2"], "leave out --autoscale"),
    (["train", *[a if a != "s3://bkt/ch/val/" else "/local/val" for a in TRAIN]], "not an S3 URI"),
    (["tune", *TRAIN, "--name", "x" * 40], "longer than SageMaker's 32 characters"),
    (["train", *TRAIN, "--hp", "oops"], "expected NAME=VALUE"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--autoscale", "3"],
     "expected MIN,MAX"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--capture-s3", "/tmp/c"],
     "--capture-s3 needs an s3:// URI"),
    (["batch", "--model", "m", "--input", "/data/scans", "--output", "s3://b/o/"], "is not an s3:// URI"),
    (["train", *[a if a != "s3://bkt/out" else "/tmp/out" for a in TRAIN]], "--output '/tmp/out': must be an s3://"),
    (["tune", *[a if a != "s3://bkt/out" else "out/" for a in TRAIN]], "--output 'out/': must be an s3://"),
    (["train", *TRAIN, "--checkpoint-s3", "/tmp/ckpt"], "--checkpoint-s3 '/tmp/ckpt': must be an s3://"),
    (["train", *[a if a != "ml.g5.2xlarge" else "g5.2xlarge" for a in TRAIN]],
     "--instance-type 'g5.2xlarge': SageMaker instance types start with 'ml.' (did you mean 'ml.g5.2xlarge'?)"),
    (["tune", *[a if a != "ml.g5.2xlarge" else "g5.2xlarge" for a in TRAIN]], "did you mean 'ml.g5.2xlarge'?"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--instance-type", "g5.xlarge"],
     "did you mean 'ml.g5.xlarge'?"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--cpu-image", IMAGE, "--instance-type",
      "c6ilarge"], "did you mean 'ml.c6ilarge'?"),
    (["batch", "--model", "m", "--input", "s3://b/in/", "--output", "s3://b/o/", "--instance-type", "m5.xlarge"],
     "did you mean 'ml.m5.xlarge'?"),
])
def test_bad_requests_are_one_line(args, needle):
    assert_one_line_error(run_cli("sm", *args, "--dry-run", env=ENV), needle)


@pytest.mark.slow
def test_deploy_waits_for_in_service_through_the_sdk(moto_endpoint):
    """The default deploy path: ModelBuilder.deploy(wait=True), the SDK polling the endpoint (and its logs)
    until InService. moto's endpoints are InService at once; the SDK polls every 30 s, hence slow."""
    proc = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m2.tar.gz", "--image", IMAGE,
                   "--name", "bc-moto-wait", "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge",
                   "-v", env=ENV, timeout=240)  # -v: the SDK's own log lines ("Deployment successful")
    assert proc.returncode == 0, proc.stderr[-3000:]
    created = json.loads(proc.stdout)  # stdout is our one JSON line; the SDK's progress panel goes to stderr
    assert created["name"] == "bc-moto-wait" and created["arn"].endswith(":endpoint/bc-moto-wait")
    assert "InService" in proc.stderr and "Deployment successful" in proc.stderr
    assert _sm(moto_endpoint).describe_endpoint(EndpointName="bc-moto-wait")["EndpointStatus"] == "InService"


# ------------------------------------------------------------------ mistakes refused before any request
NOWHERE = ["--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1"]  # a request would fail differently


def _main_error(capsys, monkeypatch, *argv) -> str:
    """Run the CLI in-process (fast: imports are shared); assert exit 2 with one error line; return it."""
    from bincounter.cli import main

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    rc = main(["sm", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bincounter: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


TUNE = ["tune", *TRAIN, *NOWHERE]


@pytest.mark.parametrize("args, needles", [
    (["train", *TRAIN, *NOWHERE, "--hp", "epocs=3"], ["--hp epocs=3: unknown hyperparameter", "did you mean 'epochs'",
                                                     "batch_size"]),
    (["train", *TRAIN, *NOWHERE, "--hp", "batch-size=64"], ["--hp batch-size=64: hyperparameter names are spelled "
                                                          "with '_'", "did you mean --hp batch_size=64?"]),
    ([*TUNE, "--hp", "image-size=224"], ["--hp image-size=224", "did you mean --hp image_size=224?"]),
    (["train", *TRAIN, *NOWHERE, "--hp", "epochs=three"], ["--hp epochs=three", "not an integer"]),
    (["train", *TRAIN, *NOWHERE, "--hp", "image_size=8"], ["--hp image_size=8", "image_size must be >= 32"]),
    (["train", *TRAIN, *NOWHERE, "--hp", "pretrained=maybe"], ["--hp pretrained=maybe", "true or false"]),
    (["train", *TRAIN, *NOWHERE, "--hp", "arch=efficientnet_b9"], ["not a timm model name", "efficientnet_b8"]),
    (["train", *TRAIN, *NOWHERE, "--hp", "model_dir=/x"], ["--hp model_dir=/x: unknown hyperparameter"]),
    ([*TUNE, "--hp", "epochs=three"], ["--hp epochs=three"]),
    ([*TUNE, "--lr-range", "3e-3,1e-4"], ["--lr-range '3e-3,1e-4'", "greater than MAX", "write 0.0001,0.003"]),
    ([*TUNE, "--epochs-range", "20,5"], ["--epochs-range '20,5'", "greater than MAX"]),
    ([*TUNE, "--lr-range", "0.001"], ["--lr-range '0.001'", "two values", "--hp lr=VALUE"]),
    ([*TUNE, "--epochs-range", "5,5"], ["MIN equals MAX", "--hp epochs=5"]),
    ([*TUNE, "--lr-range", "0,1e-3"], ["--lr-range 0.0", "lr must be a positive number"]),
    ([*TUNE, "--archs", "efficientnet_b0,efficientnet_b9"], ["--archs efficientnet_b9", "not a timm model name"]),
    ([*TUNE, "--image-sizes", "8,224"], ["--image-sizes 8", "image_size must be >= 32"]),
    ([*TUNE, "--batch-sizes", "32,0"], ["--batch-sizes 0", "must be >= 1"]),
    ([*TUNE, "--archs", "efficientnet_b0,"], ["--archs 'efficientnet_b0,': an empty item"]),
    ([*TUNE, "--image-sizes", ",224"], ["--image-sizes ',224': an empty item"]),
    ([*TUNE, "--batch-sizes", "32,,64"], ["--batch-sizes '32,,64': an empty item"]),
    ([*TUNE, "--lr-range", "1e-4,1e-3", "--hp", "lr=0.01"], ["--hp lr=0.01: lr is tuned by --lr-range"]),
    ([*TUNE, "--checkpoint-s3", "s3://bkt/ckpt"], ["same checkpoint URI", "trials would resume from one another"]),
    (["train", *[a if a != ROLE else "bad role!" for a in TRAIN], *NOWHERE], ["--role 'bad role!'"]),
    (["train", *[a if a != ROLE else "arn:aws:iam::123:role/x" for a in TRAIN], *NOWHERE], ["not an IAM role ARN"]),
    (["train", *TRAIN, *NOWHERE, "--instance-count", "0"], ["--instance-count 0"]),
], ids=["hp-name", "hp-dash", "tune-hp-dash", "hp-type", "hp-rule", "hp-bool", "hp-arch", "hp-reserved", "tune-hp",
        "lr-min-max", "epochs-min-max", "lr-single", "epochs-equal", "lr-zero", "archs", "image-sizes", "batch-sizes",
        "archs-empty-item", "image-sizes-empty-item", "batch-sizes-empty-item", "hp-tuned", "tune-checkpoint",
        "role-name", "role-arn", "instance-count"])
def test_mistakes_are_one_line_before_any_request(capsys, monkeypatch, args, needles):
    """Not even a dry run: the endpoint does not exist, so any request would end in 'cannot reach' instead."""
    line = _main_error(capsys, monkeypatch, *args)
    for n in needles:
        assert n in line, line


def test_hp_names_come_from_the_trainer_at_run_time(monkeypatch):
    """A TrainConfig field with a trainer flag is a valid --hp name without touching the sm side."""
    import argparse
    import dataclasses

    from bincounter import train_config
    from bincounter.sm import hyperparameters

    names = hyperparameters.names()
    assert {"epochs", "lr", "batch_size", "image_size", "arch", "pretrained", "progress"} <= set(names)
    assert not {"train", "val", "model_dir", "checkpoint_dir", "pretrained_path", "help"} & set(names)

    @dataclasses.dataclass
    class Wider(train_config.TrainConfig):
        mixup: float = 0.0

    original = train_config.add_train_arguments

    def with_mixup(p: argparse.ArgumentParser):
        original(p)
        p.add_argument("--mixup", type=float, default=0.0)

    monkeypatch.setattr(train_config, "TrainConfig", Wider)
    monkeypatch.setattr(train_config, "add_train_arguments", with_mixup)
    assert "mixup" in hyperparameters.names()
    hyperparameters.validate({"mixup": "0.2"})
    with pytest.raises(UserError, match="--hp mixup=lots"):
        hyperparameters.validate({"mixup": "lots"})


# ------------------------------------------------------------------ dry runs: offline, no credentials, cost
GUARD = '''
import os, socket
_log = os.environ["NET_GUARD_LOG"]
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def _record(what):
    with open(_log, "a") as f:
        f.write(what + "\\n")
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect {address!r}")
        raise OSError("network call")
    return _connect(self, address)
def getaddrinfo(host, *a, **kw):
    _record(f"getaddrinfo {host!r}")
    raise OSError("network call")
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
'''


@pytest.fixture()
def offline(tmp_path):
    """An environment with no AWS credentials, region or config, where every socket connect and name lookup is
    recorded (and fails): run_cli(..., env=offline) then offline['log'] lists the network calls."""
    import os

    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(tmp_path / "guard"), NET_GUARD_LOG=str(log),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    return {"env": env, "log": log}


def _run_offline(offline, *args):
    import subprocess

    proc = subprocess.run([str(BIN), "sm", *args], capture_output=True, text=True, timeout=300, env=offline["env"])
    calls = offline["log"].read_text() if offline["log"].exists() else ""
    return proc, calls


def test_the_offline_guard_catches_a_real_call(offline):
    proc, calls = _run_offline(offline, "delete", "--endpoint", "x", "--region", "us-east-1")
    assert proc.returncode == 2 and calls, (proc.stderr, calls)


@pytest.mark.parametrize("args, api, cost_line", [
    (["tune", *TRAIN[:-2], "--role", "SageMakerRole", "--spot"], "CreateHyperParameterTuningJob",
     "estimated cost: up to $67.58 (12 jobs x 1 ml.g5.xlarge x 4 h x $1.408/h; spot: 30-70% less, about "
     "$20.28-$47.31; us-east-1 prices of "),
    (["train", *TRAIN, "--from-tuning-job", "bc-hpo-1", "--hp", "epochs=3", "--price-per-hour", "2"],
     "CreateTrainingJob", "estimated cost: up to $16.00 (2 ml.g5.2xlarge x 4 h x $2.000/h from --price-per-hour)"),
    (["deploy", "--role", "bincounter-sm", "--training-job", "bc-train-1", "--name", "bc-ep", "--autoscale", "1,4"],
     "CreateEndpoint", "estimated cost: $1.41/h while the endpoint exists (until sm delete) (1 ml.g5.xlarge x "
     "$1.408/h; $1,013.76 per 30 days; up to $5.63/h at 4 instances; us-east-1 prices of "),
    (["batch", "--model", "m", "--input", "s3://bkt/in/", "--output", "s3://bkt/out/", "--instance-count", "2",
      "--instance-type", "ml.m5.xlarge"], "CreateTransformJob",
     "estimated cost: $0.46/h while the job runs (2 ml.m5.xlarge x $0.230/h; us-east-1 prices of "),
])
def test_dry_runs_are_offline_need_no_credentials_and_show_the_cost(offline, args, api, cost_line):
    proc, calls = _run_offline(offline, *args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert calls == "", calls
    assert [d["api"] for d in _docs(proc.stdout)].count(api) == 1
    costs = [ln for ln in proc.stderr.splitlines() if ln.startswith("estimated cost:")]
    assert len(costs) == 1 and costs[0].startswith(cost_line), proc.stderr
    assert "Model has been created" not in proc.stderr and "Deployment started" not in proc.stderr


def test_from_tuning_job_dry_run_says_what_is_a_placeholder():
    """A dry run reads neither the best hyperparameters nor the trials' instances: stderr says both, and that the
    instances shown are the defaults; given instances are not called defaults."""
    proc = run_cli("sm", "train", *TRAIN[:-2], "--from-tuning-job", "bc-hpo-7", "--dry-run",
                   "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["request"]
    assert r["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge" and r["ResourceConfig"]["InstanceCount"] == 2
    assert r["HyperParameters"]["lr"] == "<best lr of bc-hpo-7>"
    [line] = [ln for ln in proc.stderr.splitlines() if "tuning job bc-hpo-7 is not read" in ln]
    assert "best lr, batch_size, epochs are placeholders" in line
    assert "show the default instance type ml.g5.xlarge and count 2, not the trials'" in line
    proc = run_cli("sm", "train", *TRAIN, "--instance-count", "1", "--from-tuning-job", "bc-hpo-7", "--dry-run",
                   "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if "tuning job bc-hpo-7 is not read" in ln]
    assert "placeholders" in line and "default instance" not in line


def test_dry_run_placeholders_stand_where_aws_would_answer(offline):
    proc, calls = _run_offline(offline, "train", *TRAIN[:2], "--role", "SageMakerRole", *TRAIN[2:],
                               "--from-tuning-job", "bc-hpo-1", "--hp", "epochs=3", "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    r = json.loads(proc.stdout)["request"]
    assert r["RoleArn"] == "arn:aws:iam::000000000000:role/SageMakerRole"
    assert r["HyperParameters"] == {"epochs": "3", "lr": "<best lr of bc-hpo-1>", "progress": "false",
                                    "batch_size": "<best batch_size of bc-hpo-1>"}
    assert "placeholder" in proc.stderr
    proc, calls = _run_offline(offline, "predict", "--endpoint", "ep", "s3://bkt/scans/a.jpg", "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    assert json.loads(proc.stdout) == {"api": "InvokeEndpoint", "endpoint": "ep", "images": 1,
                                       "s3_images_not_read": 1}


def test_tuning_trials_share_no_checkpoint():
    r = _dry("tune", *TRAIN, "--name", "bc-hpo-spot", "--spot")["request"]
    d = r["TrainingJobDefinition"]
    assert "CheckpointConfig" not in d and d["EnableManagedSpotTraining"] is True
    assert d["ResourceConfig"]["InstanceCount"] == 1


def test_one_rule_for_instances_and_lr(caplog):
    """A job from a tuning job runs on the trials' resources; told otherwise, it says the global batch grows
    while batch_size and lr stay as tuned."""
    from bincounter.sm.training import instances_for_training

    assert instances_for_training(None, None, "ml.g5.2xlarge", 1) == ("ml.g5.2xlarge", 1)
    assert instances_for_training(None, None, None, None) == ("ml.g5.xlarge", 2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert instances_for_training(None, 2, "ml.g5.xlarge", 1) == ("ml.g5.xlarge", 2)
    assert "1 process(es), this job with 2" in caplog.text and "2x the trials'" in caplog.text
    caplog.clear()
    assert instances_for_training("ml.g5.12xlarge", 1, "ml.g5.xlarge", 1) == ("ml.g5.12xlarge", 1)
    assert "with 4: " in caplog.text


# ------------------------------------------------------------------ against moto: real requests, real errors
def test_role_name_tuning_job_and_credentials_errors(moto_endpoint):
    sm = _sm(moto_endpoint)
    role_at = TRAIN.index(ROLE)
    by_name = [*TRAIN[:role_at], "bincounter-sm", *TRAIN[role_at + 1:]]
    proc = run_cli("sm", "train", *by_name, "--name", "bc-moto-role", "--endpoint-url", moto_endpoint,
                   "--instance-type", "ml.m5.xlarge", "--instance-count", "1", env=ENV)
    assert proc.returncode == 0, proc.stderr
    costs = [ln for ln in proc.stderr.splitlines() if ln.startswith("estimated cost:")]
    assert costs == ["estimated cost: up to $0.92 (1 ml.m5.xlarge x 4 h x $0.230/h; us-east-1 prices of "
                     f"{json.loads(PRICES.read_text())['as_of']})"]
    name = json.loads(proc.stdout)["name"]
    assert sm.describe_training_job(TrainingJobName=name)["RoleArn"] == "arn:aws:iam::123456789012:role/bincounter-sm"

    proc = run_cli("sm", "train", *TRAIN, "--from-tuning-job", "nope", "--endpoint-url", moto_endpoint, env=ENV)
    assert_one_line_error(proc, "--from-tuning-job nope: no such tuning job in us-east-1",
                          "list-hyper-parameter-tuning-jobs")
    proc = run_cli("sm", "deploy", "--role", ROLE, "--training-job", "nope", "--endpoint-url", moto_endpoint, env=ENV)
    assert_one_line_error(proc, "--training-job nope: no such training job in us-east-1", "list-training-jobs")
    no_creds = {**ENV, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/none",
                "AWS_CONFIG_FILE": "/none"}
    proc = run_cli("sm", "train", *TRAIN, "--endpoint-url", moto_endpoint, env=no_creds)
    assert_one_line_error(proc, "no AWS credentials found", "--dry-run needs none")


def test_status_and_logs_of_a_job_by_name(moto_endpoint):
    """A training job started through `sm train`: `sm status` finds its kind and says where it stands, `sm logs`
    prints its CloudWatch log (every instance's stream, in time order); unknown names are one line."""
    proc = run_cli("sm", "train", *TRAIN, "--name", "bc-follow", "--endpoint-url", moto_endpoint,
                   "--instance-type", "ml.m5.xlarge", "--instance-count", "2", env=ENV)
    assert proc.returncode == 0, proc.stderr
    name = json.loads(proc.stdout)["name"]
    proc = run_cli("sm", "status", name, "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert (st["kind"], st["name"], st["instances"]) == ("training", name, "2 x ml.m5.xlarge") and st["status"]

    logs = boto3.client("logs", endpoint_url=moto_endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    group = "/aws/sagemaker/TrainingJobs"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    t0 = int(time.time() * 1000) - 60_000
    for host, offset, msg in (("algo-2", 1, "epoch=1 from algo-2"), ("algo-1", 0, "epoch=1 from algo-1"),
                              ("algo-1", 2, "epoch=2 from algo-1")):
        stream = f"{name}/{host}-1700000000"
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": t0 + offset * 1000, "message": msg}])
    logs.create_log_stream(logGroupName=group, logStreamName="other-job/algo-1-1700000000")
    logs.put_log_events(logGroupName=group, logStreamName="other-job/algo-1-1700000000",
                        logEvents=[{"timestamp": t0, "message": "not ours"}])
    proc = run_cli("sm", "logs", name, "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines()] == [
        "[algo-1-1700000000] epoch=1 from algo-1", "[algo-2-1700000000] epoch=1 from algo-2",
        "[algo-1-1700000000] epoch=2 from algo-1"]
    proc = run_cli("sm", "logs", name, "--tail", "1", "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.stdout.splitlines()[-1].endswith("epoch=2 from algo-1") and len(proc.stdout.splitlines()) == 1

    assert_one_line_error(run_cli("sm", "status", "bc-nothing", "--endpoint-url", moto_endpoint, env=ENV),
                          "bc-nothing: no training job, tuning job, transform job or endpoint of that name")
    assert_one_line_error(run_cli("sm", "status", "bc-nothing", "--kind", "training", "--endpoint-url", moto_endpoint,
                                  env=ENV), "bc-nothing: no training job of that name")


def test_wait_follows_the_job_to_its_end(moto_endpoint):
    """moto's jobs complete at once: --wait reads the status (and the log) and ends with the outcome."""
    proc = run_cli("sm", "train", *TRAIN, "--name", "bc-wait", "--endpoint-url", moto_endpoint, "--wait",
                   "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    name = json.loads(proc.stdout.splitlines()[0])["name"]
    st = _sm(moto_endpoint).describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    assert st == "Completed" and f"training job {name}: Completed" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------- profiler and sm report (issue 17)
def test_train_sends_the_profiler_and_its_report_rule_unless_told_not_to():
    r = _dry("train", *TRAIN, "--profiler-interval-ms", "1000", "--region", "eu-west-1")["request"]
    assert r["ProfilerConfig"] == {"S3OutputPath": "s3://bkt/out", "ProfilingIntervalInMilliseconds": 1000}
    [rule] = r["ProfilerRuleConfigurations"]
    assert rule["RuleConfigurationName"] == "ProfilerReport"
    assert rule["RuleParameters"] == {"rule_to_invoke": "ProfilerReport"}
    # the region's own Debugger rule image (the SDK's table; eu-west-1's account differs from us-east-1's)
    assert rule["RuleEvaluatorImage"] == "929884845733.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-debugger-rules:latest"
    off = _dry("train", *TRAIN, "--no-profiler")["request"]
    assert "ProfilerConfig" not in off and "ProfilerRuleConfigurations" not in off
    proc = run_cli("sm", "train", *TRAIN, "--profiler-interval-ms", "300", "--dry-run", env=ENV)
    assert proc.returncode == 2 and "invalid choice: 300" in proc.stderr


def test_tune_says_its_trials_take_no_profiler_config():
    proc = run_cli("sm", "tune", *TRAIN, "--dry-run", "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "has no ProfilerConfig field" in proc.stderr
    assert "ProfilerConfig" not in json.loads(proc.stdout)["request"]["TrainingJobDefinition"]


def _tar_gz(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_sm_report_gathers_a_jobs_reports_from_s3(moto_endpoint, trained_model, tmp_path):
    """A training job in moto's SageMaker, its output.tar.gz / model.tar.gz and ProfilerReport rule output put in
    moto's S3 where SageMaker writes them; `sm report JOB` renders them into one HTML file."""
    import base64
    import re

    from bincounter.report import _num

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="rep")
    job = "bc-report-1"
    _sm(moto_endpoint).create_training_job(
        TrainingJobName=job, RoleArn=ROLE, AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://rep/out"}, StoppingCondition={"MaxRuntimeInSeconds": 600},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10})
    rules = {"rules_fired": 1, "fired": [{"rule": "input_bound", "epoch": 2, "evidence": {"input_wait_share": 0.62},
                                          "advice": "raise --workers"}]}
    system = {"samples": 40, "cpu_percent": {"mean": 97.5, "max": 100.0}, "rss_mb": {"mean": 2100.0, "max": 2300.0},
              "gpu_util_percent": {"mean": 31.0, "max": 55.0}, "gpu_mem_mb": None, "input_wait_fraction": 0.62,
              "hint": "the input pipeline is the bottleneck"}
    out = {"./rules.json": json.dumps(rules).encode(), "./profile/system_report.json": json.dumps(system).encode(),
           "./profile/trace.json": b"{}", "../escape.json": b"{}"}
    for name in ("test_metrics.json", "test_confusion_matrix.png", "training_curves.png"):
        out[f"./{name}"] = (trained_model / name).read_bytes()
    s3.put_object(Bucket="rep", Key=f"out/{job}/output/output.tar.gz", Body=_tar_gz(out))
    s3.put_object(Bucket="rep", Key=f"out/{job}/output/model.tar.gz", Body=_tar_gz({
        "model.safetensors": b"weights", **{n: (trained_model / n).read_bytes() for n in ("metrics.json",
                                                                                          "config.json")}}))
    rule_out = f"out/{job}/rule-output/ProfilerReport/profiler-output"
    s3.put_object(Bucket="rep", Key=f"{rule_out}/profiler-report.html", Body=b"<html>SageMaker's report</html>")
    s3.put_object(Bucket="rep", Key=f"{rule_out}/profiler-reports/LowGPUUtilization.json",
                  Body=json.dumps({"RuleTriggered": 1, "Violations": 12, "Datapoints": 40}).encode())
    s3.put_object(Bucket="rep", Key=f"{rule_out}/profiler-reports/OverallSystemUsage.json", Body=json.dumps(
        {"RuleTriggered": 0, "Violations": 0, "Datapoints": 40,
         "Details": {"GPU": {"algo-1": {"p50": 30.5, "p95": 52.0, "p99": 55.0, "max": 55.0, "min": 1.0}}}}).encode())

    dest = tmp_path / "rep"
    proc = run_cli("sm", "report", job, "--out", dest, "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["report"] == str(dest / "report.html") and doc["job"] == job
    assert "model.safetensors" not in doc["found"] and not (dest / "model.safetensors").exists()
    assert not (dest / "profile" / "trace.json").exists() and not (tmp_path / "escape.json").exists()
    text = (dest / "report.html").read_text()
    # the rules table, from output.tar.gz
    assert re.search(r"<tr><td><b>input_bound</b></td><td>epoch 2</td><td>input_wait_share = 0.62</td>", text)
    # embedded images: the training curves and the confusion matrix, byte for byte
    pngs = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]
    assert pngs == [(trained_model / "training_curves.png").read_bytes(),
                    (trained_model / "test_confusion_matrix.png").read_bytes()]
    test = json.loads((trained_model / "test_metrics.json").read_text())
    assert f"test accuracy <b>{_num(test['accuracy'])}</b>" in text
    # system utilisation: the trainer's sampler and SageMaker's ProfilerReport rule summaries
    assert "mean 97.5, max 100" in text and "the input pipeline is the bottleneck" in text
    assert re.search(r"<td>LowGPUUtilization</td><td><b>yes</b></td><td>12</td>", text)
    assert re.search(r"<td>GPU</td><td>algo-1</td><td>30.5</td><td>52</td>", text)
    assert (dest / "sagemaker-profiler-report.html").read_bytes() == b"<html>SageMaker's report</html>"
    # metrics.json came from model.tar.gz (output.tar.gz lacked it): the run's settings are shown
    assert "best val accuracy" in text

    missing = run_cli("sm", "report", "no-such-job", "--out", tmp_path / "x", "--endpoint-url", moto_endpoint,
                      env=ENV)
    assert_one_line_error(missing, "no-such-job", "no training job or tuning job")


# ------------------------------------------------------------------------- half-finished deploys, batch CSV (issue 13)
def test_delete_removes_what_a_half_finished_deploy_left(moto_endpoint):
    """A deploy that stopped after CreateModel (or after the config): delete removes what exists and names
    what did not; deleting again finds nothing and says so, exit 0."""
    sm = _sm(moto_endpoint)
    container = {"Image": IMAGE, "ModelDataUrl": "s3://bkt/m.tar.gz"}
    sm.create_model(ModelName="bc-half", ExecutionRoleArn=ROLE, PrimaryContainer=container)
    proc = run_cli("sm", "delete", "--endpoint", "bc-half", "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"deleted": ["model bc-half"],
                                       "did_not_exist": ["endpoint bc-half", "endpoint config bc-half"]}
    with pytest.raises(sm.exceptions.ClientError):
        sm.describe_model(ModelName="bc-half")

    sm.create_model(ModelName="bc-half2", ExecutionRoleArn=ROLE, PrimaryContainer=container)
    sm.create_endpoint_config(EndpointConfigName="bc-half2", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "bc-half2", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge"}])
    sm.create_model(ModelName="bc-lone", ExecutionRoleArn=ROLE, PrimaryContainer=container)
    proc = run_cli("sm", "delete", "--endpoint", "bc-half2", "--model", "bc-lone", "--endpoint-url", moto_endpoint,
                   env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"deleted": ["endpoint config bc-half2", "model bc-half2", "model bc-lone"],
                                       "did_not_exist": ["endpoint bc-half2"]}
    assert "did not exist: endpoint bc-half2" in proc.stderr

    again = run_cli("sm", "delete", "--model", "bc-lone", "--endpoint-url", moto_endpoint, env=ENV)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"deleted": [], "did_not_exist": ["model bc-lone"]}
    assert "nothing to delete" in again.stderr
    assert_one_line_error(run_cli("sm", "delete", "--endpoint-url", moto_endpoint, env=ENV),
                          "--endpoint NAME and/or --model NAME")


def test_batch_results_are_collected_into_one_csv(moto_endpoint, tmp_path):
    import csv

    sm = _sm(moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="bat")
    sm.create_model(ModelName="bc-bat", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    answer = {"count": 3, "probabilities": {"1": 0.05, "2": 0.1, "3": 0.7, "4": 0.1, "5": 0.05},
              "expected_count": 2.95, "model_version": "ab12"}
    s3.put_object(Bucket="bat", Key="counts/day1/b.jpg.out", Body=json.dumps(answer).encode())
    s3.put_object(Bucket="bat", Key="counts/a.jpg.out", Body=json.dumps({**answer, "count": 1}).encode())
    s3.put_object(Bucket="bat", Key="counts/bad.jpg.out", Body=b'{"code": 400, "message": "not an image"}')
    s3.put_object(Bucket="bat", Key="counts/_SUCCESS", Body=b"")
    out = tmp_path / "results.csv"
    proc = run_cli("sm", "batch", "--model", "bc-bat", "--input", "s3://bat/scans/", "--output", "s3://bat/counts/",
                   "--name", "bc-bat-1", "--instance-type", "ml.m5.xlarge", "--collect", out,
                   "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"csv": str(out), "job": "bc-bat-1", "status": "Completed",
                                                        "rows": 3, "errors": 1}
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == ["s3://bat/scans/a.jpg", "s3://bat/scans/bad.jpg",
                                          "s3://bat/scans/day1/b.jpg"]
    assert (rows[0]["count"], rows[2]["count"], rows[2]["p3"], rows[2]["expected_count"], rows[2]["model_version"]) \
        == ("1", "3", "0.7", "2.95", "ab12")
    assert rows[1]["count"] == "" and "not an image" in rows[1]["error"]
    again = run_cli("sm", "collect", "bc-bat-1", "--csv", tmp_path / "again.csv", "--endpoint-url", moto_endpoint,
                    env=ENV)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.csv").read_text() == out.read_text()


def test_the_internal_ecr_helper_is_hidden_from_help():
    top = run_cli("--help")
    assert top.returncode == 0 and "report" in top.stdout
    assert "ecr" not in top.stdout and "SUPPRESS" not in top.stdout
    assert run_cli("ecr", "--help").returncode == 0  # still there for build_and_push.sh


# ------------------------------------------------------------------ input modes and volume (issue 16)
def _input_line(stderr: str) -> str:
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("input: ")]
    return line


def _sharded_channel(s3, prefix: str, claimed_bytes: int) -> None:
    """index.json + one small .tar under `prefix`; the index's `bytes` (what the client reads) is `claimed_bytes`,
    so the volume rule can be seen at tens of GB without uploading them."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("a.jpg", b"\xff\xd8" + bytes(100)), ("a.json", b'{"count": 1}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = buf.getvalue()
    index = {"format": "bincounter-shards/1", "split": "train", "samples": 1, "bytes": claimed_bytes,
             "shards": [{"name": "train-000000.tar", "samples": 1, "bytes": claimed_bytes}]}
    s3.put_object(Bucket="bkt", Key=f"{prefix}/train-000000.tar", Body=tar_bytes)
    s3.put_object(Bucket="bkt", Key=f"{prefix}/index.json", Body=json.dumps(index).encode())


def _modes(config: list[dict]) -> dict:
    assert all(c["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated" for c in config)
    return {c["ChannelName"]: c["InputMode"] for c in config}


def test_input_modes_and_volume_follow_the_channels(moto_endpoint):
    """Against moto (real HTTP): a sharded channel (index.json under its prefix) goes FastFile, a per-image one
    File, and the volume holds the File-mode data only; --input-mode File sizes it from the index's bytes."""
    s3, sm = _s3(moto_endpoint), _sm(moto_endpoint)
    _sharded_channel(s3, "shards/train", 39 * 10 ** 9)
    args = [a if a != "s3://bkt/ch/train/" else "s3://bkt/shards/train/" for a in TRAIN]
    proc = run_cli("sm", "train", *args, "--name", "bc-modes", "--endpoint-url", moto_endpoint,
                   "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    d = sm.describe_training_job(TrainingJobName=json.loads(proc.stdout)["name"])
    assert _modes(d["InputDataConfig"]) == {"train": "FastFile", "val": "File", "test": "File"}
    assert d["ResourceConfig"]["VolumeSizeInGB"] == 30  # the 39 GB of shards stream; val/test are 1 KB
    line = _input_line(proc.stderr)
    assert line.startswith("input: train FastFile (sharded, 39 GB), val File (per-image, ") and "volume 30 GB" in line
    assert proc.stderr.index("estimated cost:") < proc.stderr.index("input: ") < proc.stderr.index("undo:")

    proc = run_cli("sm", "train", *args, "--name", "bc-modes-file", "--input-mode", "File",
                   "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    d = sm.describe_training_job(TrainingJobName=json.loads(proc.stdout)["name"])
    assert _modes(d["InputDataConfig"]) == {"train": "File", "val": "File", "test": "File"}
    assert d["ResourceConfig"]["VolumeSizeInGB"] == 57  # ceil(1.2 x 39.000002) + 10

    proc = run_cli("sm", "tune", *args, "--name", "bc-modes-hpo", "--volume-size", "80",
                   "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge", env=ENV)
    assert proc.returncode == 0, proc.stderr
    t = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="bc-modes-hpo")["TrainingJobDefinition"]
    assert _modes([c for c in t["InputDataConfig"] if c["ChannelName"] in ("train", "val", "test")]) == \
        {"train": "FastFile", "val": "File", "test": "File"}
    assert t["ResourceConfig"]["VolumeSizeInGB"] == 80
    assert "volume 80 GB (from --volume-size)" in _input_line(proc.stderr)


def test_a_missing_channel_is_one_line_before_any_request(moto_endpoint):
    args = [a if a != "s3://bkt/ch/val/" else "s3://bkt/nothing-here/" for a in TRAIN]
    proc = run_cli("sm", "train", *args, "--name", "bc-missing", "--endpoint-url", moto_endpoint, env=ENV)
    assert_one_line_error(proc, "s3://bkt/nothing-here/: no objects under it")
    assert not [j for j in _sm(moto_endpoint).list_training_jobs()["TrainingJobSummaries"]
                if j["TrainingJobName"].startswith("bc-missing")]


@pytest.mark.parametrize("cmd", ["train", "tune"])
def test_pipe_mode_is_refused_in_one_line(cmd):
    proc = run_cli("sm", cmd, *TRAIN, "--input-mode", "Pipe", "--dry-run", env=ENV)
    assert_one_line_error(proc, "--input-mode Pipe", "index.json", "random access", "ranks", "FastFile")
    assert proc.stdout == ""


def test_volume_rule():
    from bincounter.sm.channels import file_volume_gb

    assert [file_volume_gb(gb * 1e9) for gb in (0, 0.6, 16.6, 29.4, 33)] == [30, 30, 30, 46, 50]


def test_input_modes_in_a_dry_run_are_offline(offline):
    """No channel is read in a dry run: File mode and a placeholder volume, said on stderr, unless the flags or
    --data-size-gb say otherwise."""
    proc, calls = _run_offline(offline, "train", *TRAIN, "--region", "us-east-1", "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    r = json.loads(proc.stdout)["request"]
    assert _modes(r["InputDataConfig"]) == {"train": "File", "val": "File", "test": "File"}
    assert r["ResourceConfig"]["VolumeSizeInGB"] == 50
    assert "unknown in a dry run" in _input_line(proc.stderr) and "whether each is sharded is unknown" in proc.stderr

    proc, calls = _run_offline(offline, "tune", *TRAIN, "--region", "us-east-1", "--data-size-gb", "29.4",
                               "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    d = json.loads(proc.stdout)["request"]["TrainingJobDefinition"]
    assert d["ResourceConfig"]["VolumeSizeInGB"] == 46 and d["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    costs = [ln for ln in proc.stderr.splitlines() if ln.startswith(("estimated cost:", "input: "))]
    assert [c.split(":")[0] for c in costs] == ["estimated cost", "input"], proc.stderr

    proc, calls = _run_offline(offline, "train", *TRAIN, "--region", "us-east-1", "--input-mode", "FastFile",
                               "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    r = json.loads(proc.stdout)["request"]
    assert _modes(r["InputDataConfig"]) == {"train": "FastFile", "val": "FastFile", "test": "FastFile"}
    assert r["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert r["ResourceConfig"]["VolumeSizeInGB"] == 30
    assert "placeholder" not in _input_line(proc.stderr)


# ------------------------------------------------------------------ the job kinds from Python, without the CLI
def test_a_training_spec_dry_runs_without_the_cli(monkeypatch, capsys):
    """A TrainingJobSpec built in Python is the whole input of a training job: every field lands in its request."""
    from bincounter.sm import training
    from bincounter.sm.specs import TrainingJobSpec
    from bincounter.sm.target import AwsTarget

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    spec = TrainingJobSpec(image=IMAGE, role=ROLE, train="s3://bkt/ch/train/", val="s3://bkt/ch/val/",
                           output="s3://bkt/out", instance_type="ml.g5.2xlarge", instance_count=1,
                           hyperparameters={"epochs": "3"}, volume_gb=40, max_runtime_s=7200, spot=True,
                           checkpoint_s3="s3://bkt/ckpt/py", name="bc-py", profiler=False)
    assert training.start(spec, AwsTarget(region="us-east-1", dry_run=True)) == 0
    (doc,) = _docs(capsys.readouterr().out)
    r = doc["request"]
    assert doc["api"] == "CreateTrainingJob" and r["TrainingJobName"].startswith("bc-py-")
    assert r["HyperParameters"] == {"epochs": "3", "progress": "false"}
    assert r["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 40}
    assert r["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200 and r["EnableManagedSpotTraining"] is True
    assert r["CheckpointConfig"]["S3Uri"] == "s3://bkt/ckpt/py"
    assert [c["ChannelName"] for c in r["InputDataConfig"]] == ["train", "val"]
    assert "ProfilerConfig" not in r and "ProfilerRuleConfigurations" not in r


def test_an_endpoint_spec_is_checked_and_dry_run_without_the_cli(monkeypatch, capsys):
    """EndpointSpec's checks are the job module's, not the CLI's: a bad autoscale range or capture on a serverless
    endpoint is refused from Python too; a good spec prints its endpoint and autoscaling requests."""
    from bincounter.sm import endpoint
    from bincounter.sm.specs import EndpointSpec
    from bincounter.sm.target import AwsTarget

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    dry = AwsTarget(region="us-east-1", dry_run=True)
    spec = EndpointSpec(role=ROLE, name="bc-py-ep", model_data="s3://bkt/m.tar.gz", image=IMAGE, autoscale=(3, 1))
    with pytest.raises(UserError, match=r"--autoscale '3,1': expected MIN,MAX with 1 <= MIN <= MAX"):
        endpoint.deploy(spec, dry)
    with pytest.raises(UserError, match="no data capture on serverless"):
        endpoint.deploy(EndpointSpec(role=ROLE, model_data="s3://bkt/m.tar.gz", image=IMAGE, serverless=(2048, 5),
                                     capture_s3="s3://bkt/capture"), dry)
    assert capsys.readouterr().out == ""
    assert endpoint.deploy(EndpointSpec(role=ROLE, name="bc-py-ep", model_data="s3://bkt/m.tar.gz", image=IMAGE,
                                        autoscale=(1, 4)), dry) == 0
    docs = {d["api"]: d["request"] for d in _docs(capsys.readouterr().out)}
    assert docs["CreateEndpoint"]["EndpointName"] == "bc-py-ep"
    assert docs["RegisterScalableTarget"]["MinCapacity"] == 1 and docs["RegisterScalableTarget"]["MaxCapacity"] == 4
