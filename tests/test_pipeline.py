"""`bincounter sm pipeline`: the definition (offline dry run) wires every step to our image and to each other,
and upsert/start/status work against a real HTTP SageMaker API (moto in server mode)."""

from __future__ import annotations

import json

import boto3
import pytest

from .conftest import assert_one_line_error, run_cli
from .test_sm_jobs import ENV, IMAGE, ROLE

UPSERT = ("sm", "pipeline", "upsert", "--role", ROLE, "--image", IMAGE, "--data", "s3://raw/abid/",
          "--output", "s3://out/pipe", "--hp", "epochs=3", "--min-accuracy", "0.6", "--max-jobs", "6",
          "--weights", "s3://out/weights/")


@pytest.fixture(scope="module")
def definition() -> dict:
    proc = run_cli(*UPSERT, "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "Popping out" not in proc.stderr
    return json.loads(proc.stdout)


def _steps(d: dict) -> dict[str, dict]:
    from bincounter.sm.pipeline import step_names

    flat, todo = {}, list(d["Steps"])
    while todo:
        s = todo.pop(0)
        flat[s["Name"]] = s
        todo += s["Arguments"].get("IfSteps", []) + s["Arguments"].get("ElseSteps", [])
    assert list(flat) == step_names(d)
    return flat


def test_every_step_runs_our_image_in_order(definition):
    s = _steps(definition)
    assert list(s) == ["Prepare", "Shard", "Index", "Tune", "Train", "Evaluate", "CheckAccuracy", "Register",
                       "AccuracyTooLow"]
    assert [s[n]["Type"] for n in s] == ["Processing", "Processing", "Processing", "Tuning", "Training", "Processing",
                                         "Condition", "RegisterModel", "Fail"]
    for name, action in (("Prepare", "plan"), ("Shard", "shard"), ("Index", "index"), ("Evaluate", "evaluate")):
        app = s[name]["Arguments"]["AppSpecification"]
        # tini first: the entrypoint replaces the image's ENTRYPOINT, and tini must stay PID 1
        assert {k: v for k, v in app.items() if k != "ContainerArguments"} == {
            "ImageUri": IMAGE, "ContainerEntrypoint": ["/usr/bin/tini", "--", "/opt/bincounter/container/entrypoint.sh",
                                                       "process", action]}
    assert s["Tune"]["Arguments"]["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert s["Train"]["Arguments"]["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert s["Register"]["Arguments"]["InferenceSpecification"]["Containers"][0]["Image"] == IMAGE


def test_parameters_and_their_defaults(definition):
    params = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert params == {"RawData": "s3://raw/abid/", "DataVersion": "v1", "InstanceType": "ml.g5.xlarge",
                      "TrainInstances": 2, "ProcessingInstanceType": "ml.m5.xlarge", "ShardInstances": 8,
                      "MaxJobs": 6, "MinAccuracy": 0.6, "ApprovalStatus": "PendingManualApproval"}
    s = _steps(definition)
    limits = s["Tune"]["Arguments"]["HyperParameterTuningJobConfig"]["ResourceLimits"]
    assert limits["MaxNumberOfTrainingJobs"] == {"Get": "Parameters.MaxJobs"}
    assert s["Train"]["Arguments"]["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.InstanceType"}
    for name in ("Prepare", "Shard", "Index", "Evaluate"):
        assert s[name]["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceType"] == \
            {"Get": "Parameters.ProcessingInstanceType"}
    assert s["Shard"]["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == \
        {"Get": "Parameters.ShardInstances"}


def _out(step, name):
    return {"Get": f"Steps.{step}.ProcessingOutputConfig.Outputs['{name}'].S3Output.S3Uri"}


def test_steps_feed_each_other(definition):
    s = _steps(definition)

    def data(*parts):
        return {"Std:Join": {"On": "/", "Values": ["s3://out/pipe", "data", {"Get": "Parameters.DataVersion"}, *parts]}}

    meta = s["Prepare"]["Arguments"]["ProcessingInputs"][0]["S3Input"]  # the metadata alone, not the images
    assert (meta["S3Uri"], meta["LocalPath"]) == ({"Std:Join": {"On": "", "Values": [
        {"Get": "Parameters.RawData"}, "metadata/"]}}, "/opt/ml/processing/input/raw/metadata")
    outs = {o["OutputName"]: (o["S3Output"]["LocalPath"], o["S3Output"]["S3Uri"]) for o in
            s["Prepare"]["Arguments"]["ProcessingOutputConfig"]["Outputs"]}
    assert outs == {n: (f"/opt/ml/processing/output/{n}", data("prepare", n)) for n in ("manifest", "parts", "eda")}
    shard = s["Shard"]["Arguments"]
    parts, manifest = shard["ProcessingInputs"]
    assert parts["S3Input"]["S3Uri"] == _out("Prepare", "parts")
    assert (manifest["S3Input"]["S3Uri"], manifest["S3Input"]["S3DataDistributionType"]) == (
        _out("Prepare", "manifest"), "FullyReplicated")  # every instance skips parts the manifest does not name
    args = shard["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--manifest") + 1] == "/opt/ml/processing/input/manifest"
    assert parts["S3Input"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert shard["AppSpecification"]["ContainerArguments"][:2] == ["--source", {"Get": "Parameters.RawData"}]
    assert {o["OutputName"]: o["S3Output"]["S3Uri"] for o in shard["ProcessingOutputConfig"]["Outputs"]} == \
        {"shards": data("shards"), "index-parts": data("index-parts")}
    index = s["Index"]["Arguments"]
    assert index["ProcessingInputs"][0]["S3Input"]["S3Uri"] == _out("Shard", "index-parts")
    manifest = index["ProcessingInputs"][1]["S3Input"]  # plan's parts.json: only this manifest's parts combine
    assert (manifest["S3Uri"], manifest["LocalPath"]) == (_out("Prepare", "manifest"),
                                                          "/opt/ml/processing/input/manifest")
    written = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in index["ProcessingOutputConfig"]["Outputs"]}
    for split in ("train", "val", "test"):  # index.json lands next to that split's shards
        assert written[split] == {"Std:Join": {"On": "/", "Values": [_out("Shard", "shards"), split]}}

    for step, chans in ((s["Tune"]["Arguments"]["TrainingJobDefinition"], "InputDataConfig"),
                        (s["Train"]["Arguments"], "InputDataConfig")):
        got = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in step[chans]}
        assert got == {"train": _out("Index", "train"), "val": _out("Index", "val"), "pretrained": "s3://out/weights/"}
    hps = s["Train"]["Arguments"]["HyperParameters"]
    assert hps["lr"] == {"Get": "Steps.Tune.BestTrainingJob.TunedHyperParameters['lr']"} and hps["epochs"] == "3"
    assert s["Train"]["Arguments"]["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainInstances"}
    inputs = {i["InputName"]: (i["S3Input"]["S3Uri"], i["S3Input"]["LocalPath"])
              for i in s["Evaluate"]["Arguments"]["ProcessingInputs"]}
    assert inputs == {"model": ({"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}, "/opt/ml/processing/model"),
                      "test": (_out("Index", "test"), "/opt/ml/processing/test")}


def test_trials_match_the_final_train_and_every_tuned_value_reaches_it(definition):
    s = _steps(definition)
    trial = s["Tune"]["Arguments"]["TrainingJobDefinition"]
    train = s["Train"]["Arguments"]
    assert trial["ResourceConfig"]["InstanceCount"] == train["ResourceConfig"]["InstanceCount"] == \
        {"Get": "Parameters.TrainInstances"}  # the same global batch: the tuned lr is the lr Train needs
    ranges = s["Tune"]["Arguments"]["HyperParameterTuningJobConfig"]["ParameterRanges"]
    tuned = [r["Name"] for kind in ranges.values() for r in kind]
    assert sorted(tuned) == ["batch_size", "lr"]
    for name in tuned:
        assert train["HyperParameters"][name] == {"Get": f"Steps.Tune.BestTrainingJob.TunedHyperParameters['{name}']"}
    assert trial["EnableNetworkIsolation"] is True and train["EnableNetworkIsolation"] is True
    assert trial["StaticHyperParameters"]["pretrained"] == train["HyperParameters"]["pretrained"] == "true"


def test_the_quality_gate_and_the_registry(definition):
    s = _steps(definition)
    accuracy = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
                                "Path": "multiclass_classification_metrics.accuracy.value"}}
    assert s["CheckAccuracy"]["Arguments"]["Conditions"] == [
        {"Type": "GreaterThanOrEqualTo", "LeftValue": accuracy, "RightValue": {"Get": "Parameters.MinAccuracy"}}]
    assert [x["Name"] for x in s["CheckAccuracy"]["Arguments"]["IfSteps"]] == ["Register"]
    assert [x["Name"] for x in s["CheckAccuracy"]["Arguments"]["ElseSteps"]] == ["AccuracyTooLow"]
    assert accuracy in s["AccuracyTooLow"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    reg = s["Register"]["Arguments"]
    assert reg["ModelPackageGroupName"] == "bincounter"
    assert reg["ModelApprovalStatus"] == {"Get": "Parameters.ApprovalStatus"}
    stats = reg["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert stats["S3Uri"]["Std:Join"]["Values"] == [
        {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"}, "evaluation.json"]
    prop = [p for p in _steps(definition)["Evaluate"].get("PropertyFiles", [])]
    assert prop == [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}]


def _pushed_image(moto_endpoint) -> str:
    """IMAGE (a tag) in moto's ECR, as ./build_and_push.sh leaves it -> its digest."""
    ecr = boto3.client("ecr", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        ecr.create_repository(repositoryName="bincounter")
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                                      "digest": "sha256:" + "c" * 64}, "layers": []})
    ecr.put_image(repositoryName="bincounter", imageManifest=manifest, imageTag=IMAGE.rsplit(":", 1)[1])
    return ecr.describe_images(repositoryName="bincounter")["imageDetails"][0]["imageDigest"]


@pytest.fixture()
def weights_in_moto(moto_endpoint):
    """UPSERT's --weights s3://out/weights/ as `weights fetch` + `data upload` leave it, for the default arch (a real
    upsert reads its provenance)."""
    from .test_sm_errors import _weights_channel

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="out")
    s3.create_bucket(Bucket="bkt")  # _weights_channel's
    for key, body in (("weights/efficientnet_b0.safetensors", b"weights"),):
        s3.put_object(Bucket="out", Key=key, Body=body)
    return _weights_channel


def test_upsert_refuses_weights_of_another_arch_before_anything(moto_endpoint, weights_in_moto):
    """The container refuses weights of another arch only after Prepare/Shard/Index have run and billed: upsert
    reads the channel's provenance first, as sm train does."""
    channel = weights_in_moto(moto_endpoint, "pipe-weights/lite0")  # tf_efficientnet_lite0 weights
    args = list(UPSERT)
    args[args.index("s3://out/weights/")] = channel
    args[args.index(IMAGE)] = GPU_DIGEST
    env = {**ENV, "SAGEMAKER_VALIDATE_ROLE": "false"}
    assert_one_line_error(run_cli(*args, "--name", "bc-wrong-arch", "--endpoint-url", moto_endpoint, env=env),
                          f"--weights {channel} holds tf_efficientnet_lite0 weights", "--hp arch=tf_efficientnet_lite0")
    proc = run_cli(*args, "--name", "bc-right-arch", "--hp", "arch=tf_efficientnet_lite0", "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr


def test_upsert_start_status_against_a_sagemaker_api(moto_endpoint, weights_in_moto):
    env = {**ENV, "SAGEMAKER_VALIDATE_ROLE": "false"}
    digest = _pushed_image(moto_endpoint)
    proc = run_cli(*UPSERT, "--name", "bc-pipe", "--endpoint-url", moto_endpoint, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["upserted"] == "pipeline"
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    stored = json.loads(sm.describe_pipeline(PipelineName="bc-pipe")["PipelineDefinition"])
    assert [st["Name"] for st in stored["Steps"]] == ["Prepare", "Shard", "Index", "Tune", "Train", "Evaluate",
                                                      "CheckAccuracy"]
    pinned = f"{IMAGE.rsplit(':', 1)[0]}@{digest}"  # the tag resolved through ECR: the definition names the digest
    assert stored["Steps"][4]["Arguments"]["AlgorithmSpecification"]["TrainingImage"] == pinned
    again = run_cli(*UPSERT, "--name", "bc-pipe", "--min-accuracy", "0.7", "--endpoint-url", moto_endpoint, env=env)
    assert again.returncode == 0, again.stderr  # an update, not a "pipeline exists" error
    stored = json.loads(sm.describe_pipeline(PipelineName="bc-pipe")["PipelineDefinition"])
    assert {p["Name"]: p.get("DefaultValue") for p in stored["Parameters"]}["MinAccuracy"] == 0.7
    started = run_cli("sm", "pipeline", "start", "--name", "bc-pipe", "--param", "MinAccuracy=0.8",
                      "--param", "MaxJobs=2", "--endpoint-url", moto_endpoint, env=env)
    assert started.returncode == 0, started.stderr
    cost = started.stderr.splitlines()  # before the execution starts: the stored definition, the overrides applied
    assert cost[0].startswith("estimated cost: up to $") and any(
        ln.split()[0] == "Tune" and "2 jobs x 2 ml.g5.xlarge x 6 h" in ln for ln in cost), started.stderr
    arn = json.loads(started.stdout)["arn"]
    params = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert {"Name": "MinAccuracy", "Value": "0.8"} in params
    status = run_cli("sm", "pipeline", "status", "--name", "bc-pipe", "--endpoint-url", moto_endpoint, env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout.splitlines()[0])["execution"] == arn


@pytest.mark.parametrize("args, needle", [
    (["upsert", "--role", ROLE, "--image", IMAGE, "--data", "/local/abid", "--output", "s3://o/p"],
     "--data '/local/abid': must be an s3:// URI"),
    (["upsert", "--role", ROLE, "--image", IMAGE, "--data", "s3://r/a", "--output", "s3://o/p", "--hp", "lr=0.1"],
     "the pipeline tunes lr"),
    (["upsert", "--role", ROLE, "--image", IMAGE, "--data", "s3://r/a", "--output", "s3://o/p",
      "--instance-type", "g5.xlarge"], "--instance-type 'g5.xlarge': SageMaker instance types start with 'ml.' "
     "(did you mean 'ml.g5.xlarge'?)"),
    (["upsert", "--role", ROLE, "--image", IMAGE, "--data", "s3://r/a", "--output", "s3://o/p",
      "--min-accuracy", "80"], "an accuracy, 0..1"),

    (["start", "--param", "MinAcc=0.5"], "not a parameter of the pipeline"),
    (["start", "--param", "MaxJobs=abc"], "a number of tuning trials"),
    (["start", "--param", "ApprovalStatus=approved"], "PendingManualApproval or Approved"),
    (["start", "--param", "MinAccuracy=7"], "an accuracy, 0..1"),
    (["start", "--param", "InstanceType=g5.xlarge"], "--param InstanceType 'g5.xlarge': SageMaker instance types "
     "start with 'ml.'"),
    (["start", "--param", "RawData=/local"], "--param RawData '/local': must be an s3:// URI"),
    (["start", "--param", "oops"], "--param 'oops': expected NAME=VALUE"),
    (["upsert", "--role", ROLE, "--image", IMAGE, "--data", "s3://r/a", "--output", "s3://o/p",
      "--model-package-group", "bad_name"], "SageMaker names are letters, digits and single hyphens"),
])
def test_mistakes_are_one_line(args, needle):
    assert_one_line_error(run_cli("sm", "pipeline", *args, "--dry-run", env=ENV), needle)


def test_deploy_a_registered_version_only_once_approved(moto_endpoint):
    """`sm deploy --model-package ARN`: what the pipeline registered, refused in one line until Approved."""
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    sm.create_model_package_group(ModelPackageGroupName="bc-group")
    arn = sm.create_model_package(
        ModelPackageGroupName="bc-group", ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={"Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://bkt/pipe/model.tar.gz"}],
                                "SupportedContentTypes": ["image/jpeg"],
                                "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]
    deploy = ("sm", "deploy", "--role", ROLE, "--model-package", arn, "--name", "bc-from-registry", "--no-wait",
              "--instance-type", "ml.m5.xlarge",  # moto knows only older instance types
              "--endpoint-url", moto_endpoint)
    assert_one_line_error(run_cli(*deploy, env=ENV), "is PendingManualApproval: approve it first")
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    proc = run_cli(*deploy, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    container = sm.describe_model(ModelName="bc-from-registry")["PrimaryContainer"]
    assert (container["Image"], container["ModelDataUrl"]) == (IMAGE, "s3://bkt/pipe/model.tar.gz")


def test_start_sends_a_raw_data_prefix_with_its_slash():
    proc = run_cli("sm", "pipeline", "start", "--param", "RawData=s3://b/abid", "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["request"]["PipelineParameters"] == [{"Name": "RawData", "Value": "s3://b/abid/"}]


def test_status_shows_each_steps_outcome_and_the_processing_exit_message(capsys):
    """What `sm pipeline status` makes of an execution: the registered version's ARN, the condition's outcome,
    and for a failed processing step the container's own one line (its ExitMessage), not the generic reason."""
    import argparse
    from unittest import mock

    from bincounter.cli import sm_pipeline

    sm = mock.Mock()
    sm.describe_pipeline_execution.return_value = {"PipelineExecutionStatus": "Failed", "FailureReason": "Step failed"}
    sm.list_pipeline_execution_steps.return_value = {"PipelineExecutionSteps": [
        {"StepName": "Prepare", "StepStatus": "Failed", "FailureReason": "AlgorithmError: See job logs",
         "Metadata": {"ProcessingJob": {"Arn": "arn:aws:sagemaker:us-east-1:1:processing-job/pipelines-x-prepare"}}},
        {"StepName": "CheckAccuracy", "StepStatus": "Succeeded", "Metadata": {"Condition": {"Outcome": "True"}}},
        {"StepName": "Register", "StepStatus": "Succeeded",
         "Metadata": {"RegisterModel": {"Arn": "arn:aws:sagemaker:us-east-1:1:model-package/bincounter/3"}}}]}
    sm.describe_processing_job.return_value = {"ExitMessage": "bincounter: error: no metadata/*.json\n"}
    args = argparse.Namespace(region="us-east-1", profile=None, endpoint_url=None, name="p",
                              execution="arn:aws:sagemaker:us-east-1:1:pipeline/p/execution/e")
    with mock.patch("bincounter.aws.client", return_value=sm):
        assert sm_pipeline.cmd_status(args) == 0
    out = capsys.readouterr().out.splitlines()
    sm.describe_processing_job.assert_called_once_with(ProcessingJobName="pipelines-x-prepare")
    assert "no metadata/*.json" in out[1] and "See job logs" not in out[1]
    assert "outcome True" in out[2] and "model-package/bincounter/3" in out[3]


# ------------------------------------------------------------------ sm pipeline local (fast tier: no Docker)
LITE0 = "tf_efficientnet_lite0"


def _fake_weights(folder, arch: str = LITE0):
    """A weights folder as `bincounter weights fetch` leaves it (file + provenance JSON with its sha256)."""
    from bincounter.artifact import sha256_file
    from bincounter.weights import FORMAT

    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{arch}.safetensors"
    f.write_bytes(b"not read before the arch check")
    (folder / f"{arch}.provenance.json").write_text(json.dumps(
        {"format": FORMAT, "arch": arch, "source": "pypi", "sha256": sha256_file(f)}))
    return folder


def test_local_pipeline_fine_tunes_from_the_pretrained_channel_by_default(monkeypatch, tmp_path):
    """The README's `sm pipeline local` must pass the default gate: the demo's recipe (ImageNet weights as Train's
    pretrained channel, 96 px), not 1 epoch at 64 px from random init (0.2 accuracy: chance)."""
    from bincounter.sm import hyperparameters, local, sdk_compat
    from bincounter.sm import pipeline_local as pl

    hps = pl.DEFAULT_HYPERPARAMETERS
    assert hps["pretrained"] == "true" and hps["arch"] == LITE0 and int(hps["epochs"]) >= 6
    assert int(hps["image_size"]) >= 96
    hyperparameters.validate(hps)
    for k in ("SAGEMAKER_USER_CONFIG_OVERRIDE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SAGEMAKER_VALIDATE_ROLE"):
        monkeypatch.setenv(k, ENV.get(k, "x"))  # restored after the test
    local.offline_sdk_env(tmp_path)
    steps, _ = sdk_compat.pipeline_sessions(tmp_path)
    weights = _fake_weights(tmp_path / "weights")
    pipe = pl.build_local(steps, sdk_compat.model_step_session(), name="t", image="bincounter:local",
                          role=local.LOCAL_ROLE, data_uri="file:///raw", out_uri=f"file://{tmp_path}/runs",
                          hyperparameters=hps, min_accuracy=0.5, pretrained_uri=f"file://{weights}")
    train = next(s for s in json.loads(pipe.definition())["Steps"] if s["Name"] == "Train")["Arguments"]
    chans = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["InputDataConfig"]}
    assert chans["pretrained"] == f"file://{weights}" and set(chans) == {"train", "val", "pretrained"}
    assert train["HyperParameters"]["pretrained"] == "true" and train["HyperParameters"]["arch"] == LITE0


def _local_error(capsys, *argv) -> str:
    from bincounter.cli import main

    rc = main(["sm", "pipeline", "local", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bincounter: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_local_pipeline_weights_for_another_arch_are_one_line_before_docker(capsys, abid_root, tmp_path):
    weights = _fake_weights(tmp_path / "weights")
    line = _local_error(capsys, "--data", str(abid_root), "--workdir", str(tmp_path / "w"), "--weights",
                        str(weights), "--hp", "arch=efficientnet_b0", "--image", "no-such-image:never-pulled")
    assert f"holds {LITE0} weights" in line and "not efficientnet_b0" in line, line
    line = _local_error(capsys, "--data", str(abid_root), "--workdir", str(tmp_path / "w"), "--hp",
                        "arch=efficientnet_b0", "--image", "no-such-image:never-pulled")
    assert "--weights DIR" in line and "--no-pretrained" in line, line


# ------------------------------------------------------------------ what issue #23 asks the definition to show
GPU_DIGEST = IMAGE.rsplit(":", 1)[0] + "@sha256:" + "a" * 64
CPU_DIGEST = IMAGE.rsplit(":", 1)[0] + "-cpu@sha256:" + "b" * 64


@pytest.fixture(scope="module")
def pinned_definition() -> tuple[dict, str]:
    args = list(UPSERT)
    args[args.index(IMAGE)] = GPU_DIGEST
    proc = run_cli(*args, "--cpu-image", CPU_DIGEST, "--shard-instances", "16", "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_the_definition_shows_what_the_issue_asks(pinned_definition):
    import re

    definition, stderr = pinned_definition
    s = _steps(definition)
    params = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}

    def value(x):
        return params[x["Get"][len("Parameters."):]] if isinstance(x, dict) and "Get" in x else x

    # a processing step on more than one instance, its input sharded by S3 key
    fanned = [n for n, st in s.items() if st["Type"] == "Processing"
              and value(st["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"]) > 1
              and any(i["S3Input"]["S3DataDistributionType"] == "ShardedByS3Key"
                      for i in st["Arguments"]["ProcessingInputs"])]
    assert fanned == ["Shard"] and params["ShardInstances"] == 16
    # FastFile for the training steps' data channels
    for job in (s["Tune"]["Arguments"]["TrainingJobDefinition"], s["Train"]["Arguments"]):
        assert {c["ChannelName"]: c["InputMode"] for c in job["InputDataConfig"]} == {
            "train": "FastFile", "val": "FastFile", "pretrained": "File"}
    # retries on every job step, caching on the data steps
    for name, st in s.items():
        if st["Type"] in ("Processing", "Training", "Tuning", "RegisterModel"):
            kinds = {k for p in st["RetryPolicies"] for k in p["ExceptionType"]}
            assert {"Step.THROTTLING", "Step.SERVICE_FAULT"} <= kinds, name
            if st["Type"] != "RegisterModel":
                assert "SageMaker.CAPACITY_ERROR" in kinds, name
        assert ("CacheConfig" in st) == (name in ("Prepare", "Shard", "Index")), name
    assert s["Shard"]["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P45D"}
    # every image by digest, the CPU image registered as the additional inference specification
    images = re.findall(r'"(?:ImageUri|TrainingImage|Image)": "([^"]+)"', json.dumps(definition))
    assert images and all(re.search(r"@sha256:[0-9a-f]{64}$", i) for i in images), images
    (extra,) = s["Register"]["Arguments"]["AdditionalInferenceSpecifications"]
    assert extra["Containers"] == [{"Image": CPU_DIGEST,
                                    "ModelDataUrl": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}}]
    # the cost line, per step, before anything
    assert "estimated cost: up to $" in stderr and "16 ml.m5.xlarge x 6 h" in stderr


def test_every_step_request_passes_botocore(pinned_definition):
    """Each job step's Arguments against botocore's own model of the API (pipeline expressions stood in for)."""
    import copy

    from bincounter.sm.pipeline_settings import step_request_errors

    definition, _ = pinned_definition
    assert step_request_errors(definition) == {}
    broken = copy.deepcopy(definition)
    _steps(broken)["Shard"]["Arguments"]["ProcessingResources"]["ClusterConfig"]["VolumeSizeGB"] = 100
    _steps(broken)["Register"]["Arguments"]["AdditionalInferenceSpecifications"][0]["Containers"][0]["Image"] = 7
    bad = step_request_errors(broken)
    assert set(bad) == {"Shard", "Register"} and "VolumeSizeGB" in bad["Shard"], bad


def test_a_tag_stays_a_tag_only_in_a_dry_run_and_says_so(definition):
    from bincounter.errors import UserError
    from bincounter.sm.pipeline_settings import pin_image

    assert pin_image(GPU_DIGEST, dry_run=False) == (GPU_DIGEST, None)
    image, warning = pin_image(IMAGE, dry_run=True)
    assert image == IMAGE and "by tag in this dry run" in warning
    with pytest.raises(UserError, match="references its image by digest"):
        pin_image("bincounter:local", dry_run=False)
    _, warning = pin_image(IMAGE, dry_run=True, flag="--cpu-image")  # the flag the user gave is named
    assert warning.startswith(f"--cpu-image {IMAGE}:")


@pytest.mark.parametrize("extra, needle", [
    (["--hp", "pretrained=false"], "--weights with --hp pretrained=false"),
    (["--shard-instances", "0"], "--shard-instances: a number of instances, 1..100"),
    (["--data-version", "bad/label"], "a label for the prepared data"),
    (["--batch-sizes", "32,x"], "comma-separated integers"),
])
def test_new_upsert_mistakes_are_one_line(extra, needle):
    assert_one_line_error(run_cli(*UPSERT, *extra, "--dry-run", env=ENV), needle)


def test_upsert_without_weights_names_the_pretrained_channel():
    args = list(UPSERT)
    i = args.index("--weights")
    del args[i:i + 2]
    assert_one_line_error(run_cli(*args, "--dry-run", env=ENV), "--weights S3URI is needed", "network isolation")


@pytest.mark.parametrize("param, needle", [("ShardInstances=0", "a number of instances"),
                                           ("DataVersion=a b", "a label for the prepared data")])
def test_new_start_params_are_checked(param, needle):
    assert_one_line_error(run_cli("sm", "pipeline", "start", "--param", param, "--dry-run", env=ENV), needle)


# ------------------------------------------------------------------ issue #27 on the pipeline: platform settings
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PLATFORM = ("--tag", "team=vision", "--subnets", "subnet-0123abcd,subnet-0123abce", "--security-groups",
            "sg-0123abcd", "--kms-key", KEY, "--inter-container-encryption")
VPC = {"SecurityGroupIds": ["sg-0123abcd"], "Subnets": ["subnet-0123abcd", "subnet-0123abce"]}


@pytest.fixture(scope="module")
def platform_definition() -> tuple[dict, str]:
    proc = run_cli(*UPSERT, *PLATFORM, "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_platform_settings_reach_every_step_of_the_definition(platform_definition):
    from bincounter.sm.pipeline_settings import step_request_errors

    definition, stderr = platform_definition
    s = _steps(definition)
    jobs = [n for n, st in s.items() if st["Type"] in ("Processing", "Training", "Tuning")]
    assert jobs == ["Prepare", "Shard", "Index", "Tune", "Train", "Evaluate"]
    for name in jobs:
        a = s[name]["Arguments"]
        tags = {t["Key"]: t["Value"] for t in a["Tags"]}
        assert tags["team"] == "vision" and tags["project"] == "bincounter" and "bincounter:version" in tags, name
        if s[name]["Type"] == "Processing":
            assert a["NetworkConfig"] == {"VpcConfig": VPC, "EnableInterContainerTrafficEncryption": True}, name
            assert a["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == KEY, name
            assert a["ProcessingOutputConfig"]["KmsKeyId"] == KEY, name
        else:
            job = a.get("TrainingJobDefinition", a)
            assert job["VpcConfig"] == VPC and job["EnableInterContainerTrafficEncryption"] is True, name
            assert job["OutputDataConfig"]["KmsKeyId"] == KEY and job["ResourceConfig"]["VolumeKmsKeyId"] == KEY
            assert job["EnableNetworkIsolation"] is True  # as before: the training steps run isolated
            assert job["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainInstances"}  # still merged
    reg = s["Register"]["Arguments"]  # a version in a group: the group's tags (CreateModelPackage refuses Tags)
    assert reg["SecurityConfig"] == {"KmsKeyId": KEY} and "Tags" not in reg
    assert step_request_errors(definition) == {}
    assert "would tag the pipeline (CreatePipeline) and the model package group bincounter " \
           "(CreateModelPackageGroup" in stderr and "team=vision" in stderr
    assert "not checked offline" in stderr


def test_without_platform_flags_the_steps_carry_only_the_default_tags(definition):
    for name, st in _steps(definition).items():
        a = st["Arguments"]
        if st["Type"] in ("Processing", "Training", "Tuning"):
            assert {t["Key"] for t in a["Tags"]} == {"project", "bincounter:version"}, name
            assert "NetworkConfig" not in a and "VpcConfig" not in a.get("TrainingJobDefinition", a), name
            assert "KmsKeyId" not in json.dumps(a), name


@pytest.mark.parametrize("extra, needle", [
    (["--subnets", "subnet-0123abcd"], "--subnets and --security-groups go together"),
    (["--subnets", "subnet-xyz", "--security-groups", "sg-0123abcd"], "--subnets 'subnet-xyz': not an id"),
    (["--kms-key", "not-a-key"], "--kms-key 'not-a-key': not a KMS key id"),
    (["--kms-key", "alias/team"], "a training job's volume takes a key id or key ARN, not an alias"),
    (["--kms-key", KEY.replace("us-east-1", "eu-west-1")], "the key is in eu-west-1, the job in us-east-1"),
    (["--tag", "aws:owner=me"], "keys starting with 'aws:' are reserved"),
    (["--tag", "novalue"], "expected KEY=VALUE"),
])
def test_platform_mistakes_on_upsert_are_one_line(extra, needle):
    assert_one_line_error(run_cli(*UPSERT, *extra, "--region", "us-east-1", "--dry-run", env=ENV), needle)


def test_upsert_takes_role_and_platform_settings_from_the_project_config(tmp_path):
    (tmp_path / "bincounter.toml").write_text(f'[sm]\nrole = "{ROLE}"\nsubnets = ["subnet-0123abcd"]\n'
                                              f'security_groups = ["sg-0123abcd"]\nkms_key = "{KEY}"\n'
                                              'isolation = true\n[sm.tags]\nteam = "vision"\n')
    args = list(UPSERT)
    del args[args.index("--role"):args.index("--role") + 2]
    proc = run_cli(*args, "--dry-run", env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train = _steps(json.loads(proc.stdout))["Train"]["Arguments"]
    assert train["RoleArn"] == ROLE and train["VpcConfig"]["Subnets"] == ["subnet-0123abcd"]
    assert {"Key": "team", "Value": "vision"} in train["Tags"] and train["OutputDataConfig"]["KmsKeyId"] == KEY
    assert "setting: kms_key" in proc.stderr and "isolation from" in proc.stderr  # not taken: always on here


def test_upsert_tags_the_pipeline_and_the_model_package_group(moto_endpoint, weights_in_moto):
    env = {**ENV, "SAGEMAKER_VALIDATE_ROLE": "false"}
    args = list(UPSERT)
    args[args.index(IMAGE)] = GPU_DIGEST  # by digest: no ECR call
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    for team in ("vision", "counting"):  # the second upsert: both exist, AddTags
        proc = run_cli(*args, "--name", "bc-tagged", "--model-package-group", "bc-tagged-group", "--tag",
                       f"team={team}", "--endpoint-url", moto_endpoint, env=env)
        assert proc.returncode == 0, proc.stderr
        arn = json.loads(proc.stdout.strip().splitlines()[-1])["arn"]
        group = sm.describe_model_package_group(ModelPackageGroupName="bc-tagged-group")["ModelPackageGroupArn"]
        for resource in (arn, group):
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=resource)["Tags"]}
            assert tags["team"] == team and tags["project"] == "bincounter", (resource, tags)
