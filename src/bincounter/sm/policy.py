"""`sm policy`: the IAM policy a SageMaker execution role needs for the `sm` commands a user runs, scoped to the ARNs
given (S3 prefixes read and written, the ECR repository, CloudWatch logs and metrics, the KMS key, the VPC's network
interfaces), and the trust policy that lets SageMaker (of this account only) assume it. `check` validates a policy
document's structure and size before it is printed or sent; `create_role` makes the role from both (CreateRole +
PutRolePolicy; printed in a dry run).

What SageMaker does with the role, per command: training/tuning read the channels and write the output
(model.tar.gz, checkpoints, profiler reports) and logs and metrics; a model (deploy, batch) pulls the image and
reads model.tar.gz, data capture and batch transform write to S3; a blue/green update (`sm update`) has SageMaker
read its rollback alarms (cloudwatch:DescribeAlarms); a VPC job creates and deletes network interfaces in the
subnets; a KMS key is used for volumes and objects (SageMaker needs grants for volumes). The caller's own
permissions (sagemaker:Create*, iam:PassRole on this role, application-autoscaling for --autoscale) are not this
role's.

`pipeline` (never in the default): what a SageMaker Pipeline's role needs to run its steps (create, watch and stop
processing, training and tuning jobs, register the model, pass the role to the steps). A role that can create jobs
and pass itself lets any container running with it start more jobs (cost) or outlive its job (persistence), so
jobs and endpoints started by hand get a role without it; the pipeline gets its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..aws import partition
from ..errors import UserError
from .checks import check_s3_uri
from .platform import check_kms_key

COMMANDS = ("train", "tune", "deploy", "update", "batch", "pipeline")
DEFAULT_COMMANDS = tuple(c for c in COMMANDS if c != "pipeline")  # a job's role cannot start jobs
VERSION = "2012-10-17"
INLINE_LIMIT = 10240  # IAM: an inline role policy's characters (whitespace not counted)
POLICY_NAME = "bincounter-sm"
_ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9*]+$")
_ECR_URI = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([a-z0-9._/-]+?)"
                     r"(:[\w.-]+|@sha256:\w+)?$")
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
    commands: tuple[str, ...] = DEFAULT_COMMANDS
    role_name: str | None = None  # the role itself (a pipeline passes it to its steps)
    alarms: tuple[str, ...] = ()  # `sm update --alarm` names (besides the bincounter-* ones it creates)


def _bucket_prefix(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def _is_object(uri: str) -> bool:
    """s3://b/models/model.tar.gz names one object (its last segment has an extension); s3://b/bins, s3://b/v1.2/
    are prefixes."""
    last = uri[5:].partition("/")[2].rsplit("/", 1)[-1]
    return not uri.endswith("/") and "." in last.strip(".")


def _repo_arn(ref: str, account: str, region: str) -> str:
    if ref.startswith("arn:"):
        if not re.match(r"^arn:aws[a-z-]*:ecr:[a-z0-9-]+:\d{12}:repository/.+$", ref):
            raise UserError(f"--ecr {ref}: not an ECR repository ARN (arn:aws:ecr:REGION:ACCOUNT:repository/NAME)")
        return ref
    if m := _ECR_URI.match(ref):
        return f"arn:{partition(m.group(2))}:ecr:{m.group(2)}:{m.group(1)}:repository/{m.group(3)}"
    if not _REPO.match(ref):
        raise UserError(f"--ecr {ref!r}: not a repository name, ARN or image URI (ACCOUNT.dkr.ecr.REGION."
                        "amazonaws.com/NAME:TAG)")
    return f"arn:{partition(region)}:ecr:{region}:{account}:repository/{ref}"


def _key_arn(key: str, account: str, region: str) -> str:
    check_kms_key(key, region)
    if "alias/" in key:
        raise UserError(f"--kms-key {key}: an IAM policy names the key itself, not an alias (aws kms describe-key "
                        f"--key-id {key} gives its ARN)")
    return key if key.startswith("arn:") else f"arn:{partition(region)}:kms:{region}:{account}:key/{key}"


def _s3_statements(read: tuple[str, ...], write: tuple[str, ...], p: str) -> list[dict]:
    """An object URI gives the object's ARN (and lists only its key); a prefix gives prefix/* (and lists under it)."""
    for flag, uris in (("--s3-read", read), ("--s3-write", write)):
        for u in uris:
            check_s3_uri(flag, u)

    def arn(uri: str) -> str:
        b, key = _bucket_prefix(uri)
        return f"arn:{p}:s3:::{b}/{key}" if _is_object(uri) else f"arn:{p}:s3:::{b}/{key}/*" if key else \
            f"arn:{p}:s3:::{b}/*"

    out = []
    for sid, uris, actions in (("S3Read", read, ["s3:GetObject"]),
                               ("S3Write", write, ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"])):
        if uris:
            out.append({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": sorted({arn(u) for u in uris})})
    by_bucket: dict[str, set[str]] = {}
    for u in read + write:
        b, key = _bucket_prefix(u)
        by_bucket.setdefault(b, set()).update([key] if _is_object(u) else [key, f"{key}/*"] if key else ["*"])
    for i, (b, prefixes) in enumerate(sorted(by_bucket.items())):
        out.append({"Sid": f"S3List{i}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                    "Resource": f"arn:{p}:s3:::{b}", "Condition": {"StringLike": {"s3:prefix": sorted(prefixes)}}})
    return out


def _vpc_statements(spec: PolicySpec, p: str) -> list[dict]:
    """The Describe* calls take no resource (IAM: "*" only); creating an interface is scoped by its subnet and group
    resources, managing and deleting one by a condition on its subnet (ec2:Subnet)."""
    arn = f"arn:{p}:ec2:{spec.region}:{spec.account}"
    subnets = [f"{arn}:subnet/{s}" for s in spec.subnets]
    return [{"Sid": "VpcDescribe", "Effect": "Allow", "Action": ["ec2:DescribeDhcpOptions",
             "ec2:DescribeNetworkInterfaces", "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets",
             "ec2:DescribeVpcs"], "Resource": "*"},
            {"Sid": "VpcEniCreate", "Effect": "Allow", "Action": ["ec2:CreateNetworkInterface"],
             "Resource": [f"{arn}:network-interface/*", *subnets,
                          *(f"{arn}:security-group/{g}" for g in spec.security_groups)]},
            {"Sid": "VpcEniManage", "Effect": "Allow", "Action": ["ec2:CreateNetworkInterfacePermission",
             "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission"],
             "Resource": f"{arn}:network-interface/*", "Condition": {"ArnEquals": {"ec2:Subnet": subnets}}}]


def _pipeline_statements(spec: PolicySpec, p: str) -> list[dict]:
    """The steps of `sm pipeline` (sm.pipeline_settings.STEP_APIS): processing, training and tuning jobs (created,
    watched, stopped), the Register step's model package (its group is created on the first run when missing), and
    the role passed to the steps' jobs."""
    if not spec.role_name:
        raise UserError("--for pipeline: the role it passes to its steps is unknown: give --create-role NAME or set "
                        "role in the project config")
    kinds = ("training-job", "processing-job", "hyper-parameter-tuning-job", "model", "model-package",
             "model-package-group")
    return [{"Sid": "PipelineSteps", "Effect": "Allow", "Action": [
                "sagemaker:AddTags", "sagemaker:CreateHyperParameterTuningJob", "sagemaker:CreateModel",
                "sagemaker:CreateModelPackage", "sagemaker:CreateModelPackageGroup",
                "sagemaker:CreateProcessingJob", "sagemaker:CreateTrainingJob",
                "sagemaker:DescribeHyperParameterTuningJob", "sagemaker:DescribeModelPackage",
                "sagemaker:DescribeModelPackageGroup", "sagemaker:DescribeProcessingJob",
                "sagemaker:DescribeTrainingJob", "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
                "sagemaker:StopHyperParameterTuningJob", "sagemaker:StopProcessingJob", "sagemaker:StopTrainingJob"],
             "Resource": [f"arn:{p}:sagemaker:{spec.region}:{spec.account}:{k}/*" for k in kinds]},
            {"Sid": "PassThisRoleToSteps", "Effect": "Allow", "Action": ["iam:PassRole"],
             "Resource": f"arn:{p}:iam::{spec.account}:role/{spec.role_name}",
             "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}}]


def execution_policy(spec: PolicySpec) -> dict:
    """The role's permissions policy for `spec` (checked with `check`)."""
    unknown = [c for c in spec.commands if c not in COMMANDS]
    if unknown:
        raise UserError(f"--for {unknown[0]}: one of {', '.join(COMMANDS)}")
    if not re.match(r"^\d{12}$", spec.account):
        raise UserError(f"--account {spec.account!r}: a 12-digit AWS account id")
    a, r, p = spec.account, spec.region, partition(spec.region)
    st = _s3_statements(spec.s3_read, spec.s3_write, p)
    if spec.ecr:
        st.append({"Sid": "EcrPull", "Effect": "Allow", "Action": ["ecr:BatchCheckLayerAvailability",
                   "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                   "Resource": sorted({_repo_arn(x, a, r) for x in spec.ecr})})
        st.append({"Sid": "EcrToken", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"})
    st.append({"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
               "logs:DescribeLogStreams", "logs:PutLogEvents"],
               "Resource": [f"arn:{p}:logs:{r}:{a}:log-group:/aws/sagemaker/*",
                            f"arn:{p}:logs:{r}:{a}:log-group:/aws/sagemaker/*:log-stream:*"]})
    st.append({"Sid": "Metrics", "Effect": "Allow", "Action": ["cloudwatch:PutMetricData"], "Resource": "*",
               "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "aws/sagemaker/*"]}}})
    if "update" in spec.commands:  # SageMaker reads the rollback alarms with the endpoint's role (sm.alarms.names)
        st.append({"Sid": "RollbackAlarms", "Effect": "Allow", "Action": ["cloudwatch:DescribeAlarms"],
                   "Resource": [f"arn:{p}:cloudwatch:{r}:{a}:alarm:{n}" for n in ("bincounter-*", *spec.alarms)]})
    elif spec.alarms:
        raise UserError("--alarm: the rollback alarms of sm update (add update to --for)")
    if spec.kms_key:
        key = _key_arn(spec.kms_key, a, r)
        st.append({"Sid": "KmsUse", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt",
                   "kms:GenerateDataKey", "kms:ReEncrypt*"], "Resource": key})
        st.append({"Sid": "KmsGrantsForVolumes", "Effect": "Allow", "Action": ["kms:CreateGrant"], "Resource": key,
                   "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}})
    if spec.subnets:
        st.extend(_vpc_statements(spec, p))
    if "pipeline" in spec.commands:
        st.extend(_pipeline_statements(spec, p))
    doc = {"Version": VERSION, "Statement": st}
    check(doc)
    return doc


def trust_policy(account: str, region: str) -> dict:
    """SageMaker may assume the role, only on behalf of this account's resources in this region (the confused
    deputy guard: aws:SourceAccount + aws:SourceArn)."""
    doc = {"Version": VERSION, "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account},
                      "ArnLike": {"aws:SourceArn": f"arn:{partition(region)}:sagemaker:{region}:{account}:*"}}}]}
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
        if any(x.endswith(":*") for x in actions):
            raise ValueError(f"statement {s.get('Sid')}: a whole service's actions ({actions})")
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
