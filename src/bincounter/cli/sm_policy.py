"""`bincounter sm policy`: its flags (what the execution role must reach), each resolved against the project
config, turned into a `PolicySpec` for `sm.policy`; prints the policies, or creates the role from them."""

from __future__ import annotations

import json
import logging
import re

from .. import aws
from ..errors import UserError
from ..sm import policy, printing, project_config
from ..sm.platform import split_ids
from ..sm.target import DRY_ACCOUNT, NO_CREDENTIALS
from .sm_common import add_common, config, target, text

log = logging.getLogger("bincounter")


def add_policy(sub, formatter) -> None:
    p = sub.add_parser("policy", help="the IAM policy and trust policy the SageMaker execution role needs",
                       formatter_class=formatter, description=text(
                           "Print the least-privilege IAM policy of the SageMaker execution role for the sm commands "
                           "you will run (--for), scoped to the S3 prefixes, ECR repository, KMS key and VPC "
                           "given (each also from the project config), plus CloudWatch logs and metrics under "
                           "/aws/sagemaker/; and the trust policy letting SageMaker assume it for this account "
                           "only. Both are checked (grammar, IAM's size limit) before they are printed.",
                           "--create-role NAME creates the role from them (CreateRole + PutRolePolicy "
                           f"{policy.POLICY_NAME}; --dry-run prints those requests). The caller's own permissions "
                           "(sagemaker:Create*, iam:PassRole on this role, autoscaling) are not part of it.",
                           "--for pipeline (never in the default) adds what a pipeline's role needs to run its steps: "
                           "create, watch and stop jobs, register the model, and pass itself to the steps. Give the "
                           "pipeline a role of its own (--create-role bincounter-pipeline --for train,tune,pipeline): "
                           "a role that can start jobs and pass itself lets any container running with it do so."))
    add_common(p, costed=False)
    p.add_argument("--account", help="12-digit account id (default: from the project config's role ARN, else STS)")
    p.add_argument("--for", dest="commands", default=",".join(policy.DEFAULT_COMMANDS), metavar="CMD,CMD",
                   help=f"the sm commands the role serves, of {', '.join(policy.COMMANDS)} (default: all but "
                        "pipeline; pipeline needs the role's name: --create-role or role in the project config)")
    p.add_argument("--s3-read", action="append", default=[], metavar="S3_URI",
                   help="prefix the jobs read (channels, pretrained weights), or one object (a last segment with an "
                        "extension: s3://b/models/model.tar.gz to deploy); repeatable")
    p.add_argument("--s3-write", action="append", default=[], metavar="S3_URI",
                   help="prefix the jobs write (training output, checkpoints, data capture, batch output); "
                        "also read; repeatable")
    p.add_argument("--ecr", action="append", default=[], metavar="REPO",
                   help="ECR repository the image comes from: a name, ARN or image URI; repeatable")
    p.add_argument("--kms-key", metavar="KEY", help="the customer KMS key (id or key ARN) of the jobs")
    p.add_argument("--subnets", metavar="ID,ID", help="VPC subnets of the jobs (network interfaces there)")
    p.add_argument("--security-groups", metavar="ID,ID", help="their security groups")
    p.add_argument("--alarm", action="append", default=[], metavar="NAME",
                   help="an existing CloudWatch alarm sm update --alarm rolls back on (the endpoint's role must "
                        "read it; the bincounter-* alarms sm update creates are always in); repeatable")
    p.add_argument("--create-role", metavar="NAME", help="create the role with these policies")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag the role (with --create-role), "
                   "repeatable; added to the project config's tags and the default ones")
    p.set_defaults(func=cmd_policy)


def _account(args, cfg, region: str) -> str:
    if args.account:
        return args.account
    role = cfg.get("role") or ""
    if m := re.match(r"^arn:aws[a-z-]*:iam::(\d{12}):role/", role):
        return m.group(1)
    if args.dry_run:
        log.warning("dry run: the account is the placeholder %s (pass --account; a real run reads it from STS)",
                    DRY_ACCOUNT)
        return DRY_ACCOUNT
    hint = NO_CREDENTIALS if args.create_role else f"or pass --account 123456789012; {NO_CREDENTIALS}"
    return aws.account_id(region, args.profile, args.endpoint_url, no_credentials=hint)


def cmd_policy(args) -> int:
    cfg = config(args)
    t = target(args)
    try:
        region = t.resolved_region()
    except UserError as e:  # printing the policy needs no AWS: the region only goes into its ARNs
        raise UserError(f"{e}; printing the policy needs no AWS with --region us-east-1 --account 123456789012, "
                        "or --dry-run") from None

    def pick(value, key, flag, default=None):
        return project_config.resolve(value, key, cfg, flag, default)[0]

    configured = pick(None, "role", "--role") or ""  # an ARN (its path kept) or a name
    role_name = args.create_role or configured.partition(":role/")[2] or configured or None
    spec = policy.PolicySpec(
        account=_account(args, cfg, region), region=region, s3_read=tuple(args.s3_read),
        s3_write=tuple(args.s3_write), ecr=tuple(args.ecr), kms_key=pick(args.kms_key, "kms_key", "--kms-key"),
        subnets=tuple(split_ids(args.subnets) or pick(None, "subnets", "--subnets", ())),
        security_groups=tuple(split_ids(args.security_groups) or pick(None, "security_groups", "", ())),
        commands=tuple(split_ids(args.commands)), role_name=role_name, alarms=tuple(args.alarm))
    if bool(spec.subnets) != bool(spec.security_groups):
        raise UserError("--subnets and --security-groups go together")
    if not (spec.s3_read or spec.s3_write):
        log.warning("no --s3-read/--s3-write: the role can reach no S3 data (jobs need their channels and output)")
    doc, trust = policy.execution_policy(spec), policy.trust_policy(spec.account, region)
    if not args.create_role:
        print(json.dumps({"policy": doc, "trust_policy": trust}, indent=2))
        return 0
    from .sm_common import platform_settings

    tags = dict(platform_settings(args).tags)
    requests = policy.role_requests(args.create_role, doc, trust, tags)
    if args.dry_run:
        for api, req in requests:
            printing.print_request(api, req, service="iam")
        return 0
    iam = t.client("iam")
    created = aws.aws_call("CreateRole", iam.create_role, **requests[0][1])
    aws.aws_call("PutRolePolicy", iam.put_role_policy, **requests[1][1])
    arn = created["Role"]["Arn"]
    printing.created("IAM role", args.create_role, arn, f"https://console.aws.amazon.com/iam/home#/roles/"
                     f"{args.create_role}", f"aws iam delete-role-policy --role-name {args.create_role} --policy-name "
                     f"{policy.POLICY_NAME} && aws iam delete-role --role-name {args.create_role}",
                     f"use it: --role {arn} (or role = \"{arn}\" in the project config)")
    return 0
