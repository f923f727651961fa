"""AWS plumbing shared by every command that talks to AWS (ECR now; S3 and SageMaker use it too):
region and credential resolution with one-line errors, and `--endpoint-url` for S3-compatible or test
endpoints (moto). boto3 is imported lazily: the trainer and the image never need it."""

from __future__ import annotations

import os

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


def aws_call(what: str, fn, *args, **kw):
    """Run a boto3 call; turn credential, endpoint and API errors into one UserError line."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    try:
        return fn(*args, **kw)
    except (NoCredentialsError, PartialCredentialsError):
        raise UserError(f"{what}: no AWS credentials found (aws configure, AWS_PROFILE, or "
                        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from None
    except NoRegionError:
        raise UserError(f"{what}: no AWS region (pass --region or set AWS_REGION)") from None
    except EndpointConnectionError as e:
        raise UserError(f"{what}: cannot reach {e.kwargs.get('endpoint_url', 'the endpoint')}") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        raise UserError(f"{what}: {err.get('Code', 'error')}: {err.get('Message', str(e))}") from None
    except BotoCoreError as e:
        raise UserError(f"{what}: {e}") from None


# ----------------------------------------------------------------------------------------------- ECR
def account_id(region=None, profile=None, endpoint_url=None) -> str:
    sts = client("sts", region, profile, endpoint_url)
    return aws_call("STS get-caller-identity", sts.get_caller_identity)["Account"]


def ensure_repository(name: str, mutability: str = "MUTABLE", region=None, profile=None,
                      endpoint_url=None) -> tuple[str, bool]:
    """Create the ECR repository (scan on push) unless it exists. -> (repository URI, created?)."""
    ecr = client("ecr", region, profile, endpoint_url)
    try:
        repos = aws_call("ECR describe-repositories", ecr.describe_repositories, repositoryNames=[name])
        return repos["repositories"][0]["repositoryUri"], False
    except UserError as e:
        if "RepositoryNotFoundException" not in str(e):
            raise
    repo = aws_call("ECR create-repository", ecr.create_repository, repositoryName=name,
                    imageScanningConfiguration={"scanOnPush": True}, imageTagMutability=mutability)["repository"]
    return repo["repositoryUri"], True


def login_password(region=None, profile=None, endpoint_url=None) -> str:
    import base64

    ecr = client("ecr", region, profile, endpoint_url)
    data = aws_call("ECR get-authorization-token", ecr.get_authorization_token)["authorizationData"][0]
    return base64.b64decode(data["authorizationToken"]).decode().split(":", 1)[1]
