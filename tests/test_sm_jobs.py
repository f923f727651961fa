"""`bincounter sm ...` requests. Training and tuning go through the SageMaker SDK v3: a dry run records the
request the SDK itself is about to send. The same commands sent to moto's SageMaker API (server mode) come
back from Describe* with the image, hyperparameter strings, ranges, instance count, checkpoint/output URIs
and spot settings we asked for. (moto lacks IAM SimulatePrincipalPolicy, so the SDK's client-side role
check is switched off with SAGEMAKER_VALIDATE_ROLE=false for the moto runs.)"""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from bincounter.metrics import metric_definitions
from bincounter.sagemaker import jobs

from .conftest import assert_one_line_error, run_cli

ROLE = "arn:aws:iam::123456789012:role/bincounter-sm"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bincounter:abc123"
TRAIN = ["--role", ROLE, "--image", IMAGE, "--train", "s3://bkt/ch/train/", "--val", "s3://bkt/ch/val/",
         "--test", "s3://bkt/ch/test/", "--output", "s3://bkt/out", "--instance-type", "ml.g5.2xlarge"]
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "SAGEMAKER_VALIDATE_ROLE": "false"}


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
    assert cfg["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "val_acc"}
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


def _docs(stdout: str) -> list[dict]:
    return [json.loads(d) for d in stdout.replace("}\n{", "}\x00{").split("\x00")]


def test_deploy_dry_run_runs_modelbuilder_to_the_end():
    """ModelBuilder's three writes come out in order, each answered locally so the next one is reached."""
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


@pytest.mark.parametrize("args, needle", [
    (["train", *TRAIN, "--spot"], "spot training needs --checkpoint-s3"),
    (["train", *[a if a != "s3://bkt/ch/val/" else "/local/val" for a in TRAIN]], "not an S3 URI"),
    (["tune", *TRAIN, "--name", "x" * 40], "longer than SageMaker's 32 characters"),
    (["train", *TRAIN, "--hp", "oops"], "expected NAME=VALUE"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--autoscale", "3"],
     "expected MIN,MAX"),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", IMAGE, "--capture-s3", "/tmp/c"],
     "--capture-s3 needs an s3:// URI"),
    (["batch", "--model", "m", "--input", "/data/scans", "--output", "s3://b/o/"], "is not an s3:// URI"),
])
def test_bad_requests_are_one_line(args, needle):
    assert_one_line_error(run_cli("sm", *args, "--dry-run", env=ENV), needle)


@pytest.mark.slow
def test_deploy_waits_for_in_service_through_the_sdk(moto_endpoint):
    """The default deploy path: ModelBuilder.deploy(wait=True), the SDK polling the endpoint (and its logs)
    until InService. moto's endpoints are InService at once; the SDK polls every 30 s, hence slow."""
    proc = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m2.tar.gz", "--image", IMAGE,
                   "--name", "bc-moto-wait", "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge",
                   env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    created = json.loads(proc.stdout)  # stdout is our one JSON line; the SDK's progress panel goes to stderr
    assert created["name"] == "bc-moto-wait" and created["arn"].endswith(":endpoint/bc-moto-wait")
    assert "InService" in proc.stderr and "Deployment successful" in proc.stderr
    assert _sm(moto_endpoint).describe_endpoint(EndpointName="bc-moto-wait")["EndpointStatus"] == "InService"
