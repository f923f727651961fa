"""Checks every `sm` job kind and the pipeline make before any request: S3 URIs, SageMaker names and instance
types. Each raises a one-line `UserError` naming the flag."""

from __future__ import annotations

import logging
import re

from ..errors import UserError
from . import cost

log = logging.getLogger("bincounter")

DEFAULT_INSTANCE = "ml.g5.xlarge"
NAME_RE = re.compile(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,62}")  # endpoints, jobs, pipelines, model package groups
_INSTANCE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.(medium|large|xlarge|[0-9]+xlarge)$")


def check_s3_uri(flag: str, uri: str | None) -> None:
    if uri is not None and not (uri.startswith("s3://") and len(uri) > 5):
        raise UserError(f"{flag} {uri!r}: must be an s3:// URI (s3://bucket/prefix)")


def check_name(flag: str, name: str | None) -> None:
    if name is not None and not NAME_RE.fullmatch(name):
        raise UserError(f"{flag} {name!r}: SageMaker names are letters, digits and single hyphens, "
                        "up to 63 characters, starting with a letter or digit")


def check_instance_type(itype: str | None, flag: str = "--instance-type") -> None:
    """SageMaker names instance types ml.<family>.<size>; EC2's name (g5.xlarge) is refused, naming the ml. one.
    A name of another shape (ml.g5.xlarg) is refused with the closest priced type; a well-formed type the price
    table lacks is warned about with the closest priced one (the cost line then says it is unknown)."""
    if itype is None:
        return
    if not itype.startswith("ml."):
        fix = "ml." + (itype[3:] if itype.lower().startswith("ml.") else itype)
        raise UserError(f"{flag} {itype!r}: SageMaker instance types start with 'ml.' (did you mean "
                        f"{fix!r}?)")
    priced = cost.instance_types()
    if itype in priced:
        return
    from ..archs import close_matches

    close = close_matches(itype, priced, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]!r}?" if close else "priced types: bincounter sm --help"
    if not _INSTANCE.match(itype):
        raise UserError(f"{flag} {itype!r}: not a SageMaker instance type (ml.FAMILY.SIZE, e.g. "
                        f"{DEFAULT_INSTANCE}; {hint})")
    if close:
        log.warning("%s %s is not in the price table (the closest priced type: %s); the cost line needs "
                    "--price-per-hour", flag, itype, close[0])
