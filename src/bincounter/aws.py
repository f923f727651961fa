"""AWS plumbing shared by every command that talks to AWS (ECR now; S3 and SageMaker use it too):
region and credential resolution with one-line errors, and `--endpoint-url` for S3-compatible or test
endpoints (moto). boto3 is imported lazily: the trainer and the image never need it."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

from .errors import UserError


def resolve_region(region: str | None = None, profile: str | None = None) -> str:
    """--region, then AWS_REGION, AWS_DEFAULT_REGION, then the CLI profile's region."""
    import boto3

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        try:
            region = boto3.Session(profile_name=profile).region_name
        except Exception as e:  # noqa: BLE001 - ProfileNotFound and friends
            raise UserError(f"AWS profile problem: {e}") from None
    if not region:
        raise UserError("no AWS region: pass --region, or set AWS_REGION / AWS_DEFAULT_REGION, or a region in "
                        "your AWS profile")
    return region


def client(service: str, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    region = resolve_region(region, profile)
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"AWS profile problem: {e}") from None
    known = set(session.get_available_regions("sts")) | set(session.get_available_regions(service))
    known |= set(session.get_available_regions("sts", partition_name="aws-cn"))
    known |= set(session.get_available_regions("sts", partition_name="aws-us-gov"))
    if region not in known:
        raise UserError(f"unknown AWS region {region!r}")
    return session.client(service, endpoint_url=endpoint_url,
                          config=Config(retries={"max_attempts": 5, "mode": "adaptive"}, connect_timeout=10,
                                        read_timeout=60))


_HINTS = {
    "AccessDenied": "the credentials in use lack this permission (check the IAM policy of the caller)",
    "AccessDeniedException": "the credentials in use lack this permission (check the IAM policy of the caller)",
    "UnrecognizedClientException": "the access key is not valid (aws configure, or AWS_PROFILE)",
    "InvalidClientTokenId": "the access key is not valid (aws configure, or AWS_PROFILE)",
    "ExpiredToken": "the session has expired: refresh it (aws sso login, or new temporary credentials)",
    "ExpiredTokenException": "the session has expired: refresh it (aws sso login, or new temporary credentials)",
    "ResourceLimitExceeded": "an account quota is reached: stop other jobs/endpoints or request an increase in "
                             "Service Quotas",
    "ThrottlingException": "AWS is throttling the calls: wait a minute and run it again",
}


@contextmanager
def user_errors(what: str, no_credentials: str = "--dry-run needs none"):
    """Turn credential, region, endpoint and API errors raised inside into one UserError line that says what
    to do. Used around boto3 calls (`aws_call`) and around whole SDK flows (`sm.sdk.sdk_session`).
    `no_credentials`: what the missing-credentials line adds to how to configure them."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise UserError(f"{what}: no AWS credentials found (aws configure, AWS_PROFILE, or "
                        f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY{'; ' + no_credentials if no_credentials else ''})"
                        ) from None
    except NoRegionError:
        raise UserError(f"{what}: no AWS region (pass --region or set AWS_REGION)") from None
    except ProfileNotFound as e:
        raise UserError(f"{what}: {e} (see aws configure list-profiles)") from None
    except EndpointConnectionError as e:
        raise UserError(f"{what}: cannot reach {e.kwargs.get('endpoint_url', 'the endpoint')} (network, "
                        "--region or --endpoint-url)") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "error")
        hint = _HINTS.get(code)
        msg = " ".join(str(err.get("Message", e)).split())
        raise UserError(f"{what}: {code}: {msg}" + (f" ({hint})" if hint else "")) from None
    except BotoCoreError as e:
        raise UserError(f"{what}: {' '.join(str(e).split())}") from None


def aws_call(what: str, fn, *args, no_credentials: str = "--dry-run needs none", **kw):
    """Run a boto3 call; turn credential, endpoint and API errors into one UserError line (`no_credentials`: as
    for `user_errors`)."""
    with user_errors(what, no_credentials):
        return fn(*args, **kw)


def not_found(e: Exception) -> bool:
    """Whether an `aws_call` error says the resource does not exist (services word it differently:
    ResourceNotFound, "Could not find endpoint", "... does not exist", "not found")."""
    text = str(e).lower()
    return any(s in text for s in ("resourcenotfound", "could not find", "does not exist", "not found"))


def partition(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_ROLE_NAME = re.compile(r"^(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")


def role_arn(role: str, account: str | None, region: str) -> str:
    """An execution role ARN as given, or a role name (optionally with its path, e.g.
    `service-role/AmazonSageMaker-ExecutionRole-...`) expanded with `account`. `account` may be None when the
    role is already an ARN."""
    role = role.strip()
    if role.startswith("arn:"):
        if not _ROLE_ARN.match(role):
            raise UserError(f"--role {role!r}: not an IAM role ARN (expected arn:aws:iam::<12-digit account>:role/"
                            "<name>, or just the role name)")
        return role
    if not _ROLE_NAME.match(role.removeprefix("role/")):
        raise UserError(f"--role {role!r}: neither a role ARN nor a role name (letters, digits and +=,.@_- only)")
    if account is None:
        raise ValueError("account needed to expand a role name")
    return f"arn:{partition(region)}:iam::{account}:role/{role.removeprefix('role/')}"


# ----------------------------------------------------------------------------------------------- ECR
#: what the missing-credentials line adds for the ECR steps (build_and_push.sh runs them; it has no --dry-run)
ECR_NO_CREDENTIALS = "build_and_push.sh --no-push builds the image without them"


def _ecr_call(what: str, fn, **kw):
    return aws_call(what, fn, no_credentials=ECR_NO_CREDENTIALS, **kw)


def account_id(region=None, profile=None, endpoint_url=None, no_credentials: str = ECR_NO_CREDENTIALS) -> str:
    """The caller's account (STS); `no_credentials`: what the missing-credentials line adds (the ECR steps' hint
    unless the command has its own way without them)."""
    sts = client("sts", region, profile, endpoint_url)
    return aws_call("STS get-caller-identity", sts.get_caller_identity, no_credentials=no_credentials)["Account"]


def ensure_repository(name: str, mutability: str = "MUTABLE", region=None, profile=None,
                      endpoint_url=None) -> tuple[str, bool]:
    """Create the ECR repository (scan on push) unless it exists. -> (repository URI, created?)."""
    ecr = client("ecr", region, profile, endpoint_url)
    try:
        repos = _ecr_call("ECR describe-repositories", ecr.describe_repositories, repositoryNames=[name])
        return repos["repositories"][0]["repositoryUri"], False
    except UserError as e:
        if "RepositoryNotFoundException" not in str(e):
            raise
    repo = _ecr_call("ECR create-repository", ecr.create_repository, repositoryName=name,
                     imageScanningConfiguration={"scanOnPush": True}, imageTagMutability=mutability)["repository"]
    return repo["repositoryUri"], True


def login_password(region=None, profile=None, endpoint_url=None) -> str:
    import base64

    ecr = client("ecr", region, profile, endpoint_url)
    data = _ecr_call("ECR get-authorization-token", ecr.get_authorization_token)["authorizationData"][0]
    return base64.b64decode(data["authorizationToken"]).decode().split(":", 1)[1]
