"""`bincounter ecr ...`: the small ECR/STS helpers `build_and_push.sh` calls (internal, not listed in
`bincounter --help`), each failure one line."""

from __future__ import annotations

import logging
import sys

from .base import Formatter

log = logging.getLogger("bincounter")


def cmd_ecr(args) -> int:
    from .. import aws

    kw = {"region": args.region, "profile": args.profile, "endpoint_url": args.endpoint_url}
    if args.ecr_command == "region":
        print(aws.resolve_region(args.region, args.profile))
    elif args.ecr_command == "account":
        print(aws.account_id(**kw))
    elif args.ecr_command == "ensure-repo":
        uri, created = aws.ensure_repository(args.name, args.mutability, **kw)
        log.info("%s ECR repository %s", "created" if created else "found", uri)
        print(uri)
    elif args.ecr_command == "login-password":
        sys.stdout.write(aws.login_password(**kw))  # for `docker login --password-stdin` only
    return 0


def register(sub) -> None:
    # internal (build_and_push.sh), hidden from `bincounter --help`: no help= at all, since Python 3.11's argparse
    # lists help=argparse.SUPPRESS as "==SUPPRESS==" (a sub-command is listed only when it has a help text)
    ecr = sub.add_parser("ecr", formatter_class=Formatter,
                         description="Small ECR/STS helpers for build_and_push.sh: every failure is one line.")
    esub = ecr.add_subparsers(dest="ecr_command", required=True, metavar="ACTION")
    for name, text in [("region", "print the resolved region"), ("account", "print the AWS account id (STS)"),
                       ("ensure-repo", "create the repository if missing (scan on push); print its URI"),
                       ("login-password", "print the registry password to stdout (pipe it to "
                                          "`docker login --password-stdin`)")]:
        ep = esub.add_parser(name, help=text, formatter_class=Formatter)
        ep.add_argument("--region")
        ep.add_argument("--profile")
        ep.add_argument("--endpoint-url", help="AWS API endpoint (tests, moto)")
        if name == "ensure-repo":
            ep.add_argument("name")
            ep.add_argument("--mutability", choices=["MUTABLE", "IMMUTABLE"], default="MUTABLE")
        ep.set_defaults(func=cmd_ecr)
