"""AWS helpers against moto's real HTTP API (server mode), and the shell scripts' static checks."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bincounter import aws
from bincounter.errors import UserError

from .conftest import REPO, assert_one_line_error, run_cli


def test_ensure_repository_is_idempotent(moto_endpoint, aws_env):
    import boto3

    uri, created = aws.ensure_repository("bc-idem", endpoint_url=moto_endpoint)
    assert created and uri.endswith("/bc-idem") and ".dkr.ecr.us-east-1." in uri
    uri2, created2 = aws.ensure_repository("bc-idem", endpoint_url=moto_endpoint)
    assert (uri2, created2) == (uri, False)
    ecr = boto3.client("ecr", endpoint_url=moto_endpoint, region_name="us-east-1")
    repo = ecr.describe_repositories(repositoryNames=["bc-idem"])["repositories"][0]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    assert aws.account_id(endpoint_url=moto_endpoint).isdigit()
    assert aws.login_password(endpoint_url=moto_endpoint)


def test_missing_credentials_is_one_line(moto_endpoint, aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="no AWS credentials found"):
        aws.account_id(endpoint_url=moto_endpoint)


def test_region_resolution(aws_env, monkeypatch):
    assert aws.resolve_region("eu-west-1") == "eu-west-1"
    assert aws.resolve_region() == "us-east-1"
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(UserError, match="no AWS region"):
        aws.resolve_region()
    with pytest.raises(UserError, match="unknown AWS region 'mars-north-1'"):
        aws.client("ecr", region="mars-north-1")


def test_unreachable_endpoint_is_one_line(aws_env):
    with pytest.raises(UserError, match="cannot reach"):
        aws.account_id(endpoint_url="http://127.0.0.1:9")


def test_ecr_cli_errors(aws_env):
    assert_one_line_error(run_cli("ecr", "account", "--region", "mars-north-1"), "unknown AWS region")


def test_shell_scripts_parse_and_are_shellcheck_clean():
    scripts = [REPO / "build_and_push.sh", REPO / "container" / "build_local.sh", REPO / "container" / "entrypoint.sh",
               REPO / ".ci" / "run"]
    for s in scripts:
        subprocess.run(["bash", "-n", str(s)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (make test installs it)")
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_build_and_push_help_and_bad_options():
    proc = subprocess.run([str(REPO / "build_and_push.sh"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--registry HOST" in proc.stdout and "--no-push" in proc.stdout
    proc = subprocess.run([str(REPO / "build_and_push.sh"), "--bogus"], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip() == "build_and_push: error: unknown option --bogus (see --help)"
    assert proc.stdout == ""


def test_role_arn_expands_names_and_refuses_the_rest():
    acct = "123456789012"
    assert aws.role_arn("SageMakerRole", acct, "us-east-1") == f"arn:aws:iam::{acct}:role/SageMakerRole"
    assert aws.role_arn("service-role/AmazonSageMaker-ExecutionRole-1", acct, "cn-north-1") == \
        f"arn:aws-cn:iam::{acct}:role/service-role/AmazonSageMaker-ExecutionRole-1"
    assert aws.role_arn(f"arn:aws:iam::{acct}:role/x", None, "us-east-1") == f"arn:aws:iam::{acct}:role/x"
    for bad, needle in (("arn:aws:iam::123:role/x", "not an IAM role ARN"), ("my role", "neither a role ARN"),
                        (f"arn:aws:iam::{acct}:user/x", "not an IAM role ARN")):
        with pytest.raises(UserError, match=needle):
            aws.role_arn(bad, acct, "us-east-1")


def test_api_errors_say_what_to_do(moto_endpoint, aws_env):
    """A ClientError from a real HTTP answer becomes one line with its code and, for known codes, a hint."""
    import boto3

    ecr = boto3.client("ecr", endpoint_url=moto_endpoint, region_name="us-east-1")
    with pytest.raises(UserError, match=r"^describe: RepositoryNotFoundException: .*bc-missing"):
        aws.aws_call("describe", ecr.describe_repositories, repositoryNames=["bc-missing"])
    from botocore.exceptions import ClientError

    def denied():
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no\nway"}}, "CreateTrainingJob")

    with pytest.raises(UserError, match=r"^x: AccessDeniedException: no way \(the credentials in use lack"):
        aws.aws_call("x", denied)
