"""Offline check of a request against AWS's own API model (botocore's service JSON): every request a dry run prints
goes through `check` first, so a misspelled field, a wrong type, a missing required field (botocore's ParamValidator)
or a value outside what the model documents (an enum, a maximum length or value, a name pattern: `constraints`,
which botocore itself leaves to the service) is found without an AWS account."""

from __future__ import annotations

import functools
import re

from ..errors import UserError

# the services `sm` talks to, searched in this order for an operation's name
SERVICES = ("sagemaker", "application-autoscaling", "cloudwatch", "iam", "s3", "scheduler", "events")


class InvalidRequest(UserError):
    """A request AWS's API model rejects: one line, as a user mistake (a name with spaces, an instance type AWS
    does not know), though it may be a bincounter defect; either way nothing is sent."""


@functools.cache
def _model(service: str):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def operation(api: str, service: str | None = None):
    """botocore's OperationModel for `api` (e.g. "CreateTrainingJob"), in `service` or the first of SERVICES."""
    for name in (service,) if service else SERVICES:
        if api in _model(name).operation_names:
            return _model(name).operation_model(api)
    raise InvalidRequest(f"{api} is no operation of {service or ', '.join(SERVICES)}")


def errors(api: str, request: dict, service: str | None = None) -> str | None:
    """What is wrong with `request` (botocore's report, then `constraints`), None when it is valid."""
    from botocore.validate import ParamValidator

    shape = operation(api, service).input_shape
    report = ParamValidator().validate(request, shape)
    if report.has_errors():
        return report.generate_report()
    problems = constraints(request, shape)
    return "\n".join(problems) if problems else None


@functools.cache
def _pattern(text: str) -> re.Pattern | None:
    try:
        return re.compile(text)
    except re.error:  # a Java-only construct (\p{...}): not checked
        return None


def constraints(value, shape, where: str = "") -> list[str]:
    """The model's enum, max (length or value) and pattern (matched whole, as Java's matches()) for every value in a
    request botocore's types already accept; min is botocore's own check."""
    problems = []
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, v in value.items():
            if name in shape.members:
                problems += constraints(v, shape.members[name], f"{where}.{name}" if where else name)
    elif kind == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            problems += constraints(v, shape.member, f"{where}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        for k, v in value.items():
            problems += constraints(k, shape.key, f"{where} key {k!r}")
            problems += constraints(v, shape.value, f"{where}[{k!r}]")
    if kind == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            problems.append(f"{where}: {value!r} is not one of {', '.join(shape.enum[:8])}"
                            f"{', ...' if len(shape.enum) > 8 else ''}")
        if "pattern" in meta and (rx := _pattern(meta["pattern"])) is not None and not rx.fullmatch(value):
            problems.append(f"{where}: {value[:80]!r} does not match the pattern {meta['pattern']}")
    if "max" in meta:
        size = len(value) if isinstance(value, str | list | dict) else value
        if isinstance(size, int | float) and not isinstance(size, bool) and size > meta["max"]:
            problems.append(f"{where}: {size} over the maximum of {meta['max']}"
                            f"{' characters' if isinstance(value, str) else ''}")
    return problems


def check(api: str, request: dict, service: str | None = None) -> None:
    """Raise InvalidRequest when `request` does not pass botocore's validation of `api`'s input shape."""
    if (problem := errors(api, request, service)) is not None:
        raise InvalidRequest(f"{api} request fails botocore's validation: {problem}")
