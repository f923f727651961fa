"""The options every `bincounter sm` sub-command shares (AWS target, --dry-run, --role, --price-per-hour, --config,
the platform settings), and the one way the CLI turns them into an `AwsTarget`, a role and `PlatformSettings`,
each flag resolved against the project config (`sm.project_config`)."""

from __future__ import annotations

import argparse
import logging
import textwrap

from .. import __version__
from ..errors import UserError
from ..sm import cost, project_config
from ..sm.platform import INTER_CONTAINER_COST, PlatformSettings, parse_tags, split_ids
from ..sm.target import AwsTarget
from .base import not_empty

log = logging.getLogger("bincounter")


def text(*paragraphs: str) -> str:
    """A --help description: each paragraph filled to 100 columns."""
    return "\n".join(textwrap.fill(p, 100) for p in paragraphs)


def add_aws_options(p) -> None:
    """--region, --profile, --endpoint-url: what every `sm` command that talks to AWS takes."""
    p.add_argument("--region", help="AWS region (default: the profile's, else AWS_DEFAULT_REGION)")
    p.add_argument("--profile", help="AWS named profile (~/.aws/config); default: the environment's credentials")
    p.add_argument("--endpoint-url", help="one endpoint for every AWS API (tests: moto in server mode)")
    p.add_argument("-v", "--verbose", action="store_true", help="also the SageMaker SDK's own INFO/DEBUG log lines")
    p.add_argument("--config", metavar="FILE", help=project_config.HELP)


def add_common(p, needs_role: bool = False, costed: bool = True) -> None:
    """--region/--profile/--endpoint-url/-v, --dry-run and (needs_role) --role."""
    add_aws_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help=("print the estimated cost and the request(s)" if costed else "print the request(s)")
                   + "; no network call, no credentials needed (values that would come from AWS are "
                     "placeholders)")
    if needs_role:
        p.add_argument("--role", help="SageMaker execution role: an ARN, or a role name (expanded with your account "
                       "from STS); required here or as role in the project config (bincounter sm policy prints "
                       "what it needs)")


def add_price(p) -> None:
    p.add_argument("--price-per-hour", type=float, metavar="USD",
                   help=f"price of one instance-hour for the cost line (default: the price table of "
                        f"{cost.table()['as_of']}, {cost.table()['region']}; its instance types: "
                        "bincounter sm --help)")


def add_tag_option(p) -> None:
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag every resource the command creates, "
                   "repeatable; added to the project config's tags and the defaults project=bincounter, "
                   f"bincounter:version={__version__}")


def add_platform_options(p, kind: str) -> None:
    """--tag, and by `kind` (train, tune, deploy, batch, pipeline, process) the VPC, KMS, isolation and encryption flags
    (a pipeline's training steps run isolated anyway: no --isolation)."""
    add_tag_option(p)
    if kind != "batch":
        where = {"train": "the training instances", "tune": "the training instances",
                 "pipeline": "every step's instances", "process": "the Processing job"}.get(kind,
                                                                                         "the model's containers")
        p.add_argument("--subnets", metavar="ID,ID", type=not_empty,
                       help=f"run {where} in these VPC subnets (subnet-...; with --security-groups); ids are checked "
                            "offline, that they share one VPC is not")
        p.add_argument("--security-groups", metavar="ID,ID", type=not_empty,
                       help="VPC security groups (sg-...; with --subnets)")
    if kind not in ("batch", "pipeline", "process"):
        p.add_argument("--isolation", action=argparse.BooleanOptionalAction, default=None,
                       help="network isolation (EnableNetworkIsolation): the container reaches no network "
                            "(--no-isolation: off, whatever the project config says); "
                            + ("ImageNet weights must then come from --pretrained (or --hp pretrained=false)"
                               if kind in ("train", "tune") else "the model must not need one"))
    if kind in ("train", "tune", "pipeline"):
        p.add_argument("--inter-container-encryption", action=argparse.BooleanOptionalAction, default=None,
                       help=f"encrypt traffic between training instances (--no-inter-container-encryption: off, "
                            f"whatever the project config says); {INTER_CONTAINER_COST}")
    what = {"train": "the training volume and output (model.tar.gz)", "tune": "every trial's volume and output",
            "deploy": "the endpoint's storage volume and data capture",
            "batch": "the transform job's volume and output",
            "pipeline": "every step's volumes and outputs and the registered model package",
            "process": "the Processing job's volume and output"}[kind]
    p.add_argument("--kms-key", metavar="KEY", type=not_empty,
                   help=f"customer KMS key (id, ARN; alias where the API takes one) for {what}")


class Default(str):
    """A flag's default that --help shows as usual but that the project config may replace (a value the user
    typed is a plain str)."""


def instance_type(args) -> str | None:
    """--instance-type if typed, else the project config's, else the flag's default (None: the command's own)."""
    given = args.instance_type
    default = str(given) if isinstance(given, Default) else None
    value, source = project_config.resolve(given if default is None else None, "instance_type", config(args),
                                           "--instance-type", default)
    if source != "default":
        _say(args, "instance_type", value, source)
    return value


def config(args) -> project_config.ProjectConfig:
    return project_config.load(getattr(args, "config", None))


def _say(args, what: str, value, source: str) -> None:
    if getattr(args, "dry_run", False) and value not in (None, (), [], {}) and not (source == "default"
                                                                                    and value is False):
        log.info("setting: %s = %s (from %s)", what, value, source)


def target(args) -> AwsTarget:
    """Where the command sends its requests; sub-commands without --dry-run are never dry runs. --region and
    --profile fall back to the project config's."""
    cfg = config(args)
    region, rsrc = project_config.resolve(args.region, "region", cfg, "--region")
    profile, psrc = project_config.resolve(args.profile, "profile", cfg, "--profile")
    _say(args, "region", region, rsrc)
    _say(args, "profile", profile, psrc)
    return AwsTarget(region, profile, args.endpoint_url, bool(getattr(args, "dry_run", False)))


def role(args) -> str:
    """--role, else the project config's role."""
    value, source = project_config.resolve(args.role, "role", config(args), "--role")
    if not value:
        raise UserError("no execution role: pass --role ARN_OR_NAME or set role in the project config "
                        f"(./{project_config.DEFAULT_FILE}, [sm] role = ...)")
    _say(args, "role", value, source)
    return value


def tag_settings(args) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """(the default tags: project, bincounter:version and the project config's tags; the --tag flags)."""
    cfg = config(args)
    project, source = project_config.resolve(None, "project", cfg, "", "bincounter")
    defaults = {"project": project, "bincounter:version": __version__, **cfg.get("tags", {})}
    _say(args, "default tags", defaults, source if "tags" not in cfg.values else cfg.source)
    tags = parse_tags(getattr(args, "tag", None))
    _say(args, "tags", dict(tags), "--tag")
    return defaults, tags


def platform_settings(args) -> PlatformSettings:
    """The platform flags the command has, each resolved against the project config, with the default tags."""
    cfg = config(args)

    def pick(attr, key, flag, default=None, convert=lambda v: v):
        given = getattr(args, attr, None)
        value, source = project_config.resolve(convert(given) if given is not None else None, key, cfg, flag,
                                               default)
        if not hasattr(args, attr) and source != "default":  # a setting this command does not take
            if getattr(args, "dry_run", False):
                why = (" (sm batch: the model's VPC and isolation apply)"
                       if key in ("subnets", "security_groups", "isolation") else "")
                log.info("setting: %s from %s is not used by this command%s", key, source, why)
            return default
        _say(args, key, value, source)
        return value

    defaults, tags = tag_settings(args)
    return PlatformSettings(
        tags=tags, subnets=tuple(pick("subnets", "subnets", "--subnets", (), split_ids)),
        security_groups=tuple(pick("security_groups", "security_groups", "--security-groups", (), split_ids)),
        kms_key=pick("kms_key", "kms_key", "--kms-key"), isolation=bool(pick("isolation", "isolation",
                                                                             "--isolation", False)),
        inter_container_encryption=bool(pick("inter_container_encryption", "inter_container_encryption",
                                             "--inter-container-encryption", False)),
    ).with_default_tags(defaults)
