"""The options every `bincounter sm` sub-command shares (AWS target, --dry-run, --role, --price-per-hour), and the
one way the CLI turns them into an `AwsTarget`."""

from __future__ import annotations

import textwrap

from ..sm import cost
from ..sm.target import AwsTarget


def text(*paragraphs: str) -> str:
    """A --help description: each paragraph filled to 100 columns."""
    return "\n".join(textwrap.fill(p, 100) for p in paragraphs)


def add_aws_options(p) -> None:
    """--region, --profile, --endpoint-url: what every `sm` command that talks to AWS takes."""
    p.add_argument("--region", help="AWS region (default: the profile's, else AWS_DEFAULT_REGION)")
    p.add_argument("--profile", help="AWS named profile (~/.aws/config); default: the environment's credentials")
    p.add_argument("--endpoint-url", help="one endpoint for every AWS API (tests: moto in server mode)")
    p.add_argument("-v", "--verbose", action="store_true", help="also the SageMaker SDK's own INFO/DEBUG log lines")


def add_common(p, needs_role: bool = False, costed: bool = True) -> None:
    """--region/--profile/--endpoint-url/-v, --dry-run and (needs_role) --role."""
    add_aws_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help=("print the estimated cost and the request(s)" if costed else "print the request(s)")
                   + "; no network call, no credentials needed (values that would come from AWS are "
                     "placeholders)")
    if needs_role:
        p.add_argument("--role", required=True, help="SageMaker execution role: an ARN, or a role name (expanded "
                       "with your account from STS)")


def add_price(p) -> None:
    p.add_argument("--price-per-hour", type=float, metavar="USD",
                   help=f"price of one instance-hour for the cost line (default: the price table of "
                        f"{cost.table()['as_of']}, {cost.table()['region']}; its instance types: "
                        "bincounter sm --help)")


def target(args) -> AwsTarget:
    """Where the command sends its requests; sub-commands without --dry-run are never dry runs."""
    return AwsTarget(args.region, args.profile, args.endpoint_url, bool(getattr(args, "dry_run", False)))
