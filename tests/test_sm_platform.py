"""Issue 27: what a platform team asks of every `sm` resource: tags, VPC, KMS, network isolation, inter-container
encryption, a least-privilege role (`sm policy`) and one project config file.

Dry runs show the exact requests (each validated by botocore on the way out, `printing.print_request`); the same
commands sent to moto's SageMaker (server mode) are read back with Describe*/ListTags. moto keeps every field
used here except CreateModel's EnableNetworkIsolation (its CreateModel ignores the field and answers False):
the model's isolation is checked in the dry run's request only."""

from __future__ import annotations

import json
import re

import boto3
import pytest

from bincounter.errors import UserError
from bincounter.sm import platform
from bincounter.sm.platform import PlatformSettings

from .conftest import run_cli
from .test_sm_jobs import ENV, IMAGE, ROLE, TRAIN, _docs, _sm, moto_endpoint  # noqa: F401 - the module's fixture

SUBNETS, SGS = "subnet-0123abcd,subnet-0123456789abcdef0", "sg-89abcdef"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VPC = {"SecurityGroupIds": ["sg-89abcdef"], "Subnets": ["subnet-0123abcd", "subnet-0123456789abcdef0"]}
PLATFORM = ["--subnets", SUBNETS, "--security-groups", SGS, "--kms-key", KEY, "--tag", "team=vision",
            "--tag", "project=bins"]
NOWHERE = ["--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1"]
PRETRAINED = ["--pretrained", "s3://bkt/weights/"]


@pytest.fixture()
def cli(capsys, monkeypatch, caplog):
    """The CLI in-process: cli(*argv, cwd=None) -> (exit code, the requests printed, stderr + log lines).
    Variables the SDK session sets are registered with monkeypatch first, so they are restored."""
    from bincounter.cli import main

    def run(*argv, env=ENV, cwd=None):
        for k, v in {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}.items():
            monkeypatch.setenv(k, v)
        if cwd:
            monkeypatch.chdir(cwd)
        caplog.clear()
        with caplog.at_level("INFO", logger="bincounter"):
            try:
                rc = main(["sm", *argv])
            except SystemExit as e:  # a usage error (argparse): one line and exit 2, as from the command line
                rc = e.code
        out = capsys.readouterr()
        return rc, (_docs(out.out) if rc == 0 and out.out.strip() else []), out.err + caplog.text

    return run


def _request(docs, api):
    [r] = [d["request"] for d in docs if d["api"] == api]
    return r


def _tags(r) -> dict:
    return {t["Key"]: t["Value"] for t in r["Tags"]}


def test_train_dry_run_carries_every_setting(cli):
    rc, docs, err = cli("train", *TRAIN, *NOWHERE, *PLATFORM, *PRETRAINED, "--isolation",
                          "--inter-container-encryption", "--dry-run")
    assert rc == 0, err
    r = _request(docs, "CreateTrainingJob")
    assert r["VpcConfig"] == VPC
    assert r["EnableNetworkIsolation"] is True and r["EnableInterContainerTrafficEncryption"] is True
    assert r["Environment"] == {"HF_HUB_OFFLINE": "1"}  # isolated: the trainer never tries the hub
    assert r["OutputDataConfig"]["KmsKeyId"] == KEY and r["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    # the defaults, the user's tag replacing the default of the same key
    assert _tags(r) == {"project": "bins", "bincounter:version": "0.1.0", "team": "vision"}
    assert "not checked offline: that the subnets are in one VPC" in err
    assert "slows the all-reduce" in err


def test_without_settings_only_the_default_tags_are_added(cli):
    rc, docs, err = cli("train", *TRAIN, *NOWHERE, "--dry-run")
    r = _request(docs, "CreateTrainingJob")
    assert _tags(r) == {"project": "bincounter", "bincounter:version": "0.1.0"}
    for absent in ("VpcConfig", "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption", "Environment"):
        assert absent not in r
    assert "KmsKeyId" not in r["OutputDataConfig"] and "VolumeKmsKeyId" not in r["ResourceConfig"]
    assert "not checked offline" not in err


def test_tune_dry_run_puts_the_settings_on_every_trial(cli):
    """The SDK's tuner drops the volume key, isolation and encryption of the trials' definition: they are there."""
    rc, docs, err = cli("tune", *TRAIN, *NOWHERE, *PLATFORM, *PRETRAINED, "--isolation",
                          "--inter-container-encryption", "--instance-count", "2", "--dry-run")
    assert rc == 0, err
    r = _request(docs, "CreateHyperParameterTuningJob")
    d = r["TrainingJobDefinition"]
    assert _tags(r)["team"] == "vision"  # AWS copies a tuning job's tags to its trials
    assert d["VpcConfig"] == VPC and d["EnableNetworkIsolation"] and d["EnableInterContainerTrafficEncryption"]
    assert d["ResourceConfig"]["VolumeKmsKeyId"] == KEY and d["OutputDataConfig"]["KmsKeyId"] == KEY


def test_deploy_dry_run_tags_and_encrypts_every_resource(cli):
    rc, docs, err = cli("deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz",
                          "--image", IMAGE, "--name", "bc-ep", "--instance-type", "ml.m5.xlarge", "--capture-s3",
                          "s3://bkt/capture", "--autoscale", "1,3", "--isolation", *PLATFORM, *NOWHERE, "--dry-run")
    assert rc == 0, err
    model, config = _request(docs, "CreateModel"), _request(docs, "CreateEndpointConfig")
    assert model["VpcConfig"] == VPC and model["EnableNetworkIsolation"] is True
    assert config["KmsKeyId"] == KEY and config["DataCaptureConfig"]["KmsKeyId"] == KEY
    for api in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"):
        assert _tags(_request(docs, api))["team"] == "vision", api
    assert _request(docs, "RegisterScalableTarget")["Tags"]["team"] == "vision"


def test_deploy_on_local_nvme_or_serverless_leaves_the_volume_key_out(cli):
    """SageMaker refuses an endpoint config KmsKeyId on instances with local NVMe storage (g5, ...)."""
    rc, docs, err = cli("deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz",
                          "--image", IMAGE, "--instance-type", "ml.g5.xlarge", "--capture-s3", "s3://bkt/c",
                          "--kms-key", KEY, *NOWHERE, "--dry-run")
    assert rc == 0, err
    config = _request(docs, "CreateEndpointConfig")
    assert "KmsKeyId" not in config and config["DataCaptureConfig"]["KmsKeyId"] == KEY
    assert "local NVMe storage is encrypted by the hardware" in err


def test_batch_dry_run_and_what_belongs_to_the_model(cli, tmp_path):
    (tmp_path / "bincounter.toml").write_text(f'[sm]\nsubnets = ["subnet-0123abcd"]\nsecurity_groups = ["{SGS}"]\n')
    rc, docs, err = cli("batch", "--model", "m", "--input", "s3://bkt/in/", "--output",
                          "s3://bkt/out/", "--instance-type", "ml.m5.xlarge", "--kms-key", KEY, "--tag", "a=b",
                          *NOWHERE, "--dry-run", cwd=tmp_path)
    assert rc == 0, err
    r = _request(docs, "CreateTransformJob")
    assert r["TransformOutput"]["KmsKeyId"] == KEY and r["TransformResources"]["VolumeKmsKeyId"] == KEY
    assert _tags(r)["a"] == "b" and "VpcConfig" not in r
    assert "subnets from" in err and "the model's VPC" in err


@pytest.mark.parametrize("extra, needle", [
    (["--subnets", "subnet-12345", "--security-groups", SGS], "--subnets 'subnet-12345': not an id of the form"),
    (["--subnets", "subnet-0123abcd", "--security-groups", "sg-xyz"], "--security-groups 'sg-xyz'"),
    (["--subnets", "subnet-0123abcd"], "--subnets and --security-groups go together"),
    (["--kms-key", "my-key"], "--kms-key 'my-key': not a KMS key id"),
    (["--kms-key", KEY.replace("us-east-1", "eu-west-1")], "the key is in eu-west-1, the job in us-east-1"),
    (["--kms-key", "alias/bins"], "a training job's volume takes a key id or key ARN, not an alias"),
    (["--tag", "aws:owner=me"], "keys starting with 'aws:' are reserved"),
    (["--tag", "team=a", "--tag", "team=b"], "--tag team given twice"),
    (["--tag", "team"], "--tag 'team': expected KEY=VALUE"),
    (["--tag", "team=a<b"], "--tag team=a<b: a key of 1..128"),
    (["--isolation"], "--isolation with ImageNet weights downloaded by the job"),
    # `--kms-key "$KEY"` with KEY unset must not turn off the project config's key (new-user trial)
    (["--kms-key", ""], "argument --kms-key: empty (an unset shell variable?)"),
    (["--subnets", " ", "--security-groups", SGS], "argument --subnets: empty"),
    (["--subnets", "subnet-0123abcd", "--security-groups", ""], "argument --security-groups: empty"),
], ids=["subnet", "sg", "vpc-half", "kms", "kms-region", "kms-alias", "tag-aws", "tag-twice", "tag-syntax",
        "tag-chars", "isolation-timm", "kms-empty", "subnets-empty", "sgs-empty"])
def test_platform_mistakes_are_one_line_even_in_a_dry_run(cli, extra, needle):
    rc, _, err = cli("train", *TRAIN, *NOWHERE, *extra, "--dry-run")
    lines = [ln for ln in err.splitlines() if ln.startswith("bincounter: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


def test_isolation_goes_through_with_weights_from_a_channel_or_none(cli):
    for extra in (PRETRAINED, ["--hp", "pretrained=false"]):
        rc, docs, err = cli("train", *TRAIN, *NOWHERE, "--isolation", *extra, "--dry-run")
        assert rc == 0, err
        assert _request(docs, "CreateTrainingJob")["EnableNetworkIsolation"] is True


def test_endpoint_settings_that_do_not_apply_are_refused(cli):
    rc, _, err = cli("deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz",
                       "--image", IMAGE, "--kms-key", "nope", *NOWHERE, "--dry-run")
    assert rc == 2 and "--kms-key 'nope'" in err


# ------------------------------------------------------------------------------------------ the fragments
def test_fields_merge_into_a_request_without_losing_what_it_had():
    s = PlatformSettings(tags=(("team", "v"),), subnets=("subnet-0123abcd",), security_groups=("sg-0123abcd",),
                         kms_key=KEY, isolation=True)
    req = {"Tags": [{"Key": "team", "Value": "old"}, {"Key": "sdk", "Value": "x"}],
           "OutputDataConfig": {"S3OutputPath": "s3://b/o"}, "ResourceConfig": {"InstanceCount": 1}}
    platform.apply("CreateTrainingJob", req, s)
    assert req["Tags"] == [{"Key": "sdk", "Value": "x"}, {"Key": "team", "Value": "v"}]
    assert req["OutputDataConfig"] == {"S3OutputPath": "s3://b/o", "KmsKeyId": KEY}
    assert req["ResourceConfig"] == {"InstanceCount": 1, "VolumeKmsKeyId": KEY}
    # a processing step (the pipeline's): network config created, no output config invented
    proc = platform.apply("CreateProcessingJob", {"ProcessingResources": {"ClusterConfig": {"InstanceCount": 1}}}, s)
    assert proc["NetworkConfig"] == {"VpcConfig": s.vpc_config, "EnableNetworkIsolation": True}
    assert proc["ProcessingResources"]["ClusterConfig"] == {"InstanceCount": 1, "VolumeKmsKeyId": KEY}
    assert "ProcessingOutputConfig" not in proc
    # what the update helper reuses for its own CreateModel / CreateEndpointConfig
    assert platform.model_fields(s) == {"Tags": [{"Key": "team", "Value": "v"}], "VpcConfig": s.vpc_config,
                                        "EnableNetworkIsolation": True}
    assert platform.endpoint_config_fields(s, ["ml.c6i.xlarge"], capture=True)["KmsKeyId"] == KEY
    assert "KmsKeyId" not in platform.endpoint_config_fields(s, [None])  # serverless
    assert platform.fields("DescribeTrainingJob", {}, s) == {}


def test_kms_key_forms():
    for good in ("1234abcd-12ab-34cd-56ef-1234567890ab", "mrk-1234abcd12ab34cd56ef1234567890ab", "alias/bins",
                 KEY, "arn:aws:kms:us-east-1:123456789012:alias/bins"):
        platform.check_kms_key(good, "us-east-1")
    for bad in ("1234", "key/1234abcd-12ab-34cd-56ef-1234567890ab", "arn:aws:kms:us-east-1:1234:key/x"):
        with pytest.raises(UserError):
            platform.check_kms_key(bad)


# ------------------------------------------------------------------------------------------ against moto
def test_settings_round_trip_through_the_sagemaker_api(moto_endpoint):  # noqa: F811
    sm = _sm(moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    # a prefix of its own: the session's moto server is shared, and other tests put weights under bkt/weights/
    s3.put_object(Bucket="bkt", Key="weights/platform/efficientnet_b0.safetensors", Body=b"w")
    moto = ["--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge"]
    weights = ["--pretrained", "s3://bkt/weights/platform/"]
    proc = run_cli("sm", "train", *TRAIN, *moto, *PLATFORM, *weights, "--isolation",
                   "--inter-container-encryption", "--name", "bc-plat", "--no-profiler", env=ENV)
    assert proc.returncode == 0, proc.stderr
    name = json.loads(proc.stdout)["name"]
    d = sm.describe_training_job(TrainingJobName=name)
    assert d["VpcConfig"] == VPC and d["EnableNetworkIsolation"] and d["EnableInterContainerTrafficEncryption"]
    assert d["OutputDataConfig"]["KmsKeyId"] == KEY and d["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    assert _tags(sm.list_tags(ResourceArn=d["TrainingJobArn"]))["team"] == "vision"

    proc = run_cli("sm", "tune", *TRAIN, *moto, *PLATFORM, *weights, "--isolation", "--name", "bc-plat-hpo",
                   env=ENV)
    assert proc.returncode == 0, proc.stderr
    t = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="bc-plat-hpo")
    assert t["TrainingJobDefinition"]["VpcConfig"] == VPC and t["TrainingJobDefinition"]["EnableNetworkIsolation"]
    assert t["TrainingJobDefinition"]["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    assert _tags(sm.list_tags(ResourceArn=t["HyperParameterTuningJobArn"]))["project"] == "bins"

    proc = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--image", IMAGE,
                   "--name", "bc-plat-ep", "--capture-s3", "s3://bkt/capture", "--isolation", "--no-wait", *moto,
                   *PLATFORM, env=ENV)
    assert proc.returncode == 0, proc.stderr
    m = sm.describe_model(ModelName="bc-plat-ep")
    c = sm.describe_endpoint_config(EndpointConfigName="bc-plat-ep")
    e = sm.describe_endpoint(EndpointName="bc-plat-ep")
    assert m["VpcConfig"] == VPC
    assert c["KmsKeyId"] == KEY and c["DataCaptureConfig"]["KmsKeyId"] == KEY
    for arn in (m["ModelArn"], c["EndpointConfigArn"], e["EndpointArn"]):
        assert _tags(sm.list_tags(ResourceArn=arn))["team"] == "vision", arn

    proc = run_cli("sm", "batch", "--model", "bc-plat-ep", "--input", "s3://bkt/in/", "--output", "s3://bkt/o/",
                   "--name", "bc-plat-batch", "--kms-key", KEY, "--tag", "team=vision", *moto, env=ENV)
    assert proc.returncode == 0, proc.stderr
    b = sm.describe_transform_job(TransformJobName="bc-plat-batch")
    assert b["TransformOutput"]["KmsKeyId"] == KEY and b["TransformResources"]["VolumeKmsKeyId"] == KEY
    assert _tags(sm.list_tags(ResourceArn=b["TransformJobArn"]))["team"] == "vision"


def test_deploy_autoscale_tags_the_scalable_target(moto_endpoint):  # noqa: F811
    """The scalable target `sm deploy --autoscale` registers carries the endpoint's tags. moto 5.2's Application
    Auto Scaling takes RegisterScalableTarget's Tags but keeps none (its ListTagsForResource is not implemented:
    it answers 500), so the tags are read from the request as it reached moto (a recording proxy in front of it)
    and what moto keeps of the target (its ARN, capacities) from DescribeScalableTargets."""
    from bincounter import __version__

    from .test_data_s3 import FaultProxy

    proxy = FaultProxy(moto_endpoint)
    try:
        proc = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--image", IMAGE,
                       "--name", "bc-plat-scaled", "--autoscale", "1,2", "--instance-type", "ml.m5.xlarge",
                       "--tag", "team=vision", "--endpoint-url", proxy.url, env=ENV)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr
    (sent,) = [json.loads(body) for target, body in proxy.sent
               if target == "AnyScaleFrontendService.RegisterScalableTarget"]
    assert sent["Tags"] == {"project": "bincounter", "bincounter:version": __version__, "team": "vision"}
    aas = boto3.client("application-autoscaling", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    (got,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker",
                                           ResourceIds=["endpoint/bc-plat-scaled/variant/AllTraffic"])["ScalableTargets"]
    assert (got["MinCapacity"], got["MaxCapacity"]) == (1, 2)
    assert got["ScalableTargetARN"].startswith("arn:aws:application-autoscaling:us-east-1:123456789012:")
    e = _sm(moto_endpoint).describe_endpoint(EndpointName="bc-plat-scaled")
    assert _tags(_sm(moto_endpoint).list_tags(ResourceArn=e["EndpointArn"]))["team"] == "vision"  # the same tags


# ------------------------------------------------------------------------------------------ data upload
def test_data_upload_encrypts_with_the_customer_key(moto_endpoint, aws_env, channels, tmp_path):  # noqa: F811
    """SSE-KMS on every object; a second upload skips them all (their MD5 ETag is kept as metadata, since an
    SSE-KMS object's ETag is not its MD5); objects uploaded unencrypted before are uploaded again, encrypted."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="sealed")
    files = sum(1 for p in channels.rglob("*") if p.is_file())
    up = ("data", "upload", channels, "s3://sealed/bins", "--endpoint-url", moto_endpoint)
    proc = run_cli(*up)  # unencrypted first
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(*up, "--kms-key", KEY)
    assert proc.returncode == 0 and f"uploaded {files} files" in proc.stderr, proc.stderr
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sealed")["Contents"]]
    for k in keys:
        head = s3.head_object(Bucket="sealed", Key=k)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == KEY, k
    again = run_cli(*up, "--kms-key", KEY)
    assert "uploaded 0 files" in again.stderr and f"skipped {files}" in again.stderr, again.stderr
    other = KEY.replace("1234abcd-12ab", "0000abcd-12ab")
    dry = run_cli(*up, "--kms-key", other, "--dry-run")
    assert f"would upload {files} files" in dry.stderr and "SSE-KMS key" in dry.stderr, dry.stderr
    assert {d["request"]["SSEKMSKeyId"] for d in _docs(dry.stdout)} == {other}  # the printed PutObject requests
    bad = run_cli(*up, "--kms-key", "nope")
    assert bad.returncode == 2 and "--kms-key 'nope'" in bad.stderr
    empty = run_cli(*up, "--kms-key", "", "--dry-run")  # `--kms-key "$KEY"`, KEY unset: not "no encryption"
    assert empty.returncode == 2 and "argument --kms-key: empty" in empty.stderr, empty.stderr


# ------------------------------------------------------------------------------------------ sm policy
POLICY = ["policy", "--account", "123456789012", "--region", "us-east-1", "--s3-read", "s3://bkt/bins",
          "--s3-write", "s3://bkt/out", "--ecr", IMAGE, "--kms-key", KEY, "--subnets", SUBNETS,
          "--security-groups", SGS]


def test_policy_is_scoped_to_what_was_given(capsys, monkeypatch):
    from bincounter.cli import main
    from bincounter.sm import policy

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert main(["sm", *POLICY]) == 0
    out = json.loads(capsys.readouterr().out)
    doc, trust = out["policy"], out["trust_policy"]
    policy.check(doc)
    policy.check(trust, trust=True)
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["S3Read"]["Resource"] == ["arn:aws:s3:::bkt/bins/*"]
    assert by_sid["S3Write"]["Resource"] == ["arn:aws:s3:::bkt/out/*"]
    assert by_sid["S3List0"]["Condition"]["StringLike"]["s3:prefix"] == ["bins", "bins/*", "out", "out/*"]
    assert by_sid["EcrPull"]["Resource"] == ["arn:aws:ecr:us-east-1:123456789012:repository/bincounter"]
    assert by_sid["KmsUse"]["Resource"] == KEY and by_sid["KmsGrantsForVolumes"]["Condition"]
    assert "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-0123abcd" in by_sid["VpcEniCreate"]["Resource"]
    assert "s3:*" not in json.dumps(doc) and '"Action": "*"' not in json.dumps(doc)
    # no statement grants a whole service (an Action is a list: look at each one)
    assert not [x for st in doc["Statement"] for x in st["Action"] if x == "*" or x.endswith(":*")]
    assert by_sid["VpcEniManage"]["Condition"] == {"ArnEquals": {"ec2:Subnet": [
        f"arn:aws:ec2:us-east-1:123456789012:subnet/{s}" for s in SUBNETS.split(",")]}}
    # every Resource "*" is an action IAM cannot scope, each named here
    assert {s["Sid"] for s in doc["Statement"] if s["Resource"] == "*"} == {"EcrToken", "Metrics", "VpcDescribe"}
    cond = trust["Statement"][0]["Condition"]
    assert cond["StringEquals"]["aws:SourceAccount"] == "123456789012"
    # without a VPC or key, their statements are left out
    assert main(["sm", "policy", "--account", "123456789012", "--region", "us-east-1", "--for", "train"]) == 0
    sids = {s["Sid"] for s in json.loads(capsys.readouterr().out)["policy"]["Statement"]}
    assert not sids & {"KmsUse", "VpcEniCreate", "PipelineSteps"}


@pytest.mark.parametrize("extra, needle", [
    (["--kms-key", "alias/bins"], "names the key itself, not an alias"),
    (["--ecr", "Not A Repo"], "--ecr 'Not A Repo'"),
    (["--s3-read", "bkt/bins"], "--s3-read 'bkt/bins': must be an s3:// URI"),
    (["--for", "train,serve"], "--for serve"),
    (["--subnets", "subnet-0123abcd"], "--subnets and --security-groups go together"),
    (["--for", "pipeline"], "--for pipeline: the role it passes to its steps is unknown"),
    (["--for", "train", "--alarm", "mine"], "--alarm: the rollback alarms of sm update (add update to --for)"),
])
def test_policy_mistakes_are_one_line(extra, needle):
    proc = run_cli("sm", "policy", "--account", "123456789012", "--region", "us-east-1", *extra, env=ENV)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _policy(capsys, *argv) -> dict:
    from bincounter.cli import main

    assert main(["sm", "policy", "--account", "123456789012", *argv]) == 0
    out = capsys.readouterr().out
    if "--create-role" in argv:  # a dry run: the PutRolePolicy request carries it
        return json.loads(_request(_docs(out), "PutRolePolicy")["PolicyDocument"])
    return json.loads(out)["policy"]


def _allows(doc, action: str, resource: str) -> bool:
    """Whether an Allow statement names the action and the resource (IAM's * wildcards; conditions not evaluated)."""
    from fnmatch import fnmatchcase

    def listed(v):
        return [v] if isinstance(v, str) else v

    return any(st["Effect"] == "Allow" and any(fnmatchcase(action, a) for a in listed(st["Action"]))
               and any(fnmatchcase(resource, r) for r in listed(st["Resource"])) for st in doc["Statement"])


def test_check_refuses_a_whole_service():
    from bincounter.sm import policy

    for action in ("*", "s3:*", ["s3:GetObject", "sagemaker:*"]):
        with pytest.raises(ValueError):
            policy.check({"Version": policy.VERSION, "Statement": [
                {"Effect": "Allow", "Action": action, "Resource": "arn:aws:s3:::b/*"}]})


def test_pipeline_is_a_role_of_its_own_with_every_step_api(capsys, monkeypatch):
    """The default role (jobs, endpoints) can neither start jobs nor pass itself; --for pipeline grants every API
    the pipeline's steps call (sm.pipeline_settings.STEP_APIS), the tuning step's watch and stop, and PassRole."""
    from bincounter.sm.pipeline_settings import STEP_APIS

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    arn = "arn:aws:sagemaker:us-east-1:123456789012"
    default = _policy(capsys, "--region", "us-east-1")
    assert not [x for st in default["Statement"] for x in st["Action"]
                if x.startswith("sagemaker:") or x == "iam:PassRole"]
    doc = _policy(capsys, "--region", "us-east-1", "--for", "train,tune,pipeline", "--create-role", "bc-pipe",
                  "--dry-run")
    for api, _ in STEP_APIS.values():
        kind = re.sub(r"(?<!^)(?=[A-Z])", "-", api.removeprefix("Create")).lower()  # ModelPackage: model-package
        assert _allows(doc, f"sagemaker:{api}", f"{arn}:{kind}/bc-x"), api
    for api in ("DescribeHyperParameterTuningJob", "StopHyperParameterTuningJob",
                "ListTrainingJobsForHyperParameterTuningJob"):
        assert _allows(doc, f"sagemaker:{api}", f"{arn}:hyper-parameter-tuning-job/bc-x"), api
    for api in ("CreateModelPackageGroup", "DescribeModelPackageGroup"):
        assert _allows(doc, f"sagemaker:{api}", f"{arn}:model-package-group/bincounter"), api
    assert _allows(doc, "iam:PassRole", "arn:aws:iam::123456789012:role/bc-pipe")
    assert not _allows(doc, "iam:PassRole", "arn:aws:iam::123456789012:role/admin")


def test_update_role_reads_its_rollback_alarms(capsys, monkeypatch):
    """SageMaker reads the rollback alarms of a blue/green update with the endpoint's role: the ones sm update
    creates (sm.alarms.names) and the --alarm names, no other."""
    from bincounter.sm import alarms

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    doc = _policy(capsys, "--region", "eu-west-1", "--alarm", "team-5xx")
    arn = "arn:aws:cloudwatch:eu-west-1:123456789012:alarm"
    for name in [*alarms.names("bc-ep"), "team-5xx"]:
        assert _allows(doc, "cloudwatch:DescribeAlarms", f"{arn}:{name}"), name
    assert not _allows(doc, "cloudwatch:DescribeAlarms", f"{arn}:billing")
    assert not _allows(_policy(capsys, "--region", "eu-west-1", "--for", "train,deploy"), "cloudwatch:DescribeAlarms",
                       f"{arn}:{alarms.names('bc-ep')[0]}")


def test_an_object_uri_is_that_object_and_arns_follow_the_partition(capsys, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    doc = _policy(capsys, "--region", "us-east-1", "--s3-read", "s3://bkt/models/model.tar.gz", "--s3-read",
                  "s3://bkt/data/v1.2/")
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["S3Read"]["Resource"] == ["arn:aws:s3:::bkt/data/v1.2/*", "arn:aws:s3:::bkt/models/model.tar.gz"]
    assert by_sid["S3List0"]["Condition"]["StringLike"]["s3:prefix"] == ["data/v1.2", "data/v1.2/*",
                                                                         "models/model.tar.gz"]
    assert _allows(doc, "s3:GetObject", "arn:aws:s3:::bkt/models/model.tar.gz")
    assert not _allows(doc, "s3:GetObject", "arn:aws:s3:::bkt/models/other.tar.gz")
    # China: every ARN (resources and conditions) in aws-cn, the trust policy's too
    from bincounter.sm import policy

    spec = policy.PolicySpec("123456789012", "cn-north-1", s3_read=("s3://bkt/bins", "s3://bkt/m/model.tar.gz"),
                             s3_write=("s3://bkt/o",),
                             ecr=("bincounter", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/bc:1"),
                             kms_key="1234abcd-12ab-34cd-56ef-1234567890ab", subnets=("subnet-0123abcd",),
                             security_groups=("sg-89abcdef",), commands=policy.COMMANDS, role_name="bc")
    text = json.dumps([policy.execution_policy(spec), policy.trust_policy("123456789012", "cn-north-1")])
    arns = re.findall(r'"(arn:[^"]*)"', text)
    assert len(arns) > 15 and all(a.startswith("arn:aws-cn:") for a in arns), arns


def test_policy_creates_the_role_in_iam(moto_endpoint):  # noqa: F811
    """The dry run prints CreateRole/PutRolePolicy (validated against IAM's API shapes); sent to moto's IAM, the
    role comes back with both documents as printed (moto's IAM checks a policy document's grammar)."""
    proc = run_cli("sm", *POLICY, "--create-role", "bc-exec", "--tag", "team=vision", "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    docs = _docs(proc.stdout)
    assert [d["api"] for d in docs] == ["CreateRole", "PutRolePolicy"]
    proc = run_cli("sm", *POLICY, "--create-role", "bc-exec", "--tag", "team=vision", "--endpoint-url",
                   moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["arn"] == "arn:aws:iam::123456789012:role/bc-exec"
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    role = iam.get_role(RoleName="bc-exec")["Role"]
    assert role["AssumeRolePolicyDocument"] == json.loads(docs[0]["request"]["AssumeRolePolicyDocument"])
    assert {t["Key"]: t["Value"] for t in role["Tags"]}["team"] == "vision"
    got = iam.get_role_policy(RoleName="bc-exec", PolicyName="bincounter-sm")["PolicyDocument"]
    assert got == json.loads(docs[1]["request"]["PolicyDocument"])
    # moto refuses a malformed document (MalformedPolicyDocument); as a managed policy it passes too
    iam.create_policy(PolicyName="bc-exec-check", PolicyDocument=docs[1]["request"]["PolicyDocument"])


# ------------------------------------------------------------------------------------------ project config
CONFIG = f"""[sm]
role = "{ROLE}"
region = "us-east-1"
project = "bin-counter"
subnets = ["subnet-0123abcd"]
security_groups = ["sg-89abcdef"]
kms_key = "{KEY}"
[sm.tags]
team = "vision"
"""


def test_project_config_sets_what_flags_would_and_says_so(cli, tmp_path):
    (tmp_path / "bincounter.toml").write_text(CONFIG)
    no_role = [a for a in TRAIN if a not in ("--role", ROLE)]
    rc, docs, err = cli("train", *no_role, "--endpoint-url", "http://127.0.0.1:9", "--tag", "team=ml",
                        "--dry-run", cwd=tmp_path)
    assert rc == 0, err
    r = _request(docs, "CreateTrainingJob")
    assert r["RoleArn"] == ROLE and r["VpcConfig"]["Subnets"] == ["subnet-0123abcd"]
    assert r["OutputDataConfig"]["KmsKeyId"] == KEY
    assert _tags(r) == {"project": "bin-counter", "bincounter:version": "0.1.0", "team": "ml"}  # the flag wins
    src = str(tmp_path / "bincounter.toml").replace(str(tmp_path) + "/", "")
    for line in (f"setting: role = {ROLE} (from {src})", f"setting: region = us-east-1 (from {src})",
                 f"setting: kms_key = {KEY} (from {src})", "setting: tags = {'team': 'ml'} (from --tag)"):
        assert line in err, err
    # a flag wins over the file
    rc, docs, err = cli("train", *TRAIN, "--endpoint-url", "http://127.0.0.1:9", "--subnets", "subnet-0123ffff",
                        "--dry-run", cwd=tmp_path)
    assert _request(docs, "CreateTrainingJob")["VpcConfig"]["Subnets"] == ["subnet-0123ffff"]
    assert "setting: subnets = ('subnet-0123ffff',) (from --subnets)" in err


@pytest.mark.parametrize("text, needle", [
    ("[sm]\nsubnet = ['subnet-0123abcd']\n", "unknown key sm.subnet (did you mean subnets?)"),
    ("[sm]\nisolation = 'yes'\n", "sm.isolation must be a bool, got 'yes'"),
    ("[sm\n", "bincounter.toml: "),
    ("role = 'arn:aws:iam::123456789012:role/x'\n[sm]\n", "role at the top level is not read: put it under [sm]"),
    ("[sm]\n[sn]\nregion = 'us-east-1'\n", "sn at the top level is not read; bincounter reads the [sm] table"),
])
def test_a_bad_project_config_is_one_line(cli, tmp_path, text, needle):
    (tmp_path / "bincounter.toml").write_text(text)
    rc, _, err = cli("train", *TRAIN, *NOWHERE, "--dry-run", cwd=tmp_path)
    assert rc == 2 and needle in err, err


def test_every_sm_command_reads_the_config_and_help_names_it(cli, tmp_path, capsys):
    from bincounter.cli import main

    (tmp_path / "elsewhere.toml").write_text('[sm]\nrole = "nope"\nregion = "eu-west-1"\n')
    rc, docs, err = cli("batch", "--model", "m", "--input", "s3://bkt/in/", "--output", "s3://bkt/out/",
                        "--instance-type", "ml.m5.xlarge", "--config", str(tmp_path / "elsewhere.toml"),
                        "--endpoint-url", "http://127.0.0.1:9", "--dry-run")
    assert rc == 0 and "region = eu-west-1" in err, err
    rc, _, err = cli("train", *TRAIN, "--config", str(tmp_path / "missing.toml"), *NOWHERE, "--dry-run")
    assert rc == 2 and "missing.toml: no such file (--config)" in err
    for cmd in ("train", "tune", "deploy", "batch", "delete", "status", "policy"):
        with pytest.raises(SystemExit):
            main(["sm", cmd, "--help"])
        assert "bincounter.toml" in " ".join(capsys.readouterr().out.split()), cmd


def test_no_isolation_turns_off_the_configs(cli, tmp_path):
    (tmp_path / "bincounter.toml").write_text("[sm]\nisolation = true\n")
    rc, docs, err = cli("train", *TRAIN, *NOWHERE, *PRETRAINED, "--dry-run", cwd=tmp_path)
    assert rc == 0 and _request(docs, "CreateTrainingJob")["EnableNetworkIsolation"] is True, err
    rc, docs, err = cli("train", *TRAIN, *NOWHERE, *PRETRAINED, "--no-isolation", "--dry-run", cwd=tmp_path)
    assert rc == 0 and "EnableNetworkIsolation" not in _request(docs, "CreateTrainingJob"), err
    assert "setting: isolation = False (from --isolation)" in err  # the flag won over the file, and says so
    (tmp_path / "bincounter.toml").write_text("[sm]\ninter_container_encryption = true\n")
    rc, docs, err = cli("train", *TRAIN, *NOWHERE, *PRETRAINED, "--instance-count", "2", "--dry-run", cwd=tmp_path)
    assert rc == 0 and _request(docs, "CreateTrainingJob")["EnableInterContainerTrafficEncryption"] is True, err
    rc, docs, err = cli("train", *TRAIN, *NOWHERE, *PRETRAINED, "--instance-count", "2",
                        "--no-inter-container-encryption", "--dry-run", cwd=tmp_path)
    assert rc == 0 and not _request(docs, "CreateTrainingJob").get("EnableInterContainerTrafficEncryption"), err


def test_the_instance_type_comes_from_the_config_unless_typed(cli, tmp_path):
    (tmp_path / "bincounter.toml").write_text('[sm]\ninstance_type = "ml.m5.xlarge"\n')
    args = ["batch", "--model", "m", "--input", "s3://bkt/in/", "--output", "s3://bkt/out/", *NOWHERE, "--dry-run"]
    rc, docs, err = cli(*args, cwd=tmp_path)
    assert _request(docs, "CreateTransformJob")["TransformResources"]["InstanceType"] == "ml.m5.xlarge", err
    rc, docs, err = cli(*args, "--instance-type", "ml.g5.xlarge", cwd=tmp_path)  # typed, though the default
    assert _request(docs, "CreateTransformJob")["TransformResources"]["InstanceType"] == "ml.g5.xlarge", err


# ------------------------------------------------------------------ sm deploy --model-package ARN --cpu-image
CPU_IMAGE = IMAGE.replace("bincounter:", "bincounter-cpu:")


def _package(sm, group: str, cpu: bool) -> str:
    """An Approved version as `sm pipeline` registers it: the GPU image, and (cpu) the CPU image as the
    additional inference specification cpu-onnx (its own model URL here, to tell which one was served)."""
    sm.create_model_package_group(ModelPackageGroupName=group)
    spec = {"SupportedContentTypes": ["image/jpeg"], "SupportedResponseMIMETypes": ["application/json"]}
    extra = {"AdditionalInferenceSpecifications": [{
        "Name": "cpu-onnx", "Containers": [{"Image": CPU_IMAGE, "ModelDataUrl": "s3://bkt/pipe/cpu/model.tar.gz"}],
        "SupportedRealtimeInferenceInstanceTypes": ["ml.c6i.xlarge", "ml.m5.xlarge"], **spec}]} if cpu else {}
    return sm.create_model_package(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved", **extra,
        InferenceSpecification={"Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://bkt/pipe/model.tar.gz"}],
                                **spec})["ModelPackageArn"]


def test_deploy_serves_the_model_packages_cpu_specification(moto_endpoint):  # noqa: F811
    from .conftest import assert_one_line_error

    sm = _sm(moto_endpoint)
    arn = _package(sm, "bc-cpu-group", cpu=True)
    deploy = ("sm", "deploy", "--role", ROLE, "--model-package", arn, "--cpu-image", "--no-wait",
              "--instance-type", "ml.m5.xlarge", "--endpoint-url", moto_endpoint)  # moto: older instance types
    proc = run_cli(*deploy, "--name", "bc-cpu-ep", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    container = sm.describe_model(ModelName="bc-cpu-ep")["PrimaryContainer"]
    assert (container["Image"], container["ModelDataUrl"]) == (CPU_IMAGE, "s3://bkt/pipe/cpu/model.tar.gz")
    assert "serving its CPU specification cpu-onnx" in proc.stderr

    gpu_only = _package(sm, "bc-gpu-group", cpu=False)  # a package without one: one line, nothing created
    bad = list(deploy)
    bad[bad.index(arn)] = gpu_only
    assert_one_line_error(run_cli(*bad, "--name", "bc-no-cpu-ep", env=ENV), "has no CPU specification",
                          "pass --cpu-image URI")
    assert "bc-no-cpu-ep" not in [m["ModelName"] for m in sm.list_models()["Models"]]


def test_deploy_cpu_image_from_a_package_in_a_dry_run_says_it_would_read_it(cli):
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/bincounter/3"
    rc, docs, err = cli("deploy", "--role", ROLE, "--model-package", arn, "--cpu-image", "--instance-type",
                        "ml.c6i.xlarge", *NOWHERE, "--dry-run")
    assert rc == 0, err
    assert "would serve the image and model of the package's CPU entry" in err and "DescribeModelPackage" in err
    assert "cpu-image-of-model-package" in _request(docs, "CreateModel")["PrimaryContainer"]["Image"]
    rc, _, err = cli("deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--cpu-image", *NOWHERE,
                     "--dry-run")
    assert rc == 2 and "--cpu-image without a URI serves a model package's CPU specification" in err
    rc, docs, err = cli("deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--cpu-image", CPU_IMAGE,
                        "--instance-type", "ml.c6i.xlarge", *NOWHERE, "--dry-run")  # a URI: as before
    assert rc == 0 and _request(docs, "CreateModel")["PrimaryContainer"]["Image"] == CPU_IMAGE, err


def test_policy_without_aws_points_to_account_and_dry_run(monkeypatch, capsys, caplog, tmp_path):
    """A new user's first `sm policy` (no region, no credentials): each line says how to print it without AWS,
    not the image build's hint; a dry run says it assumed us-east-1."""
    from bincounter.cli import main

    for k in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(k, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.chdir(tmp_path)
    for argv, needles in ((["sm", "policy"], ["no AWS region", "--account 123456789012", "--dry-run"]),
                          (["sm", "policy", "--region", "us-east-1"],
                           ["no AWS credentials found", "--account 123456789012", "--dry-run works offline"]),
                          (["sm", "deploy", "--region", "us-east-1", "--role", "bincounter-sm", "--model-data",
                            "s3://bkt/m/model.tar.gz", "--image", IMAGE], ["--dry-run works offline"])):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles) and "build_and_push" not in err, err
    with caplog.at_level("INFO", logger="bincounter"):
        assert main(["sm", "policy", "--dry-run"]) == 0
    assert "us-east-1 assumed" in caplog.text
    assert main(["sm", "policy", "--region", "us-east-1", "--account", "123456789012"]) == 0


@pytest.mark.parametrize("extra, needle", [
    (["--capture-percent", "150"], "--capture-percent without --capture-s3"),
    (["--capture-percent", "150", "--capture-s3", "s3://bkt/c"], "--capture-percent 150: the share of requests"),
    (["--capture-percent", "0", "--capture-s3", "s3://bkt/c"], "--capture-percent 0: the share of requests"),
    (["--capture-s3", "bkt/c"], "--capture-s3 needs an s3:// URI"),
])
def test_deploy_capture_mistakes_are_one_line(cli, extra, needle):
    rc, _, err = cli("deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--image", IMAGE,
                     "--instance-type", "ml.m5.xlarge", *extra, *NOWHERE, "--dry-run")
    assert rc == 2 and err.count("bincounter: error:") == 1 and needle in err, err
