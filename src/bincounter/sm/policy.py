"""`sm policy`: the IAM policy a SageMaker execution role needs for the `sm` commands a user runs, scoped to the ARNs
given (S3 prefixes read and written, the ECR repository, CloudWatch logs and metrics, the KMS key, the VPC's network
interfaces), and the trust policy that lets SageMaker (of this account only) assume it. `check` validates a policy
document's structure and size before it is printed or sent; `create_role` makes the role from both (CreateRole +
PutRolePolicy; printed in a dry run).

What SageMaker does with the role, per command: training/tuning read the channels and write the output
(model.tar.gz, checkpoints, profiler reports) and logs and metrics; a model (deploy, batch) pulls the image and
reads model.tar.gz, data capture and batch transform write to S3; a VPC job creates and deletes network interfaces
in the subnets; a KMS key is used for volumes and objects (SageMaker needs grants for volumes). The caller's own
permissions (sagemaker:Create*, iam:PassRole on this role, application-autoscaling for --autoscale) are not this
role's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import UserError
from .checks import check_s3_uri
from .platform import check_kms_key

COMMANDS = ("train", "tune", "deploy", "batch", "pipeline")
VERSION = "2012-10-17"
INLINE_LIMIT = 10240  # IAM: an inline role policy's characters (whitespace not counted)
POLICY_NAME = "bincounter-sm"
_ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9*]+$")
_ECR_URI = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([a-z0-9._/-]+?)(:[\w.-]+|@sha256:\w+)?$")
_REPO = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")


@dataclass(frozen=True)
class PolicySpec:
    """What the role must reach. `s3_read`/`s3_write`: s3://bucket/prefix (write implies read); `ecr`: repository
    names, ARNs or image URIs; `commands`: the `sm` commands it serves (COMMANDS)."""

    account: str
    region: str
    s3_read: tuple[str, ...] = ()
    s3_write: tuple[str, ...] = ()
    ecr: tuple[str, ...] = ()
    kms_key: str | None = None
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    commands: tuple[str, ...] = COMMANDS
    role_name: str | None = None  # the role itself (a pipeline passes it to its steps)


def _bucket_prefix(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def _repo_arn(ref: str, account: str, region: str) -> str:
    if ref.startswith("arn:"):
        if not re.match(r"^arn:aws[a-z-]*:ecr:[a-z0-9-]+:\d{12}:repository/.+$", ref):
            raise UserError(f"--ecr {ref}: not an ECR repository ARN (arn:aws:ecr:REGION:ACCOUNT:repository/NAME)")
        return ref
    if m := _ECR_URI.match(ref):
        return f"arn:aws:ecr:{m.group(2)}:{m.group(1)}:repository/{m.group(3)}"
    if not _REPO.match(ref):
        raise UserError(f"--ecr {ref!r}: not a repository name, ARN or image URI (ACCOUNT.dkr.ecr.REGION."
                        "amazonaws.com/NAME:TAG)")
    return f"arn:aws:ecr:{region}:{account}:repository/{ref}"


def _key_arn(key: str, account: str, region: str) -> str:
    check_kms_key(key, region)
    if "alias/" in key:
        raise UserError(f"--kms-key {key}: an IAM policy names the key itself, not an alias (aws kms describe-key "
                        f"--key-id {key} gives its ARN)")
    return key if key.startswith("arn:") else f"arn:aws:kms:{region}:{account}:key/{key}"


def _s3_statements(read: tuple[str, ...], write: tuple[str, ...]) -> list[dict]:
    for flag, uris in (("--s3-read", read), ("--s3-write", write)):
        for u in uris:
            check_s3_uri(flag, u)
    out = []
    for sid, uris, actions in (("S3Read", read, ["s3:GetObject"]),
                               ("S3Write", write, ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"])):
        if uris:
            objects = [f"arn:aws:s3:::{b}/{p}/*" if p else f"arn:aws:s3:::{b}/*" for b, p in map(_bucket_prefix, uris)]
            out.append({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": sorted(set(objects))})
    by_bucket: dict[str, set[str]] = {}
    for b, p in map(_bucket_prefix, read + write):
        by_bucket.setdefault(b, set()).update([p, f"{p}/*"] if p else ["*"])
    for i, (b, prefixes) in enumerate(sorted(by_bucket.items())):
        out.append({"Sid": f"S3List{i}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                    "Resource": f"arn:aws:s3:::{b}", "Condition": {"StringLike": {"s3:prefix": sorted(prefixes)}}})
    return out


def execution_policy(spec: PolicySpec) -> dict:
    """The role's permissions policy for `spec` (checked with `check`)."""
    unknown = [c for c in spec.commands if c not in COMMANDS]
    if unknown:
        raise UserError(f"--for {unknown[0]}: one of {', '.join(COMMANDS)}")
    if not re.match(r"^\d{12}$", spec.account):
        raise UserError(f"--account {spec.account!r}: a 12-digit AWS account id")
    a, r = spec.account, spec.region
    st = _s3_statements(spec.s3_read, spec.s3_write)
    if spec.ecr:
        st.append({"Sid": "EcrPull", "Effect": "Allow", "Action": ["ecr:BatchCheckLayerAvailability",
                   "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                   "Resource": sorted({_repo_arn(x, a, r) for x in spec.ecr})})
        st.append({"Sid": "EcrToken", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"})
    st.append({"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
               "logs:DescribeLogStreams", "logs:PutLogEvents"],
               "Resource": [f"arn:aws:logs:{r}:{a}:log-group:/aws/sagemaker/*",
                            f"arn:aws:logs:{r}:{a}:log-group:/aws/sagemaker/*:log-stream:*"]})
    st.append({"Sid": "Metrics", "Effect": "Allow", "Action": ["cloudwatch:PutMetricData"], "Resource": "*",
               "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "aws/sagemaker/*"]}}})
    if spec.kms_key:
        key = _key_arn(spec.kms_key, a, r)
        st.append({"Sid": "KmsUse", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt",
                   "kms:GenerateDataKey", "kms:ReEncrypt*"], "Resource": key})
        st.append({"Sid": "KmsGrantsForVolumes", "Effect": "Allow", "Action": ["kms:CreateGrant"], "Resource": key,
                   "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}})
    if spec.subnets:
        st.append({"Sid": "VpcDescribe", "Effect": "Allow", "Action": ["ec2:DescribeDhcpOptions",
                   "ec2:DescribeNetworkInterfaces", "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets",
                   "ec2:DescribeVpcs"], "Resource": "*"})
        eni = f"arn:aws:ec2:{r}:{a}:network-interface/*"
        st.append({"Sid": "VpcEniCreate", "Effect": "Allow", "Action": ["ec2:CreateNetworkInterface"],
                   "Resource": [eni, *(f"arn:aws:ec2:{r}:{a}:subnet/{s}" for s in spec.subnets),
                                *(f"arn:aws:ec2:{r}:{a}:security-group/{g}" for g in spec.security_groups)]})
        st.append({"Sid": "VpcEniManage", "Effect": "Allow", "Action": ["ec2:CreateNetworkInterfacePermission",
                   "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission"], "Resource": eni})
    if "pipeline" in spec.commands:
        kinds = ("training-job", "processing-job", "model", "model-package", "model-package-group")
        st.append({"Sid": "PipelineSteps", "Effect": "Allow", "Action": [
            "sagemaker:AddTags", "sagemaker:CreateModel", "sagemaker:CreateModelPackage",
            "sagemaker:CreateProcessingJob", "sagemaker:CreateTrainingJob", "sagemaker:DescribeModelPackage",
            "sagemaker:DescribeProcessingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopProcessingJob",
            "sagemaker:StopTrainingJob"], "Resource": [f"arn:aws:sagemaker:{r}:{a}:{k}/*" for k in kinds]})
        if spec.role_name:
            st.append({"Sid": "PassThisRoleToSteps", "Effect": "Allow", "Action": ["iam:PassRole"],
                       "Resource": f"arn:aws:iam::{a}:role/{spec.role_name}",
                       "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}})
    doc = {"Version": VERSION, "Statement": st}
    check(doc)
    return doc


def trust_policy(account: str, region: str) -> dict:
    """SageMaker may assume the role, only on behalf of this account's resources in this region (the confused
    deputy guard: aws:SourceAccount + aws:SourceArn)."""
    doc = {"Version": VERSION, "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account},
                      "ArnLike": {"aws:SourceArn": f"arn:aws:sagemaker:{region}:{account}:*"}}}]}
    check(doc, trust=True)
    return doc


def check(doc: dict, trust: bool = False) -> None:
    """The policy grammar's structure (Version, Statements with Effect, Action, Resource or Principal; unique
    Sids) and IAM's size limit; a failure is a bincounter bug (ValueError)."""
    if doc.get("Version") != VERSION or not isinstance(doc.get("Statement"), list) or not doc["Statement"]:
        raise ValueError("a policy needs Version 2012-10-17 and a non-empty Statement list")
    sids = [s["Sid"] for s in doc["Statement"] if "Sid" in s]
    if len(sids) != len(set(sids)):
        raise ValueError(f"duplicate Sids: {sids}")
    for s in doc["Statement"]:
        if s.get("Effect") not in ("Allow", "Deny"):
            raise ValueError(f"statement {s}: Effect must be Allow or Deny")
        actions = s.get("Action")
        actions = [actions] if isinstance(actions, str) else actions
        if not actions or not all(isinstance(x, str) and _ACTION.match(x) for x in actions):
            raise ValueError(f"statement {s.get('Sid')}: bad Action {actions}")
        need = "Principal" if trust else "Resource"
        res = s.get(need)
        if not res:
            raise ValueError(f"statement {s.get('Sid')}: no {need}")
        if not trust:
            for x in [res] if isinstance(res, str) else res:
                if x != "*" and not x.startswith("arn:aws"):
                    raise ValueError(f"statement {s.get('Sid')}: {x} is not an ARN")
    size = len(re.sub(r"\s", "", json.dumps(doc)))
    if size > INLINE_LIMIT:
        raise ValueError(f"policy of {size} characters: IAM takes {INLINE_LIMIT} in an inline policy")


def role_requests(name: str, policy: dict, trust: dict, tags: dict[str, str]) -> list[tuple[str, dict]]:
    """CreateRole and PutRolePolicy for the role `name`."""
    return [("CreateRole", {"RoleName": name, "AssumeRolePolicyDocument": json.dumps(trust),
                            "Description": "SageMaker execution role for bincounter (bincounter sm policy)",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}),
            ("PutRolePolicy", {"RoleName": name, "PolicyName": POLICY_NAME, "PolicyDocument": json.dumps(policy)})]
