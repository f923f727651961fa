"""What every `sm` job kind prints, in one shape: the cost line (stderr, before any request), a dry run's requests
(stdout, one JSON document each), and what a real run created (one JSON line on stdout; the console link, how to
undo it and what to do next on stderr)."""

from __future__ import annotations

import json
import logging
import sys

from ..errors import UserError
from . import validate

log = logging.getLogger("bincounter")


def cost(line: str) -> None:
    """Printed before anything is requested, also with -q."""
    print(line, file=sys.stderr, flush=True)


def print_request(api: str, request: dict, service: str | None = None) -> None:
    """One request of a dry run: {"api": ..., "request": ...}, one JSON document on stdout, after botocore's
    offline validation of it against the API's input shape (`validate.check`; a failure is a bincounter bug)."""
    validate.check(api, request, service)
    print(json.dumps({"api": api, "request": request}, indent=2, sort_keys=True))


def captured(requests: list[dict], want: str) -> None:
    """A dry run's requests as the SDK was about to send them; an error if it stopped before `want`."""
    for c in requests:
        print_request(c["api"], c["request"])
    if not any(c["api"] == want for c in requests):
        raise UserError(f"dry run: the SDK stopped before {want} (it called {[c['api'] for c in requests]})")


def created(kind: str, name: str, arn: str | None, link: str, undo: str, nxt: str) -> None:
    print(json.dumps({"created": kind, "name": name, "arn": arn}))
    log.info("console: %s", link)
    log.info("undo:    %s", undo)
    log.info("next:    %s", nxt)
