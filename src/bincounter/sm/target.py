"""`AwsTarget`: where a `bincounter sm` command sends its requests (region, profile, endpoint URL) and whether it
is a dry run. The CLI builds one from its flags; every client-side module below takes it instead of a Namespace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import aws
from ..errors import UserError

log = logging.getLogger("bincounter")

DRY_ACCOUNT = "000000000000"  # the account a dry run names in ARNs (no STS call)
NO_CREDENTIALS = "--dry-run works offline"  # what an sm command's missing-credentials line adds


@dataclass(frozen=True)
class AwsTarget:
    """Where requests go and whether they are sent. From Python: `AwsTarget(region="eu-west-1", dry_run=True)`;
    `dry_run` prints the requests instead of sending them (no network, no credentials)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None  # e.g. a moto server; None: AWS itself
    dry_run: bool = False

    def client(self, service: str = "sagemaker"):
        return aws.client(service, self.region, self.profile, self.endpoint_url)

    def resolved_region(self) -> str:
        """--region, else the profile's/environment's; a dry run with neither falls back to us-east-1 (it needs
        no AWS set-up: the region only appears in ARNs)."""
        if self.dry_run and not (self.region or self.profile):
            try:
                return aws.resolve_region()
            except UserError:
                log.warning("dry run: no region given or configured: us-east-1 assumed (pass --region)")
                return "us-east-1"
        return aws.resolve_region(self.region, self.profile)

    def role_arn(self, role: str, region: str) -> str:
        """The execution role ARN; a role name is expanded with the account (STS; a placeholder in a dry run)."""
        if role.strip().startswith("arn:"):
            return aws.role_arn(role, None, region)
        aws.role_arn(role, DRY_ACCOUNT, region)  # the name's syntax, before any call
        if self.dry_run:
            account = DRY_ACCOUNT
            log.warning("dry run: --role %s expanded with the placeholder account %s (a real run reads the account "
                        "from STS)", role, account)
        else:
            account = aws.account_id(region, self.profile, self.endpoint_url, no_credentials=NO_CREDENTIALS)
        arn = aws.role_arn(role, account, region)
        log.info("role: %s", arn)
        return arn
